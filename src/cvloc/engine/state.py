"""The training state saved in checkpoints, and what makes saving it safe.

:func:`training_checkpoint` and :func:`restore_training` are inverses: together with the
data order of :mod:`cvloc.engine.data` they make a resumed run continue exactly.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvloc.checkpoint import check_same_model, load_checkpoint, load_state_dict_strict
from cvloc.config import ExperimentConfig, config_to_dict
from cvloc.engine.checkpoint import restore_rng_state


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


@dataclass
class TrainState:
    """The loop's counters, saved in every checkpoint.

    Attributes:
        epoch: current 0-based epoch.
        step: training steps done (batches; skipped non-finite steps included).
        step_in_epoch: steps done in the current epoch.
        best_metric: best validation ``location_median_m`` so far.
        metrics: the last validation metrics.
        nonfinite_run: consecutive non-finite steps just before now.
        nonfinite_total: non-finite steps of the whole run.
    """

    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    best_metric: float = math.inf
    metrics: dict[str, Any] = field(default_factory=dict)
    nonfinite_run: int = 0
    nonfinite_total: int = 0


@dataclass
class TrainResult:
    """What :func:`cvloc.train.train` returns.

    Attributes:
        model: the trained, unwrapped model (on the training device).
        state: the final counters and metrics.
        out_dir: where checkpoints and logs were written.
    """

    model: nn.Module
    state: TrainState
    out_dir: Path


@dataclass
class Optimization:
    """The objects whose states a checkpoint carries besides the model.

    Attributes:
        optimizer: the optimizer.
        scheduler: the learning-rate scheduler.
        scaler: the AMP gradient scaler (disabled on the CPU).
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def training_checkpoint(
    model: nn.Module,
    opt: Optimization,
    cfg: ExperimentConfig,
    state: TrainState,
    rng: dict[str, Any],
    code_version: dict[str, str],
) -> dict[str, Any]:
    """The checkpoint dict (see :mod:`cvloc.checkpoint`) of a training run.

    Args:
        model: the unwrapped model.
        opt: optimizer, scheduler and scaler.
        cfg: the experiment configuration.
        state: the loop's counters.
        rng: RNG states after the last finished step.
        code_version: :func:`cvloc.engine.checkpoint.code_version` output.

    Returns:
        The dict, ready for :func:`cvloc.checkpoint.save_checkpoint`.
    """
    return {
        "model": model.state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict(),
        "config": config_to_dict(cfg),
        **asdict(state),
        "rng": rng,
        "code_version": code_version,
    }


def restore_training(
    path: Path, model: nn.Module, opt: Optimization, cfg: ExperimentConfig
) -> TrainState:
    """Load a training checkpoint into fresh objects and restore the RNG states.

    Args:
        path: the checkpoint (``last.pt``).
        model: the unwrapped model, built from ``cfg``.
        opt: optimizer, scheduler and scaler built for ``model``.
        cfg: the current configuration; its model section must equal the checkpoint's.

    Returns:
        The saved counters.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        cvloc.checkpoint.CheckpointError: the checkpoint is unreadable or its model config
            differs (the message names the keys).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: train.resume=true but there is no checkpoint")
    ckpt = load_checkpoint(path, map_location="cpu")
    check_same_model(ckpt["config"], cfg, str(path))
    load_state_dict_strict(model, ckpt["model"], str(path))
    opt.optimizer.load_state_dict(ckpt["optimizer"])
    opt.scheduler.load_state_dict(ckpt["scheduler"])
    opt.scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt["rng"])
    return TrainState(**{f.name: ckpt[f.name] for f in fields(TrainState)})


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold back Ctrl-C (and SIGTERM) inside the block and raise it right after.

    Wraps a step's update and bookkeeping, so that an interruption never leaves a
    half-applied step for the Ctrl-C handler to save. Main thread only.

    Yields:
        Nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C inside the block (main thread only).

    Schedulers and ``kill`` stop jobs with SIGTERM, and background jobs of a non-interactive
    shell ignore SIGINT: raising KeyboardInterrupt on SIGTERM lets the Ctrl-C path save
    ``last.pt`` before the process ends.

    Yields:
        Nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
