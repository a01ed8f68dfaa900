"""The training loop: steps, validation, checkpoints, exact resumption, interruption.

Resumption is exact: a run stopped after step k and resumed computes the same losses and
ends with the same weights as an uninterrupted run (bit-for-bit on the CPU). Everything
that varies is either saved (model, optimizer, scheduler, scaler and the RNG states after
step k: :mod:`cvloc.engine.state`) or a function of (seed, epoch) (the data order:
:mod:`cvloc.engine.data`). A step's update and bookkeeping run with Ctrl-C deferred, and
Ctrl-C saves ``last.pt`` before it ends the run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvloc.checkpoint import init_weights, save_checkpoint
from cvloc.config import ConfigError, ExperimentConfig, config_to_yaml
from cvloc.engine import data as data_mod
from cvloc.engine.builders import build_model, build_optimizer, build_scheduler, model_amp_dtype
from cvloc.engine.checkpoint import atomic_write, capture_rng_state, code_version
from cvloc.engine.distributed import DistInfo, all_true, barrier, cleanup, init_distributed
from cvloc.engine.logger import TrainLogger
from cvloc.engine.near_prior import redraw_near_prior
from cvloc.engine.state import (
    NonFiniteLossError,
    Optimization,
    TrainResult,
    TrainState,
    defer_sigint,
    restore_training,
    terminate_as_interrupt,
    training_checkpoint,
)
from cvloc.engine.validate import validate
from cvloc.losses import loss_for_method

logger = logging.getLogger("cvloc.train")
StepCallback = Callable[[int, dict[str, float]], None]
BEST_KEY = "location_median_m"
# DenseFlow modules that feature pre-training (``train.objective=features``) leaves alone.
FROZEN_IN_FEATURE_TRAINING = ("context_encoder", "update")


def train(cfg: ExperimentConfig, callback: StepCallback | None = None) -> TrainResult:
    """Train a model as configured (single process, or one rank under ``torchrun``).

    Args:
        cfg: the experiment configuration.
        callback: called after every step with (steps done, loss parts as floats, plus
            ``skipped`` = 1.0 for a skipped non-finite step).

    Returns:
        The trained model and the final state.

    Raises:
        NonFiniteLossError: more than ``train.max_nonfinite_steps`` consecutive
            non-finite steps.
        KeyboardInterrupt: after ``last.pt`` has been saved.
    """
    info = init_distributed(cfg.train.device)
    try:
        return Trainer(cfg, info, callback).fit()
    finally:
        cleanup(info)


class Trainer:
    """Owns the model, optimizer, data and state of one training run.

    Args:
        cfg: the experiment configuration.
        info: this process's place in the job (see :func:`init_distributed`).
        callback: optional per-step callback, see :func:`train`.
    """

    def __init__(
        self, cfg: ExperimentConfig, info: DistInfo, callback: StepCallback | None = None
    ) -> None:
        self.cfg, self.info, self.callback = cfg, info, callback
        tc = cfg.train
        if tc.num_threads is not None:
            torch.set_num_threads(tc.num_threads)
        self.out_dir = Path(tc.out_dir)
        self.amp = tc.amp and info.device.type == "cuda"
        if tc.amp and not self.amp and info.is_main:
            logger.warning("train.amp=true has no effect on %s: training in float32", info.device)
        self.amp_dtype = model_amp_dtype(cfg.model)
        self.loss_fn = loss_for_method(cfg.model.method, tc.objective)
        _seed_everything(tc.seed)
        self.unwrapped = build_model(cfg.model)
        if tc.init_from is not None and not tc.resume:
            init_weights(self.unwrapped, tc.init_from, tc.init_modules)
            if info.is_main:
                parts = ", ".join(tc.init_modules) or "all modules"
                logger.info("initialised the model from %s (%s)", tc.init_from, parts)
        # Feature pre-training only reaches the encoders and RefineBlock; freezing the rest
        # keeps it out of the optimizer and out of DDP's gradient reduction.
        self.forward_kwargs: dict[str, Any] = {}
        if tc.objective == "features":
            self.forward_kwargs = {"correlation_only": True}
            for name in FROZEN_IN_FEATURE_TRAINING:
                getattr(self.unwrapped, name).requires_grad_(False)
        self.frozen = [_submodule(self.unwrapped, name) for name in tc.freeze_modules]
        for module in self.frozen:
            module.requires_grad_(False)
        self.unwrapped.to(info.device)
        self.model: nn.Module = self.unwrapped
        if info.distributed:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.unwrapped, device_ids=ids)
        self._setup_data()
        self.total_steps = tc.epochs * self.steps_per_epoch
        optimizer = build_optimizer(self.unwrapped, tc)
        self.opt = Optimization(
            optimizer,
            build_scheduler(optimizer, tc, self.total_steps),
            # bfloat16 has float32's range: only float16 needs loss scaling.
            torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16),
        )
        self.state = TrainState()
        if tc.resume:
            self.state = restore_training(self.out_dir / "last.pt", self.unwrapped, self.opt, cfg)
            if info.is_main:
                logger.info("resumed at epoch %d, step %d", self.state.epoch, self.state.step)
        self.code_version = code_version()
        self.rng_snapshot = capture_rng_state()
        self.last_val_step = self.state.step if tc.resume else -1
        self.log = TrainLogger(self.out_dir, info.is_main, self.total_steps, self.state.step)

    def _setup_data(self) -> None:
        cfg, info = self.cfg, self.info
        train_set, val_set = data_mod.build_datasets(cfg.data)
        self.train_loader = data_mod.make_train_loader(train_set, cfg.data, cfg.train.seed, info)
        self.val_loader = data_mod.make_val_loader(val_set, cfg.data, info)
        available = data_mod.batches_per_pass(self.train_loader)
        steps = cfg.train.steps_per_epoch or available
        if available == 0 or steps > available:
            raise ConfigError(
                f"train.steps_per_epoch={steps} needs more than the {available} full batches "
                f"of one pass over {len(train_set)} training pairs (data.batch_size="
                f"{cfg.data.batch_size} x {info.world_size} processes); add pairs "
                "(data.num_train) or lower train.steps_per_epoch"
            )
        self.steps_per_epoch = steps

    def fit(self) -> TrainResult:
        """Run the remaining epochs.

        Returns:
            The trained model and final state.
        """
        if self.info.is_main:
            text = config_to_yaml(self.cfg)
            atomic_write(self.out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))
        with terminate_as_interrupt():
            try:
                for epoch in range(self.state.epoch, self.cfg.train.epochs):
                    self._run_epoch(epoch)
                if self.last_val_step != self.state.step:
                    self._validate_and_save()
            except KeyboardInterrupt:
                if self.info.is_main:
                    save_checkpoint(self.out_dir / "last.pt", self._checkpoint())
                    logger.warning("interrupted: saved last.pt at step %d", self.state.step)
                raise
            finally:
                self.log.close()
        return TrainResult(self.unwrapped, self.state, self.out_dir)

    def _run_epoch(self, epoch: int) -> None:
        tc, state = self.cfg.train, self.state
        state.epoch = epoch
        resample = self.cfg.data.resample_each_epoch
        data_mod.start_epoch(self.train_loader, tc.seed, epoch, state.step_in_epoch, resample)
        for batch in self.train_loader:
            if state.step_in_epoch >= self.steps_per_epoch:
                break
            started = time.perf_counter()
            parts, pred, batch = self._forward_backward(batch, epoch)
            with defer_sigint():
                self._update(finite=parts["skipped"] == 0.0)
            self._after_step(parts, pred, batch, time.perf_counter() - started)
            if tc.val_every and state.step % tc.val_every == 0:
                self._validate_and_save()
        with defer_sigint():
            state.epoch, state.step_in_epoch = epoch + 1, 0
        if tc.val_every == 0:
            self._validate_and_save()

    def _forward_backward(
        self, batch: dict[str, Any], epoch: int
    ) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
        """Loss parts, prediction and device batch; ``skipped`` = 1 if not finite."""
        self.model.train()
        for module in self.frozen:  # BatchNorm uses and keeps its running statistics
            module.eval()
        batch = data_mod.to_device(batch, self.info.device)
        tc = self.cfg.train
        if tc.near_prior_fraction > 0:
            # Seeded by step and rank: the same draws after a resume, different per rank.
            seed = (tc.seed * 1_000_003 + self.state.step) * 1_009 + self.info.rank
            rng = torch.Generator().manual_seed(seed)
            batch = redraw_near_prior(batch, tc.near_prior_fraction, tc.near_prior_shift_m,
                                      tc.near_prior_yaw_deg, rng)  # fmt: skip
        # A non-finite forward pass may already have written NaN into BatchNorm's running
        # statistics; keep the buffers so that a skipped step leaves no trace.
        buffers = [b.clone() for b in self.unwrapped.buffers()]
        with self._autocast():
            pred = self.model(batch, **self.forward_kwargs)
        loss, parts_t = self.loss_fn(pred, batch, self.cfg.train, epoch)
        parts = {k: float(v) for k, v in parts_t.items()}
        ok = all_true(bool(torch.isfinite(loss)), self.info)
        if ok:
            scaler = self.opt.scaler
            scaler.scale(loss).backward()
            scaler.unscale_(self.opt.optimizer)
            clip = self.cfg.train.grad_clip or math.inf
            parts["grad_norm"] = float(nn.utils.clip_grad_norm_(self.unwrapped.parameters(), clip))
            # With loss scaling, inf gradients are routine and GradScaler skips them itself.
            ok = scaler.is_enabled() or math.isfinite(parts["grad_norm"])
        parts["skipped"] = 0.0 if ok else 1.0
        if not ok:
            with torch.no_grad():
                for buffer, saved in zip(self.unwrapped.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
        return parts, pred, batch

    def _update(self, finite: bool) -> None:
        """Apply (or skip) the optimizer step and advance the counters."""
        if finite:
            self.opt.scaler.step(self.opt.optimizer)
            self.opt.scaler.update()
            # The schedule counts applied updates; skipped steps do not advance it.
            self.opt.scheduler.step()
        self.opt.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.step_in_epoch += 1
        self.state.nonfinite_run = 0 if finite else self.state.nonfinite_run + 1
        self.state.nonfinite_total += 0 if finite else 1
        self.rng_snapshot = capture_rng_state()

    def _after_step(
        self, parts: dict[str, float], pred: dict[str, Any], batch: dict[str, Any], seconds: float
    ) -> None:
        tc, state = self.cfg.train, self.state
        log_now = state.step % tc.log_every == 0
        self.log.step(state.step, parts, self.opt.scheduler.get_last_lr()[0], log=log_now)
        if log_now:
            self.log.scalar("train/seconds_per_step", seconds, state.step)
        if tc.image_every and state.step % tc.image_every == 0 and "flow_iters" in pred:
            self.log.panel(state.step, batch, pred)
        if parts["skipped"] and self.info.is_main:
            self.log.scalar("train/nonfinite_total", state.nonfinite_total, state.step)
            logger.warning(
                "step %d: non-finite loss or gradient on some process (loss here %s): "
                "step skipped (%d in a row)",
                state.step,
                parts["loss"],
                state.nonfinite_run,
            )
        if state.nonfinite_run > tc.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{state.nonfinite_run} consecutive non-finite training steps (more than "
                f"train.max_nonfinite_steps={tc.max_nonfinite_steps}) at step {state.step}, "
                f"epoch {state.epoch}; {self.out_dir / 'last.pt'} holds the last saved "
                "state. Lower train.lr or set train.grad_clip."
            )
        if self.callback is not None:
            self.callback(state.step, parts)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def validate(self) -> dict[str, Any]:
        """Localization metrics and loss on the validation split (all ranks together).

        Returns:
            :func:`cvloc.metrics.localization_metrics` output plus ``loss``.
        """
        return validate(
            self.unwrapped,
            self.val_loader,
            self.loss_fn,
            self.cfg.train,
            self.state.epoch,
            self.info,
            self._autocast,
            self.forward_kwargs,
        )

    def _validate_and_save(self) -> None:
        state = self.state
        state.metrics = self.validate()
        self.last_val_step = state.step
        self.log.validation(state.step, state.epoch, state.metrics)
        improved = state.metrics[BEST_KEY] < state.best_metric
        if improved:
            state.best_metric = state.metrics[BEST_KEY]
        barrier(self.info)
        if self.info.is_main:
            ckpt = self._checkpoint()
            save_checkpoint(self.out_dir / "last.pt", ckpt)
            if improved:
                save_checkpoint(self.out_dir / "best.pt", ckpt)
        barrier(self.info)

    def _checkpoint(self) -> dict[str, Any]:
        return training_checkpoint(
            self.unwrapped, self.opt, self.cfg, self.state, self.rng_snapshot, self.code_version
        )


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """The top-level sub-module ``name`` of a model (``train.freeze_modules``).

    Raises:
        ValueError: the model has no such sub-module (the message lists those it has).
    """
    module = getattr(model, name, None)
    if not isinstance(module, nn.Module):
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"train.freeze_modules: {type(model).__name__} has no {name!r}; its "
                         f"sub-modules are {names}")  # fmt: skip
    return module
