"""Prediction figures (DenseFlow Fig. 4 and 5 analogues) and their helpers."""

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cvloc import viz_prediction as viz
from cvloc.config import load_config
from cvloc.data.batch import collate
from cvloc.data.pairs import pair_to_item
from cvloc.data.synthetic import generate_pair
from cvloc.engine.builders import build_model


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config("overfit").model).eval()


@pytest.fixture(scope="module", params=["kitti-small", "vigor-small"])
def pair(request: pytest.FixtureRequest):
    return generate_pair(request.param, "test", "same", 0, seed=0)


@pytest.fixture(scope="module")
def item(pair) -> dict:
    p = pair
    return pair_to_item(
        p.ground, p.satellite, p.meta, p.ground_uv, p.sat_uv, p.height_m, p.sat_height_m
    )


@pytest.fixture(scope="module")
def pred(item: dict, tiny_model: torch.nn.Module) -> dict:
    with torch.inference_mode():
        return tiny_model(collate([item]))


def _check_png(path: Path, min_bytes: int = 30_000) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > min_bytes
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    # Non-trivial: images, markers and text, not a blank canvas.
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200
    assert rgb.std() > 30
    return rgb


def test_bev_image_shows_ground_at_its_satellite_pixel(pair, item: dict) -> None:
    # With the prior at the GT pose, a ground-level point (height ~0) seen at ground pixel
    # g and satellite pixel s has the BEV colour at s equal to the ground colour at g.
    at_gt = {**item, "camera_uv_prior": item["camera_uv_gt"], "yaw_deg_prior": item["yaw_deg_gt"]}
    bev, valid = viz.bev_image(at_gt)
    h_s, w_s = item["satellite"].shape[-2:]
    assert bev.shape == (3, h_s, w_s) and valid.shape == (h_s, w_s) and valid.dtype == torch.bool
    assert valid.any() and not bev[:, ~valid].any()
    flat = pair.height_m < 0.02
    s = np.rint(pair.sat_uv[flat]).astype(int)
    g = np.rint(pair.ground_uv[flat]).astype(int)
    seen = valid.numpy()[s[:, 1], s[:, 0]]
    assert seen.mean() > 0.9
    bev_rgb = bev.numpy()[:, s[seen, 1], s[seen, 0]]
    ground_rgb = item["ground"].numpy()[:, g[seen, 1], g[seen, 0]]
    shuffled = ground_rgb[:, np.random.default_rng(0).permutation(seen.sum())]
    assert np.median(np.abs(bev_rgb - ground_rgb)) < 0.5 * np.median(np.abs(bev_rgb - shuffled))


def test_prediction_matches(item: dict, pred: dict) -> None:
    m = viz.prediction_matches(item, pred)
    n = len(m["score"])
    kept = int((pred["match_weight"][0] > 0).sum())
    assert n == kept > 0
    assert m["src_uv"].shape == m["dst_uv"].shape == m["ground_uv"].shape == (n, 2)
    assert m["ground_valid"].dtype == bool and m["ground_valid"].mean() > 0.5
    assert ((m["score"] >= 0) & (m["score"] <= 1)).all()
    # Without a confidence map the score is the weight over its maximum.
    no_conf = {k: v for k, v in pred.items() if k != "confidence_iters"}
    assert viz.prediction_matches(item, no_conf)["score"].max() == pytest.approx(1.0)


@pytest.mark.parametrize("max_points", [1, 7, 40])
def test_spread_subset(max_points: int) -> None:
    uv = np.random.default_rng(0).uniform(0, 256, (5000, 2))
    pick = viz.spread_subset(uv, max_points)
    assert 1 <= len(pick) <= max_points and (np.diff(pick) > 0).all()
    np.testing.assert_array_equal(pick, viz.spread_subset(uv, max_points))
    if max_points == 40:  # spread out: the points cover most of the image
        assert np.ptp(uv[pick], axis=0).min() > 150
    np.testing.assert_array_equal(viz.spread_subset(uv[:5], 40), np.arange(5))
    assert len(viz.spread_subset(uv[:0], 40)) == 0


def test_zoom_to_keeps_a_square_view_inside_the_image() -> None:
    fig = Figure()
    axes = [fig.add_subplot(1, 2, i) for i in (1, 2)]
    viz.zoom_to(axes, np.array([[200.0, 10.0], [250.0, 30.0]]), (256, 256), margin_px=8.0)
    for ax in axes:
        (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
        assert x1 - x0 == pytest.approx(y1 - y0) == pytest.approx(66.0)
        assert min(x0, y0) >= -0.5 and max(x1, y1) <= 255.5
        assert x0 <= 200 and x1 >= 250 and y0 <= 10 and y1 >= 30  # the points are in view


def test_localization_figure(item: dict, pred: dict, tmp_path: Path) -> None:
    fig = viz.localization_figure(item, pred, method="tiny")
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("errors: tiny:") for t in titles)
    assert {"BEV at the prior pose", "satellite: matching inliers"} <= set(titles)
    path = viz.plot_prediction(
        "localization", item, pred, tmp_path / "sub" / "loc.png", method="tiny"
    )
    rgb = _check_png(path)
    assert rgb.shape[1] > rgb.shape[0]  # ground + matches on the left, satellite right


def test_confidence_figure(item: dict, pred: dict, tmp_path: Path) -> None:
    path = viz.plot_prediction("confidence", item, pred, tmp_path / "conf.png")
    _check_png(path)
    # A method without a confidence map (e.g. the classical baseline) still gets one.
    no_conf = {k: v for k, v in pred.items() if k != "confidence_iters"}
    _check_png(viz.plot_prediction("confidence", item, no_conf, tmp_path / "c2.png", "weights"))
    with pytest.raises(ValueError, match="kind must be one of"):
        viz.plot_prediction("flow", item, pred, tmp_path / "f.png")


def test_draw_match_markers_shapes_follow_the_threshold() -> None:
    fig = Figure()
    ax = fig.add_subplot()
    ax.imshow(np.zeros((10, 10, 3)))
    uv = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    viz.draw_match_markers(ax, uv, np.array([0.9, 0.2, 0.6]))
    sizes = sorted(len(c.get_offsets()) for c in ax.collections)
    assert sizes == [1, 2]  # 1 star (< 0.5), 2 circles (> 0.5)
    assert ax.get_xlim() == (-0.5, 9.5)
