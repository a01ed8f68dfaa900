"""Training engine: the overfit preset learns, resumption is exact, failures are handled.

Most tests train the ``overfit`` model on a few synthetic pairs written once per module as a
``cvloc-pairs/1`` directory (generating a pair takes about a second; reading it back is
fast).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal

import numpy as np
import pytest
import torch

import cvloc.engine.loop as loop
from cvloc import cli
from cvloc.checkpoint import CheckpointError, load_checkpoint
from cvloc.config import load_config
from cvloc.data.synthetic import command as synth_command
from cvloc.engine.builders import lr_factor
from cvloc.engine.distributed import DistInfo
from cvloc.engine.logger import render_panel
from cvloc.train import NonFiniteLossError, Trainer, train

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for split, num in (("train", 4), ("val", 1)):
        parser = argparse.ArgumentParser()
        synth_command.add_arguments(parser)
        args = parser.parse_args(
            [
                "--preset",
                "kitti-small",
                "--split",
                split,
                "--num",
                str(num),
                "--out",
                str(root / split),
            ]
        )
        assert synth_command.run(args) == 0
    return root


def tiny_config(pairs, out_dir, *overrides):
    """The overfit model on the pairs directory: 2 epochs of 2 steps of 2 pairs."""
    return load_config(
        "overfit",
        [
            "data.dataset=pairs",
            f"data.root={pairs / 'train'}",
            f"data.val_root={pairs / 'val'}",
            f"train.out_dir={out_dir}",
            "train.epochs=2",
            *overrides,
        ],
    )


def run(cfg, stop_at=None):
    """Train; return the per-step losses (and raise KeyboardInterrupt after ``stop_at``)."""
    losses = {}

    def callback(step, parts):
        losses[step] = parts["loss"]
        if step == stop_at:
            raise KeyboardInterrupt

    result = train(cfg, callback)
    return losses, result


@pytest.fixture(scope="module")
def reference(pairs, tmp_path_factory):
    """An uninterrupted run: 4 steps with a validation after each epoch."""
    out = tmp_path_factory.mktemp("reference")
    return run(tiny_config(pairs, out, "train.val_every=0"))


def test_sigterm_saves_like_ctrl_c(pairs, tmp_path):
    # Schedulers and `kill` stop jobs with SIGTERM (and background jobs ignore SIGINT):
    # it must save last.pt after the last finished step, as Ctrl-C does.
    def callback(step, parts):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(pairs, tmp_path), CPU, callback).fit()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is scoped to training


def test_overfit_preset_loss_falls(tmp_path):
    cfg = load_config("overfit", [f"train.out_dir={tmp_path}", "train.image_every=4"])
    losses, result = run(cfg)
    per_epoch = [np.mean([losses[s] for s in (2 * e + 1, 2 * e + 2)]) for e in range(5)]
    assert per_epoch[-1] < 0.95 * per_epoch[0], per_epoch
    assert result.state.step == 10
    assert {"last.pt", "best.pt", "config.yaml", "tensorboard"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert math.isfinite(result.state.metrics["location_median_m"])
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("stop_at", [2, 3])
def test_resume_is_exact(pairs, tmp_path, reference, stop_at):
    ref_losses, ref_result = reference
    first_losses = {}

    def callback(step, parts):
        first_losses[step] = parts["loss"]
        if step == stop_at:
            raise KeyboardInterrupt

    interrupted = Trainer(tiny_config(pairs, tmp_path), CPU, callback)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    # Ctrl-C saved the state after the last finished step.
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["step"] == stop_at
    for key, value in interrupted.unwrapped.state_dict().items():
        assert torch.equal(saved["model"][key], value), key
    assert first_losses == {s: ref_losses[s] for s in range(1, stop_at + 1)}
    resumed_losses, resumed = run(tiny_config(pairs, tmp_path, "train.resume=true"))
    assert sorted(resumed_losses) == list(range(stop_at + 1, 5))
    for step, loss in resumed_losses.items():
        assert loss == ref_losses[step], step
    expected = ref_result.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert resumed.state.best_metric == ref_result.state.best_metric


def test_resume_refuses_another_model_config(pairs, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(pairs, tmp_path), stop_at=1)
    cfg = tiny_config(pairs, tmp_path, "train.resume=true", "model.denseflow.iters=3")
    with pytest.raises(CheckpointError, match=r"model\.denseflow\.iters"):
        train(cfg)


def test_resume_without_checkpoint(pairs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"last\.pt"):
        train(tiny_config(pairs, tmp_path, "train.resume=true"))


def nan_on_steps(monkeypatch, steps):
    """Make the training loss NaN on the given 1-based training calls."""
    real = loop.loss_for_method("denseflow")
    calls = {"n": 0}

    def patched(pred, batch, cfg, epoch):
        total, parts = real(pred, batch, cfg, epoch)
        if torch.is_grad_enabled():  # training, not validation
            calls["n"] += 1
            if calls["n"] in steps:
                total = total * float("nan")
        return total, parts

    monkeypatch.setattr(loop, "loss_for_method", lambda method, objective: patched)


def test_nonfinite_step_is_skipped(pairs, tmp_path, monkeypatch):
    nan_on_steps(monkeypatch, {2})
    snapshots, skipped = {}, {}

    def callback(step, parts):
        skipped[step] = parts["skipped"]
        snapshots[step] = {k: v.clone() for k, v in trainer.unwrapped.state_dict().items()}

    # Validation every 3 steps (and after the last) instead of at every epoch end.
    trainer = Trainer(tiny_config(pairs, tmp_path, "train.val_every=3"), CPU, callback)
    result = trainer.fit()
    assert skipped == {1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0}
    assert result.state.nonfinite_total == 1
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    # No optimizer step on the NaN batch, and BatchNorm statistics are kept too.
    for key, value in snapshots[1].items():
        assert torch.equal(snapshots[2][key], value), key
    assert any(not torch.equal(snapshots[3][k], v) for k, v in snapshots[2].items())


def test_too_many_nonfinite_steps_abort(pairs, tmp_path, monkeypatch):
    nan_on_steps(monkeypatch, set(range(1, 100)))
    cfg = tiny_config(pairs, tmp_path, "train.max_nonfinite_steps=2")
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=2") as err:
        train(cfg)
    assert "at step 3" in str(err.value)


def test_steps_per_epoch_beyond_the_data_is_refused(pairs, tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch=3"):
        train(tiny_config(pairs, tmp_path, "train.steps_per_epoch=3"))


def test_cli_train(pairs, tmp_path, monkeypatch):
    head = ["train", "--config", "overfit"]
    overrides = [
        "data.dataset=pairs",
        f"data.root={pairs / 'train'}",
        f"data.val_root={pairs / 'val'}",
        f"train.out_dir={tmp_path}",
        "train.epochs=1",
        "train.steps_per_epoch=1",
    ]
    assert cli.main([*head, *overrides]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    assert cli.main([*head, *overrides, "train.lrr=1"]) == 2  # a config error, reported
    # Resuming with another model config is refused with a message, not a traceback.
    assert cli.main([*head, "--resume", *overrides, "model.denseflow.iters=3"]) == 2
    monkeypatch.setattr(loop.Trainer, "fit", _raise_interrupt)
    assert cli.main([*head, "--resume", *overrides]) == 130


def _raise_interrupt(self):
    raise KeyboardInterrupt


@pytest.mark.parametrize("schedule", ["constant", "onecycle", "cosine"])
def test_lr_schedules(schedule):
    factors = [lr_factor(s, 100, schedule, warmup_steps=10) for s in range(101)]
    assert max(factors) == pytest.approx(1.0)
    assert all(0.0 <= f <= 1.0 for f in factors)
    assert factors[0] < factors[10]  # warm-up
    if schedule == "constant":
        assert factors[10:] == [1.0] * 91
    else:
        assert factors[100] == pytest.approx(0.0, abs=1e-9)
        assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    if schedule == "onecycle":
        assert factors[0] == pytest.approx(1 / 25)


def test_panel_renders():
    B, H = 1, 32
    batch = {
        "ground": torch.rand(B, 3, 16, 64),
        "satellite": torch.rand(B, 3, H, H),
        "camera_uv_prior": torch.tensor([[15.5, 15.5]]),
        "yaw_deg_prior": torch.tensor([0.0]),
        "camera_uv_gt": torch.tensor([[18.0, 12.0]]),
        "yaw_deg_gt": torch.tensor([5.0]),
    }
    pred = {
        "camera_uv_pred": torch.tensor([[17.0, 13.0]], requires_grad=True),
        "yaw_deg_pred": torch.tensor([4.0], requires_grad=True),
        "confidence_iters": [torch.rand(B, 1, H, H)],
        "bev_valid": torch.ones(B, 1, H, H),
    }
    image = render_panel(batch, pred)
    assert image.dtype == np.uint8
    assert image.ndim == 3
    assert image.shape[2] == 3


def test_feature_pretraining_then_init_from(pairs, tmp_path):
    # Stage 1 (train.objective=features) trains the encoders and the RefineBlock only, on
    # the auxiliary losses, and validates with the alignment pose; stage 2 starts from its
    # weights with train.init_from.
    features = [
        "train.objective=features",
        "train.corr_loss_weight=1.0",
        "train.align_loss_weight=1.0",
        "train.align_radius=3",
        "train.epochs=1",
    ]
    cfg = tiny_config(pairs, tmp_path)
    torch.manual_seed(cfg.train.seed)  # the trainer's initialisation
    initial = loop.build_model(cfg.model).state_dict()
    parts_seen = []
    result = train(
        tiny_config(pairs, tmp_path / "features", *features),
        lambda step, parts: parts_seen.append(parts),
    )
    trained = result.model.state_dict()
    for name, value in trained.items():
        frozen = name.split(".")[0] in loop.FROZEN_IN_FEATURE_TRAINING
        if frozen or "running" in name or "num_batches" in name:
            if frozen:
                assert torch.equal(value, initial[name]), name
            continue
        # Every trainable tensor of the encoders and the RefineBlock moved.
        assert not torch.equal(value, initial[name]), name
    assert all(p["alignment"] > 0 and p["correlation"] > 0 for p in parts_seen)
    assert math.isfinite(result.state.metrics["location_median_m"])

    stage2 = tiny_config(
        pairs, tmp_path / "stage2", f"train.init_from={tmp_path / 'features' / 'last.pt'}"
    )
    trainer = Trainer(stage2, CPU)
    for name, value in trainer.unwrapped.state_dict().items():
        assert torch.equal(value, trained[name]), name
    # Weights of another architecture are refused, naming the file.
    other = tiny_config(
        pairs,
        tmp_path / "other",
        f"train.init_from={tmp_path / 'features' / 'last.pt'}",
        "model.denseflow.out_dim=8",
    )
    with pytest.raises(CheckpointError, match=r"last\.pt \(train\.init_from\).*shape mismatch"):
        Trainer(other, CPU)


def test_feature_objective_needs_a_weight(pairs, tmp_path):
    with pytest.raises(ValueError, match="objective=features needs"):
        tiny_config(pairs, tmp_path, "train.objective=features")


def test_frozen_modules_keep_weights_and_batchnorm_statistics(pairs, tmp_path):
    frozen = ("ground_encoder", "satellite_encoder")
    cfg = tiny_config(pairs, tmp_path, f"train.freeze_modules=[{','.join(frozen)}]")
    torch.manual_seed(cfg.train.seed)  # the trainer's initialisation
    initial = loop.build_model(cfg.model).state_dict()
    trained = train(cfg).model.state_dict()
    moved = set()
    for name, value in trained.items():
        if name.split(".")[0] in frozen:  # weights and running statistics alike
            assert torch.equal(value, initial[name]), name
        elif not torch.equal(value, initial[name]):
            moved.add(name.split(".")[0])
    assert {"update", "context_encoder"} <= moved  # the rest trains
    assert any("running_mean" in n and n.split(".")[0] in frozen for n in trained)
    with pytest.raises(ValueError, match=r"has no 'encoder'.*ground_encoder"):
        Trainer(tiny_config(pairs, tmp_path / "bad", "train.freeze_modules=[encoder]"), CPU)


def test_near_priors_reach_the_model_and_repeat(pairs, tmp_path, monkeypatch):
    seen = []
    real = loop.redraw_near_prior

    def spy(batch, *args):
        out = real(batch, *args)
        offset_m = (out["camera_uv_prior"] - out["camera_uv_gt"]).abs() * out["m_per_px"][:, None]
        seen.append((offset_m, out["shift_range_m"].clone()))
        return out

    monkeypatch.setattr(loop, "redraw_near_prior", spy)
    overrides = ("train.near_prior_fraction=1", "train.near_prior_shift_m=2")
    losses, _ = run(tiny_config(pairs, tmp_path / "a", *overrides))
    assert len(seen) == len(losses) == 4 and all(math.isfinite(v) for v in losses.values())
    for offset_m, bound in seen:
        assert offset_m.max() <= 2.0 + 1e-4 and torch.equal(bound, torch.full_like(bound, 2.0))
    again, _ = run(tiny_config(pairs, tmp_path / "b", *overrides))
    assert again == losses  # seeded by step: a rerun (or a resume) draws the same priors
