"""FineMatch: shapes, ablations, pixel-level correspondences, evaluation, checkpoints, training."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_denseflow import assert_keeps_a_known_heading, make_batch

import cvloc.evaluate as evaluate_mod
from cvloc.checkpoint import load_model, save_checkpoint
from cvloc.config import config_to_dict, load_config
from cvloc.engine.builders import build_model
from cvloc.evaluate import evaluate, lift_matches_to_ground
from cvloc.geometry.checks import ShapeError
from cvloc.models import FineMatch, FineMatchConfig
from cvloc.models.corr import alignment_camera_uv
from cvloc.models.encoders import EncoderConfig
from cvloc.models.matching import (
    NO_MATCH_SCORE,
    MatchingConfig,
    pose_from_matches,
    prior_window_mask,
)
from cvloc.models.refinement import move_sources
from cvloc.models.simrefiner import SimRefinerConfig
from cvloc.models.surface import SurfaceConfig
from cvloc.train import train

TINY = FineMatchConfig(
    encoder=EncoderConfig(base_channels=8, blocks_per_stage=(1, 1, 1)),
    surface=SurfaceConfig(num_height_bins=4, max_height_m=6.0, reduced_dim=4, hidden_dim=8),
    refiner=SimRefinerConfig(iters=2, local_channels=2, global_hidden=4, stats_hidden=8),
    feat_dim=16,
    desc_dim=16,
)
# Tiny widths for the shipped presets, so that the tests stay fast.
TINY_OVERRIDES = [
    "model.finematch.encoder.base_channels=8",
    "model.finematch.feat_dim=16",
    "model.finematch.desc_dim=16",
    "model.finematch.surface.num_height_bins=4",
    "model.finematch.surface.max_height_m=6.0",
    "model.finematch.refiner.iters=1",
]


def tiny(**changes):
    return dataclasses.replace(TINY, **changes)


class TestFineMatch:
    @pytest.mark.parametrize("camera_model", ["pinhole", "panorama"])
    def test_cardinality(self, camera_model):
        torch.manual_seed(0)
        B, sat = 2, 128
        out = FineMatch(TINY)(make_batch(camera_model, B=B, sat=sat))
        Hf = sat // 8
        N = Hf * Hf
        shapes = {
            "camera_uv_pred": (B, 2),
            "camera_xy_pred": (B, 2),
            "yaw_deg_pred": (B,),
            "match_src_uv": (B, N, 2),
            "match_dst_uv": (B, N, 2),
            "match_weight": (B, N),
            "match_height_m": (B, N),
            "surface_height_m": (B, 1, Hf, Hf),
            "height_logits": (B, 4, Hf, Hf),
            "height_bins_m": (4,),
            "similarity": (B, N, N),
            "coupling": (B, N + 1, N + 1),
            "bev_valid": (B, 1, Hf, Hf),
            "column_valid": (B, 1, Hf, Hf),
        }
        for key, shape in shapes.items():
            assert out[key].shape == shape, key
            assert torch.isfinite(out[key]).all(), key
        assert set(out["bev_valid"].unique().tolist()) <= {0.0, 1.0}
        assert out["bev_valid"].sum() > 0
        assert (out["match_weight"] >= 0).all() and (out["match_weight"] <= 1 + 1e-6).all()
        assert (out["match_weight"][out["bev_valid"].flatten(1) == 0] == 0).all()
        heights = out["match_height_m"]
        assert (heights >= 0).all() and (heights <= 6.0 + 1e-5).all()
        assert torch.equal(heights, out["surface_height_m"].flatten(1))

    def test_match_weight_is_the_pose_fits(self):
        # The plain fit weighs each match by its windowed coupling mass; the robust fit's
        # match_weight is that mass times the Welsch kernel of its residual to the pose.
        torch.manual_seed(0)
        plain = FineMatch(TINY).eval()
        robust_cfg = dataclasses.replace(TINY.matching, robust_iters=2, robust_sigma_m=1.0)
        robust = FineMatch(tiny(matching=robust_cfg)).eval()
        robust.load_state_dict(plain.state_dict())
        batch = make_batch("pinhole", B=2, sat=128)
        with torch.no_grad():
            a, b = plain(batch), robust(batch)
        torch.testing.assert_close(a["coupling"], b["coupling"])
        # The residual, independently: the BEV cells moved from the prior to the estimate.
        m = batch["m_per_px"]
        moved = move_sources(
            b["match_src_uv"], batch["sat_center_uv"], m, batch["camera_uv_prior"],
            batch["yaw_deg_prior"], b["camera_uv_pred"], b["yaw_deg_pred"],
        )  # fmt: skip
        r_m = (moved - b["match_dst_uv"]).norm(dim=-1) * m[:, None]
        expected = a["match_weight"] * torch.exp(-r_m.square() / 2.0)
        torch.testing.assert_close(b["match_weight"], expected, atol=1e-5, rtol=1e-3)
        assert (b["match_weight"] < a["match_weight"] - 1e-3).any()  # some leave the fit

    def test_robust_fit_starts_from_the_alignment(self):
        # matching.robust_start="alignment": the pose is the robust fit of the same matches
        # started from the model's own align_uv_pred; without the prior's bounds there is
        # no alignment and the fit starts from the weighted fit.
        torch.manual_seed(0)
        plain = FineMatch(TINY).eval()
        robust = dataclasses.replace(TINY.matching, robust_iters=2, robust_sigma_m=1.0)
        started = dataclasses.replace(robust, robust_start="alignment")
        model, from_fit = FineMatch(tiny(matching=started)), FineMatch(tiny(matching=robust))
        model.load_state_dict(plain.state_dict())
        from_fit.load_state_dict(plain.state_dict())
        batch = make_batch("pinhole", B=2, sat=128)
        geo = [batch[k] for k in ("sat_center_uv", "m_per_px", "camera_uv_prior", "yaw_deg_prior")]
        with torch.no_grad():
            a, b = plain(batch), model.eval()(batch)
            xy, yaw, uv, w = pose_from_matches(
                a["match_src_uv"], a["match_dst_uv"], a["match_weight"], *geo,
                config=started, start_uv=a["align_uv_pred"],
            )  # fmt: skip
            torch.testing.assert_close(b["camera_xy_pred"], xy)
            moved = (a["align_uv_pred"] - batch["camera_uv_prior"]).norm(dim=-1)
            unbounded = {k: v for k, v in batch.items() if k != "shift_range_m"}
            unwindowed = dataclasses.replace(started, prior_window=False)
            no_window = FineMatch(tiny(matching=unwindowed))
            no_window.load_state_dict(plain.state_dict())
            c = no_window.eval()(unbounded)
            from_fit_unwindowed = FineMatch(
                tiny(matching=dataclasses.replace(robust, prior_window=False))
            )
            from_fit_unwindowed.load_state_dict(plain.state_dict())
            d = from_fit_unwindowed.eval()(unbounded)
        assert (moved > 0).any()  # the start is not the prior itself
        for key, value in (("camera_uv_pred", uv), ("yaw_deg_pred", yaw), ("match_weight", w)):
            torch.testing.assert_close(b[key], value)
        assert not torch.allclose(b["camera_uv_pred"], from_fit(batch)["camera_uv_pred"])
        torch.testing.assert_close(c["camera_uv_pred"], d["camera_uv_pred"])

    def test_visibility_head_scales_the_match_weights(self):
        # The head's probability multiplies each cell's weight before the (plain) fit, and
        # learns from its own target only: the pose sends it no gradient.
        torch.manual_seed(0)
        plain = FineMatch(TINY).eval()
        seen = FineMatch(tiny(visibility=True, visibility_hidden=4)).eval()
        missing, unexpected = seen.load_state_dict(plain.state_dict(), strict=False)
        assert missing and all(k.startswith("visibility.") for k in missing) and not unexpected
        torch.nn.init.normal_(seen.visibility.net[-1].weight, std=10.0)  # cells now differ
        torch.nn.init.zeros_(seen.visibility.net[-1].bias)
        batch = make_batch("pinhole", B=2, sat=128)
        with torch.no_grad():
            a, b = plain(batch), seen(batch)
        p = b["visibility"]
        assert p.shape == (2, 1, 16, 16) and p.std() > 0.01 and ((p > 0) & (p < 1)).all()
        expected = a["match_weight"] * p.flatten(1)
        torch.testing.assert_close(b["match_weight"], expected, rtol=1e-5, atol=1e-7)
        assert "visibility" not in a
        seen.train()
        seen(batch)["camera_xy_pred"].sum().backward()
        assert all(q.grad is None for q in seen.visibility.parameters())

    def test_alignment_is_the_best_rigid_shift_over_the_windowed_similarity(self):
        # align_uv_pred: template matching of the seen BEV cells over the refined
        # similarity, entries outside the prior window counting 0 (cvloc.models.corr).
        torch.manual_seed(0)
        model = FineMatch(TINY).eval()
        batch = make_batch("pinhole", B=2, sat=128)
        with torch.no_grad():
            out = model(batch)
            sim = out["similarity"]
            windowed = torch.where(sim > NO_MATCH_SCORE / 2, sim, 0.0)
            expected = alignment_camera_uv(
                windowed, out["bev_valid"][:, 0], batch["camera_uv_prior"],
                batch["shift_range_m"], batch["m_per_px"], 8,
            )  # fmt: skip
        torch.testing.assert_close(out["align_uv_pred"], expected)
        # Whole cells: the shift is a multiple of the stride; without bounds, no alignment.
        shift = (out["align_uv_pred"] - batch["camera_uv_prior"]) / 8
        torch.testing.assert_close(shift, shift.round())
        bound = torch.ceil(batch["shift_range_m"] / (batch["m_per_px"] * 8))  # cells, per axis
        assert (shift.abs() <= bound[:, None]).all()
        # align_scores: every shift's score, [dy + r, dx + r]; the centre (no shift) is the
        # mean windowed similarity of the seen cells with their own satellite cells.
        r = int(bound.max())
        scores = out["align_scores"]
        assert scores.shape == (2, 2 * r + 1, 2 * r + 1)
        w = out["bev_valid"].flatten(1)
        own = (windowed.diagonal(dim1=1, dim2=2) * w).sum(1) / w.sum(1)
        torch.testing.assert_close(scores[:, r, r], own, rtol=1e-5, atol=1e-5)
        at_best = scores[torch.arange(2), shift[:, 1].long() + r, shift[:, 0].long() + r]
        torch.testing.assert_close(at_best, scores.flatten(1).amax(1))
        no_bounds = {k: v for k, v in batch.items() if k != "shift_range_m"}
        unwindowed = dataclasses.replace(TINY.matching, prior_window=False)
        no_window = FineMatch(tiny(matching=unwindowed))
        no_window.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert "align_uv_pred" not in no_window.eval()(no_bounds)

    @pytest.mark.parametrize("visibility", [False, True])
    def test_heading_alignment_scores_equal_a_forward_per_heading(self, visibility):
        # The shared entry point (encoders once, no dustbin or pose fit) must give each
        # heading's align_scores of a full forward at that prior heading.
        torch.manual_seed(0)
        model = FineMatch(tiny(visibility=visibility)).eval()
        batch = make_batch("pinhole", B=2, sat=128)
        yaws = [batch["yaw_deg_prior"] + turn for turn in (-6.0, 0.0, 4.0)]
        with torch.no_grad():
            scores = model.heading_alignment_scores(batch, yaws)
            each = [model(dict(batch, yaw_deg_prior=y))["align_scores"] for y in yaws]
        torch.testing.assert_close(scores, torch.stack(each, dim=1))
        assert not torch.allclose(scores[:, 0], scores[:, 1])  # the heading matters
        no_bounds = {k: v for k, v in batch.items() if k != "shift_range_m"}
        with pytest.raises(KeyError, match="shift_range_m"):
            model.heading_alignment_scores(no_bounds, yaws)
        with pytest.raises(ValueError, match="at least one heading"):
            model.heading_alignment_scores(batch, [])

    def test_stride_4(self):
        torch.manual_seed(0)
        out = FineMatch(tiny(stride=4))(make_batch("pinhole", B=1, sat=64))
        N = (64 // 4) ** 2
        assert out["coupling"].shape == (1, N + 1, N + 1)
        assert out["surface_height_m"].shape == (1, 1, 16, 16)
        # BEV cell centres on the stride-4 grid, in satellite pixels.
        assert out["match_src_uv"][0, 1].tolist() == [5.5, 1.5]
        assert torch.isfinite(out["camera_uv_pred"]).all()

    def test_dense_ground_features(self):
        # The sharper projection (stride-4 ground encoder, 2 x 2 points per cell) keeps
        # every weight's shape and the outputs' shapes; invalid settings are refused.
        torch.manual_seed(0)
        coarse = FineMatch(TINY).eval()
        dense = FineMatch(tiny(ground_stride=4, bev_samples=2)).eval()
        dense.load_state_dict(coarse.state_dict())
        assert (coarse.ground_offset_px, dense.ground_offset_px) == (0.0, 2.0)
        batch = make_batch("pinhole", B=1, sat=64)
        with torch.no_grad():
            a, b = coarse(batch), dense(batch)
        for key in ("coupling", "surface_height_m", "camera_uv_pred", "column_valid"):
            assert a[key].shape == b[key].shape and torch.isfinite(b[key]).all(), key
        assert not torch.allclose(a["similarity"], b["similarity"])
        for bad in ({"ground_stride": 2}, {"stride": 4, "ground_stride": 8}, {"bev_samples": 0}):
            with pytest.raises(ValueError):
                tiny(**bad)

    @pytest.mark.parametrize(
        "changes",
        [
            {"surface": SurfaceConfig(num_height_bins=1)},  # w/o Surface Model
            {"refiner": dataclasses.replace(TINY.refiner, mode="none")},  # w/o SimRefiner
            {"refiner": dataclasses.replace(TINY.refiner, mode="local")},
            {"refiner": dataclasses.replace(TINY.refiner, mode="global")},
        ],
    )
    def test_ablations_run(self, changes):
        full = sum(p.numel() for p in FineMatch(TINY).parameters())
        model = FineMatch(tiny(**changes))
        assert sum(p.numel() for p in model.parameters()) < full
        out = model(make_batch("panorama", B=1, sat=64))
        assert torch.isfinite(out["camera_uv_pred"]).all()
        if "surface" in changes:
            assert (out["match_height_m"] == 0).all()

    def test_prior_window_masks_the_coupling(self):
        torch.manual_seed(0)
        batch = make_batch("pinhole", B=2, sat=128)
        batch["shift_range_m"] = torch.tensor([5.0, 0.0])  # the second: undeclared
        batch["yaw_range_deg"] = torch.tensor([10.0, 10.0])
        model = FineMatch(TINY).eval()
        out = model(batch)
        window = prior_window_mask(
            (16, 16),
            8,
            batch["camera_uv_prior"],
            batch["m_per_px"],
            batch["shift_range_m"],
            batch["yaw_range_deg"],
        )
        assert not window[0].all() and window[1].all()
        assert (out["coupling"][:, :-1, :-1][~window] == 0).all()
        assert (out["similarity"][~window] == NO_MATCH_SCORE).all()
        # The switch off matches globally; a batch without the bounds is refused.
        off = FineMatch(tiny(matching=MatchingConfig(prior_window=False))).eval()
        off.load_state_dict(model.state_dict())
        assert (off(batch)["coupling"][0, :-1, :-1][~window[0]] > 0).any()
        with pytest.raises(KeyError, match="prior_window"):
            model({k: v for k, v in batch.items() if k != "shift_range_m"})

    def test_ransac_solver_option(self):
        model = FineMatch(tiny(matching=MatchingConfig(solver="ransac", ransac_iters=8)))
        out = model.eval()(make_batch("pinhole", B=2, sat=64))
        assert torch.isfinite(out["camera_uv_pred"]).all()

    def test_rejects_bad_batches(self):
        model = FineMatch(TINY)
        batch = make_batch("pinhole", B=1, sat=64)
        with pytest.raises(KeyError):
            model({k: v for k, v in batch.items() if k != "camera_uv_prior"})
        with pytest.raises(ShapeError):
            model({**batch, "satellite": torch.rand(1, 3, 60, 64)})
        with pytest.raises(ValueError):
            FineMatchConfig(stride=16)


def independent_projection(batch, src_uv, heights, camera_model):
    """Ground pixels of world points (src, h), from design.md's formulas, not the library's."""
    b = 0
    center, m = batch["sat_center_uv"][b].double(), batch["m_per_px"][b].double()
    x = (src_uv[b, :, 0].double() - center[0]) * m
    y = -(src_uv[b, :, 1].double() - center[1]) * m
    cam = batch["camera_uv_prior"][b].double()
    cx, cy = (cam[0] - center[0]) * m, -(cam[1] - center[1]) * m
    yaw = math.radians(float(batch["yaw_deg_prior"][b]))
    dx, dy, dz = x - cx, y - cy, heights[b].double() - float(batch["camera_height_m"][b])
    right = dx * math.cos(yaw) - dy * math.sin(yaw)  # camera x
    down = -dz  # camera y
    forward = dx * math.sin(yaw) + dy * math.cos(yaw)  # camera z
    if camera_model == "pinhole":
        K = batch["K"][b].double()
        u = K[0, 0] * right / forward + K[0, 2]
        v = K[1, 1] * down / forward + K[1, 2]
        return torch.stack([u, v], -1)
    Hg, Wg = batch["ground"].shape[-2:]
    phi = torch.rad2deg(torch.atan2(right, forward))
    el = torch.rad2deg(torch.atan2(-down, torch.hypot(right, forward)))
    return torch.stack([(phi + 180) / 360 * Wg - 0.5, (90 - el) / 180 * Hg - 0.5], -1)


@pytest.mark.parametrize("camera_model", ["pinhole", "panorama"])
def test_lifted_correspondences_reproject_consistently(camera_model):
    torch.manual_seed(1)
    model = FineMatch(TINY).eval()
    with torch.no_grad():  # spread the predicted surface heights over the bins
        model.surface.head[-1].bias.copy_(torch.tensor([0.0, 1.0, 0.5, 0.2]))
        model.surface.head[-1].weight.normal_(0, 0.5)
    batch = make_batch(camera_model, B=1, sat=128)
    with torch.no_grad():
        pred = model(batch)
    heights = pred["match_height_m"]
    assert heights.unique().numel() > 1
    ground = batch["ground"]
    ground_uv, valid = lift_matches_to_ground(
        pred["match_src_uv"],
        batch["sat_center_uv"],
        batch["m_per_px"],
        batch["camera_uv_prior"],
        batch["yaw_deg_prior"],
        batch["camera_height_m"],
        camera_model,
        (ground.shape[-1], ground.shape[-2]),
        batch["K"],
        heights,
    )
    expected = independent_projection(batch, pred["match_src_uv"], heights, camera_model)
    assert valid[0].sum() >= 10
    assert torch.allclose(ground_uv[0][valid[0]].double(), expected[valid[0]], atol=1e-3)


def test_evaluate_lifts_matches_at_the_predicted_height(monkeypatch):
    torch.manual_seed(0)
    batch = make_batch("panorama", B=2, sat=64)
    items = []
    for b in range(2):
        item = {k: v[b] for k, v in batch.items()}
        item["gt_sat_uv_grd"] = 64 * torch.rand(*batch["ground"].shape[-2:], 2)
        items.append(item)
    seen = []
    original = evaluate_mod.batch_match_precision

    def spy(pred, batch, heights_m=None):
        seen.append(heights_m)
        return original(pred, batch, heights_m)

    monkeypatch.setattr(evaluate_mod, "batch_match_precision", spy)
    result = evaluate(FineMatch(TINY), items, batch_size=2, progress=False)
    assert {"match_precision_5px", "match_precision_15px"} <= result.keys()
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (2, 64)
    assert np.isfinite(result["location_mean_m"])


@pytest.mark.parametrize("preset", ["finematch-synth-kitti-small", "finematch-synth-vigor-small"])
def test_presets_build_finematch_and_load_model_restores_it(preset, tmp_path):
    cfg = load_config(preset, TINY_OVERRIDES)
    assert cfg.model.method == "finematch"
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert isinstance(model, FineMatch)
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(cfg), "step": 3})
    loaded, loaded_cfg = load_model(path)
    assert isinstance(loaded, FineMatch) and loaded_cfg == cfg and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_training_lowers_the_loss(tmp_path):
    """A few steps of ``cvloc.train.train`` on 4 synthetic pairs lower the FineMatch loss.

    The pose weight is lowered: at initialisation the matches are random, so is the pose
    they give, and its VCE (tens of metres, fluctuating) would hide the trend of a dozen
    steps.
    """
    cfg = load_config(
        "finematch-synth-kitti-small",
        [
            *TINY_OVERRIDES,
            "data.num_train=4",
            "data.num_val=1",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.resample_each_epoch=false",
            "data.cache_train=true",
            "train.epochs=6",
            "train.lr=3e-3",
            "train.optimizer=adam",
            "train.schedule=constant",
            "train.warmup_steps=0",
            "train.num_threads=1",
            "train.log_every=1",
            "train.image_every=6",
            "train.finematch.pose_weight=0.05",
            f"train.out_dir={tmp_path}",
        ],
    )
    parts = {}
    result = train(cfg, lambda step, values: parts.__setitem__(step, values))
    assert result.state.step == 12 and isinstance(result.model, FineMatch)
    loss = [parts[s]["loss"] for s in range(1, 13)]
    matching = [parts[s]["matching"] for s in range(1, 13)]
    assert np.mean(loss[-4:]) < 0.95 * np.mean(loss[:4]), loss
    assert np.mean(matching[-4:]) < np.mean(matching[:4]), matching
    assert math.isfinite(result.state.metrics["location_median_m"])
    assert (tmp_path / "last.pt").is_file()


@pytest.mark.parametrize("solver", ["procrustes", "ransac"])
def test_a_known_heading_is_kept(solver):
    torch.manual_seed(0)
    matching = dataclasses.replace(TINY.matching, solver=solver)
    assert_keeps_a_known_heading(FineMatch(dataclasses.replace(TINY, matching=matching)).eval())
