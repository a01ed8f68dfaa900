import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import make_kitti
from PIL import Image

from cvloc.data import kitti
from cvloc.data.batch import REQUIRED_KEYS, camera_xy, check_item
from cvloc.data.images import CorruptFileError, MissingFileError
from cvloc.data.kitti import KittiDataset, from_protocol, parse_split_file, to_protocol
from cvloc.data.protocols import SplitFormatError
from cvloc.geometry.cameras import scale_intrinsics
from cvloc.metrics import localization_metrics

# Real lines of test1_files.txt (HighlyAccurate), used as names and fixed noise.
REAL_TEST1 = [
    "2011_10_03/2011_10_03_drive_0042_sync/0000000939.png -0.3455326 -0.9653194 -0.0077375486",
    "2011_09_30/2011_09_30_drive_0018_sync/0000002310.png 0.37390798 0.36219868 -0.75242347",
    "2011_09_30/2011_09_30_drive_0028_sync/0000001803.png 0.933891 0.42439047 0.95673674",
]


def _uv(item, role):
    return item[f"camera_uv_{role}"].double().numpy()


def test_real_split_files_parse(shared_datasets, tmp_path):
    counts = {"train": 19655, "test1": 3773, "test2": 7542}
    for split, count in counts.items():
        frames = parse_split_file(shared_datasets / "kitti" / f"{split}_files.txt")
        assert len(frames) == count
        assert all((f.noise is None) == (split == "train") for f in frames)
    noise = np.array(
        [f.noise for f in parse_split_file(shared_datasets / "kitti/test1_files.txt")]
    )
    assert np.abs(noise).max() <= 1 and abs(np.abs(noise).mean() - 0.5) < 0.02  # uniform
    # train / val: a deterministic partition of train_files.txt, ~5% per drive, never test.
    split_dir = shared_datasets / "kitti"
    train = KittiDataset(tmp_path, "train", split_dir=split_dir)
    val = KittiDataset(tmp_path, "val", split_dir=split_dir)
    names_t, names_v = {f.name for f in train.frames}, {f.name for f in val.frames}
    assert len(names_t) + len(names_v) == 19655 and not names_t & names_v
    assert 0.05 <= len(names_v) / 19655 < 0.06
    drive = "2011_09_26/2011_09_26_drive_0002_sync"
    last = max(n for n in names_t | names_v if n.startswith(drive))
    assert last in names_v


def test_item_schema_and_geometry(tmp_path):
    make_kitti(tmp_path, REAL_TEST1, yaw_rad=0.3, sat_size=64)
    ds = KittiDataset(tmp_path, "test1", ground_size=(64, 16))
    item = ds[0]
    check_item(item)
    assert set(REQUIRED_KEYS) <= set(item)
    assert item["ground"].shape == (3, 16, 64) and item["satellite"].shape == (3, 64, 64)
    m = kitti.KITTI_M_PER_PX * 512 / 64
    assert float(item["m_per_px"]) == pytest.approx(m)
    assert item["sat_center_uv"].tolist() == [31.5, 31.5]
    yaw = 90.0 - math.degrees(0.3)  # oxts: 0 = east, anticlockwise; ours: compass
    assert float(item["yaw_deg_gt"]) == pytest.approx(yaw, abs=1e-4)
    # The camera is 1.08 m ahead and 0.26 m right of the GPS (the tile centre).
    f = np.array([math.sin(math.radians(yaw)), math.cos(math.radians(yaw))])
    r = np.array([f[1], -f[0]])
    xy = camera_xy(item, "gt").double().numpy()
    np.testing.assert_allclose(xy, 1.08 * f + 0.26 * r, atol=1e-5)
    # The prior reproduces the line's fixed noise in the GT heading frame.
    uvt = to_protocol(
        xy, yaw, camera_xy(item, "prior").double().numpy(), float(item["yaw_deg_prior"]), yaw
    )
    np.testing.assert_allclose(uvt, [-0.3455326, -0.9653194, -0.0077375486], atol=1e-5)
    assert float(item["camera_height_m"]) == pytest.approx(1.65)
    # A level camera at the GT pose: the optical axis is horizontal, along the heading.
    axis = item["world_to_cam"][2, :3].double().numpy()
    np.testing.assert_allclose(axis, [f[0], f[1], 0.0], atol=1e-6)


@pytest.mark.parametrize("raw_wh", [(1242, 375), (1241, 376)])
def test_intrinsics_scaled_from_decoded_size(tmp_path, raw_wh):
    make_kitti(tmp_path, REAL_TEST1[:1], image_size=raw_wh, sat_size=32)
    item = KittiDataset(tmp_path, "test1", ground_size=(1024, 256))[0]
    K_raw = torch.tensor([[721.5377, 0, 609.5593], [0, 721.5377, 172.854], [0, 0, 1]])
    expected = scale_intrinsics(K_raw.double(), 1024 / raw_wh[0], 256 / raw_wh[1])
    torch.testing.assert_close(item["K"].double(), expected, atol=1e-3, rtol=0)
    # The peers' cx * sx (no half-pixel term) differs by 0.5 sx - 0.5 px.
    assert float(item["K"][0, 2]) == pytest.approx(
        609.5593 * 1024 / raw_wh[0] + 0.5 * 1024 / raw_wh[0] - 0.5, abs=1e-3
    )


def _ha_final_tile(tile: Image.Image, heading_rad: float, uvt, m_per_px: float) -> Image.Image:
    """The HighlyAccurate test-time tile transform (protocols.md 2.1), re-done with pillow:
    rotate by -heading (heading -> east), shift by the GPS-to-camera offset, shift by the
    negated noise (u * 20 m, -v * 20 m), rotate by theta * 10 deg."""
    u, v, theta = uvt
    img = tile.rotate(-math.degrees(heading_rad), resample=Image.Resampling.BILINEAR)
    off = (1, 0, 1.08 / m_per_px, 0, 1, 0.26 / m_per_px)
    img = img.transform(img.size, Image.Transform.AFFINE, off, Image.Resampling.BILINEAR)
    p = 20.0 / m_per_px
    shift = (1, 0, -u * p, 0, 1, v * p)
    img = img.transform(img.size, Image.Transform.AFFINE, shift, Image.Resampling.BILINEAR)
    return img.rotate(theta * 10.0, resample=Image.Resampling.BILINEAR)


def _blob_at(uv: np.ndarray, size: int = 512) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size]
    g = np.exp(-((xx - uv[0]) ** 2 + (yy - uv[1]) ** 2) / (2 * 3.0**2))
    return Image.fromarray(g.astype(np.float32), mode="F")


def _centroid(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    return np.array([(a * xx).sum(), (a * yy).sum()]) / a.sum()


@pytest.mark.parametrize("heading_rad", [0.3, 2.5, -1.9])
def test_prior_matches_the_peer_tile_transform(tmp_path, heading_rad):
    """Our north-up GT / prior land where the HighlyAccurate pipeline puts its camera."""
    make_kitti(tmp_path, REAL_TEST1[2:], yaw_rad=heading_rad, sat_size=512)
    item = KittiDataset(tmp_path, "test1", ground_size=(32, 8))[0]
    m = float(item["m_per_px"])
    uvt = (0.933891, 0.42439047, 0.95673674)
    center = np.array([255.5, 255.5])
    # Without noise, the camera (GT) is at the centre of the peer's tile.
    final = _ha_final_tile(_blob_at(_uv(item, "gt")), heading_rad, (0, 0, 0), m)
    np.testing.assert_allclose(_centroid(final), center, atol=0.5)
    # With the line's noise, the centre of the peer's tile is our prior position ...
    final = _ha_final_tile(_blob_at(_uv(item, "prior")), heading_rad, uvt, m)
    np.testing.assert_allclose(_centroid(final), center, atol=0.5)
    # ... and its +u (east) axis is our prior heading.
    yaw_p = math.radians(float(item["yaw_deg_prior"]))
    ahead = _uv(item, "prior") + 60 * np.array([math.sin(yaw_p), -math.cos(yaw_p)])
    final = _ha_final_tile(_blob_at(ahead), heading_rad, uvt, m)
    np.testing.assert_allclose(_centroid(final), center + np.array([60.0, 0.0]), atol=0.5)


def test_protocol_round_trip_and_metrics_equal_peer_formula():
    rng = np.random.default_rng(0)
    n = 200
    gt_xy, gt_yaw = rng.uniform(-30, 30, (n, 2)), rng.uniform(-180, 180, n)
    noise = rng.uniform(-1, 1, (n, 3))
    prior_xy, prior_yaw = from_protocol(gt_xy, gt_yaw, noise)
    np.testing.assert_allclose(to_protocol(gt_xy, gt_yaw, prior_xy, prior_yaw, gt_yaw), noise)
    pred_xy = gt_xy + rng.normal(0, 3, (n, 2))
    pred_yaw = gt_yaw + rng.normal(0, 3, n)
    pred = to_protocol(pred_xy, pred_yaw, prior_xy, prior_yaw, gt_yaw)
    # HighlyAccurate: lateral |dv| * 20, longitudinal |du| * 20, angle |dtheta| * 10.
    du, dv, dt = (np.abs(pred - noise) * [20.0, 20.0, 10.0]).T
    ours = localization_metrics(pred_xy, gt_xy, pred_yaw, gt_yaw)
    assert ours["lateral_mean_m"] == pytest.approx(dv.mean(), abs=1e-9)
    assert ours["longitudinal_median_m"] == pytest.approx(np.median(du), abs=1e-9)
    assert ours["location_mean_m"] == pytest.approx(np.hypot(du, dv).mean(), abs=1e-9)
    assert ours["yaw_mean_deg"] == pytest.approx(dt.mean(), abs=1e-9)
    for t in (1, 3, 5):
        assert ours[f"lateral_recall_{t}m"] == np.mean(dv < t)


def test_training_noise_per_epoch_and_unknown_heading(tmp_path):
    lines = [line.split()[0] for line in REAL_TEST1]
    make_kitti(tmp_path, lines, split_file="train_files.txt", sat_size=32)
    ds = KittiDataset(tmp_path, "train", ground_size=(32, 8), val_fraction=0.0)
    a = _uv(ds[0], "prior")
    np.testing.assert_array_equal(a, _uv(ds[0], "prior"))  # deterministic
    ds.set_epoch(1)
    assert not np.allclose(a, _uv(ds[0], "prior"))
    wide = KittiDataset(
        tmp_path, "train", ground_size=(32, 8), val_fraction=0.0, yaw_range_deg=180.0
    )
    d = [abs(float(wide[i]["yaw_deg_prior"] - wide[i]["yaw_deg_gt"])) for i in range(3)]
    assert float(wide[0]["yaw_range_deg"]) == 180.0 and max(d) > 10.0


def test_errors_name_the_file_and_skip_bad_samples(tmp_path):
    make_kitti(tmp_path, REAL_TEST1, sat_size=32)
    bad_image = (
        tmp_path / "raw_data/2011_10_03/2011_10_03_drive_0042_sync/image_02/data/0000000939.png"
    )
    bad_image.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    tile = tmp_path / "satmap" / REAL_TEST1[1].split()[0]
    tile.unlink()
    ds = KittiDataset(tmp_path, "test1", ground_size=(32, 8))
    with pytest.raises(CorruptFileError, match=str(bad_image)):
        ds[0]
    with pytest.raises(MissingFileError, match="KITTI satellite tile"):
        ds[1]
    skipping = KittiDataset(tmp_path, "test1", ground_size=(32, 8), skip_bad_samples=True)
    assert skipping[0]["name"] == REAL_TEST1[2].split()[0]
    assert skipping.bad_samples == 2 and str(tile) in skipping.bad_sample_files


def test_malformed_split_line(tmp_path):
    path = tmp_path / "test1_files.txt"
    path.write_text(f"{REAL_TEST1[0]}\n\n{REAL_TEST1[1].split()[0]} 0.1 nan 0.2\n")
    with pytest.raises(SplitFormatError, match=r"test1_files.txt:3"):
        parse_split_file(path)
    path.write_text("2011_10_03/x.png 0.1 0.2 0.3\n")
    with pytest.raises(SplitFormatError, match=r":1: expected"):
        parse_split_file(path)
    with pytest.raises(FileNotFoundError, match="KITTI split"):
        KittiDataset(Path(tmp_path) / "nowhere", "test2")
