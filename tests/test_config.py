"""Experiment config: presets, overrides, strict errors, round trips."""

from __future__ import annotations

import pytest

from cvloc.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    list_presets,
    load_config,
)

PRESETS = (
    "overfit",
    "denseflow-synth-kitti",
    "denseflow-synth-kitti-small",
    "denseflow-synth-vigor-small",
)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    assert name in list_presets()
    cfg = load_config(name)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.method == "denseflow"
    assert cfg.data.dataset == "synthetic"
    assert cfg.train.out_dir.endswith(name)


def test_full_size_preset_has_the_paper_hyper_parameters():
    cfg = load_config("denseflow-synth-kitti")
    assert cfg.train.optimizer == "adam"
    assert cfg.train.lr == 2e-5
    assert tuple(cfg.train.betas) == (0.9, 0.999)
    assert (cfg.train.epochs, cfg.train.switch_epoch) == (25, 15)
    assert cfg.data.batch_size == 6
    assert cfg.model.denseflow.iters == 12
    assert cfg.model.denseflow.out_dim == 256
    assert (cfg.train.alpha, cfg.train.beta_initial, cfg.train.beta_final) == (100, 1, 10)
    assert (cfg.train.kappa_initial, cfg.train.kappa_final) == (200, 20)


def test_overrides_apply_at_every_depth():
    cfg = load_config(
        "overfit",
        [
            "train.lr=0.01",
            "data.batch_size=3",
            "model.denseflow.iters=5",
            "model.denseflow.encoder.base_channels=4",
            "train.betas=[0.8,0.9]",
            "train.grad_clip=null",
        ],
    )
    assert cfg.train.lr == 0.01
    assert cfg.data.batch_size == 3
    assert cfg.model.denseflow.iters == 5
    assert cfg.model.denseflow.encoder.base_channels == 4
    assert tuple(cfg.train.betas) == (0.8, 0.9)
    assert cfg.train.grad_clip is None


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("train.lrr=1", ["train.lrr", "unknown key"]),
        ("model.denseflow.itres=3", ["model.denseflow.itres", "unknown key"]),
        ("train.epochs=abc", ["train.epochs", "abc"]),
        ("data.dataset=kitty", ["data.dataset", "kitty"]),
        ("train.schedule=linear", ["train.schedule", "linear"]),
        ("model.denseflow.iters=0", ["model.denseflow"]),
        ("train.iter_gamma=1.5", ["train.iter_gamma"]),
    ],
)
def test_bad_overrides_name_the_key(override, names):
    with pytest.raises(ConfigError) as err:
        load_config("overfit", [override])
    for name in names:
        assert name in str(err.value)


def test_all_losses_disabled_is_refused():
    overrides = [f"train.use_{t}_loss=false" for t in ("matching", "position", "confidence")]
    with pytest.raises(ConfigError, match="at least one loss"):
        load_config("overfit", overrides)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="overfit"):
        load_config("no-such-preset")


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_bad_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "train.epoch" in str(err.value)


def test_yaml_round_trip(tmp_path):
    cfg = load_config("denseflow-synth-kitti-small", ["train.lr=0.001"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


def test_dict_round_trip_is_plain():
    cfg = load_config("overfit")
    data = config_to_dict(cfg)
    assert isinstance(data["model"]["denseflow"]["encoder"]["blocks_per_stage"], list)
    assert config_from_dict(data) == cfg
