"""Typed experiment configuration: dataclasses, YAML presets and command-line overrides.

An :class:`ExperimentConfig` has four sections (``data``, ``model``, ``train``, ``eval``).
Presets (``cvloc/configs/*.yaml``, package data) state what differs from the defaults;
overrides are dotlists: ``load_config("overfit", ["train.lr=1e-4"])``. Loading is strict:
a bad key, type or value raises :class:`ConfigError` naming the key and its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cvloc.engine.structured import (
    ConfigError,
    build_structured,
    check_fields,
    dotlist_layers,
    find_yaml,
    list_yaml,
    to_plain,
    yaml_layers,
)
from cvloc.losses_finematch import FineMatchLossConfig
from cvloc.models import DenseFlowConfig, FineMatchConfig

__all__ = [
    "ConfigError", "DataConfig", "EvalConfig", "ExperimentConfig", "ModelConfig", "TrainConfig",
    "config_from_dict", "config_to_dict", "config_to_yaml", "list_presets", "load_config",
]  # fmt: skip
DATASETS = ("synthetic", "pairs", "kitti", "ford", "vigor", "oxford")
REAL_DATASETS = ("kitti", "ford", "vigor", "oxford")
METHODS = ("denseflow", "finematch")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "onecycle", "cosine")
OBJECTIVES = ("localizer", "features")
DEVICES = ("auto", "cpu", "cuda")
SYNTHETIC_AREAS = ("same", "cross")
# The shipped presets: package data, so that they work from an installed package too.
PRESETS_DIR = Path(str(resources.files("cvloc") / "configs"))


@dataclass
class DataConfig:
    """Which pairs to train and validate on (never a test split).

    Synthetic: the ``train`` and ``val`` splits; pairs: ``root`` and ``val_root``; a real
    benchmark (kitti, ford, vigor, oxford): its loader's ``train`` split and the ``val``
    slice it holds out of train (never a test split), with bad samples skipped and counted.

    Attributes:
        dataset: ``"synthetic"`` (generated on the fly), ``"pairs"`` (``cvloc-pairs/1``), or
            a real benchmark ``"kitti"``, ``"ford"``, ``"vigor"``, ``"oxford"``.
        preset: synthetic preset (``kitti``, ``kitti-small``, ``vigor``, ``vigor-small``).
        area: synthetic area, ``"same"`` or ``"cross"``.
        root: ``pairs`` directory of the training pairs, or the real benchmark's root.
        val_root: validation ``pairs``; None holds out the last ``num_val`` of ``root``.
        num_train: synthetic training pairs per epoch (generator indices 0 .. num_train-1).
        num_val: validation pairs.
        seed: synthetic world seed.
        batch_size: pairs per optimizer step and process.
        num_workers: DataLoader worker processes (0 loads in the main process).
        yaw_range_deg: replaces the synthetic prior's heading noise half-width (degrees).
        resample_each_epoch: fresh synthetic prior noise every epoch; False replays epoch
            0's pairs (a fixed set, to overfit while debugging).
        cache_train: keep training items in memory after first use (a synthetic pair takes
            ~1 s to make); needs ``resample_each_epoch`` false and ``num_workers`` 0.
        cache_val: keep the (fixed) validation items in memory, loaded in the main process.
        options: keyword options of a real benchmark's loader (:mod:`cvloc.data.registry`),
            e.g. ``{area: cross, yaw_range_deg: 180}`` for VIGOR or ``{log: 2}`` for Ford.
    """

    dataset: str = "synthetic"
    preset: str = "kitti-small"
    area: str = "same"
    root: str | None = None
    val_root: str | None = None
    num_train: int = 1000
    num_val: int = 100
    seed: int = 0
    batch_size: int = 4
    num_workers: int = 0
    yaw_range_deg: float | None = None
    resample_each_epoch: bool = True
    cache_train: bool = False
    cache_val: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choices = {"dataset": DATASETS, "area": SYNTHETIC_AREAS}
        check_fields(
            "data", self, choices, ("num_train", "num_val", "batch_size"), ("num_workers",)
        )
        if self.dataset in ("pairs", *REAL_DATASETS) and not self.root:
            raise ValueError(f"data.root: the {self.dataset} dataset needs a directory")
        if self.yaw_range_deg is not None and not 0 <= self.yaw_range_deg <= 180:
            raise ValueError(f"data.yaw_range_deg must be in [0, 180], got {self.yaw_range_deg}")
        if self.cache_train and (self.num_workers or self.resample_each_epoch):
            raise ValueError("data.cache_train needs num_workers=0 and resample_each_epoch=false")


@dataclass
class ModelConfig:
    """The localizer and its hyper-parameters.

    Attributes:
        method: ``"denseflow"`` or ``"finematch"``.
        denseflow: DenseFlow's hyper-parameters (used when ``method == "denseflow"``).
        finematch: FineMatch's hyper-parameters (used when ``method == "finematch"``).
    """

    method: str = "denseflow"
    denseflow: DenseFlowConfig = field(default_factory=DenseFlowConfig)
    finematch: FineMatchConfig = field(default_factory=FineMatchConfig)

    def __post_init__(self) -> None:
        check_fields("model", self, {"method": METHODS})


@dataclass
class TrainConfig:
    """Optimisation, loss weights, logging and checkpointing.

    Loss weights (eq. 7): ``beta`` and ``kappa`` take their ``*_initial`` values for epochs
    0 .. ``switch_epoch`` - 1, then their ``*_final`` values (the paper: after 15 of 25).

    Attributes:
        epochs: training epochs.
        steps_per_epoch: optimizer steps per epoch; None = one pass over the training set.
        lr: peak learning rate.
        betas: Adam's (beta1, beta2).
        weight_decay: Adam's L2 penalty (``adam``) or decoupled decay (``adamw``).
        optimizer: ``"adam"`` (the paper) or ``"adamw"`` (the official code).
        schedule: ``"constant"``, ``"onecycle"`` or ``"cosine"``, as
            :func:`cvloc.engine.builders.lr_factor` defines them.
        warmup_steps: the linear warm-up length in optimizer steps.
        grad_clip: maximum gradient L2 norm; None disables clipping.
        alpha: confidence loss weight (eq. 7).
        beta_initial: position loss weight (eq. 7) before ``switch_epoch``.
        beta_final: position loss weight from ``switch_epoch`` on.
        kappa_initial: confidence temperature (eq. 5) before ``switch_epoch``.
        kappa_final: confidence temperature from ``switch_epoch`` on.
        switch_epoch: first epoch (0-based) with the final beta and kappa.
        iter_gamma: GRU iteration i of n weighs gamma^(n-1-i) (1.0: eq. 7, 0.8: RAFT).
        use_matching_loss: keep eq. 4's term (False: ablation).
        use_position_loss: keep eq. 6's term.
        use_confidence_loss: keep eq. 5's term.
        corr_loss_weight: weight of an auxiliary per-cell InfoNCE on DenseFlow's level-0
            correlation at the ground-truth matches (not in the paper, 0 = off; see
            :mod:`cvloc.losses_aux`).
        align_loss_weight: weight of the auxiliary alignment InfoNCE (the ground-truth
            alignment of the whole BEV against its rigid shifts; not in the paper, 0 = off).
        align_radius: the largest shift, in feature cells, of the alignment loss's
            negatives.
        objective: ``"localizer"`` trains the method with its loss; ``"features"``
            pre-trains DenseFlow's ground and satellite encoders and RefineBlock alone on
            the two auxiliary losses (the GRU, heads and context encoder are frozen), in
            place of the paper's ImageNet initialisation.
        init_from: start from the model weights of this checkpoint or weights file (name
            or path; not its optimizer state or step: that is ``resume``).
        init_modules: fill only these top-level sub-modules from ``init_from`` (``"name"``
            or ``"name=file_name"``; empty: the whole model, same architecture), e.g.
            FineMatch's encoders from a DenseFlow feature pre-training.
        freeze_modules: top-level sub-modules kept as they are: no gradients, and their
            BatchNorm layers in eval mode (running statistics used and kept), e.g. all of
            FineMatch but a new head.
        near_prior_fraction: share of training items whose prior is redrawn near the truth
            (:func:`cvloc.engine.near_prior.redraw_near_prior`): the regime of the
            refinement passes after the first, which the data's prior never shows.
        near_prior_shift_m: the redrawn prior's position noise and declared bound (per
            axis, metres).
        near_prior_yaw_deg: its heading noise and bound (degrees; a known heading stays).
        amp: autocast + gradient scaling on CUDA (ignored on CPU).
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        num_threads: CPU threads for torch (None keeps torch's default).
        log_every: optimizer steps between TensorBoard scalar logs.
        image_every: optimizer steps between TensorBoard image panels (0 = never).
        val_every: optimizer steps between validations; 0 validates at every epoch end.
        out_dir: output directory (checkpoints, ``config.yaml``, TensorBoard events).
        resume: continue from ``out_dir/last.pt``.
        max_nonfinite_steps: abort after more consecutive non-finite losses than this.
        seed: seed of the model initialisation and of the data order.
        finematch: FineMatch's loss weights (the DenseFlow ones above do not apply).
    """

    epochs: int = 25
    steps_per_epoch: int | None = None
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    alpha: float = 100.0
    beta_initial: float = 1.0
    beta_final: float = 10.0
    kappa_initial: float = 200.0
    kappa_final: float = 20.0
    switch_epoch: int = 15
    iter_gamma: float = 1.0
    use_matching_loss: bool = True
    use_position_loss: bool = True
    use_confidence_loss: bool = True
    corr_loss_weight: float = 0.0
    align_loss_weight: float = 0.0
    align_radius: int = 8
    objective: str = "localizer"
    init_from: str | None = None
    init_modules: list[str] = field(default_factory=list)
    freeze_modules: list[str] = field(default_factory=list)
    near_prior_fraction: float = 0.0
    near_prior_shift_m: float = 5.0
    near_prior_yaw_deg: float = 3.0
    amp: bool = False
    device: str = "auto"
    num_threads: int | None = None
    log_every: int = 20
    image_every: int = 500
    val_every: int = 0
    out_dir: str = "runs/default"
    resume: bool = False
    max_nonfinite_steps: int = 10
    seed: int = 0
    finematch: FineMatchLossConfig = field(default_factory=FineMatchLossConfig)

    def __post_init__(self) -> None:
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES}
        positive = ("epochs", "steps_per_epoch", "lr", "log_every", "kappa_initial",
                    "kappa_final", "num_threads")  # fmt: skip
        non_negative = ("warmup_steps", "image_every", "val_every", "max_nonfinite_steps")
        check_fields("train", self, choices, positive, non_negative)
        if not 0 < self.iter_gamma <= 1:
            raise ValueError(f"train.iter_gamma must be in (0, 1], got {self.iter_gamma}")
        if not (self.use_matching_loss or self.use_position_loss or self.use_confidence_loss):
            raise ValueError("train.use_*_loss: at least one loss term must stay enabled")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"train.objective: one of {OBJECTIVES}, got {self.objective!r}")
        if min(self.corr_loss_weight, self.align_loss_weight, self.align_radius) < 0:
            raise ValueError("train.corr_loss_weight, align_loss_weight, align_radius: >= 0")
        if not 0 <= self.near_prior_fraction <= 1:
            raise ValueError(
                f"train.near_prior_fraction must be in [0, 1], got {self.near_prior_fraction}"
            )
        if not (self.near_prior_shift_m > 0 and self.near_prior_yaw_deg > 0):
            raise ValueError("train.near_prior_shift_m and near_prior_yaw_deg must be > 0")
        if self.init_modules and self.init_from is None:
            raise ValueError("train.init_modules needs train.init_from (the file to read)")
        if self.objective == "features" and not (self.corr_loss_weight or self.align_loss_weight):
            raise ValueError(
                "train.objective=features needs train.corr_loss_weight or "
                "train.align_loss_weight > 0"
            )


@dataclass
class EvalConfig:
    """Test-time settings, read by evaluation only (training never touches the test split).

    Attributes:
        split: synthetic split to evaluate (``"test"``).
        area: synthetic area (``"same"`` or ``"cross"``).
        num: number of test pairs.
        batch_size: pairs per forward pass.
        covariance_scale: factor on the position covariance that
            :class:`cvloc.localize.Localizer` reports (1: the raw sandwich estimate;
            ``cvloc calibrate`` fits it on validation pairs, :mod:`cvloc.calibrate`).
        yaw_variance_scale: the same for the heading variance.
        refine_passes: forward passes per pair, each after the first from the previous
            estimate (:class:`cvloc.models.refinement.PriorRefinement`; 1: the model alone).
        refine_shift_m: the prior's position bound declared to the passes after the first
            (metres; None keeps the data's).
        refine_yaw_deg: the same for the heading bound (degrees).
        refine_align_shift_m: if set, the second pass starts from the first pass's rigid
            alignment of its whole BEV (FineMatch's ``align_scores``; at the prior heading,
            see ``refine_align_headings``) with this position bound (metres), not from its
            estimate (needs ``refine_passes`` >= 2).
        refine_align_headings: n > 1: that first pass runs at n headings spread over the
            prior's heading range, and the alignment is the shift whose score,
            marginalised over them, is best
            (:func:`cvloc.models.refinement.marginal_alignment`); no effect without
            ``refine_align_shift_m``. 1: the prior heading alone.
        refine_align_temperature: the temperature of that marginalisation (score units).
        classical_refine: end with the classical NCC search inside a small window around
            the estimate (:class:`cvloc.models.refinement.ClassicalRefinement`; our
            addition to both papers).
        classical_shift_m: that window's position half-range per axis (metres).
        classical_yaw_deg: its heading half-range (degrees; a known heading stays known).
        classical_rematch: then run the model once more, placed at the search's pose inside
            that window, and report its matches (the pose stays the search's); no effect
            without ``classical_refine``.
        match_upsample: interpolate the matches this many times more densely along each
            axis (:class:`cvloc.models.dense_matches.DenseMatches`; 1: the model's own
            sources). Moves no pose; for the correspondences and their metrics.
    """

    split: str = "test"
    area: str = "same"
    num: int = 500
    batch_size: int = 4
    covariance_scale: float = 1.0
    yaw_variance_scale: float = 1.0
    refine_passes: int = 1
    refine_shift_m: float | None = None
    refine_yaw_deg: float | None = None
    refine_align_shift_m: float | None = None
    refine_align_headings: int = 1
    refine_align_temperature: float = 4.0
    classical_refine: bool = False
    classical_shift_m: float = 2.0
    classical_yaw_deg: float = 2.0
    classical_rematch: bool = False
    match_upsample: int = 1

    def __post_init__(self) -> None:
        check_fields(
            "eval",
            self,
            {"area": SYNTHETIC_AREAS},
            positive=(
                "num",
                "batch_size",
                "covariance_scale",
                "yaw_variance_scale",
                "refine_passes",
                "refine_shift_m",
                "refine_yaw_deg",
                "refine_align_shift_m",
                "refine_align_headings",
                "refine_align_temperature",
                "classical_shift_m",
                "classical_yaw_deg",
                "match_upsample",
            ),
        )
        if self.refine_align_shift_m is not None and self.refine_passes < 2:
            raise ValueError(
                "eval.refine_align_shift_m needs eval.refine_passes >= 2 (the alignment of "
                f"the first pass starts the second), got refine_passes={self.refine_passes}"
            )


@dataclass
class ExperimentConfig:
    """One experiment.

    Attributes:
        data: training and validation data.
        model: the localizer.
        train: optimisation and logging.
        eval: test-time settings.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def list_presets() -> list[str]:
    """Names of the shipped presets (``cvloc/configs/NAME.yaml``).

    Returns:
        Sorted names.
    """
    return list_yaml(PRESETS_DIR)


def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a preset (by name) or a YAML file, then apply dotlist overrides.

    Args:
        name_or_path: a preset name (see :func:`list_presets`) or a path to a YAML file.
        overrides: ``key=value`` strings, e.g. ``["train.lr=1e-4", "data.batch_size=2"]``.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: no such preset or file, bad YAML, or a bad key, type or value.
    """
    path = find_yaml(name_or_path, PRESETS_DIR)
    return build_structured(ExperimentConfig, yaml_layers(path, overrides))


def config_from_dict(
    data: dict[str, Any], source: str = "dict", overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Rebuild a configuration from :func:`config_to_dict` output (e.g. a checkpoint's).

    Args:
        data: nested plain dict.
        source: its origin, for error messages.
        overrides: ``key=value`` strings applied on top, as in :func:`load_config`.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: as :func:`load_config` (e.g. a key that this version dropped).
    """
    return build_structured(ExperimentConfig, [(source, data), *dotlist_layers(overrides)])


def config_to_dict(cfg: ExperimentConfig | Any) -> dict[str, Any]:
    """A configuration (or one of its sections) as a nested dict of plain values.

    Args:
        cfg: a config dataclass.

    Returns:
        Nested dict of plain values; tuples become lists, as in JSON.
    """
    return to_plain(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """A configuration as YAML text that :func:`load_config` reads back.

    Args:
        cfg: the configuration.

    Returns:
        The YAML text (``config.yaml`` of a run).
    """
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
