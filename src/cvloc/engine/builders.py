"""Model, optimizer and learning-rate schedule from the configuration."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from cvloc.config import ModelConfig, TrainConfig

# OneCycleLR's default div_factor: the warm-up starts at lr / 25.
ONECYCLE_DIV = 25.0


def build_model(cfg: ModelConfig) -> nn.Module:
    """The localizer of a model config, freshly initialised.

    Args:
        cfg: the model section.

    Returns:
        The model (on the CPU, in training mode).
    """
    if cfg.method == "denseflow":
        from cvloc.models import DenseFlow

        return DenseFlow(cfg.denseflow)
    if cfg.method == "finematch":
        from cvloc.models import FineMatch

        return FineMatch(cfg.finematch)
    raise ValueError(f"model.method {cfg.method!r} has no builder")


def model_amp_dtype(cfg: ModelConfig) -> torch.dtype:
    """The autocast dtype of the configured method (its ``amp_dtype``).

    Args:
        cfg: the model section.

    Returns:
        ``torch.bfloat16`` or ``torch.float16``.
    """
    return getattr(torch, getattr(cfg, cfg.method).amp_dtype)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters.

    Args:
        model: the (unwrapped or DDP-wrapped) model.
        cfg: the training section.

    Returns:
        The optimizer.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int) -> float:
    """The learning-rate multiplier at an optimizer step.

    With W = ``warmup_steps`` and S = ``total_steps``:

    - ``"constant"``: linear warm-up from 1 / (W + 1) over W steps, then 1.
    - ``"onecycle"``: as RAFT and the official DenseFlow (OneCycleLR with linear
      annealing): linear from 1/25 to 1 over W steps, then linear down to 0 at step S.
    - ``"cosine"``: the constant schedule's warm-up, then half a cosine down to 0 at S.

    Args:
        step: optimizer steps taken so far (0 for the first step).
        total_steps: steps of the whole run.
        schedule: ``"constant"``, ``"onecycle"`` or ``"cosine"``.
        warmup_steps: linear warm-up length.

    Returns:
        The factor applied to ``lr``.
    """
    if schedule == "onecycle":
        if step < warmup_steps:
            start = 1.0 / ONECYCLE_DIV
            return start + (1.0 - start) * step / warmup_steps
        return max(0.0, 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler; its state is only the step count, so it resumes exactly.

    Args:
        optimizer: the optimizer.
        cfg: the training section (``schedule``, ``warmup_steps``).
        total_steps: steps of the whole run.

    Returns:
        The scheduler (call ``step()`` after every training step).
    """
    factor = partial(
        lr_factor,
        total_steps=total_steps,
        schedule=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
