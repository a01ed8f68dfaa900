"""Prior refinement: later passes start from the previous estimate, narrowed bounds reach
the model, a known heading stays known, and match sources keep their ground pixels."""

import math

import pytest
import torch
from test_denseflow import TINY, make_batch
from test_finematch import TINY as TINY_FINEMATCH

from cvloc.config import EvalConfig
from cvloc.evaluate import lift_matches_to_ground
from cvloc.models import DenseFlow
from cvloc.models.finematch import FineMatch
from cvloc.models.refinement import PriorRefinement, move_sources, refined

KEYS = ("camera_uv_pred", "yaw_deg_pred", "match_src_uv", "match_dst_uv", "match_weight")


def place(offsets_m, camera_uv, yaw_deg, m_per_px):
    """Camera-frame ground points (forward, right) in metres -> satellite pixels.

    Written from design.md alone: forward is (sin yaw, -cos yaw) on the image, right is
    forward turned 90 deg clockwise, (cos yaw, sin yaw).
    """
    yaw = math.radians(yaw_deg)
    fwd = torch.tensor([math.sin(yaw), -math.cos(yaw)], dtype=torch.float64)
    right = torch.tensor([math.cos(yaw), math.sin(yaw)], dtype=torch.float64)
    uv = offsets_m[:, :1] * fwd + offsets_m[:, 1:] * right
    return torch.tensor(camera_uv, dtype=torch.float64) + uv / m_per_px


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (((40.0, 60.0), 10.0), ((47.5, 52.0), -15.0)),
        (((100.0, 20.0), 179.0), ((90.0, 30.0), -170.0)),
    ],
)
def test_move_sources_against_the_placement_of_camera_frame_points(a, b):
    g = torch.Generator().manual_seed(0)
    offsets = torch.rand(20, 2, generator=g, dtype=torch.float64) * 40.0 - 20.0
    m = 0.4
    at_a, at_b = place(offsets, *a, m), place(offsets, *b, m)
    moved = move_sources(
        at_a[None].float(), torch.tensor([[63.5, 63.5]]), torch.tensor([m]),
        torch.tensor([a[0]]), torch.tensor([a[1]]), torch.tensor([b[0]]), torch.tensor([b[1]]),
    )  # fmt: skip
    torch.testing.assert_close(moved[0].double(), at_b, atol=2e-3, rtol=0)


@pytest.fixture(scope="module")
def denseflow():
    torch.manual_seed(0)
    return DenseFlow(TINY).eval()


@pytest.fixture(scope="module")
def finematch():
    torch.manual_seed(0)
    return FineMatch(TINY_FINEMATCH).eval()


def test_one_pass_is_the_model_itself(denseflow):
    batch = make_batch(B=2)
    with torch.inference_mode():
        plain, once = denseflow(batch), PriorRefinement(denseflow, passes=1)(batch)
    for key in KEYS:
        torch.testing.assert_close(once[key], plain[key])
    assert once["refine_passes"].tolist() == [1, 1]
    assert "flow_iters" not in once
    assert refined(denseflow, EvalConfig()) is denseflow


def test_second_pass_starts_from_the_first_estimate_with_narrowed_bounds(finematch):
    batch = make_batch(B=2, seed=4)
    batch["shift_range_m"] = torch.tensor([20.0, 2.0])
    batch["yaw_range_deg"] = torch.tensor([10.0, 10.0])
    settings = EvalConfig(refine_passes=2, refine_shift_m=5.0, refine_yaw_deg=3.0)
    runner = refined(finematch, settings)
    assert isinstance(runner, PriorRefinement)
    with torch.inference_mode():
        out = runner(batch)
        first = finematch(batch)
        # Independently: the second pass by hand, bounds min(batch, refinement).
        second_batch = dict(
            batch,
            camera_uv_prior=first["camera_uv_pred"],
            yaw_deg_prior=first["yaw_deg_pred"],
            shift_range_m=torch.tensor([5.0, 2.0]),  # never widened
            yaw_range_deg=torch.tensor([3.0, 3.0]),
        )
        second = finematch(second_batch)
        wide = finematch(dict(second_batch, shift_range_m=batch["shift_range_m"]))
    for key in ("camera_uv_pred", "yaw_deg_pred", "match_dst_uv", "match_weight"):
        torch.testing.assert_close(out[key], second[key])
    # The narrowed window changed what the model saw (the test can tell the two apart).
    assert not torch.allclose(wide["match_weight"], second["match_weight"])


def test_known_heading_stays_known(finematch):
    batch = make_batch(B=2, seed=2)
    batch["yaw_range_deg"] = torch.zeros(2)
    with torch.inference_mode():
        out = PriorRefinement(finematch, passes=3, yaw_range_deg=2.0)(batch)
    torch.testing.assert_close(out["yaw_deg_pred"], batch["yaw_deg_prior"].float())


def test_moved_sources_keep_their_ground_pixels(denseflow):
    batch = make_batch(B=1, seed=5)
    with torch.inference_mode():
        out = PriorRefinement(denseflow, passes=2)(batch)
        first = denseflow(batch)
        uv, yaw = first["camera_uv_pred"], first["yaw_deg_pred"]
        last = denseflow({**batch, "camera_uv_prior": uv, "yaw_deg_prior": yaw})
    args = ("pinhole", (256, 64), batch["K"])
    height, center, m = batch["camera_height_m"], batch["sat_center_uv"], batch["m_per_px"]
    at_pass, valid_pass = lift_matches_to_ground(
        last["match_src_uv"].double(), center, m, first["camera_uv_pred"].double(),
        first["yaw_deg_pred"].double(), height, *args,
    )  # fmt: skip
    at_prior, valid_prior = lift_matches_to_ground(
        out["match_src_uv"].double(), center, m, batch["camera_uv_prior"],
        batch["yaw_deg_prior"], height, *args,
    )  # fmt: skip
    assert valid_pass.sum() > 0
    assert torch.equal(valid_pass, valid_prior)
    torch.testing.assert_close(at_prior[valid_prior], at_pass[valid_pass], atol=1e-3, rtol=0)
    # The sources did move: the first estimate is not the prior.
    assert not torch.allclose(out["match_src_uv"], last["match_src_uv"], atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"passes": 0}, "passes"), ({"shift_range_m": 0.0}, "shift_range_m"),
     ({"yaw_range_deg": -1.0}, "yaw_range_deg")],
)  # fmt: skip
def test_bad_settings_are_refused(denseflow, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PriorRefinement(denseflow, **kwargs)


def test_eval_config_checks_the_refinement_fields():
    with pytest.raises(ValueError, match=r"eval\.refine_passes"):
        EvalConfig(refine_passes=0)
    with pytest.raises(ValueError, match=r"eval\.refine_yaw_deg"):
        EvalConfig(refine_yaw_deg=0.0)
