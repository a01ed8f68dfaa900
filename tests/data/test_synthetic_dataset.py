import pytest
import torch
from torch.utils.data import DataLoader

from cvloc.data.batch import REQUIRED_KEYS, collate
from cvloc.data.synthetic.dataset import SyntheticDataset, worker_init_fn

PRESET = "vigor-small"  # the fastest preset


def test_item_schema() -> None:
    ds = SyntheticDataset(PRESET, "test", "same", num=3, seed=1)
    assert len(ds) == 3
    item = ds[-1]
    assert set(REQUIRED_KEYS) <= item.keys()
    assert item["name"].endswith("000002")
    assert item["gt_sat_uv_grd"].shape[:2] == item["ground"].shape[1:]
    with pytest.raises(IndexError):
        ds[3]


def test_epoch_moves_the_train_prior_only() -> None:
    train = SyntheticDataset(PRESET, "train", "same", num=1)
    first = train[0]
    train.set_epoch(1)
    second = train[0]
    assert torch.equal(first["ground"], second["ground"])  # same scene and camera
    # The tile is centred on the prior: a new prior moves the crop and the GT within it.
    assert not torch.equal(first["satellite"], second["satellite"])
    assert not torch.equal(first["camera_uv_gt"], second["camera_uv_gt"])
    test = SyntheticDataset(PRESET, "test", "same", num=1)
    test.set_epoch(1)
    assert torch.equal(
        test[0]["camera_uv_gt"], SyntheticDataset(PRESET, "test", "same", 1)[0]["camera_uv_gt"]
    )


def test_workers_match_sequential() -> None:
    ds = SyntheticDataset(PRESET, "test", "same", num=2, seed=4)
    loader = DataLoader(
        ds, batch_size=1, num_workers=2, collate_fn=collate, worker_init_fn=worker_init_fn
    )
    for i, batch in enumerate(loader):
        torch.testing.assert_close(batch["satellite"][0], ds[i]["satellite"], rtol=0, atol=0)
        assert batch["name"] == [ds[i]["name"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"num": 0}, "need num > 0"),
        ({"start": -1}, "start >= 0"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"preset": PRESET, "split": "test", "area": "same", "num": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        SyntheticDataset(**args)
