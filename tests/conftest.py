"""Shared fixtures: dtypes, and the real protocol files of ../shared/datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The benchmarks' real split/label files live beside the checkout (never copied into it).
SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(
            f"real protocol files not found at {SHARED_DATASETS}: they sit beside the "
            "checkout in CI, not in a user's clone"
        )
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Tests run on 2-core machines; extra intra-op threads only add contention.
    torch.set_num_threads(1)
