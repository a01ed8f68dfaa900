"""Presets, prior-noise protocols, epochs, splits and determinism of the synthetic world."""

import dataclasses

import numpy as np
import pytest
import torch

from cvloc.data.synthetic import PRESETS, PriorProtocol, SynthPreset, generate_pair
from cvloc.data.synthetic.generate import sample_prior, wrap_deg
from cvloc.data.synthetic.noise import stable_seed
from cvloc.data.synthetic.world import CAMERA_SLACK_M, build_world, scene_extent
from cvloc.geometry.cameras import scale_intrinsics

KITTI_K = torch.tensor(
    [[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]], dtype=torch.float64
)


def gt_offset_m(meta):
    """GT position minus prior position in metres (x east, y north)."""
    m = meta["m_per_px"]
    (u, v), (pu, pv) = meta["camera_uv"], meta["prior"]["camera_uv"]
    return np.array([(u - pu) * m, -(v - pv) * m])


def heading_frame(offset, yaw_deg):
    yaw = np.radians(yaw_deg)
    forward = np.stack([np.sin(yaw), np.cos(yaw)], -1)
    right = np.stack([np.cos(yaw), -np.sin(yaw)], -1)
    return np.sum(offset * forward, -1), np.sum(offset * right, -1)


class TestPresets:
    def test_names_and_models(self):
        assert set(PRESETS) == {"kitti", "kitti-small", "vigor", "vigor-small"}
        for p in PRESETS.values():
            assert isinstance(p, SynthPreset)
            with pytest.raises(dataclasses.FrozenInstanceError):
                p.m_per_px = 1.0  # type: ignore[misc]

    def test_kitti_intrinsics_are_p_rect_02_rescaled(self):
        for name, (w, h) in (("kitti", (1024, 256)), ("kitti-small", (512, 128))):
            p = PRESETS[name]
            assert p.ground_size == (w, h) and p.camera_height_m == 1.65
            K = scale_intrinsics(KITTI_K, w / 1242, h / 375)
            np.testing.assert_allclose(np.array(p.K), K.numpy(), rtol=1e-12)

    def test_satellite_coverage(self):
        k, ks = PRESETS["kitti"], PRESETS["kitti-small"]
        assert k.m_per_px == 0.19583 and k.sat_size == (512, 512)
        assert ks.sat_size == (256, 256) and ks.m_per_px == 2 * k.m_per_px
        v, vs = PRESETS["vigor"], PRESETS["vigor-small"]
        assert v.ground_size == (640, 320) and vs.ground_size == (320, 160)
        assert v.sat_size[0] * v.m_per_px == pytest.approx(640 * 0.111262)
        assert vs.sat_size[0] * vs.m_per_px == pytest.approx(640 * 0.111262)

    def test_protocols(self):
        assert PRESETS["kitti"].prior == PriorProtocol("kitti", 20.0, 10.0)
        v = PRESETS["vigor"]
        assert v.prior.kind == "vigor" and v.prior.yaw_range_deg == 0.0
        assert v.prior.shift_range_m == pytest.approx(v.sat_size[0] / 4 * v.m_per_px)
        unknown = PRESETS["kitti"].with_prior(yaw_range_deg=180.0)
        assert unknown.prior.yaw_range_deg == 180.0 and unknown.name == "kitti"
        assert PRESETS["kitti"].prior.yaw_range_deg == 10.0  # the original is unchanged

    def test_scene_margin(self):
        """The scene reaches at least 40 m beyond any tile the protocol can produce."""
        for p in PRESETS.values():
            shift = p.prior.shift_range_m * (np.sqrt(2) if p.prior.kind == "kitti" else 1.0)
            assert scene_extent(p) >= 13.0 + shift + p.sat_half_extent_m + 40.0

    @pytest.mark.parametrize("preset", ["kitti-small", "vigor-small"])
    def test_camera_near_scene_centre(self, preset):
        """The scene extent assumes the camera within CAMERA_SLACK_M of the centre."""
        p = PRESETS[preset]
        for index in range(16):
            area = ("same", "cross")[index % 2]
            world = build_world(stable_seed("scene", 0, "train", area, index), area, p)
            assert np.linalg.norm(world.camera.xy) <= CAMERA_SLACK_M
            assert world.extent == scene_extent(p)

    def test_exception(self):
        with pytest.raises(ValueError, match="camera_model"):
            dataclasses.replace(PRESETS["kitti"], camera_model="fisheye")
        with pytest.raises(ValueError, match="W = 2 H"):
            dataclasses.replace(PRESETS["vigor"], ground_size=(300, 160))
        with pytest.raises(ValueError, match="kind"):
            PriorProtocol("ford", 1.0, 1.0)


class TestPriorSampling:
    def test_kitti_ranges(self):
        rng = np.random.default_rng(0)
        p = PRESETS["kitti"].prior
        yaw = rng.uniform(-180, 180, 3000)
        lon, lat, dyaw = [], [], []
        for y in yaw:
            prior_xy, prior_yaw = sample_prior(p, np.zeros(2), float(y), rng)
            a, b = heading_frame(-prior_xy, y)
            lon.append(a)
            lat.append(b)
            dyaw.append(wrap_deg(prior_yaw - y))
        for v, r in ((lon, 20.0), (lat, 20.0), (dyaw, 10.0)):
            v = np.asarray(v)
            assert np.all(np.abs(v) <= r) and np.abs(v).max() > 0.97 * r
            assert abs(np.mean(v)) < 0.05 * r  # centred
            assert np.mean(np.abs(v) < r / 2) == pytest.approx(0.5, abs=0.04)  # uniform

    def test_vigor_known_and_unknown(self):
        rng = np.random.default_rng(1)
        p = PRESETS["vigor"]
        s = p.prior.shift_range_m
        offsets, dyaw = [], []
        unknown = p.with_prior(yaw_range_deg=180.0).prior
        for _ in range(2000):
            prior_xy, prior_yaw = sample_prior(p.prior, np.zeros(2), 37.0, rng)
            assert prior_yaw == 37.0
            offsets.append(-prior_xy)
            dyaw.append(sample_prior(unknown, np.zeros(2), 37.0, rng)[1])
        o = np.abs(np.asarray(offsets))
        assert np.all(o <= s) and o.max() > 0.97 * s
        dyaw = np.asarray(dyaw)
        assert np.all((dyaw > -180) & (dyaw <= 180)) and dyaw.std() > 90

    def test_pairs_follow_the_protocol(self):
        for index in range(3):
            meta = generate_pair("kitti-small", "val", "same", index).meta
            lon, lat = heading_frame(gt_offset_m(meta), meta["yaw_deg"])
            assert abs(lon) <= 20.0 + 1e-6 and abs(lat) <= 20.0 + 1e-6
            assert abs(wrap_deg(meta["prior"]["yaw_deg"] - meta["yaw_deg"])) <= 10.0 + 1e-9
            assert meta["shift_range_m"] == 20.0 and meta["yaw_range_deg"] == 10.0
            meta = generate_pair("vigor-small", "val", "cross", index).meta
            w = meta["sat_size"][0]
            d = np.abs(np.subtract(meta["camera_uv"], meta["sat_center_uv"]))
            assert np.all(d <= w / 4 + 1e-6)
            assert meta["prior"]["yaw_deg"] == meta["yaw_deg"]


class TestEpochsAndSplits:
    def test_train_epochs_move_the_prior_only(self):
        a = generate_pair("kitti-small", "train", "same", 4, epoch=0)
        b = generate_pair("kitti-small", "train", "same", 4, epoch=1)
        assert a.meta["prior"]["yaw_deg"] != b.meta["prior"]["yaw_deg"]
        assert a.meta["camera_uv"] != b.meta["camera_uv"]  # the tile follows the prior
        assert np.array_equal(a.ground, b.ground) and a.meta["yaw_deg"] == b.meta["yaw_deg"]
        assert not np.array_equal(a.satellite, b.satellite)
        # Correspondences are restricted to the tile, but a pixel keeps its 3-D point.
        ha = dict(zip(map(tuple, a.ground_uv.tolist()), a.height_m.tolist(), strict=True))
        common = [
            (h, ha[k])
            for k, h in zip(map(tuple, b.ground_uv.tolist()), b.height_m.tolist(), strict=True)
            if k in ha
        ]
        assert len(common) > 1000 and all(x == y for x, y in common)

    @pytest.mark.parametrize("split", ["val", "test"])
    def test_eval_priors_are_fixed(self, split):
        a = generate_pair("vigor-small", split, "cross", 2, epoch=0)
        b = generate_pair("vigor-small", split, "cross", 2, epoch=7)
        assert a.meta == b.meta and a.meta["epoch"] == 0
        assert np.array_equal(a.satellite, b.satellite)

    def test_splits_and_areas_differ(self):
        pairs = [
            generate_pair("kitti-small", s, a, 0)
            for s in ("train", "val", "test")
            for a in ("same", "cross")
        ]
        names = {p.meta["name"] for p in pairs}
        assert len(names) == 6
        for i, p in enumerate(pairs):
            for q in pairs[i + 1 :]:
                assert not np.array_equal(p.ground, q.ground)

    def test_exception(self):
        with pytest.raises(ValueError, match="split"):
            generate_pair("kitti-small", "training", "same", 0)
        with pytest.raises(ValueError, match="area"):
            generate_pair("kitti-small", "train", "other", 0)
        with pytest.raises(ValueError, match="preset"):
            generate_pair("kitti-large", "train", "same", 0)
        with pytest.raises(ValueError, match="index"):
            generate_pair("kitti-small", "train", "same", -1)


class TestDeterminism:
    def test_same_arguments_same_bytes(self):
        a = generate_pair("vigor-small", "train", "same", 5, seed=11, epoch=2)
        b = generate_pair("vigor-small", "train", "same", 5, seed=11, epoch=2)
        assert a.meta == b.meta
        for name in ("ground", "satellite", "ground_uv", "sat_uv", "height_m", "sat_height_m"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()

    def test_numpy_integers_are_plain_integers(self):
        a = generate_pair("kitti-small", "val", "same", np.int64(6), seed=np.int32(2))
        b = generate_pair("kitti-small", "val", "same", 6, seed=2)
        assert a.meta == b.meta and a.ground.tobytes() == b.ground.tobytes()

    def test_index_and_seed_change_the_scene(self):
        a = generate_pair("kitti-small", "train", "cross", 0)
        b = generate_pair("kitti-small", "train", "cross", 1)
        c = generate_pair("kitti-small", "train", "cross", 0, seed=1)
        assert not np.array_equal(a.ground, b.ground)
        assert not np.array_equal(a.ground, c.ground)

    def test_custom_preset(self):
        tiny = dataclasses.replace(
            PRESETS["kitti-small"],
            name="tiny",
            ground_size=(64, 16),
            K=((37.2, 0.0, 31.4), (0.0, 31.2, 7.1), (0.0, 0.0, 1.0)),
            sat_size=(32, 32),
            m_per_px=3.0,
        )
        pair = generate_pair(tiny, "test", "same", 0)
        assert pair.ground.shape == (16, 64, 3) and pair.satellite.shape == (32, 32, 3)
        assert pair.meta["preset"] == "tiny"
