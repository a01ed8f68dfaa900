"""Models: DenseFlow (dense flow + least-squares pose), FineMatch (surface-aware matching)."""

from cvloc.models.denseflow import DenseFlow, DenseFlowConfig
from cvloc.models.finematch import FineMatch, FineMatchConfig

__all__ = ["DenseFlow", "DenseFlowConfig", "FineMatch", "FineMatchConfig"]
