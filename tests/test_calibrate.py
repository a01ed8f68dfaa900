"""Uncertainty calibration: the fit, the weights it writes, the command and its guards."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from cvloc.calibrate import (
    CHI2_1DOF_95,
    CHI2_1DOF_MEDIAN,
    CHI2_2DOF_95,
    CHI2_2DOF_MEDIAN,
    Calibration,
    chi2_1dof_quantile,
    chi2_2dof_quantile,
    fit_calibration,
    normalized_errors,
    write_calibrated_weights,
)
from cvloc.checkpoint import (
    export_weights,
    load_model,
    save_checkpoint,
    stored_training_data,
    weights_metadata,
)
from cvloc.cli import main
from cvloc.config import config_to_dict, load_config
from cvloc.data.pairs import PairsDataset
from cvloc.engine.builders import build_model
from cvloc.localize import Localizer, Pinhole, Prior
from cvloc.models.dense_matches import DenseMatches
from cvloc.models.refinement import ClassicalRefinement, PriorRefinement


def test_chi_square_constants_match_their_distributions():
    # chi^2(2) has CDF 1 - exp(-x / 2); chi^2(1) is Z^2, CDF erf(sqrt(x / 2)).
    assert 1.0 - math.exp(-CHI2_2DOF_MEDIAN / 2.0) == pytest.approx(0.5, abs=1e-12)
    assert 1.0 - math.exp(-CHI2_2DOF_95 / 2.0) == pytest.approx(0.95, abs=1e-12)
    assert math.erf(math.sqrt(CHI2_1DOF_MEDIAN / 2.0)) == pytest.approx(0.5, abs=1e-9)
    assert math.erf(math.sqrt(CHI2_1DOF_95 / 2.0)) == pytest.approx(0.95, abs=1e-9)


@pytest.mark.parametrize("q", [0.01, 0.25, 0.5, 0.9, 0.99])
def test_chi_square_quantiles_invert_their_distributions(q):
    assert 1.0 - math.exp(-chi2_2dof_quantile(q) / 2.0) == pytest.approx(q, abs=1e-12)
    assert math.erf(math.sqrt(chi2_1dof_quantile(q) / 2.0)) == pytest.approx(q, abs=1e-9)


def test_fit_at_a_quantile_holds_that_share_of_heavy_tailed_errors():
    # 80 % of the pairs as reported, 20 % twenty times (sigma) worse: a median fit leaves the
    # 95 % ellipse far too small; a 0.95 fit makes it hold 95 % of the pairs.
    rng = np.random.default_rng(2)
    d2 = np.r_[rng.chisquare(2, 8000), 400.0 * rng.chisquare(2, 2000)]
    z2 = np.r_[rng.chisquare(1, 8000), 400.0 * rng.chisquare(1, 2000)]
    median = fit_calibration(d2, z2)
    assert median.quantile == 0.5 and median.position_coverage95 < 0.85
    cal = fit_calibration(d2, z2, quantile=0.95)
    assert cal.quantile == 0.95
    assert cal.position_coverage95 == pytest.approx(0.95, abs=0.002)
    assert cal.yaw_coverage95 == pytest.approx(0.95, abs=0.002)
    assert cal.covariance_scale == pytest.approx(np.quantile(d2, 0.95) / CHI2_2DOF_95)
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="quantile"):
            fit_calibration(d2, z2, quantile=bad)


def test_fit_recovers_a_known_underestimate():
    # Errors drawn from s^2 C while the model reports C: the fit must find s^2.
    rng = np.random.default_rng(0)
    n, s2_pos, s2_yaw = 4000, 9.0, 25.0
    d2, z2 = [], []
    for _ in range(n):
        a = rng.normal(size=(2, 2))
        cov = a @ a.T + 0.1 * np.eye(2)
        e = rng.multivariate_normal(np.zeros(2), s2_pos * cov)
        d2.append(e @ np.linalg.inv(cov) @ e)
        sigma = rng.uniform(0.1, 2.0)
        z2.append((rng.normal(0.0, math.sqrt(s2_yaw) * sigma) / sigma) ** 2)
    cal = fit_calibration(np.array(d2), np.array(z2), num_without_covariance=3)
    assert cal.covariance_scale == pytest.approx(s2_pos, rel=0.08)
    assert cal.yaw_variance_scale == pytest.approx(s2_yaw, rel=0.08)
    assert cal.num_pairs == n and cal.num_without_covariance == 3
    assert cal.position_coverage95_raw < 0.5 < 0.93 < cal.position_coverage95 < 0.97
    assert cal.yaw_coverage95_raw < 0.5 < 0.93 < cal.yaw_coverage95 < 0.97


def test_fit_ignores_gross_failures_and_keeps_a_zero_median_neutral():
    d2 = np.r_[np.full(90, CHI2_2DOF_MEDIAN), np.full(10, 1e6)]  # 10 % far-off failures
    z2 = np.r_[np.full(90, CHI2_1DOF_MEDIAN), np.full(10, 1e6)]
    cal = fit_calibration(d2, z2)
    assert cal.covariance_scale == pytest.approx(1.0)
    assert cal.yaw_variance_scale == pytest.approx(1.0)
    exact = fit_calibration(np.zeros(5), np.zeros(5))  # every pair exact: nothing to scale
    assert (exact.covariance_scale, exact.yaw_variance_scale) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("d2", "z2", "match"),
    [
        ([], [], "no pair"),
        ([1.0], [1.0, 2.0], "not longer"),
        ([1.0, float("nan")], [1.0, 1.0], "finite"),
        ([1.0, -1.0], [1.0, 1.0], "non-negative"),
    ],
)
def test_fit_rejects_bad_input(d2, z2, match):
    with pytest.raises(ValueError, match=match):
        fit_calibration(np.array(d2), np.array(z2))


def test_known_headings_count_for_the_position_only():
    rng = np.random.default_rng(1)
    d2 = 9.0 * rng.chisquare(2, 10000)
    z2 = 4.0 * rng.chisquare(1, 6000)  # the other 4,000 pairs had a known heading
    cal = fit_calibration(d2, z2)
    assert cal.covariance_scale == pytest.approx(9.0, rel=0.08)
    assert cal.yaw_variance_scale == pytest.approx(4.0, rel=0.1)
    known = fit_calibration(d2, np.array([]))  # every heading known
    assert known.covariance_scale == cal.covariance_scale
    assert known.yaw_variance_scale == 1.0
    assert known.yaw_coverage95_raw is None and known.yaw_coverage95 is None


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for split in ("val", "test"):
        out = str(root / split)
        assert main(["synth", "--preset", "kitti-small", "--split", split, "--num", "2",
                     "--out", out]) == 0  # fmt: skip
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory, pairs):
    """An untrained tiny DenseFlow 'trained' on a pairs directory, exported to weights."""
    root = tmp_path_factory.mktemp("weights")
    train_dir = root / "train-pairs"
    shutil.copytree(pairs / "val", train_dir)
    cfg = load_config("overfit", ["data.dataset=pairs", f"data.root={train_dir}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ckpt = root / "tiny.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": config_to_dict(cfg)})
    out = export_weights(ckpt, root / "tiny.safetensors")
    shutil.rmtree(train_dir)  # the training pairs are gone, as on a user's machine
    return out


def test_weights_record_their_training_data_and_localize_without_it(weights, pairs):
    stored = stored_training_data(weights)
    assert stored is not None and stored["camera_model"] == "pinhole"
    meta = json.loads((pairs / "val" / "samples" / "000000" / "meta.json").read_text())
    assert stored["ground_size"] == meta["ground_size"]
    assert stored["trained_m_per_px"] == pytest.approx(meta["m_per_px"])
    localizer = Localizer.from_pretrained(weights)  # the pairs directory no longer exists
    assert localizer.ground_size == tuple(meta["ground_size"])
    assert localizer.scales == (1.0, 1.0)


def _localize(localizer, pairs):
    directory = pairs / "val" / "samples" / "000000"
    meta = json.loads((directory / "meta.json").read_text())
    return localizer.localize(
        directory / "ground.png",
        directory / "satellite.png",
        Pinhole(K=meta["K"]),
        m_per_px=meta["m_per_px"],
        prior=Prior(uv=meta["prior"]["camera_uv"], yaw_deg=meta["prior"]["yaw_deg"]),
        camera_height_m=meta["camera_height_m"],
    )


def test_calibrated_weights_scale_the_reported_uncertainty(weights, pairs, tmp_path):
    cal = Calibration(4.0, 9.0, 10, 0, 0.2, 0.9, 0.3, 0.95)
    out = write_calibrated_weights(weights, tmp_path / "cal.safetensors", cal, "test data")
    meta = weights_metadata(out)
    assert meta["calibration"]["covariance_scale"] == 4.0
    assert meta["calibration"]["data"] == "test data"
    assert meta["training_data"] == weights_metadata(weights)["training_data"]
    _, cfg = load_model(out)
    assert (cfg.eval.covariance_scale, cfg.eval.yaw_variance_scale) == (4.0, 9.0)
    raw = _localize(Localizer.from_pretrained(weights), pairs)
    scaled = _localize(Localizer.from_pretrained(out), pairs)
    assert raw.covariance_m2 is not None and raw.yaw_std_deg is not None
    np.testing.assert_allclose(scaled.covariance_m2, 4.0 * raw.covariance_m2, rtol=1e-9)
    assert scaled.yaw_std_deg == pytest.approx(3.0 * raw.yaw_std_deg, rel=1e-9)
    np.testing.assert_allclose(scaled.camera_uv, raw.camera_uv)  # the pose is untouched


def test_normalized_errors_are_those_of_the_raw_covariance(weights, pairs):
    model, _ = load_model(weights)
    d2, z2, missing = normalized_errors(model, PairsDataset(pairs / "val"), batch_size=2)
    assert len(d2) + missing == 2 and len(d2) == len(z2) >= 1
    assert np.isfinite(d2).all() and (d2 >= 0).all() and np.isfinite(z2).all()


def test_calibrate_command_writes_weights(weights, pairs, tmp_path, capsys):
    out = tmp_path / "cmd.safetensors"
    args = ["calibrate", "--checkpoint", str(weights), "--data", str(pairs / "val")]
    assert main([*args, "--out", str(out), "--batch-size", "2"]) == 0
    meta = weights_metadata(out)
    assert meta["calibration"]["num_pairs"] + meta["calibration"]["num_without_covariance"] == 2
    assert meta["config"]["eval"]["covariance_scale"] == meta["calibration"]["covariance_scale"]
    assert "wrote" in capsys.readouterr().out
    at95 = tmp_path / "cmd95.safetensors"
    assert main([*args, "--out", str(at95), "--quantile", "0.95"]) == 0
    assert weights_metadata(at95)["calibration"]["quantile"] == 0.95
    assert main([*args, "--out", str(tmp_path / "bad.safetensors"), "--quantile", "1"]) == 2
    assert "--quantile must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()


def test_calibrate_command_fits_and_writes_config_overrides(weights, pairs, tmp_path):
    out = tmp_path / "dense.safetensors"
    args = ["calibrate", "--checkpoint", str(weights), "--data", str(pairs / "val")]
    overrides = ["model.denseflow.ground_stride=4", "model.denseflow.bev_samples=2"]
    assert main([*args, "--set", *overrides, "--out", str(out), "--batch-size", "2"]) == 0
    meta = weights_metadata(out)
    assert meta["calibration"]["config_overrides"] == overrides
    model, cfg = load_model(out)
    assert (cfg.model.denseflow.ground_stride, cfg.model.denseflow.bev_samples) == (4, 2)
    assert cfg.eval.covariance_scale == meta["calibration"]["covariance_scale"]
    assert meta["training_data"] == weights_metadata(weights)["training_data"]
    original, _ = load_model(weights)
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # An override the weights do not fit is refused before any fit.
    bad = tmp_path / "bad.safetensors"
    assert main([*args, "--set", "model.denseflow.out_dim=7", "--out", str(bad)]) == 2
    assert not bad.exists()


def test_calibrate_command_refuses_test_pairs_and_unknown_training_data(weights, pairs, tmp_path):
    out = str(tmp_path / "x.safetensors")
    base = ["calibrate", "--checkpoint", str(weights), "--out", out]
    assert main([*base, "--data", str(pairs / "test")]) == 2  # never fit on test
    assert main(base) == 2  # trained on pairs: which synthetic preset is not known
    assert main([*base[:-1], str(tmp_path / "x.pt"), "--data", str(pairs / "val")]) == 2
    assert main(["calibrate", "--checkpoint", str(tmp_path / "missing.safetensors"),
                 "--out", out]) == 2  # fmt: skip
    assert not (tmp_path / "x.safetensors").exists()


def test_calibrate_records_the_refinement_it_was_fitted_with(weights, pairs, tmp_path, capsys):
    out = tmp_path / "refined.safetensors"
    args = ["calibrate", "--checkpoint", str(weights), "--data", str(pairs / "val")]
    refine = ["--refine-passes", "2", "--refine-shift-m", "4", "--refine-yaw-deg", "2"]
    assert main([*args, "--out", str(out), "--batch-size", "2", *refine]) == 0
    _, cfg = load_model(out)
    assert (cfg.eval.refine_passes, cfg.eval.refine_shift_m, cfg.eval.refine_yaw_deg) == (2, 4, 2)
    localizer = Localizer.from_pretrained(out)
    assert isinstance(localizer.model, PriorRefinement) and localizer.model.passes == 2
    assert (localizer.model.shift_range_m, localizer.model.yaw_range_deg) == (4.0, 2.0)
    refined_result, one_pass = (
        _localize(localizer, pairs),
        _localize(Localizer.from_pretrained(weights), pairs),
    )
    assert not np.allclose(refined_result.camera_uv, one_pass.camera_uv)  # the passes ran
    assert len(refined_result.ground_uv) > 0 and np.isfinite(refined_result.sat_uv).all()
    # cvloc eval runs the recorded procedure unless told otherwise.
    evaluated = tmp_path / "m.json"
    eval_args = ["eval", "--checkpoint", str(out), "--data", str(pairs / "val")]
    assert main([*eval_args, "--json", str(evaluated)]) == 0
    assert json.loads(evaluated.read_text())["method"] == "denseflow (2 passes)"
    assert main([*eval_args, "--refine-passes", "1", "--json", str(evaluated)]) == 0
    assert json.loads(evaluated.read_text())["method"] == "denseflow"
    capsys.readouterr()
    assert main([*eval_args, "--refine-passes", "0"]) == 2
    assert "--refine-passes must be > 0" in capsys.readouterr().err


def test_calibrate_records_the_classical_refinement(weights, pairs, tmp_path, capsys):
    out = tmp_path / "classical.safetensors"
    args = ["calibrate", "--checkpoint", str(weights), "--data", str(pairs / "val")]
    refine = ["--classical-refine", "--classical-shift-m", "1.5", "--classical-yaw-deg", "1"]
    assert main([*args, "--out", str(out), "--batch-size", "2", *refine]) == 0
    _, cfg = load_model(out)
    assert (cfg.eval.classical_refine, cfg.eval.classical_shift_m) == (True, 1.5)
    assert (cfg.eval.classical_yaw_deg, cfg.eval.refine_passes) == (1.0, 1)
    localizer = Localizer.from_pretrained(out)
    assert isinstance(localizer.model, ClassicalRefinement)
    assert (localizer.model.shift_range_m, localizer.model.yaw_range_deg) == (1.5, 1.0)
    refined_result = _localize(localizer, pairs)
    one_pass = _localize(Localizer.from_pretrained(weights), pairs)
    moved = np.abs(refined_result.camera_uv - one_pass.camera_uv)
    meta = json.loads((pairs / "val" / "samples" / "000000" / "meta.json").read_text())
    assert moved.max() > 0 and moved.max() * meta["m_per_px"] <= 1.5 + 1e-4  # the window
    evaluated = tmp_path / "m.json"
    eval_args = ["eval", "--checkpoint", str(out), "--data", str(pairs / "val")]
    assert main([*eval_args, "--json", str(evaluated)]) == 0
    report = json.loads(evaluated.read_text())
    assert report["method"] == "denseflow + classical refinement"
    assert report["refinement"]["classical_refine"] is True
    assert (report["refinement"]["classical_shift_m"], report["refinement"]["refine_passes"]) == (
        1.5,
        1,
    )
    assert main([*eval_args, "--no-classical-refine", "--json", str(evaluated)]) == 0
    assert json.loads(evaluated.read_text())["method"] == "denseflow"
    capsys.readouterr()
    assert main([*eval_args, "--classical-shift-m", "0"]) == 2
    assert "--classical-shift-m must be > 0" in capsys.readouterr().err


class KnownHeading(torch.utils.data.Dataset):
    """The pairs with their prior heading declared exact (and made so)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        item["yaw_deg_prior"] = item["yaw_deg_gt"].clone()
        item["yaw_range_deg"] = torch.tensor(0.0)
        return item


def test_normalized_errors_skip_the_heading_of_known_heading_pairs(weights, pairs):
    model, _ = load_model(weights)
    data = PairsDataset(pairs / "val")
    d2, z2, missing = normalized_errors(model, KnownHeading(data), batch_size=2)
    assert len(d2) + missing == 2 and len(d2) >= 1 and len(z2) == 0
    free_d2, free_z2, _ = normalized_errors(model, data, batch_size=2)
    assert len(free_z2) == len(free_d2)


def test_calibrate_records_dense_matches_and_the_rematch(weights, pairs, tmp_path, capsys):
    out = tmp_path / "dense.safetensors"
    args = ["calibrate", "--checkpoint", str(weights), "--data", str(pairs / "val")]
    dense = ["--classical-refine", "--classical-rematch", "--match-upsample", "2"]
    assert main([*args, "--out", str(out), "--batch-size", "2", *dense]) == 0
    _, cfg = load_model(out)
    assert (cfg.eval.match_upsample, cfg.eval.classical_rematch) == (2, True)
    runner = Localizer.from_pretrained(out).model
    assert isinstance(runner, DenseMatches) and runner.factor == 2
    assert isinstance(runner.model, ClassicalRefinement) and runner.model.rematch is not None
    # cvloc eval runs and records them unless told otherwise; bad values are refused.
    evaluated = tmp_path / "m.json"
    eval_args = ["eval", "--checkpoint", str(out), "--data", str(pairs / "val")]
    assert main([*eval_args, "--json", str(evaluated)]) == 0
    recorded = json.loads(evaluated.read_text())["refinement"]
    assert (recorded["match_upsample"], recorded["classical_rematch"]) == (2, True)
    off = ["--match-upsample", "1", "--no-classical-rematch"]
    assert main([*eval_args, *off, "--json", str(evaluated)]) == 0
    recorded = json.loads(evaluated.read_text())["refinement"]
    assert (recorded["match_upsample"], recorded["classical_rematch"]) == (1, False)
    capsys.readouterr()
    assert main([*eval_args, "--match-upsample", "0"]) == 2
    assert "--match-upsample must be > 0" in capsys.readouterr().err
