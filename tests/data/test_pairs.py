import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cvloc.data import pairs as pairs_mod
from cvloc.data.batch import REQUIRED_KEYS, collate
from cvloc.data.pairs import (
    FORMAT,
    PairsDataset,
    PairsFormatError,
    pair_to_item,
    write_dataset_json,
    write_pair,
)

HG, WG, HS, WS = 8, 16, 12, 10


def make_pair(camera_model: str = "pinhole", seed: int = 0) -> dict:
    """A tiny self-consistent pair (the geometry is not checked by the reader)."""
    rng = np.random.default_rng(seed)
    meta = {
        "name": f"toy/{camera_model}/{seed}",
        "camera_model": camera_model,
        "world_to_cam": np.eye(4).tolist(),
        "m_per_px": 0.5,
        "sat_center_uv": [4.5, 5.5],
        "camera_uv": [4.0, 6.0],
        "yaw_deg": 30.0,
        "camera_height_m": 1.65,
        "prior": {"camera_uv": [5.0, 5.0], "yaw_deg": 25.0},
        "ground_size": [WG, HG],
        "sat_size": [WS, HS],
        "shift_range_m": 2.0,
        "yaw_range_deg": 10.0,
    }
    if camera_model == "pinhole":
        meta["K"] = [[10.0, 0.0, 7.5], [0.0, 10.0, 3.5], [0.0, 0.0, 1.0]]
    ground_uv = np.array([[0, 0], [15, 7], [3, 4]], np.float32)
    return {
        "ground_rgb": rng.integers(0, 256, (HG, WG, 3), dtype=np.uint8),
        "satellite_rgb": rng.integers(0, 256, (HS, WS, 3), dtype=np.uint8),
        "meta": meta,
        "ground_uv": ground_uv,
        "sat_uv": rng.uniform(0, 9, (3, 2)).astype(np.float32),
        "height_m": np.array([0.0, 1.5, 0.2], np.float32),
        "sat_height_m": rng.uniform(0, 3, (HS, WS)).astype(np.float32),
    }


def write_dataset(root: Path, pairs: list[dict], **extra) -> Path:
    for i, pair in enumerate(pairs):
        write_pair(root / "samples" / f"{i:06d}", **pair)
    write_dataset_json(root, "toy", "test", 0, len(pairs), **extra)
    return root


def assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
        else:
            assert a[key] == b[key], key


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds", [make_pair("pinhole"), make_pair("panorama", 1)])


def sample_path(root: Path, name: str, index: int = 0) -> Path:
    return root / "samples" / f"{index:06d}" / name


class TestRoundTrip:
    def test_files(self, dataset_dir: Path) -> None:
        info = json.loads((dataset_dir / "dataset.json").read_text())
        assert info == {"format": FORMAT, "preset": "toy", "split": "test", "seed": 0, "num": 2}
        files = sorted(p.name for p in (dataset_dir / "samples" / "000000").iterdir())
        assert files == sorted(pairs_mod.SAMPLE_FILES)
        with np.load(sample_path(dataset_dir, "correspondences.npz")) as npz:
            assert sorted(npz.files) == ["ground_uv", "height_m", "sat_height_m", "sat_uv"]
            assert all(npz[k].dtype == np.float32 for k in npz.files)

    def test_items_equal_direct_conversion(self, dataset_dir: Path) -> None:
        ds = PairsDataset(dataset_dir)
        assert len(ds) == 2
        for i, camera_model in enumerate(["pinhole", "panorama"]):
            pair = make_pair(camera_model, i)
            assert_items_equal(ds[i], pair_to_item(**pair))

    def test_item_content(self, dataset_dir: Path) -> None:
        pair = make_pair("pinhole")
        item = PairsDataset(dataset_dir)[0]
        assert set(REQUIRED_KEYS) <= item.keys()
        assert item["name"] == pair["meta"]["name"]
        assert item["ground"].shape == (3, HG, WG) and item["ground"].dtype == torch.float32
        assert item["ground"].max() <= 1.0
        expected = torch.from_numpy(pair["ground_rgb"]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(item["ground"], expected)
        torch.testing.assert_close(item["camera_uv_gt"], torch.tensor([4.0, 6.0]))
        torch.testing.assert_close(item["yaw_deg_prior"], torch.tensor(25.0))
        torch.testing.assert_close(item["shift_range_m"], torch.tensor(2.0))
        dense = item["gt_sat_uv_grd"]
        assert dense.shape == (HG, WG, 2)
        for (u, v), sat in zip(pair["ground_uv"].astype(int), pair["sat_uv"], strict=True):
            torch.testing.assert_close(dense[v, u], torch.from_numpy(sat))
        assert torch.isnan(dense).any(dim=-1).sum() == HG * WG - 3
        assert item["sat_height_m"].shape == (HS, WS)

    def test_panorama_has_zero_intrinsics(self, dataset_dir: Path) -> None:
        item = PairsDataset(dataset_dir)[1]
        assert item["camera_model"] == "panorama"
        assert torch.equal(item["K"], torch.zeros(3, 3))

    def test_optional_values(self, tmp_path: Path) -> None:
        pair = make_pair()
        del pair["meta"]["shift_range_m"], pair["meta"]["yaw_range_deg"]
        pair["sat_height_m"] = None
        item = PairsDataset(write_dataset(tmp_path / "a", [pair]))[0]
        assert item["shift_range_m"] == 0.0 and item["yaw_range_deg"] == 0.0
        assert "sat_height_m" not in item
        # dataset.json values fill what meta.json omits.
        ds = PairsDataset(write_dataset(tmp_path / "b", [pair], shift_range_m=20.0))
        assert ds[0]["shift_range_m"] == 20.0 and ds[0]["yaw_range_deg"] == 0.0

    def test_without_correspondences(self, dataset_dir: Path) -> None:
        sample_path(dataset_dir, "correspondences.npz").unlink()
        item = PairsDataset(dataset_dir, load_correspondences=False)[0]
        assert "gt_sat_uv_grd" not in item and "sat_height_m" not in item

    def test_numpy_meta_values(self, tmp_path: Path) -> None:
        pair = make_pair()
        pair["meta"]["m_per_px"] = np.float32(0.5)
        pair["meta"]["world_to_cam"] = np.eye(4)
        item = PairsDataset(write_dataset(tmp_path / "ds", [pair]))[0]
        assert item["m_per_px"] == 0.5

    def test_dataloader_workers(self, dataset_dir: Path) -> None:
        ds = PairsDataset(dataset_dir)
        # Same camera model per batch: collate needs equal shapes.
        loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate)
        batches = list(loader)
        assert [b["camera_model"] for b in batches] == [["pinhole"], ["panorama"]]
        assert batches[0]["ground"].shape == (1, 3, HG, WG)


class TestAtomicWrite:
    def test_no_temporary_files(self, dataset_dir: Path) -> None:
        leftovers = [p for p in dataset_dir.rglob("*") if p.name.startswith(".")]
        assert leftovers == []

    @pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
    def test_interrupted_write(self, tmp_path: Path, monkeypatch, error) -> None:
        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(pairs_mod.np, "savez_compressed", fail)
        sample_dir = tmp_path / "000000"
        with pytest.raises(type(error)):
            write_pair(sample_dir, **make_pair())
        # The PNGs before the failure are whole; the npz is absent, not truncated.
        assert sorted(p.name for p in sample_dir.iterdir()) == ["ground.png", "satellite.png"]

    def test_overwrite_replaces(self, tmp_path: Path) -> None:
        write_pair(tmp_path / "s", **make_pair(seed=0))
        write_pair(tmp_path / "s", **make_pair(seed=1))
        meta = json.loads((tmp_path / "s" / "meta.json").read_text())
        assert meta["name"].endswith("/1")

    def test_bad_inputs(self, tmp_path: Path) -> None:
        pair = make_pair()
        with pytest.raises(ValueError, match="ground_rgb: expected a uint8"):
            write_pair(tmp_path, **{**pair, "ground_rgb": pair["ground_rgb"].astype(float)})
        with pytest.raises(ValueError, match=r"height_m must have shape \(3,\)"):
            write_pair(tmp_path, **{**pair, "height_m": np.zeros(2)})
        with pytest.raises(ValueError, match="sat_height_m must have the satellite's shape"):
            write_pair(tmp_path, **{**pair, "sat_height_m": np.zeros((3, 3))})
        meta = {k: v for k, v in pair["meta"].items() if k != "yaw_deg"}
        with pytest.raises(PairsFormatError, match=r"missing keys \['yaw_deg'\]"):
            write_pair(tmp_path, **{**pair, "meta": meta})
        with pytest.raises(ValueError, match="Out of range float"):
            write_pair(tmp_path, **{**pair, "meta": {**pair["meta"], "m_per_px": float("nan")}})
        assert list(tmp_path.iterdir()) == []


class TestErrors:
    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
            PairsDataset(tmp_path / "nope")

    def test_missing_dataset_json(self, dataset_dir: Path) -> None:
        (dataset_dir / "dataset.json").unlink()
        with pytest.raises(FileNotFoundError, match=r"dataset.json: missing"):
            PairsDataset(dataset_dir)

    def test_wrong_format(self, dataset_dir: Path) -> None:
        path = dataset_dir / "dataset.json"
        path.write_text(json.dumps({"format": "cvloc-pairs/0", "num": 2}))
        with pytest.raises(PairsFormatError, match=r"dataset.json: expected .*cvloc-pairs/1"):
            PairsDataset(dataset_dir)

    def test_dataset_json_not_json(self, dataset_dir: Path) -> None:
        (dataset_dir / "dataset.json").write_text("{")
        with pytest.raises(PairsFormatError, match=r"dataset.json: not valid JSON"):
            PairsDataset(dataset_dir)

    def test_num_mismatch(self, dataset_dir: Path) -> None:
        write_dataset_json(dataset_dir, "toy", "test", 0, 3)
        with pytest.raises(PairsFormatError, match=r"num=3 but .* holds 2 sample directories"):
            PairsDataset(dataset_dir)

    @pytest.mark.parametrize("fname", pairs_mod.SAMPLE_FILES)
    def test_missing_sample_file(self, dataset_dir: Path, fname: str) -> None:
        path = sample_path(dataset_dir, fname)
        path.unlink()
        with pytest.raises(FileNotFoundError, match=re.escape(f"{path}: missing sample file")):
            PairsDataset(dataset_dir)[0]

    @pytest.mark.parametrize("fname", ["ground.png", "satellite.png"])
    @pytest.mark.parametrize("damage", ["garbage", "truncated"])
    def test_corrupt_png(self, dataset_dir: Path, fname: str, damage: str) -> None:
        path = sample_path(dataset_dir, fname)
        data = path.read_bytes()
        path.write_bytes(b"not a png" if damage == "garbage" else data[: len(data) // 2])
        with pytest.raises(PairsFormatError, match=re.escape(f"{path}: not a readable PNG")):
            PairsDataset(dataset_dir)[0]

    @pytest.mark.parametrize("key", ["yaw_deg", "camera_uv", "K", "prior", "ground_size"])
    def test_meta_missing_key(self, dataset_dir: Path, key: str) -> None:
        path = sample_path(dataset_dir, "meta.json")
        meta = json.loads(path.read_text())
        del meta[key]
        path.write_text(json.dumps(meta))
        with pytest.raises(PairsFormatError, match=rf"meta.json is missing keys \['{key}"):
            PairsDataset(dataset_dir)[0]

    def test_meta_missing_prior_key(self, dataset_dir: Path) -> None:
        path = sample_path(dataset_dir, "meta.json")
        meta = json.loads(path.read_text())
        del meta["prior"]["yaw_deg"]
        path.write_text(json.dumps(meta))
        with pytest.raises(PairsFormatError, match=r"missing keys \['prior.yaw_deg'\]"):
            PairsDataset(dataset_dir)[0]

    def test_meta_bad_shape(self, dataset_dir: Path) -> None:
        path = sample_path(dataset_dir, "meta.json")
        meta = json.loads(path.read_text())
        meta["world_to_cam"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
        path.write_text(json.dumps(meta))
        with pytest.raises(PairsFormatError, match=r"world_to_cam must have shape \(4, 4\)"):
            PairsDataset(dataset_dir)[0]

    def test_meta_not_json(self, dataset_dir: Path) -> None:
        path = sample_path(dataset_dir, "meta.json")
        path.write_text("[1, 2")
        with pytest.raises(PairsFormatError, match=re.escape(f"{path}: not valid JSON")):
            PairsDataset(dataset_dir)[0]

    @pytest.mark.parametrize(("key", "fname"), [("ground_size", "ground"), ("sat_size", "sat")])
    def test_image_size_mismatch(self, dataset_dir: Path, key: str, fname: str) -> None:
        path = sample_path(dataset_dir, "meta.json")
        meta = json.loads(path.read_text())
        meta[key] = [meta[key][0] + 1, meta[key][1]]
        path.write_text(json.dumps(meta))
        with pytest.raises(PairsFormatError, match=rf"{fname}\w*.png: image is .* meta.json says"):
            PairsDataset(dataset_dir)[0]

    def test_corrupt_npz(self, dataset_dir: Path) -> None:
        path = sample_path(dataset_dir, "correspondences.npz")
        path.write_bytes(b"PK\x03\x04 broken")
        with pytest.raises(PairsFormatError, match=re.escape(f"{path}: not a readable .npz")):
            PairsDataset(dataset_dir)[0]

    def test_npz_missing_array(self, dataset_dir: Path) -> None:
        path = sample_path(dataset_dir, "correspondences.npz")
        np.savez_compressed(path, ground_uv=np.zeros((1, 2), np.float32))
        with pytest.raises(PairsFormatError, match=r"missing arrays \['sat_uv', 'height_m'\]"):
            PairsDataset(dataset_dir)[0]

    def test_ground_uv_outside_image(self, tmp_path: Path) -> None:
        pair = make_pair()
        pair["ground_uv"][1] = [WG, 0]
        root = write_dataset(tmp_path / "ds", [pair])
        with pytest.raises(PairsFormatError, match=r"correspondences.npz: ground_uv .* outside"):
            PairsDataset(root)[0]
