"""Localizer API: same pose as the dataset path, any input size and kind, geo, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cvloc.checkpoint import CheckpointError, save_checkpoint, weights_dir
from cvloc.cli import main
from cvloc.config import config_to_dict, load_config
from cvloc.data.batch import collate
from cvloc.data.images import SampleError
from cvloc.data.pairs import PairsDataset
from cvloc.engine.builders import build_model
from cvloc.geometry import scale_intrinsics
from cvloc.localize import LocalizeInputError, Localizer, Panorama, Pinhole, Prior
from cvloc.localize_inputs import load_image
from cvloc.localize_quality import pose_covariance

EARTH_RADIUS_M = 6378137.0  # the Web Mercator sphere


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for preset, num in (("kitti-small", 2), ("vigor-small", 1)):
        out = str(root / preset)
        assert main(["synth", "--preset", preset, "--num", str(num), "--out", out]) == 0
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained tiny DenseFlows (the overfit widths) trained 'on' each preset's sizes."""
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for preset in ("kitti-small", "vigor-small"):
        cfg = load_config("overfit", [f"data.preset={preset}"])
        torch.manual_seed(0)
        model = build_model(cfg.model)
        paths[preset] = root / f"{preset}.pt"
        save_checkpoint(
            paths[preset], {"model": model.state_dict(), "config": config_to_dict(cfg)}
        )
    return paths


def sample(pairs, preset, index=0):
    directory = pairs / preset / "samples" / f"{index:06d}"
    return directory, json.loads((directory / "meta.json").read_text())


def camera(meta, scale=1.0):
    if meta["camera_model"] == "panorama":
        return Panorama()
    K = scale_intrinsics(torch.tensor(meta["K"], dtype=torch.float64), scale, scale)
    return Pinhole(K=K.tolist())


def localize_as_meta(localizer, ground, satellite, meta, scale=1.0):
    """Localize with the pair's camera and prior, the images scaled by ``scale``."""
    prior_uv = [(x + 0.5) * scale - 0.5 for x in meta["prior"]["camera_uv"]]
    return localizer.localize(
        ground,
        satellite,
        camera(meta, scale),
        m_per_px=meta["m_per_px"] / scale,
        prior=Prior(uv=prior_uv, yaw_deg=meta["prior"]["yaw_deg"]),
        camera_height_m=meta["camera_height_m"],
        search_radius_m=meta["shift_range_m"],
    )


@pytest.mark.parametrize("preset", ["kitti-small", "vigor-small"])
def test_same_pose_as_the_model_on_the_dataset_item(pairs, checkpoints, preset):
    localizer = Localizer.from_pretrained(checkpoints[preset])
    directory, meta = sample(pairs, preset)
    result = localize_as_meta(
        localizer, directory / "ground.png", directory / "satellite.png", meta
    )
    with torch.inference_mode():
        pred = localizer.model(collate([PairsDataset(pairs / preset)[0]]))
    np.testing.assert_allclose(result.camera_uv, pred["camera_uv_pred"][0].double(), atol=1e-4)
    assert result.yaw_deg == pytest.approx(float(pred["yaw_deg_pred"][0]), abs=1e-4)
    assert result.inputs["working"]["ground_size"] == meta["ground_size"]
    assert 0.0 <= result.confidence <= 1.0
    assert len(result.ground_uv) == len(result.sat_uv) == len(result.scores) > 0
    assert np.all(np.diff(result.scores) <= 0)  # strongest first


def test_classical_same_pose_as_on_the_dataset_item(pairs):
    localizer = Localizer.classical()
    directory, meta = sample(pairs, "kitti-small", 1)
    result = localize_as_meta(
        localizer, directory / "ground.png", directory / "satellite.png", meta
    )
    pred = localizer.model(collate([PairsDataset(pairs / "kitti-small")[1]]))
    np.testing.assert_allclose(result.camera_uv, pred["camera_uv_pred"][0].double(), atol=1e-4)
    assert result.confidence == pytest.approx(float(pred["search_score"][0]), abs=1e-6)
    assert result.covariance_m2 is None  # its matches are its BEV moved rigidly: no residuals


@pytest.mark.parametrize("preset", ["kitti-small", "vigor-small"])
def test_twice_larger_inputs_give_the_same_pose_and_scaled_matches(pairs, checkpoints, preset):
    localizer = Localizer.from_pretrained(checkpoints[preset])
    directory, meta = sample(pairs, preset)
    ground, satellite = (
        Image.open(directory / "ground.png"),
        Image.open(directory / "satellite.png"),
    )
    base = localize_as_meta(localizer, ground, satellite, meta)
    big_ground = ground.resize((2 * ground.width, 2 * ground.height), Image.Resampling.BICUBIC)
    big_sat = satellite.resize((2 * satellite.width, 2 * satellite.height))
    big = localize_as_meta(localizer, np.asarray(big_ground), big_sat, meta, scale=2.0)
    assert big.inputs["working"]["ground_size"] == meta["ground_size"]
    # Up- then down-sampling is not the identity: the poses differ a little (0.2 px seen).
    np.testing.assert_allclose((big.camera_uv + 0.5) / 2 - 0.5, base.camera_uv, atol=0.3)
    np.testing.assert_allclose(big.camera_xy_m, base.camera_xy_m, atol=0.12)
    assert abs(big.yaw_deg - base.yaw_deg) < 0.1
    # DenseFlow's match sources are a fixed grid lifted through the prior camera: the same
    # ground pixels, now in the pixels of the 2x image.
    halved = (torch.from_numpy(big.ground_uv) + 0.5) / 2 - 0.5
    nearest = torch.cdist(torch.from_numpy(base.ground_uv), halved).min(1).values
    assert (nearest < 1e-3).float().mean() > 0.95


def test_unknown_heading_runs_hypotheses_and_keeps_the_most_confident(pairs, checkpoints):
    localizer = Localizer.from_pretrained(checkpoints["kitti-small"])
    directory, meta = sample(pairs, "kitti-small")
    result = localizer.localize(
        directory / "ground.png",
        directory / "satellite.png",
        camera(meta),
        m_per_px=meta["m_per_px"],
        camera_height_m=1.65,
    )
    # kitti-small trains with +-10 deg: hypotheses every 20 deg.
    assert result.inputs["yaw_hypotheses_deg"] == [-180.0 + 20.0 * k for k in range(18)]
    assert result.inputs["prior"]["uv"] == [127.5, 127.5]  # the tile centre


@pytest.mark.parametrize("name", ["denseflow-synth-kitti-small", "finematch-synth-kitti-small"])
def test_shipped_weights_localize_better_than_the_prior(pairs, name):
    if not (weights_dir() / f"{name}.safetensors").is_file():
        pytest.skip(f"{name} is not shipped in this checkout")
    localizer = Localizer.from_pretrained(name)
    errors, prior_errors = [], []
    for index in range(2):
        directory, meta = sample(pairs, "kitti-small", index)
        result = localize_as_meta(
            localizer, directory / "ground.png", directory / "satellite.png", meta
        )
        gt = np.array(meta["camera_uv"])
        errors.append(np.linalg.norm(result.camera_uv - gt) * meta["m_per_px"])
        prior_errors.append(np.linalg.norm(meta["prior"]["camera_uv"] - gt) * meta["m_per_px"])
        # The uncertainty is a proper covariance; the confident count is a count of scores.
        assert result.covariance_m2 is not None
        assert np.all(np.linalg.eigvalsh(result.covariance_m2) > 0)
        assert 0 <= result.num_confident_matches <= len(result.scores)
    assert np.mean(errors) < 0.5 * np.mean(prior_errors), (errors, prior_errors)


def test_geo_referenced_tile_gives_the_camera_latlon(pairs):
    directory, meta = sample(pairs, "kitti-small")
    center, localizer = (49.015, 8.43), Localizer.prior_baseline()
    args = (directory / "ground.png", directory / "satellite.png", camera(meta))
    kwargs = {"sat_center_latlon": center, "camera_height_m": 1.65, "prior": Prior((150, 100), 0)}
    result = localizer.localize(*args, zoom=17, scale=2, **kwargs)
    assert result.inputs["m_per_px"] == pytest.approx(meta["m_per_px"], rel=1e-4)
    # The lat/lon's displacement from the centre, in local metres, is the metric position.
    (lat, lon), lat0 = np.radians(result.latlon), math.radians(center[0])
    east = (lon - math.radians(center[1])) * EARTH_RADIUS_M * math.cos(lat)
    mercator_north = math.log(math.tan(math.pi / 4 + lat / 2) / math.tan(math.pi / 4 + lat0 / 2))
    north = mercator_north * EARTH_RADIUS_M * math.cos(lat)
    np.testing.assert_allclose([east, north], result.camera_xy_m, rtol=2e-3)
    # m_per_px with a centre geo-references the tile the same way.
    by_m = localizer.localize(*args, m_per_px=result.inputs["m_per_px"], **kwargs)
    np.testing.assert_allclose(by_m.latlon, result.latlon, atol=1e-9)


def test_every_image_kind_decodes_alike(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    reference = load_image(path, "ground")
    assert reference.shape == (3, 12, 16)
    for image in (str(path), Image.fromarray(rgb), rgb, rgb / 255.0, chw, chw / 255.0):
        torch.testing.assert_close(load_image(image, "ground"), reference)
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], -1)
    torch.testing.assert_close(load_image(rgba, "ground"), reference)
    grey = load_image(rgb[..., 0], "ground")
    assert grey.shape == (3, 12, 16) and torch.equal(grey[0], grey[2])


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif)
    assert load_image(path, "ground").shape == (3, 30, 10)
    assert load_image(Image.open(path), "ground").shape == (3, 30, 10)


def test_covariance_matches_least_squares_for_independent_noise():
    # 400 matches on a sparse grid (one per 8x8 cell: kappa = 1) with iid noise of 0.1 m:
    # the sandwich covariance of the position is then about sigma^2 / N per axis.
    rng = np.random.default_rng(0)
    rel = torch.from_numpy(rng.uniform(-20, 20, (400, 2)))
    residual = torch.from_numpy(rng.normal(0.0, 0.1, (400, 2)))
    cov, yaw_std = pose_covariance(rel, residual, torch.eye(2), torch.ones(400), 400, (160, 160))
    np.testing.assert_allclose(np.diag(cov), 0.1**2 / 400, rtol=0.25)
    assert yaw_std > 0


def test_known_heading_covariance_is_that_of_the_weighted_mean_translation():
    # With the heading known the fit is c = weighted mean of (q_i - p_i), whose sandwich
    # covariance is sum s_i^2 r_i r_i^T / (sum s_i)^2, written here without Jacobians.
    rng = np.random.default_rng(2)
    rel = torch.from_numpy(rng.uniform(-20, 20, (300, 2)))
    residual = rng.normal(0.0, 0.3, (300, 2)) + np.array([0.05, -0.02])
    scores = rng.uniform(0.1, 1.0, 300)
    turn = torch.from_numpy(np.array([[0.0, -1.0], [1.0, 0.0]]))  # any R: it must not matter
    cov, yaw_std = pose_covariance(
        rel, torch.from_numpy(residual), turn, torch.from_numpy(scores), 300, (160, 160),
        known_heading=True,
    )  # fmt: skip
    expected = (scores[:, None, None] ** 2 * residual[:, :, None] * residual[:, None, :]).sum(0)
    np.testing.assert_allclose(cov, expected / scores.sum() ** 2, rtol=1e-10)
    assert yaw_std == 0.0
    free, _ = pose_covariance(
        rel, torch.from_numpy(residual), turn, torch.from_numpy(scores), 300, (160, 160)
    )
    assert not np.allclose(free, cov)  # estimating the heading too changes the position block


def test_bad_inputs_name_the_argument(pairs, tmp_path):
    directory, _ = sample(pairs, "kitti-small")
    ground, satellite = directory / "ground.png", directory / "satellite.png"
    localizer = Localizer.prior_baseline()
    ok = {"m_per_px": 0.39, "camera_height_m": 1.65}
    with pytest.raises(LocalizeInputError, match="ground: a panorama must be equirectangular"):
        localizer.localize(ground, satellite, Panorama(), **ok)
    with pytest.raises(LocalizeInputError, match="camera: give Pinhole"):
        Pinhole()
    with pytest.raises(LocalizeInputError, match="K: expected a 3x3 matrix"):
        Pinhole(K=[[1, 0, 0], [0, 1, 0]])
    with pytest.raises(SampleError, match=r"missing\.png"):
        localizer.localize(tmp_path / "missing.png", satellite, Pinhole(fov_deg=90), **ok)
    with pytest.raises(LocalizeInputError, match="satellite: the 256x256 px tile"):
        localizer.localize(ground, satellite, Pinhole(fov_deg=90), search_radius_m=60, **ok)
    with pytest.raises(LocalizeInputError, match="m_per_px / zoom"):
        localizer.localize(ground, satellite, Pinhole(fov_deg=90), camera_height_m=1.65)
    with pytest.raises(LocalizeInputError, match="camera_height_m"):
        localizer.localize(ground, satellite, Pinhole(fov_deg=90), m_per_px=0.39)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        Localizer.from_pretrained("no-such-model")


def test_a_checkpoint_refuses_another_camera_model(pairs, checkpoints):
    directory, _ = sample(pairs, "vigor-small")
    localizer = Localizer.from_pretrained(checkpoints["kitti-small"])
    with pytest.raises(LocalizeInputError, match="trained on pinhole images, got panorama"):
        localizer.localize(
            directory / "ground.png", directory / "satellite.png", Panorama(), m_per_px=0.28
        )


def test_checkpoint_trained_on_pairs_takes_their_sizes(pairs, tmp_path):
    cfg = load_config("overfit", ["data.dataset=pairs", f"data.root={pairs / 'vigor-small'}"])
    path = tmp_path / "pairs.pt"
    save_checkpoint(
        path, {"model": build_model(cfg.model).state_dict(), "config": config_to_dict(cfg)}
    )
    localizer = Localizer.from_pretrained(path)
    assert (localizer.camera_model, localizer.ground_size) == ("panorama", (320, 160))
    assert localizer.shift_range_m == pytest.approx(
        sample(pairs, "vigor-small")[1]["shift_range_m"]
    )
    cfg = load_config("overfit", ["data.dataset=pairs", f"data.root={tmp_path / 'gone'}"])
    save_checkpoint(
        path, {"model": build_model(cfg.model).state_dict(), "config": config_to_dict(cfg)}
    )
    with pytest.raises(CheckpointError, match="image sizes are unknown"):
        Localizer.from_pretrained(path)


def test_inputs_far_from_the_training_data_warn(pairs, checkpoints):
    directory, _ = sample(pairs, "kitti-small")
    ground = Image.open(directory / "ground.png").resize((400, 300))
    result = Localizer.from_pretrained(checkpoints["kitti-small"]).localize(
        ground, directory / "satellite.png", Pinhole(fov_deg=80), m_per_px=0.9,
        prior=Prior(yaw_deg=0.0), search_radius_m=30,
    )  # fmt: skip
    assert [w.split(":")[0] for w in result.warnings] == ["ground", "satellite"]
    assert result.inputs["working"]["m_per_px"] == pytest.approx(0.9)


def test_non_square_tile_is_padded_and_mapped_back(pairs):
    # A 2x-resolution, 512 x 400 crop: fitted to 256 x 200 and zero-padded to 256 x 256.
    directory, meta = sample(pairs, "kitti-small")
    tile = Image.open(directory / "satellite.png").resize((512, 512)).crop((0, 0, 512, 400))
    result = Localizer.prior_baseline().localize(
        directory / "ground.png", tile, camera(meta), m_per_px=0.2, camera_height_m=1.65,
        prior=Prior(uv=(300.2, 180.7), yaw_deg=5.0), search_radius_m=10,
    )  # fmt: skip
    np.testing.assert_allclose(result.camera_uv, [300.2, 180.7], atol=1e-4)
    expected_xy = [(300.2 - 255.5) * 0.2, -(180.7 - 199.5) * 0.2]  # centre (255.5, 199.5)
    np.testing.assert_allclose(result.camera_xy_m, expected_xy, atol=1e-4)
    assert result.inputs["working"]["m_per_px"] == pytest.approx(0.4, rel=1e-3)
