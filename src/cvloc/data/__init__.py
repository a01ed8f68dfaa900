"""Datasets: the synthetic world, real benchmarks, and the ``cvloc-pairs/1`` format.

Every dataset returns items of the one schema documented in :mod:`cvloc.data.batch`.
"""

from cvloc.data.batch import CAMERA_MODELS, OPTIONAL_KEYS, REQUIRED_KEYS, check_item, collate

__all__ = ["CAMERA_MODELS", "OPTIONAL_KEYS", "REQUIRED_KEYS", "check_item", "collate"]
