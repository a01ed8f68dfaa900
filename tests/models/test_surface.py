"""Surface Model: the top-down cumulative rule, visibility-aware fusion, height overfit."""

import math

import pytest
import torch
from test_denseflow import make_batch

from cvloc.losses_finematch import gt_cell_uv, height_loss, surface_height_targets
from cvloc.models import FineMatch, FineMatchConfig
from cvloc.models.encoders import EncoderConfig
from cvloc.models.surface import SurfaceConfig, SurfaceModel, surface_height, surface_steps


def fixed_surface(logits, feat_dim=3):
    """A SurfaceModel whose head outputs the given per-bin logits everywhere."""
    Z = len(logits)
    model = SurfaceModel(SurfaceConfig(num_height_bins=Z, max_height_m=2.0 * (Z - 1)), feat_dim)
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.tensor(logits))
    return model


def cumulative_mass(weights):
    """The top-down cumulative mass (1, Z, 1, 1) of a list of bin weights."""
    w = torch.tensor(weights, dtype=torch.float32).view(1, -1, 1, 1)
    return w.flip(1).cumsum(1).flip(1)


class TestSurfaceRule:
    @pytest.mark.parametrize(
        ("weights", "index"),
        [
            ([0.1, 0.1, 0.5, 0.2, 0.1], 2),  # unimodal: the median bin
            ([0.4, 0.0, 0.0, 0.6, 0.0], 3),  # a facade at 6 m above the street: the top
            ([0.6, 0.0, 0.0, 0.4, 0.0], 0),  # too little mass up there: the ground
            ([0.0, 0.0, 0.0, 0.0, 1.0], 4),
            ([1.0, 0.0, 0.0, 0.0, 0.0], 0),
        ],
    )
    def test_hard_rule_is_top_most_bin_reaching_threshold(self, weights, index):
        bins = torch.arange(5.0) * 2.0
        cumulative = cumulative_mass(weights)
        steps = surface_steps(cumulative, 0.5, None)
        expected = max(k for k in range(5) if cumulative[0, k, 0, 0] >= 0.5)
        assert expected == index
        assert surface_height(steps, bins).item() == pytest.approx(bins[index].item())
        # Steps are 1 exactly for the bins at or below the surface: the visibility mask.
        assert steps[0, :, 0, 0].tolist() == [1.0] * (index + 1) + [0.0] * (4 - index)

    def test_soft_rule_tends_to_hard_rule(self):
        bins = torch.arange(5.0) * 2.0
        cumulative = cumulative_mass([0.1, 0.1, 0.5, 0.2, 0.1])
        hard = surface_height(surface_steps(cumulative, 0.5, None), bins)
        errors = [
            (surface_height(surface_steps(cumulative, 0.5, t), bins) - hard).abs().item()
            for t in (0.3, 0.01)
        ]
        assert errors[0] > 0.01 and errors[1] < 1e-6

    def test_soft_height_is_differentiable(self):
        logits = torch.randn(2, 6, 3, 3, requires_grad=True)
        w = torch.softmax(logits, 1)
        steps = surface_steps(w.flip(1).cumsum(1).flip(1), 0.5, 0.05)
        surface_height(steps, torch.linspace(0, 10, 6)).sum().backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


class TestSurfaceModel:
    def test_config_validation(self):
        for bad in ({"num_height_bins": 0}, {"threshold": 1.0}, {"temperature": 0.0}):
            with pytest.raises(ValueError):
                SurfaceConfig(**bad)
        assert SurfaceConfig(num_height_bins=1).height_bins_m().tolist() == [0.0]
        assert SurfaceConfig(num_height_bins=3, max_height_m=4).height_bins_m().tolist() == [
            0.0,
            2.0,
            4.0,
        ]

    @pytest.mark.parametrize("training", [True, False])
    def test_cardinality(self, training):
        B, C, Z, H, W = 2, 5, 4, 6, 7
        model = SurfaceModel(SurfaceConfig(num_height_bins=Z), C).train(training)
        out = model(torch.randn(B, C, Z, H, W), torch.rand(B, Z, H, W) > 0.3)
        assert out.bev.shape == (B, C, H, W)
        assert out.logits.shape == (B, Z, H, W)
        assert out.height_m.shape == out.bev_valid.shape == out.column_valid.shape == (B, H, W)
        assert out.bev_valid.dtype == torch.bool
        assert (out.height_m >= 0).all() and (out.height_m <= model.bins_m[-1] + 1e-6).all()
        assert not out.bev[~out.bev_valid[:, None].expand_as(out.bev)].any()

    def test_flat_ground_is_the_ground_bin(self):
        model = SurfaceModel(SurfaceConfig(num_height_bins=1), 3)
        assert model.head is None and not list(model.parameters())
        volume, valid = torch.randn(1, 3, 1, 4, 4), torch.rand(1, 1, 4, 4) > 0.5
        out = model(volume, valid)
        assert (out.height_m == 0).all()
        assert torch.equal(out.bev_valid, valid[:, 0])
        assert torch.allclose(out.bev, volume[:, :, 0] * valid[:, 0, None])

    def test_fusion_drops_bins_above_the_surface(self):
        # Weights (0.3, 0.3, 0.2, 0.2): top-down mass (1, 0.7, 0.4, 0.2) -> surface at bin 1.
        model = fixed_surface([math.log(0.3), math.log(0.3), math.log(0.2), math.log(0.2)])
        model.eval()
        volume = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 3, 4, 2, 2).clone()
        out = model(volume, torch.ones(1, 4, 2, 2, dtype=torch.bool))
        assert torch.allclose(out.height_m, torch.full((1, 2, 2), 2.0))
        # Bins 0 and 1 only, weighted 0.3 / 0.3: feature 0.5; bins 2 and 3 never enter.
        assert torch.allclose(out.bev, torch.full((1, 3, 2, 2), 0.5))

    def test_fusion_drops_invalid_bins(self):
        model = fixed_surface([0.0, 0.0, 0.0, -9.0], feat_dim=2)  # top-down (1, 2/3, 1/3, 0)
        model.eval()
        volume = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 2, 4, 1, 2).clone()
        valid = torch.ones(1, 4, 1, 2, dtype=torch.bool)
        valid[0, 0, 0, 0] = False  # cell 0: the ground bin is not in the image
        valid[0, :2, 0, 1] = False  # cell 1: neither kept bin is: no feature at all
        out = model(volume, valid)
        assert out.bev_valid[0, 0].tolist() == [True, False]
        assert out.column_valid[0, 0].tolist() == [True, True]
        assert torch.allclose(out.bev[0, :, 0, 0], torch.ones(2))  # bin 1 alone
        assert (out.bev[0, :, 0, 1] == 0).all()


def test_surface_height_recovers_a_box():
    """Sixty steps of the height loss alone fit a box-shaped height map (hard rule)."""
    torch.manual_seed(0)
    cfg = FineMatchConfig(
        # Instance norm: no BatchNorm running statistics to lag behind in eval mode.
        encoder=EncoderConfig(base_channels=8, blocks_per_stage=(1, 1, 1), norm="instance"),
        surface=SurfaceConfig(num_height_bins=4, max_height_m=6.0, reduced_dim=4, hidden_dim=16),
        feat_dim=16,
        desc_dim=8,
    )
    model = FineMatch(cfg)
    batch = make_batch("panorama", B=1, sat=128)
    batch["camera_uv_prior"], batch["yaw_deg_prior"] = batch["camera_uv_gt"], batch["yaw_deg_gt"]
    box = torch.zeros(1, 128, 128)
    box[:, 40:88, 16:48] = 4.0  # a 9.6 x 6.4 m building, 4 m high, 3 m west of the camera
    batch["sat_height_m"] = box
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    grid_hw = (16, 16)
    target, inside = surface_height_targets(box, gt_cell_uv(batch, grid_hw, 8.0))
    for _ in range(60):
        pred = model(batch)
        mask = inside & (pred["column_valid"].flatten(1) > 0)
        loss = height_loss(pred["height_logits"], pred["height_bins_m"], target, mask, 0.75)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(batch)
    error = (pred["match_height_m"] - target).abs()[mask]
    assert mask.sum() > 100 and (target[mask] > 0).any() and (target[mask] == 0).any()
    assert (error < 1.0).float().mean() > 0.95, error
