"""Checkpoints and weights files: safe loading, strictness, clear errors, name resolution."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import cvloc.checkpoint as ckpt_mod
from cvloc.checkpoint import (
    CheckpointError,
    average_weights,
    check_same_model,
    export_weights,
    init_weights,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
    weights_metadata,
)
from cvloc.config import config_to_dict, load_config
from cvloc.data.batch import collate
from cvloc.data.registry import build_dataset
from cvloc.engine.builders import build_model
from cvloc.engine.checkpoint import atomic_write, capture_rng_state, restore_rng_state


@pytest.fixture
def cfg():
    return load_config("overfit")


@pytest.fixture
def checkpoint(tmp_path, cfg):
    torch.manual_seed(0)
    model = build_model(cfg.model)
    path = tmp_path / "last.pt"
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": config_to_dict(cfg),
            "step": 7,
            "metrics": {"location_median_m": 1.5},
            "rng": capture_rng_state(),
        },
    )
    return path, model


def test_checkpoint_loads_with_weights_only(checkpoint):
    path, _ = checkpoint
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "cvloc-checkpoint/1"
    assert raw["step"] == 7
    assert not any(k.startswith("module.") for k in raw["model"])


def test_load_model_restores_weights_and_config(checkpoint, cfg):
    path, model = checkpoint
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == cfg
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_model_overrides_keep_the_weights(checkpoint, cfg):
    path, model = checkpoint
    loaded, loaded_cfg = load_model(
        path, overrides=["model.denseflow.bev_samples=3", "model.denseflow.ground_stride=4"]
    )
    assert (loaded.config.bev_samples, loaded.config.ground_stride) == (3, 4)
    assert loaded_cfg.model.denseflow == loaded.config and loaded_cfg.train == cfg.train
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # An override that changes a tensor's shape, an unknown key, a bad value: refused.
    with pytest.raises(CheckpointError, match=r"shape mismatch.*ground_encoder\.proj\.weight"):
        load_model(path, overrides=["model.denseflow.out_dim=24"])
    with pytest.raises(CheckpointError, match=r"overrides \['model.denseflow.nope=1'\]"):
        load_model(path, overrides=["model.denseflow.nope=1"])
    with pytest.raises(CheckpointError, match="bev_samples"):
        load_model(path, overrides=["model.denseflow.bev_samples=0"])


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nothing.pt"
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_model(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_named(checkpoint, damage):
    path, _ = checkpoint
    data = path.read_bytes()
    path.write_bytes(b"not a checkpoint" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert "corrupt" in str(err.value)


def test_foreign_pickle_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a cvloc-checkpoint"):
        load_checkpoint(path)


def test_weights_of_another_architecture_name_the_keys(tmp_path, cfg):
    other = load_config("overfit", ["model.denseflow.out_dim=24"])
    path = tmp_path / "mixed.pt"
    state = build_model(other.model).state_dict()
    del state["refine.block.0.bias"]
    save_checkpoint(path, {"model": state, "config": config_to_dict(cfg)})
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message
    assert "shape mismatch" in message
    assert "ground_encoder.proj.weight" in message
    assert "missing (1): refine.block.0.bias" in message


def test_init_modules_fill_only_the_named_modules(checkpoint, cfg):
    # FineMatch with DenseFlow's encoder widths starts from a DenseFlow's encoders and
    # RefineBlock; its own heads keep their initialisation.
    path, denseflow = checkpoint
    dcfg = cfg.model.denseflow
    fm_cfg = load_config(
        "overfit",
        [
            "model.method=finematch",
            f"model.finematch.feat_dim={dcfg.out_dim}",
            f"model.finematch.encoder.base_channels={dcfg.encoder.base_channels}",
            f"model.finematch.encoder.blocks_per_stage={list(dcfg.encoder.blocks_per_stage)}",
        ],
    )
    torch.manual_seed(1)
    finematch = build_model(fm_cfg.model)
    before = {k: v.clone() for k, v in finematch.state_dict().items()}
    init_weights(finematch, path, ["ground_encoder", "satellite_encoder", "bev_refine=refine"])
    source = denseflow.state_dict()
    for key, value in finematch.state_dict().items():
        module, rest = key.split(".", 1)
        if module in ("ground_encoder", "satellite_encoder"):
            assert torch.equal(value, source[key]), key
        elif module == "bev_refine":
            assert torch.equal(value, source[f"refine.{rest}"]), key
        else:
            assert torch.equal(value, before[key]), key


def test_init_modules_errors_name_the_module(checkpoint):
    path, _ = checkpoint
    model = build_model(load_config("overfit", ["model.denseflow.out_dim=24"]).model)
    with pytest.raises(CheckpointError, match=r"last\.pt .*the model has no module 'nope'"):
        init_weights(model, path, ["nope"])
    with pytest.raises(CheckpointError, match=r"the file has no module 'nope'"):
        init_weights(model, path, ["refine=nope"])
    with pytest.raises(CheckpointError, match=r"\['ground_encoder'\] do not fit.*shape mismatch"):
        init_weights(model, path, ["ground_encoder"])
    # The unrelated modules may differ: only the named ones must fit.
    init_weights(model, path, ["context_encoder"])


def test_resume_refuses_another_model_config(cfg):
    saved = config_to_dict(load_config("overfit", ["model.denseflow.iters=3"]))
    with pytest.raises(CheckpointError, match=r"model\.denseflow\.iters: checkpoint 3, now 2"):
        check_same_model(saved, cfg, "last.pt")
    check_same_model(config_to_dict(cfg), load_config("overfit", ["train.lr=1"]), "last.pt")


def test_resume_fills_in_model_keys_added_later(cfg):
    # A checkpoint from before a model key existed stored no value for it: it means the
    # default, so it matches a config at the default and no other.
    saved = config_to_dict(cfg)
    assert saved["model"]["denseflow"].pop("bev_samples") == 1
    saved["train"]["a_key_this_code_dropped"] = 1  # only the model section matters
    check_same_model(saved, cfg, "last.pt")
    other = load_config("overfit", ["model.denseflow.bev_samples=2"])
    with pytest.raises(CheckpointError, match=r"denseflow\.bev_samples: checkpoint 1, now 2"):
        check_same_model(saved, other, "last.pt")
    saved["model"]["denseflow"]["no_such_key"] = 1
    with pytest.raises(CheckpointError, match=r"last\.pt: stored model config is not valid here"):
        check_same_model(saved, cfg, "last.pt")


def test_export_and_load_safetensors(checkpoint, tmp_path, cfg):
    path, model = checkpoint
    out = export_weights(path, tmp_path / "w.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not private: weights get shared
    meta = weights_metadata(out)
    assert meta["config"] == config_to_dict(cfg)
    assert meta["metrics"] == {"location_median_m": 1.5}
    loaded, loaded_cfg = load_model(out)
    assert loaded_cfg == cfg
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_average_weights_is_the_mean_of_the_sources(checkpoint, tmp_path, cfg):
    path, model = checkpoint
    torch.manual_seed(1)
    other = build_model(cfg.model)
    for buffer in other.buffers():  # distinct running statistics too
        if buffer.is_floating_point():
            buffer.uniform_(0.5, 1.5)
    older = config_to_dict(cfg)  # a file written before a key of another method existed
    del older["model"]["finematch"]["bev_samples"]
    other_pt = _save(tmp_path / "b.pt", other, older, step=9)
    other_path = export_weights(other_pt, tmp_path / "b.safetensors")
    out = average_weights([path, other_path], tmp_path / "avg.safetensors")
    averaged, averaged_cfg = load_model(out)
    assert averaged_cfg == cfg
    a, b = model.state_dict(), other.state_dict()
    for key, value in averaged.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key] + b[key]) / 2, msg=key)
        else:  # num_batches_tracked: the first source's
            assert torch.equal(value, a[key]), key
    meta = weights_metadata(out)
    assert meta["metrics"] == {}
    assert [(s["path"], s["step"]) for s in meta["averaged_from"]] == [
        (str(path), 7),
        (str(other_path), 9),
    ]
    assert meta["averaged_from"][1]["sha256"] == ckpt_mod.checkpoint_sha256(other_path)


def test_average_weights_refuses_other_models(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(ValueError, match="at least two"):
        average_weights([path], tmp_path / "avg.safetensors")
    other_cfg = load_config("overfit", ["model.denseflow.iters=3"])
    other = _save(tmp_path / "b.pt", build_model(other_cfg.model), config_to_dict(other_cfg), 1)
    with pytest.raises(CheckpointError, match=r"b\.pt: not the model of .*iters"):
        average_weights([path, other], tmp_path / "avg.safetensors")
    assert not (tmp_path / "avg.safetensors").exists()


def test_average_weights_drops_a_calibration(checkpoint, tmp_path, cfg):
    path, model = checkpoint
    calibrated = load_config("overfit", ["eval.covariance_scale=7", "eval.yaw_variance_scale=3"])
    first = _save(tmp_path / "c.pt", model, config_to_dict(calibrated), step=3)
    out = average_weights([first, path], tmp_path / "avg.safetensors")
    _, averaged_cfg = load_model(out)
    assert (averaged_cfg.eval.covariance_scale, averaged_cfg.eval.yaw_variance_scale) == (1, 1)
    assert averaged_cfg == cfg  # all else is the first source's config


def _save(path, model, config, step):
    state = {"model": model.state_dict(), "config": config, "step": step}
    save_checkpoint(path, state)
    return path


def test_export_refuses_oversized_weights(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(CheckpointError, match="limit"):
        export_weights(path, tmp_path / "w.safetensors", max_bytes=1000)
    assert not (tmp_path / "w.safetensors").exists()


def test_corrupt_safetensors_is_named(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        load_model(path)


def test_resolve_bare_name_in_weights_dir(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    weights = tmp_path / "weights"
    weights.mkdir()
    export_weights(path, weights / "tiny-model.safetensors")
    monkeypatch.setattr(ckpt_mod, "weights_dir", lambda: weights)
    assert resolve_checkpoint("tiny-model") == weights / "tiny-model.safetensors"
    with pytest.raises(FileNotFoundError, match="tiny-model"):
        resolve_checkpoint("other-model")  # the message lists what is available
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        resolve_checkpoint(tmp_path / "absent.pt")


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": capture_rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def failing(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.pt", failing)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path", sorted(ckpt_mod.weights_dir().glob("*.safetensors")), ids=lambda p: p.stem
)
def test_shipped_weights_load_by_name_and_localize(path):
    # Every shipped file resolves by its name, loads strictly into the model its stored
    # config describes (the method named by the file) and localizes its preset's pairs.
    model, cfg = load_model(path.stem)
    assert path.stem.startswith(cfg.model.method)
    assert weights_metadata(path)["step"] > 0
    batch = collate([build_dataset("synthetic", None, "test", preset=cfg.data.preset, num=1)[0]])
    with torch.inference_mode():
        pred = model(batch)
    assert (
        torch.isfinite(pred["camera_xy_pred"]).all() and torch.isfinite(pred["yaw_deg_pred"]).all()
    )
    assert (pred["match_weight"] >= 0).all() and (pred["match_weight"] <= 1 + 1e-6).all()


def test_init_modules_across_strides(checkpoint, cfg):
    # A stride-4 DenseFlow starts from a stride-8 one: every module but the convex
    # upsampling mask head (9 s^2 channels), named by its dotted prefix.
    path, denseflow = checkpoint
    stride4 = build_model(load_config("overfit", ["model.denseflow.stride=4"]).model)
    before = {k: v.clone() for k, v in stride4.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"update\.mask_head\.2\.weight"):
        init_weights(stride4, path, ["update"])
    parts = ["ground_encoder", "satellite_encoder", "context_encoder", "refine", "update.gru"]
    init_weights(stride4, path, [*parts, "update.encoder", "update.flow_head"])
    source = denseflow.state_dict()
    for key, value in stride4.state_dict().items():
        if key.startswith(("update.mask_head.", "update.confidence_head.")):
            assert torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, source[key]), key
