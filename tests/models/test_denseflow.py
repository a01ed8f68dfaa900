import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from cvloc.geometry.bev import warp_to_bev
from cvloc.geometry.cameras import intrinsics_from_hfov
from cvloc.geometry.checks import ShapeError
from cvloc.geometry.geo import pixel_to_world_xy
from cvloc.geometry.pose import world_to_cam_from_pose
from cvloc.models import DenseFlow, DenseFlowConfig
from cvloc.models.encoders import EncoderConfig
from cvloc.models.update import UpdateConfig

TINY = DenseFlowConfig(
    encoder=EncoderConfig(base_channels=8, blocks_per_stage=(1, 1, 1)),
    update=UpdateConfig(corr_dims=(16, 12), flow_dims=(8, 8), motion_dim=16, head_dim=16),
    out_dim=16,
    hidden_dim=12,
    context_dim=12,
    corr_levels=3,
    corr_radius=2,
    iters=2,
)


def make_batch(camera_model="pinhole", B=2, sat=128, seed=0):
    """A batch per cvloc.data.batch with random images and plausible geometry."""
    g = torch.Generator().manual_seed(seed)
    hg, wg = (64, 256) if camera_model == "pinhole" else (64, 128)
    if camera_model == "pinhole":
        K = intrinsics_from_hfov(90.0, wg, hg).expand(B, 3, 3).clone()
    else:
        K = torch.zeros(B, 3, 3)
    m_per_px = torch.full((B,), 0.2)
    center = torch.full((B, 2), (sat - 1) / 2)
    uv_gt = center + 4 * torch.randn(B, 2, generator=g)
    yaw_gt = 40 * torch.randn(B, generator=g)
    height = torch.full((B,), 1.65)
    return {
        "name": [f"s{i}" for i in range(B)],
        "ground": torch.rand(B, 3, hg, wg, generator=g),
        "satellite": torch.rand(B, 3, sat, sat, generator=g),
        "camera_model": [camera_model] * B,
        "K": K,
        "world_to_cam": world_to_cam_from_pose(
            pixel_to_world_xy(uv_gt, center, m_per_px), yaw_gt, height
        ),
        "camera_height_m": height,
        "m_per_px": m_per_px,
        "sat_center_uv": center,
        "camera_uv_gt": uv_gt,
        "yaw_deg_gt": yaw_gt,
        "camera_uv_prior": uv_gt + 5 * torch.randn(B, 2, generator=g),
        "yaw_deg_prior": yaw_gt + 5 * torch.randn(B, generator=g),
        "shift_range_m": torch.full((B,), 5.0),
        "yaw_range_deg": torch.full((B,), 10.0),
    }


def _check_outputs(out, B, Hs, Ws, iters):
    assert len(out["flow_iters"]) == iters and len(out["confidence_iters"]) == iters
    for flow, conf in zip(out["flow_iters"], out["confidence_iters"], strict=True):
        assert flow.shape == (B, 2, Hs, Ws) and flow.dtype == torch.float32
        assert conf.shape == (B, 1, Hs, Ws)
        assert conf.min() >= 0 and conf.max() <= 1
    assert out["bev_valid"].shape == (B, 1, Hs, Ws)
    assert set(out["bev_valid"].unique().tolist()) <= {0.0, 1.0}
    assert out["camera_uv_pred"].shape == (B, 2) and out["camera_xy_pred"].shape == (B, 2)
    assert out["yaw_deg_pred"].shape == (B,)
    assert out["match_src_uv"].shape == (B, Hs * Ws, 2)
    assert out["match_dst_uv"].shape == (B, Hs * Ws, 2)
    assert out["match_weight"].shape == (B, Hs * Ws)
    for key in ("camera_uv_pred", "yaw_deg_pred", "match_weight"):
        assert torch.isfinite(out[key]).all()


class TestDenseFlow:
    @pytest.mark.parametrize("camera_model", ["pinhole", "panorama"])
    def test_cardinality(self, camera_model):
        torch.manual_seed(0)
        batch = make_batch(camera_model)
        before = dict(batch)
        out = DenseFlow(TINY)(batch)
        _check_outputs(out, 2, 128, 128, TINY.iters)
        # A pinhole sees a wedge of the ground; a panorama all around.
        visible = out["bev_valid"].mean()
        assert 0.05 < visible < 0.5 if camera_model == "pinhole" else visible > 0.95
        # A new dict; the batch is untouched.
        assert batch.keys() == before.keys()
        assert all(batch[k] is before[k] for k in batch)

    def test_gradients_reach_every_parameter(self):
        torch.manual_seed(0)
        model = DenseFlow(TINY)
        batch = make_batch()
        out = model(batch)
        loss = sum(f.abs().mean() for f in out["flow_iters"])
        loss = loss + sum(c.mean() for c in out["confidence_iters"])
        loss = loss + (out["camera_xy_pred"] - 1.0).abs().sum() + out["yaw_deg_pred"].abs().sum()
        loss.backward()
        no_grad = [
            name
            for name, p in model.named_parameters()
            if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().max() == 0
        ]
        assert no_grad == []

    @pytest.mark.parametrize(
        "switch", ["use_ground_projection", "use_refine_block", "use_confidence"]
    )
    def test_ablation_switches(self, switch):
        config = dataclasses.replace(TINY, **{switch: False})
        model = DenseFlow(config)
        out = model(make_batch())
        _check_outputs(out, 2, 128, 128, TINY.iters)
        if switch == "use_ground_projection":
            assert out["bev_valid"].min() == 1
        if switch == "use_refine_block":
            assert not list(model.refine.parameters())
        if switch == "use_confidence":
            assert model.update.confidence_head is None
            assert all(c.min() == 1 for c in out["confidence_iters"])
            torch.testing.assert_close(out["match_weight"], out["bev_valid"].flatten(1))

    def test_pose_stride_and_config_untouched(self):
        config = dataclasses.replace(TINY, pose_stride=4, iters=1)
        snapshot = dataclasses.asdict(config)
        model = DenseFlow(config)
        out = model(make_batch(B=1))
        assert out["match_src_uv"].shape == (1, 32 * 32, 2)
        assert dataclasses.asdict(model.config) == snapshot

    def test_stride_4(self):
        # Dilated encoders: a 1/4-resolution feature grid, flows still at full resolution.
        torch.manual_seed(0)
        model = DenseFlow(dataclasses.replace(TINY, stride=4))
        out = model(make_batch())
        _check_outputs(out, 2, 128, 128, TINY.iters)
        assert out["feature_valid"].shape == (2, 32, 32)
        assert out["correlation"].shape == (2, 32 * 32, 32 * 32)
        # The convex upsampling mask has 9 s^2 channels: only it differs from stride 8.
        own8 = DenseFlow(TINY).state_dict()
        differ = [k for k, v in model.state_dict().items() if v.shape != own8[k].shape]
        assert differ == ["update.mask_head.2.weight", "update.mask_head.2.bias"]

    def test_dense_ground_features_read_as_trained(self):
        # A stride-8 model's weights in a model with ground_stride 4: where the stride-8
        # ground map has its cells (the pixel-centre convention, 8 j + 3.5), the denser map
        # read with the model's offset gives the same features.
        torch.manual_seed(0)
        coarse = DenseFlow(TINY).eval()
        dense = DenseFlow(dataclasses.replace(TINY, ground_stride=4, bev_samples=2)).eval()
        dense.load_state_dict(coarse.state_dict())
        assert (coarse.ground_offset_px, dense.ground_offset_px) == (0.0, 2.0)
        ground = make_batch()["ground"]
        f8, f4 = coarse.ground_encoder(ground), dense.ground_encoder(ground)
        assert f4.shape[-2:] == (2 * f8.shape[-2], 2 * f8.shape[-1])
        v, u = torch.meshgrid(
            torch.arange(1, 7) * 8 + 3.5, torch.arange(1, 31) * 8 + 3.5, indexing="ij"
        )
        uv = torch.stack([u, v], -1)[None, None].expand(2, 1, 6, 30, 2)
        valid = torch.ones(2, 1, 6, 30, dtype=torch.bool)
        size = (ground.shape[-1], ground.shape[-2])
        expected = warp_to_bev(f8, uv, valid, size)
        got = warp_to_bev(f4, uv, valid, size, feature_offset_px=dense.ground_offset_px)
        assert torch.allclose(got, expected, atol=1e-5)
        # Half a dense cell off, the features differ: the offset is not a no-op.
        assert not torch.allclose(warp_to_bev(f4, uv, valid, size), expected, atol=1e-3)
        _check_outputs(dense(make_batch()), 2, 128, 128, TINY.iters)

    def test_geometry_stays_float32_under_autocast(self):
        # mixed_precision autocasts on CUDA only; an outer CPU bfloat16 autocast exercises
        # the same dtype plumbing: geometry, correlation, upsampling and pose in float32.
        torch.manual_seed(0)
        model = DenseFlow(dataclasses.replace(TINY, iters=1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(make_batch())
        _check_outputs(out, 2, 128, 128, 1)
        for key in ("camera_uv_pred", "yaw_deg_pred", "match_dst_uv", "match_weight"):
            assert out[key].dtype == torch.float32

    def test_missing_keys(self):
        batch = make_batch()
        del batch["K"], batch["yaw_deg_prior"]
        with pytest.raises(KeyError, match=r"\['K', 'yaw_deg_prior'\]"):
            DenseFlow(TINY)(batch)

    def test_does_not_read_ground_truth(self):
        batch = make_batch()
        for key in ("world_to_cam", "camera_uv_gt", "yaw_deg_gt"):
            del batch[key]
        DenseFlow(dataclasses.replace(TINY, iters=1))(batch)

    @pytest.mark.parametrize(
        ("key", "value", "match"),
        [
            ("ground", torch.rand(2, 1, 64, 256), "ground"),
            ("satellite", torch.rand(2, 3, 100, 128), "satellite: height and width"),
            ("satellite", torch.rand(3, 3, 128, 128), "satellite"),
            ("ground", torch.rand(2, 3, 60, 256), "ground: height and width"),
        ],
    )
    def test_wrong_shapes(self, key, value, match):
        batch = make_batch()
        batch[key] = value
        with pytest.raises(ShapeError, match=match):
            DenseFlow(TINY)(batch)

    def test_mixed_camera_models(self):
        batch = make_batch()
        batch["camera_model"] = ["pinhole", "panorama"]
        with pytest.raises(ValueError, match="one model per batch"):
            DenseFlow(TINY)(batch)


class TestDenseFlowConfig:
    def test_defaults_are_the_paper(self):
        c = DenseFlowConfig()
        assert (c.out_dim, c.hidden_dim, c.context_dim) == (256, 128, 128)
        assert (c.corr_levels, c.corr_radius, c.iters, c.stride) == (4, 4, 12, 8)
        assert c.encoder.base_channels == 64 and c.encoder.blocks_per_stage == (2, 2, 2)

    def test_structured_config(self):
        conf = OmegaConf.merge(
            OmegaConf.structured(DenseFlowConfig),
            OmegaConf.from_dotlist(
                ["iters=3", "encoder.base_channels=32", "use_confidence=false"]
            ),
        )
        config = OmegaConf.to_object(conf)
        assert config == dataclasses.replace(
            DenseFlowConfig(),
            iters=3,
            use_confidence=False,
            encoder=EncoderConfig(base_channels=32),
        )

    @pytest.mark.parametrize(
        "override",
        [
            {"stride": 16},
            {"iters": 0},
            {"pose_stride": 0},
            {"amp_dtype": "int8"},
            {"ground_stride": 2},
            {"stride": 4, "ground_stride": 8},
            {"bev_samples": 0},
        ],
    )
    def test_exception(self, override):
        with pytest.raises(ValueError):
            DenseFlowConfig(**override)

    def test_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            DenseFlowConfig().iters = 3


def test_correlation_only_forward():
    torch.manual_seed(0)
    model = DenseFlow(TINY).eval()
    batch = make_batch(B=2, sat=128)
    out = model(batch, correlation_only=True)
    assert set(out) == {
        "correlation",
        "feature_valid",
        "camera_uv_pred",
        "camera_xy_pred",
        "yaw_deg_pred",
    }
    assert out["correlation"].shape == (2, 16 * 16, 16 * 16)
    assert out["feature_valid"].shape == (2, 16, 16) and out["feature_valid"].any()
    torch.testing.assert_close(out["yaw_deg_pred"], batch["yaw_deg_prior"])
    # The pose is the prior moved by whole cells (8 px), within the prior's noise reach.
    shift = (out["camera_uv_pred"] - batch["camera_uv_prior"]) / 8
    torch.testing.assert_close(shift, shift.round())
    torch.testing.assert_close(
        out["camera_xy_pred"],
        pixel_to_world_xy(out["camera_uv_pred"], batch["sat_center_uv"], batch["m_per_px"]),
    )


def test_align_pose_finds_a_known_shift():
    # Every BEV cell correlates best with the satellite cell 2 columns west and 1 row south:
    # the camera moves by (-16, +8) px from the prior.
    model = DenseFlow(TINY)
    B, H, W = 1, 8, 8
    corr = torch.zeros(B, H * W, H * W)
    for i in range(H):
        for j in range(W):
            if j - 2 >= 0 and i + 1 < H:
                corr[0, i * W + j, (i + 1) * W + j - 2] = 1.0
    valid = torch.ones(B, H, W, dtype=torch.bool)
    batch = {
        "camera_uv_prior": torch.tensor([[30.0, 40.0]]),
        "shift_range_m": torch.tensor([8.0]),  # per axis: 8 / (0.5 x 8) -> radius 2 cells
        "m_per_px": torch.tensor([0.5]),
    }
    uv = model.align_pose(corr, valid, batch)
    torch.testing.assert_close(uv, torch.tensor([[14.0, 48.0]]))
    # Out of reach: a shift of 2 columns is not searched with radius 1.
    batch["shift_range_m"] = torch.tensor([4.0])  # radius 1
    assert not torch.allclose(model.align_pose(corr, valid, batch), uv)


def test_a_known_heading_is_kept_and_an_unknown_one_estimated():
    torch.manual_seed(0)
    assert_keeps_a_known_heading(DenseFlow(TINY).eval())


def assert_keeps_a_known_heading(model):
    """yaw_range_deg 0 declares the prior heading exact (VIGOR aligned): the pose keeps it,
    while the other pair of the batch (+-10 deg) gets its heading estimated."""
    batch = make_batch(B=2, seed=4)
    batch["yaw_range_deg"] = torch.tensor([0.0, 10.0])
    with torch.inference_mode():
        out = model(batch)
    assert float(out["yaw_deg_pred"][0]) == pytest.approx(
        float(batch["yaw_deg_prior"][0]), abs=1e-4
    )
    assert float(out["yaw_deg_pred"][1]) != pytest.approx(
        float(batch["yaw_deg_prior"][1]), abs=1e-4
    )
