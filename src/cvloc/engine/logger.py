"""Training feedback on rank 0: a tqdm progress bar, TensorBoard scalars and image panels.

Other ranks get a disabled logger, so the trainer calls it unconditionally.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from cvloc.viz import GT_COLOR, PRIOR_COLOR, draw_image, draw_pose

logger = logging.getLogger("cvloc.train")
PRED_COLOR = "#ff1744"


class TrainLogger:
    """Progress bar (with loss and ETA), TensorBoard events under ``out_dir/tensorboard``.

    Args:
        out_dir: the run's output directory.
        enabled: False on ranks other than 0: nothing is shown or written.
        total_steps: steps of the whole run (the bar's length).
        initial_step: steps already done (resumed runs).
    """

    def __init__(self, out_dir: Path, enabled: bool, total_steps: int, initial_step: int) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        # The rate is measured from the first optimizer step (start-up excluded).
        self._t0: float | None = None
        self._step0 = initial_step
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (enabled and sys.stderr.isatty()),
        )

    def step(self, step: int, parts: dict[str, float], lr: float, log: bool) -> None:
        """Advance the bar; write the step's scalars when ``log``.

        Args:
            step: optimizer steps done (after this one).
            parts: the loss parts of this step.
            lr: the learning rate used.
            log: write TensorBoard scalars for this step.
        """
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{parts['loss']:.3f}", epe=f"{parts['epe_final_px']:.2f}")
        if log and self.enabled and self.bar.disable:
            self._print_progress(step, parts)
        if log and self.writer is not None:
            for key, value in parts.items():
                self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.add_scalar("train/lr", lr, step)

    def _print_progress(self, step: int, parts: dict[str, float]) -> None:
        """One plain line per logged step when there is no terminal for the bar (nohup runs)."""
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self._step0 = now, step
        done = step - self._step0
        timing = ""
        if done > 0:
            rate = (now - self._t0) / done
            timing = f", {rate:.2f} s/step, ETA {rate * (self.total_steps - step) / 3600:.1f} h"
        print(
            f"step {step}/{self.total_steps}: loss {parts['loss']:.3f}, "
            f"flow EPE {parts['epe_final_px']:.2f} px{timing}",
            flush=True,
        )

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Write one scalar.

        Args:
            tag: TensorBoard tag.
            value: the value.
            step: the x coordinate.
        """
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def validation(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        """Log validation metrics to TensorBoard and a one-line summary.

        Args:
            step: optimizer steps done.
            epoch: current epoch.
            metrics: :func:`cvloc.metrics.localization_metrics` output plus ``loss``.
        """
        if not self.enabled:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.scalar(f"val/{key}", float(value), step)
        self.bar.write(
            f"val step {step} epoch {epoch}: loss {metrics['loss']:.3f}, location median "
            f"{metrics['location_median_m']:.2f} m, yaw median {metrics['yaw_median_deg']:.2f} "
            f"deg, lateral R@1m {100 * metrics['lateral_recall_1m']:.1f}%"
        )

    def panel(self, step: int, batch: dict[str, Any], pred: dict[str, Any]) -> None:
        """Write an image panel of the batch's first pair: ground, poses, confidence.

        Args:
            step: optimizer steps done.
            batch: the batch.
            pred: the model's prediction for it.
        """
        if self.writer is None:
            return
        image = render_panel(batch, pred)
        self.writer.add_image("train/panel", image, step, dataformats="HWC")

    def close(self) -> None:
        """Close the bar and flush the event file."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def render_panel(batch: dict[str, Any], pred: dict[str, Any], index: int = 0) -> np.ndarray:
    """Ground image | satellite with prior, GT and predicted poses | confidence map.

    Args:
        batch: the batch.
        pred: the model's prediction (``camera_uv_pred``, ``yaw_deg_pred``,
            ``bev_valid``, and ``confidence_iters`` or else ``match_weight``).
        index: which pair of the batch.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    fig = Figure(figsize=(12, 3.6), dpi=80)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2, 1, 1]})
    draw_image(axes[0], batch["ground"][index], "ground")
    draw_image(axes[1], batch["satellite"][index], "prior (orange), GT (green), pred (red)")
    poses = (
        (batch["camera_uv_prior"], batch["yaw_deg_prior"], PRIOR_COLOR, "--"),
        (batch["camera_uv_gt"], batch["yaw_deg_gt"], GT_COLOR, "-"),
        (pred["camera_uv_pred"], pred["yaw_deg_pred"], PRED_COLOR, "-"),
    )
    for uv, yaw, color, style in poses:
        draw_pose(axes[1], _cpu(uv[index]), float(_cpu(yaw[index])), color, linestyle=style)
    if "confidence_iters" in pred:
        confidence = _cpu(pred["confidence_iters"][-1][index, 0] * pred["bev_valid"][index, 0])
    else:  # a matcher: the match weight of every BEV cell (zero where not visible)
        confidence = _cpu(pred["match_weight"][index].reshape(pred["bev_valid"].shape[-2:]))
    axes[2].imshow(confidence, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    axes[2].set_title("confidence x visibility (last iteration)", fontsize=9)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _cpu(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
