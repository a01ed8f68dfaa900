import dataclasses
import math

import numpy as np
import pytest
import torch

from cvloc.data.batch import camera_xy
from cvloc.data.kitti import KittiDataset, camera_offset_xy, read_oxts, read_p_rect_02
from cvloc.data.kitti_export import export_kitti, rerender_satellite
from cvloc.data.synthetic import generate_pair
from cvloc.geometry.cameras import pinhole_project
from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.geometry.pose import transform_points


@pytest.fixture(scope="module")
def pairs():
    return [generate_pair("kitti-small", "test", "same", i, seed=0) for i in range(2)] + [
        generate_pair("kitti-small", "train", "same", 0, seed=0)
    ]


def _world(meta, uv):
    c = torch.tensor(meta["sat_center_uv"], dtype=torch.float64)
    return pixel_to_world_xy(torch.as_tensor(uv, dtype=torch.float64), c, meta["m_per_px"])


def test_rerender_reproduces_the_pair_tile(pairs):
    np.testing.assert_array_equal(
        rerender_satellite(pairs[0].meta, np.zeros(2)), pairs[0].satellite
    )


def test_export_layout_and_round_trip(pairs, tmp_path):
    files = export_kitti(pairs, tmp_path)
    assert [f.name for f in files] == ["test1_files.txt", "train_files.txt"]
    test_lines = (tmp_path / "test1_files.txt").read_text().splitlines()
    assert test_lines[0].startswith("2000_01_01/2000_01_01_drive_0005_sync/0000000000.png ")
    assert len(test_lines[0].split("/")[0] + "/" + test_lines[0].split("/")[1]) + 1 == 38
    assert (tmp_path / "train_files.txt").read_text().split() == [
        "2000_01_01/2000_01_01_drive_0001_sync/0000000000.png"
    ]
    export_kitti(pairs[1:2], tmp_path)  # a second chunk merges, it does not truncate
    assert (tmp_path / "test1_files.txt").read_text().splitlines() == test_lines
    meta = pairs[0].meta
    raw = tmp_path / "raw_data/2000_01_01"
    np.testing.assert_allclose(read_p_rect_02(raw / "calib_cam_to_cam.txt"), meta["K"])
    _, _, yaw = read_oxts(raw / "2000_01_01_drive_0005_sync/oxts/data/0000000000.txt")
    assert (90 - math.degrees(yaw) - meta["yaw_deg"] + 180) % 360 - 180 == pytest.approx(0)
    ds = KittiDataset(
        tmp_path, "test1", ground_size=(512, 128), yaw_range_deg=meta["yaw_range_deg"]
    )
    for pair, item in zip(pairs[:2], (ds[0], ds[1]), strict=True):
        m = pair.meta
        torch.testing.assert_close(
            item["K"].double(), torch.tensor(m["K"], dtype=torch.float64), atol=1e-4, rtol=0
        )
        ground = (item["ground"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(ground, pair.ground)
        rel = (camera_xy(item, "gt") - camera_xy(item, "prior")).double()
        rel_pair = _world(m, m["camera_uv"]) - _world(m, m["prior"]["camera_uv"])
        torch.testing.assert_close(rel, rel_pair, atol=2e-3, rtol=0)
        assert float(item["yaw_deg_gt"]) == pytest.approx(m["yaw_deg"], abs=1e-4)
        assert float(item["yaw_deg_prior"]) == pytest.approx(m["prior"]["yaw_deg"], abs=1e-4)


def test_exported_geometry_matches_the_pair_correspondences(pairs, tmp_path):
    """Surface points of the pair, moved into the exported world, project onto their pixels."""
    export_kitti(pairs[:1], tmp_path)
    pair, meta = pairs[0], pairs[0].meta
    item = KittiDataset(tmp_path, "test1", ground_size=(512, 128))[0]
    gps = _world(meta, meta["camera_uv"]).numpy() - camera_offset_xy(meta["yaw_deg"])
    xy = _world(meta, pair.sat_uv).numpy() - gps  # exported world: origin at the GPS
    points = np.concatenate([xy, pair.height_m[:, None]], axis=1)[None]
    cam = transform_points(item["world_to_cam"].double()[None], torch.from_numpy(points))
    uv, depth = pinhole_project(cam, item["K"].double()[None])
    err = (uv[0] - torch.from_numpy(pair.ground_uv).double()).norm(dim=-1)
    assert len(err) > 100 and (depth > 0).all()
    assert float(err.max()) < 0.6  # float32 K / world_to_cam of the item


def test_rejects_what_kitti_cannot_hold(pairs, tmp_path):
    meta = dict(pairs[0].meta, camera_model="panorama", camera_height_m=2.0)
    with pytest.raises(ValueError, match="cannot export to KITTI"):
        export_kitti([dataclasses.replace(pairs[0], meta=meta)], tmp_path)
    export_kitti(pairs[:1], tmp_path)
    K = [list(r) for r in pairs[0].meta["K"]]
    K[0][0] += 1.0
    other = dataclasses.replace(pairs[1], meta=dict(pairs[1].meta, K=K))
    with pytest.raises(ValueError, match="another P_rect_02"):
        export_kitti([other], tmp_path)
