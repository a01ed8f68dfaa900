"""Models: DenseFlow (dense BEV-to-satellite flow + least-squares pose) and its stages."""

from cvloc.models.denseflow import DenseFlow, DenseFlowConfig

__all__ = ["DenseFlow", "DenseFlowConfig"]
