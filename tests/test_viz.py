import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cvloc import viz
from cvloc.data.pairs import pair_to_item
from cvloc.data.synthetic import generate_pair


@pytest.fixture(scope="module", params=["kitti-small", "vigor-small"])
def pair(request: pytest.FixtureRequest):
    return generate_pair(request.param, "test", "same", 0, seed=0)


@pytest.fixture(scope="module")
def item(pair) -> dict:
    return pair_to_item(
        pair.ground,
        pair.satellite,
        pair.meta,
        pair.ground_uv,
        pair.sat_uv,
        pair.height_m,
        pair.sat_height_m,
    )


def test_no_global_matplotlib_state() -> None:
    # pyplot and matplotlib.use change process-wide state; the module must avoid both.
    tree = ast.parse(inspect.getsource(viz))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if "pyplot" in m]
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not [f for f in calls if isinstance(f, ast.Attribute) and f.attr == "use"]


def test_preview_written(pair, tmp_path: Path) -> None:
    path = viz.plot_pair_preview(pair, tmp_path / "sub" / "preview.png", dpi=50)
    assert path.is_file() and path.stat().st_size > 20_000
    with Image.open(path) as img:
        assert img.mode == "P"  # 256-colour palette
        rgb = np.asarray(img.convert("RGB"))
    assert rgb.shape[1] == 400  # 8 in at 50 dpi
    # Non-trivial: many distinct colours (images, markers, colorbar), not a blank canvas.
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200
    assert rgb.std() > 30


def test_preview_full_colour(item: dict, tmp_path: Path) -> None:
    path = viz.plot_pair_preview(item, tmp_path / "p.png", max_points=100, dpi=30, palette=False)
    with Image.open(path) as img:
        assert img.mode == "RGBA"


def test_preview_figure_panels(item: dict) -> None:
    fig = viz.pair_preview_figure(item, max_points=500)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith(f"{item['name']}: ground ({item['camera_model']}")
    assert any("prior error" in t for t in titles)
    assert sum("(500 drawn)" in t for t in titles) == 2
    pose_ax = next(ax for ax in fig.axes if "prior error" in ax.get_title())
    assert pose_ax.get_legend_handles_labels()[1] == ["prior", "GT"]
    # Correspondence scatters hold the subsample on both images.
    scatters = [c for ax in fig.axes for c in ax.collections if c.get_offsets().shape[0] == 500]
    assert len(scatters) == 2


def test_without_correspondences(item: dict) -> None:
    bare = {k: v for k, v in item.items() if k != "gt_sat_uv_grd"}
    ground_uv, sat_uv = viz.item_correspondences(bare)
    assert ground_uv.shape == sat_uv.shape == (0, 2)
    fig = viz.pair_preview_figure(bare)
    assert any("0 correspondences" in ax.get_title() for ax in fig.axes)


def test_item_correspondences(pair, item: dict) -> None:
    ground_uv, sat_uv = viz.item_correspondences(item)
    expected = {tuple(np.rint(uv).astype(int)) for uv in pair.ground_uv}
    assert {tuple(uv.astype(int)) for uv in ground_uv} == expected
    assert np.isfinite(sat_uv).all()


def test_ground_azimuth(item: dict) -> None:
    w = item["ground"].shape[-1]
    uv = np.array([[-0.5, 0.0], [w - 0.5, 0.0]], np.float32)
    azimuth, (lo, hi) = viz.ground_azimuth_deg(item, uv)
    np.testing.assert_allclose(azimuth, [lo, hi], atol=1e-4)
    if item["camera_model"] == "panorama":
        assert (lo, hi) == (-180.0, 180.0)
    else:
        cx = float(item["K"][0, 2])
        assert viz.ground_azimuth_deg(item, np.array([[cx, 0.0]], np.float32))[0] == 0
        assert lo < 0 < hi


def test_draw_pose_heading() -> None:
    ax = Figure().add_subplot()
    viz.draw_pose(ax, torch.tensor([10.0, 10.0]), 90.0, length_px=5.0)  # east: +u
    assert ax.texts[0].xy == pytest.approx((15.0, 10.0))
    viz.draw_pose(ax, (10.0, 10.0), 0.0, length_px=5.0)  # north: -v
    assert ax.texts[1].xy == pytest.approx((10.0, 5.0))


def test_search_region_square() -> None:
    ax = Figure().add_subplot()
    viz.draw_search_region(ax, (0.0, 0.0), 2.0, 0.0, 0.0, frame_yaw_deg=45.0)
    (square,) = ax.patches
    corners = square.get_xy()[:4]
    np.testing.assert_allclose(np.linalg.norm(corners, axis=1), 2.0 * np.sqrt(2.0))
    # The forward-right corner of a square facing north-east points east (+u).
    np.testing.assert_allclose(corners[0], [2.0 * np.sqrt(2.0), 0.0], atol=1e-9)


def test_subsample() -> None:
    assert list(viz.subsample(3, 10)) == [0, 1, 2]
    idx = viz.subsample(1000, 10)
    assert len(idx) == 10 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, viz.subsample(1000, 10))
