"""Prior refinement: later passes start from the previous estimate, narrowed bounds reach
the model, a known heading stays known, and match sources keep their ground pixels; the
classical refinement aligns inside its window and never beyond it."""

import dataclasses
import math

import pytest
import torch
from test_baselines import M_PER_PX, plane_batch
from test_denseflow import TINY, make_batch
from test_finematch import TINY as TINY_FINEMATCH

from cvloc.config import EvalConfig
from cvloc.evaluate import lift_matches_to_ground
from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.models import DenseFlow
from cvloc.models.dense_matches import DenseMatches
from cvloc.models.finematch import FineMatch
from cvloc.models.refinement import (
    ClassicalRefinement,
    PriorRefinement,
    marginal_alignment,
    move_sources,
    refined,
)

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


def test_second_pass_can_start_from_the_first_pass_alignment(finematch, denseflow):
    # eval.refine_align_shift_m: the second pass starts from align_uv_pred at the prior
    # heading, bounded by that shift and the batch's heading bound; the third from the
    # second's estimate with the refinement bounds.
    batch = make_batch(B=2, seed=4)
    batch["shift_range_m"] = torch.tensor([20.0, 2.0])
    batch["yaw_range_deg"] = torch.tensor([10.0, 10.0])
    settings = EvalConfig(
        refine_passes=3, refine_shift_m=4.0, refine_yaw_deg=3.0, refine_align_shift_m=6.0
    )
    with torch.inference_mode():
        out = refined(finematch, settings)(batch)
        first = finematch(batch)
        aligned = dict(
            batch,
            camera_uv_prior=first["align_uv_pred"],
            shift_range_m=torch.tensor([6.0, 2.0]),  # never widened
        )
        second = finematch(aligned)
        third = finematch(
            dict(
                aligned,
                camera_uv_prior=second["camera_uv_pred"],
                yaw_deg_prior=second["yaw_deg_pred"],
                shift_range_m=torch.tensor([4.0, 2.0]),
                yaw_range_deg=torch.tensor([3.0, 3.0]),
            )
        )
    for key in ("camera_uv_pred", "yaw_deg_pred", "match_dst_uv", "match_weight"):
        torch.testing.assert_close(out[key], third[key])
    # The alignment is not the first estimate: the test tells the two starts apart.
    assert not torch.allclose(first["align_uv_pred"], first["camera_uv_pred"])
    with pytest.raises(KeyError, match="heading_alignment_scores"), torch.inference_mode():
        PriorRefinement(denseflow, passes=2, align_shift_m=5.0)(batch)  # no alignment


def test_marginal_alignment_prefers_a_shift_several_headings_support():
    # Heading 0 has the single sharpest peak (10 at shift (3, -2)); headings 1 and 2 both
    # score shift (0, 1) at 8 and 9. Everything else is -50.
    scores = torch.full((1, 3, 9, 9), -50.0)
    scores[0, 0, -2 + 4, 3 + 4] = 10.0
    scores[0, 1, 1 + 4, 0 + 4] = 8.0
    scores[0, 2, 1 + 4, 0 + 4] = 9.0
    prior = torch.tensor([[100.0, 60.0]])
    # t = 4: log(e^2 + e^2.25) = 2.82 beats 2.5; the best heading at (0, 1) is 2.
    uv, best = marginal_alignment(scores, prior, 8, 4.0)
    torch.testing.assert_close(uv, torch.tensor([[100.0, 68.0]]))
    assert best.tolist() == [2]
    # t -> 0 is the best single peak; one hypothesis is its own best shift.
    uv, best = marginal_alignment(scores, prior, 8, 0.01)
    torch.testing.assert_close(uv, torch.tensor([[124.0, 44.0]]))
    assert best.tolist() == [0]
    uv, best = marginal_alignment(scores[:, 1:2], prior, 4, 4.0)
    torch.testing.assert_close(uv, torch.tensor([[100.0, 64.0]]))
    assert best.tolist() == [0]


def test_first_pass_at_several_headings(finematch):
    # eval.refine_align_headings=3 with a 9 deg bound: the first pass runs at the prior
    # heading -6, 0 and +6 deg (sector centres), the second from the marginalised best
    # shift at the heading that scores it best, bounded by refine_align_shift_m.
    batch = make_batch(B=2, seed=4)
    batch["shift_range_m"] = torch.tensor([20.0, 20.0])
    batch["yaw_range_deg"] = torch.tensor([9.0, 9.0])
    settings = EvalConfig(
        refine_passes=2, refine_align_shift_m=6.0, refine_align_headings=3,
        refine_align_temperature=4.0,
    )  # fmt: skip
    with torch.inference_mode():
        out = refined(finematch, settings)(batch)
        yaws = [batch["yaw_deg_prior"] + turn for turn in (-6.0, 0.0, 6.0)]
        maps = [finematch(dict(batch, yaw_deg_prior=y))["align_scores"] for y in yaws]
    r = (maps[0].shape[-1] - 1) // 2
    starts, headings = [], []
    for b in range(2):  # independent: a loop over shifts
        best, best_value = None, -math.inf
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                value = math.log(sum(math.exp(float(m[b, dy + r, dx + r]) / 4.0) for m in maps))
                if value > best_value:
                    best, best_value = (dx, dy), value
        dx, dy = best
        k = max(range(3), key=lambda i: float(maps[i][b, dy + r, dx + r]))
        starts.append(batch["camera_uv_prior"][b].float() + 8.0 * torch.tensor([dx, dy]))
        headings.append(yaws[k][b])
    second_batch = dict(
        batch,
        camera_uv_prior=torch.stack(starts),
        yaw_deg_prior=torch.stack(headings),
        shift_range_m=torch.tensor([6.0, 6.0]),
    )
    with torch.inference_mode():
        second = finematch(second_batch)
    for key in ("camera_uv_pred", "yaw_deg_pred", "match_dst_uv", "match_weight"):
        torch.testing.assert_close(out[key], second[key])
    with torch.inference_mode():  # the test tells it from the prior heading alone
        alone = refined(finematch, dataclasses.replace(settings, refine_align_headings=1))(batch)
    assert not torch.allclose(out["camera_uv_pred"], alone["camera_uv_pred"])
    # A known heading has nothing to search: the same as the prior heading alone.
    batch["yaw_range_deg"] = torch.zeros(2)
    with torch.inference_mode():
        known = refined(finematch, settings)(batch)
        alone = refined(finematch, dataclasses.replace(settings, refine_align_headings=1))(batch)
    for key in ("camera_uv_pred", "yaw_deg_pred"):
        torch.testing.assert_close(known[key], alone[key])


def test_heading_hypotheses_are_checked_and_need_the_alignment(finematch):
    with pytest.raises(ValueError, match="align_headings >= 1"):
        PriorRefinement(finematch, passes=2, align_shift_m=5.0, align_headings=0)
    with pytest.raises(ValueError, match="align_temperature > 0"):
        PriorRefinement(finematch, passes=2, align_shift_m=5.0, align_temperature=0.0)
    with pytest.raises(ValueError, match="refine_align_headings"):
        EvalConfig(refine_align_headings=0)
    # Without the alignment start there is nothing to choose: the plain passes.
    batch = make_batch(B=2, seed=4)
    batch["yaw_range_deg"] = torch.tensor([9.0, 9.0])
    with torch.inference_mode():
        plain = PriorRefinement(finematch, passes=2)(batch)
        headed = PriorRefinement(finematch, passes=2, align_headings=3)(batch)
    torch.testing.assert_close(headed["camera_uv_pred"], plain["camera_uv_pred"])


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
     ({"yaw_range_deg": -1.0}, "yaw_range_deg"), ({"align_shift_m": 0.0}, "align_shift_m"),
     ({"passes": 1, "align_shift_m": 5.0}, "needs passes >= 2")],
)  # fmt: skip
def test_bad_settings_are_refused(denseflow, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PriorRefinement(denseflow, **kwargs)


def test_eval_config_checks_the_refinement_fields():
    with pytest.raises(ValueError, match=r"eval\.refine_passes"):
        EvalConfig(refine_passes=0)
    with pytest.raises(ValueError, match=r"eval\.refine_yaw_deg"):
        EvalConfig(refine_yaw_deg=0.0)
    with pytest.raises(ValueError, match=r"refine_align_shift_m needs eval\.refine_passes >= 2"):
        EvalConfig(refine_align_shift_m=5.0)


class FixedEstimate(torch.nn.Module):
    """A stand-in localizer that answers the ground truth moved by a fixed error."""

    def __init__(self, shift_m: tuple[float, float], dyaw_deg: float) -> None:
        super().__init__()
        self.shift_m, self.dyaw_deg = shift_m, dyaw_deg

    def forward(self, batch):
        uv = batch["camera_uv_gt"] + torch.tensor([self.shift_m[0], -self.shift_m[1]]) / M_PER_PX
        g = torch.Generator().manual_seed(0)
        return {
            "camera_uv_pred": uv,
            "camera_xy_pred": pixel_to_world_xy(uv, batch["sat_center_uv"], batch["m_per_px"]),
            "yaw_deg_pred": batch["yaw_deg_gt"] + self.dyaw_deg,
            "match_src_uv": torch.rand(1, 7, 2, generator=g),
            "match_dst_uv": torch.rand(1, 7, 2, generator=g),
            "match_weight": torch.rand(1, 7, generator=g),
        }


def window_errors(out, estimate, batch):
    """(max per-axis position offset in metres, heading offset) of ``out`` from ``estimate``."""
    du = (out["camera_uv_pred"] - estimate["camera_uv_pred"]).abs().max().item()
    dyaw = (out["yaw_deg_pred"] - estimate["yaw_deg_pred"]).abs().item()
    return du * batch["m_per_px"].item(), dyaw


def test_classical_refinement_aligns_inside_its_window():
    # The textured plane of test_baselines: a flat BEV at the true pose copies the satellite,
    # so the local search must pull an estimate 1.3 m and 1.5 deg off back towards it.
    batch = plane_batch()
    model = FixedEstimate((1.0, -0.8), 1.5)
    runner = ClassicalRefinement(model, shift_range_m=2.0, yaw_range_deg=2.0)
    with torch.inference_mode():
        estimate, out = model(batch), runner(batch)
    error_m = (out["camera_uv_pred"] - batch["camera_uv_gt"]).norm().item() * M_PER_PX
    assert error_m < 0.5
    assert abs(out["yaw_deg_pred"] - batch["yaw_deg_gt"]).item() < 1.0
    expected_xy = pixel_to_world_xy(out["camera_uv_pred"], batch["sat_center_uv"], M_PER_PX)
    torch.testing.assert_close(out["camera_xy_pred"], expected_xy)
    assert out["classical_score"].shape == (1,) and out["classical_score"].item() > 0.3
    for key in ("match_src_uv", "match_dst_uv", "match_weight"):  # the localizer's own
        assert torch.equal(out[key], estimate[key])
    shift, dyaw = window_errors(out, estimate, batch)
    assert shift <= 2.0 + 1e-5 and dyaw <= 2.0 + 1e-5  # never beyond the window


def test_classical_refinement_keeps_the_batch_bounds_and_a_known_heading():
    batch = plane_batch()
    model = FixedEstimate((1.0, -0.8), 1.5)
    runner = ClassicalRefinement(model, shift_range_m=2.0, yaw_range_deg=2.0)
    narrow = dict(batch, shift_range_m=torch.tensor([0.4]), yaw_range_deg=torch.tensor([0.0]))
    with torch.inference_mode():
        estimate, out = model(narrow), runner(narrow)
    shift, dyaw = window_errors(out, estimate, narrow)
    assert shift <= 0.4 + 1e-5 and dyaw == 0.0  # the batch's 0.4 m, its known heading
    far = FixedEstimate((9.0, 7.0), 1.0)  # out of the window: it can only move 2 m
    with torch.inference_mode():
        estimate, out = far(batch), ClassicalRefinement(far, 2.0, 2.0)(batch)
    shift, dyaw = window_errors(out, estimate, batch)
    assert shift <= 2.0 + 1e-5 and dyaw <= 2.0 + 1e-5
    # An undeclared position bound (0, the pairs format's default) becomes the window's.
    undeclared = dict(batch, shift_range_m=torch.tensor([0.0]))
    with torch.inference_mode():
        out = ClassicalRefinement(far, 2.0, 2.0)(undeclared)
    shift, _ = window_errors(out, estimate, undeclared)
    assert 1.0 < shift <= 2.0 + 1e-5  # moved towards the truth, but not beyond 2 m


def test_refined_composes_the_settings(denseflow):
    settings = EvalConfig(classical_refine=True, classical_shift_m=3.0, classical_yaw_deg=1.0)
    runner = refined(denseflow, settings)
    assert isinstance(runner, ClassicalRefinement) and runner.model is denseflow
    assert (runner.shift_range_m, runner.yaw_range_deg) == (3.0, 1.0)
    both = refined(denseflow, dataclasses.replace(settings, refine_passes=2))
    assert isinstance(both, ClassicalRefinement) and isinstance(both.model, PriorRefinement)
    with pytest.raises(ValueError, match=r"eval\.classical_shift_m must be > 0"):
        EvalConfig(classical_shift_m=0.0)
    with pytest.raises(ValueError, match="yaw_range_deg > 0"):
        ClassicalRefinement(denseflow, 2.0, float("nan"))
    batch = {k: v for k, v in plane_batch().items() if k != "yaw_range_deg"}
    with pytest.raises(KeyError, match=r"misses keys \['yaw_range_deg'\]"):
        runner(batch)


class PriorRecorder(torch.nn.Module):
    """A stand-in single-pass model whose one match is its camera and which records its prior."""

    def forward(self, batch):
        self.seen = {k: batch[k].clone() for k in ("camera_uv_prior", "yaw_deg_prior",
                                                    "shift_range_m", "yaw_range_deg")}  # fmt: skip
        uv = batch["camera_uv_prior"]
        return {
            "camera_uv_pred": uv + 50.0,  # never used: the search's pose is the finer one
            "camera_xy_pred": torch.zeros_like(uv),
            "yaw_deg_pred": batch["yaw_deg_prior"] + 30.0,
            "match_src_uv": uv[:, None].clone(),
            "match_dst_uv": uv[:, None] + 1.0,
            "match_weight": torch.ones(uv.shape[0], 1),
        }


def test_classical_rematch_matches_again_at_the_searched_pose():
    batch = plane_batch()
    recorder = PriorRecorder()
    runner = ClassicalRefinement(FixedEstimate((1.0, -0.8), 1.5), 2.0, 3.0, rematch=recorder)
    plain = ClassicalRefinement(FixedEstimate((1.0, -0.8), 1.5), 2.0, 3.0)
    with torch.inference_mode():
        out, searched = runner(batch), plain(batch)
    for key in ("camera_uv_pred", "yaw_deg_pred", "classical_score"):  # the search's pose
        assert torch.equal(out[key], searched[key])
    # The rematch pass was placed at the searched pose, inside the window.
    torch.testing.assert_close(recorder.seen["camera_uv_prior"], out["camera_uv_pred"])
    torch.testing.assert_close(recorder.seen["yaw_deg_prior"], out["yaw_deg_pred"])
    assert recorder.seen["shift_range_m"].item() == 2.0
    assert recorder.seen["yaw_range_deg"].item() == 3.0
    # Its source (the camera itself in that placement) moved to the batch's prior placement.
    torch.testing.assert_close(
        out["match_src_uv"][:, 0], batch["camera_uv_prior"].float(), atol=1e-3, rtol=0
    )
    assert out["match_weight"].shape == (1, 1)


def test_refined_rematches_with_the_single_pass_model_and_densifies_last(finematch):
    settings = EvalConfig(refine_passes=2, classical_refine=True, classical_rematch=True,
                          match_upsample=4)  # fmt: skip
    runner = refined(finematch, settings)
    assert isinstance(runner, DenseMatches) and runner.factor == 4
    classical = runner.model
    assert isinstance(classical, ClassicalRefinement) and classical.rematch is finematch
    assert isinstance(classical.model, PriorRefinement)
    # Without the classical refinement the rematch has nothing to start from: no effect.
    alone = refined(finematch, dataclasses.replace(settings, classical_refine=False))
    assert isinstance(alone, DenseMatches) and isinstance(alone.model, PriorRefinement)
    with pytest.raises(ValueError, match=r"eval\.match_upsample must be > 0"):
        EvalConfig(match_upsample=0)
