"""Heading search: hypotheses cover the range, the winner is the most confident, the
match sources keep their ground pixels."""

import pytest
import torch
from test_denseflow import TINY, make_batch

from cvloc.evaluate import lift_matches_to_ground
from cvloc.geometry.pose import wrap_deg
from cvloc.localize_quality import match_quality
from cvloc.models import DenseFlow
from cvloc.models.heading_search import (
    HeadingSearch,
    heading_hypotheses,
    hypothesis_spacing_deg,
)


@pytest.mark.parametrize(
    ("center", "theta", "spacing"), [(0.0, 180.0, 20.0), (170.0, 40.0, 20.0), (-35.0, 95.0, 45.0)]
)
def test_hypotheses_cover_the_range_within_half_a_spacing(center, theta, spacing):
    hyps = torch.tensor(heading_hypotheses(center, theta, spacing), dtype=torch.float64)
    assert len(hyps) == -(-min(2 * theta, 360) // spacing)  # ceil
    assert ((hyps > -180) & (hyps <= 180)).all()
    # Every heading of the range, densely sampled, is within spacing / 2 of a hypothesis.
    headings = center + torch.linspace(-theta, theta, 2001, dtype=torch.float64)
    gaps = wrap_deg(headings[:, None] - hyps[None]).abs().min(1).values
    assert gaps.max() <= spacing / 2 + 1e-9


def test_small_ranges_run_the_prior_heading_only():
    assert heading_hypotheses(33.0, 10.0, 20.0) == [33.0]
    assert heading_hypotheses(33.0, 0.0, 20.0) == [33.0]
    assert hypothesis_spacing_deg(10.0) == 20.0
    assert hypothesis_spacing_deg(2.0) == 20.0  # never finer than 20 deg
    assert hypothesis_spacing_deg(40.0) == 45.0  # never coarser than 45 deg
    with pytest.raises(ValueError, match="spacing"):
        heading_hypotheses(0.0, 10.0, 0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DenseFlow(TINY).eval()


def test_within_the_trained_range_it_is_the_model_itself(model):
    batch = make_batch(B=2)
    with torch.inference_mode():
        plain = model(batch)
        searched = HeadingSearch(model, trained_range_deg=10.0)(batch)
    assert searched["heading_hypotheses"].tolist() == [1, 1]
    for key in ("camera_uv_pred", "yaw_deg_pred", "match_src_uv", "match_dst_uv", "match_weight"):
        torch.testing.assert_close(searched[key], plain[key], atol=1e-4, rtol=1e-5)
    assert "flow_iters" not in searched


def test_the_winner_is_the_most_confident_hypothesis(model):
    batch = make_batch(B=2, seed=3)
    batch["yaw_range_deg"] = torch.tensor([60.0, 180.0])
    with torch.inference_mode():
        searched = HeadingSearch(model, trained_range_deg=10.0, chunk=5)(batch)
    assert searched["heading_hypotheses"].tolist() == [6, 18]
    for b in range(2):
        # Independently: run every hypothesis of pair b on its own and score it.
        prior = float(batch["yaw_deg_prior"][b])
        hyps = heading_hypotheses(prior, float(batch["yaw_range_deg"][b]), 20.0)
        confidences, poses = [], []
        for h in hyps:
            one = {k: v[b : b + 1] for k, v in batch.items()}  # tensors and lists
            one["yaw_deg_prior"] = torch.tensor([h])
            one["yaw_range_deg"] = torch.tensor([10.0])
            with torch.inference_mode():
                pred = model(one)
            quality = match_quality(pred, one, "pinhole", (256, 64))
            confidences.append(float(quality.confidence[0]))
            poses.append(pred["yaw_deg_pred"][0])
        best = max(range(len(hyps)), key=confidences.__getitem__)
        assert float(searched["search_confidence"][b]) == pytest.approx(
            confidences[best], abs=1e-6
        )
        assert float(searched["yaw_deg_pred"][b]) == pytest.approx(float(poses[best]), abs=1e-3)


def test_winning_sources_keep_their_ground_pixels(model):
    batch = make_batch(B=1, seed=5)
    batch["yaw_range_deg"] = torch.tensor([180.0])
    search = HeadingSearch(model, trained_range_deg=10.0)
    with torch.inference_mode():
        searched = search(batch)
    # Which hypothesis won: the one whose own prediction has the winner's pose.
    hyps = heading_hypotheses(float(batch["yaw_deg_prior"][0]), 180.0, search.spacing_deg)
    for h in hyps:
        one = dict(batch, yaw_deg_prior=torch.tensor([h]), yaw_range_deg=torch.tensor([10.0]))
        with torch.inference_mode():
            pred = model(one)
        if torch.allclose(pred["yaw_deg_pred"], searched["yaw_deg_pred"], atol=1e-4):
            break
    else:
        pytest.fail("no hypothesis gives the searched pose")
    args = ("pinhole", (256, 64), batch["K"])
    common = (batch["sat_center_uv"], batch["m_per_px"], batch["camera_uv_prior"])
    height = batch["camera_height_m"]
    at_hyp, valid_hyp = lift_matches_to_ground(
        pred["match_src_uv"].double(), *common, torch.tensor([h]), height, *args
    )
    at_prior, valid_prior = lift_matches_to_ground(
        searched["match_src_uv"].double(), *common, batch["yaw_deg_prior"], height, *args
    )
    assert valid_hyp.sum() > 0
    assert torch.equal(valid_hyp, valid_prior)
    torch.testing.assert_close(at_prior[valid_prior], at_hyp[valid_hyp], atol=1e-3, rtol=0)
    torch.testing.assert_close(searched["match_dst_uv"], pred["match_dst_uv"])
