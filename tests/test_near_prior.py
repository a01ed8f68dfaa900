"""Training priors near the truth: redrawn within their bounds, declared, a known heading
kept, about the asked share of the items, and nothing drawn at fraction 0."""

import math

import pytest
import torch

from cvloc.config import TrainConfig
from cvloc.engine.near_prior import redraw_near_prior


def batch_of(B, known_heading_at=()):
    g = torch.Generator().manual_seed(1)
    yaw_range = torch.full((B,), 10.0)
    yaw_range[list(known_heading_at)] = 0.0
    return {
        "camera_uv_gt": torch.rand(B, 2, generator=g) * 256,
        "camera_uv_prior": torch.full((B, 2), 127.5),
        "yaw_deg_gt": torch.rand(B, generator=g) * 360 - 180,
        "yaw_deg_prior": torch.rand(B, generator=g) * 360 - 180,
        "m_per_px": torch.full((B,), 0.4),
        "shift_range_m": torch.full((B,), 20.0),
        "yaw_range_deg": yaw_range,
    }


def test_every_item_redrawn_within_its_declared_bounds():
    batch = batch_of(64, known_heading_at=(3,))
    out = redraw_near_prior(batch, 1.0, 5.0, 3.0, torch.Generator().manual_seed(0))
    offset_m = (out["camera_uv_prior"] - batch["camera_uv_gt"]).abs() * 0.4
    assert offset_m.max() <= 5.0 + 1e-4 and offset_m.max() > 4.0  # the whole range is used
    turn = (out["yaw_deg_prior"] - batch["yaw_deg_gt"] + 180) % 360 - 180
    others = torch.arange(64) != 3
    assert turn[others].abs().max() <= 3.0 + 1e-4
    assert torch.equal(out["shift_range_m"], torch.full((64,), 5.0))
    assert torch.equal(out["yaw_range_deg"][others], torch.full((63,), 3.0))
    # A known heading stays known: its prior heading (the truth) and its bound 0.
    assert out["yaw_deg_prior"][3] == batch["yaw_deg_prior"][3]
    assert out["yaw_range_deg"][3] == 0.0
    assert torch.equal(batch["shift_range_m"], torch.full((64,), 20.0))  # input untouched


def test_about_the_asked_share_is_redrawn():
    B, fraction = 4000, 0.3
    batch = batch_of(B)
    out = redraw_near_prior(batch, fraction, 5.0, 3.0, torch.Generator().manual_seed(2))
    redrawn = out["shift_range_m"] == 5.0
    sigma = math.sqrt(B * fraction * (1 - fraction))
    assert abs(int(redrawn.sum()) - B * fraction) < 4 * sigma
    kept = ~redrawn
    for key in ("camera_uv_prior", "yaw_deg_prior", "yaw_range_deg"):
        assert torch.equal(out[key][kept], batch[key][kept])


def test_fraction_zero_draws_nothing():
    batch = batch_of(8)
    assert redraw_near_prior(batch, 0.0, 5.0, 3.0, torch.Generator().manual_seed(0)) is batch


@pytest.mark.parametrize(
    "kwargs", [{"near_prior_fraction": 1.5}, {"near_prior_shift_m": 0.0},
               {"near_prior_yaw_deg": -1.0}],
)  # fmt: skip
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="near_prior"):
        TrainConfig(**kwargs)
