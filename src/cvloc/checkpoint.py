"""Self-describing checkpoints and shipped weights: save, resolve, load strictly, export.

Two formats:

- **Training checkpoint** (``last.pt`` / ``best.pt``): a ``torch.save`` dict of plain
  containers and tensors only, so that it loads with ``torch.load(weights_only=True)``
  (no pickled code is ever executed; this module never loads with ``weights_only=False``).
  Keys: ``format``, ``model`` (the unwrapped state dict, no ``module.`` prefix),
  ``optimizer``, ``scheduler``, ``scaler``, ``config`` (plain dict), ``epoch``, ``step``,
  ``step_in_epoch``, ``metrics``, ``best_metric``, ``nonfinite_run``, ``rng`` (torch /
  CUDA / NumPy / Python states as tensors and lists), ``code_version``.
- **Weights file** (``NAME.safetensors``, what we ship): the model tensors plus metadata
  ``format``, ``config`` (JSON of the full experiment config), ``code_version``,
  ``step`` and ``metrics`` (JSON).

Both are written atomically (temporary file in the same directory, fsync, ``os.replace``)
so that an interruption never leaves a truncated file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save
from torch import nn

from cvloc.config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict
from cvloc.engine.builders import build_model
from cvloc.engine.checkpoint import atomic_write, code_version, config_differences

CHECKPOINT_FORMAT = "cvloc-checkpoint/1"
WEIGHTS_FORMAT = "cvloc-weights/1"
MAX_WEIGHTS_BYTES = 30 * 1024 * 1024


class CheckpointError(RuntimeError):
    """A checkpoint or weights file is unreadable or does not fit the model."""


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Write a training checkpoint atomically.

    Args:
        path: target file (``.pt``).
        checkpoint: the dict (see the module docstring); ``format`` is added.
    """
    payload = {"format": CHECKPOINT_FORMAT, **checkpoint}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint safely (``weights_only=True``).

    Args:
        path: the ``.pt`` file.
        map_location: where to put the tensors.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is corrupt, truncated or not a cvloc checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:  # fmt: skip
        raise CheckpointError(
            f"{path}: unreadable checkpoint, the file is corrupt, truncated or not a "
            f"torch.save file ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (found {found!r})")
    return ckpt


def weights_dir() -> Path:
    """The package's directory of shipped weights (package data ``cvloc/weights``).

    Returns:
        Its path (it may not exist in a source checkout without weights).
    """
    return Path(str(resources.files("cvloc") / "weights"))


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path from a path or the bare name of shipped weights.

    A bare name (no directory part and no ``.pt`` / ``.safetensors`` suffix) such as
    ``denseflow-synth-kitti-small`` resolves to ``<package>/weights/NAME.safetensors``.

    Args:
        name_or_path: a file path or a weights name.

    Returns:
        The existing file.

    Raises:
        FileNotFoundError: the path does not exist, or no shipped weights have that name
            (the message lists the available names).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    bare = path.name == str(name_or_path) and path.suffix not in (".pt", ".safetensors")
    if not bare:
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    shipped = weights_dir() / f"{path.name}.safetensors"
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in weights_dir().glob("*.safetensors"))
    raise FileNotFoundError(
        f"{name_or_path!s}: neither a file nor shipped weights in {weights_dir()} "
        f"(available: {available or 'none'})"
    )


def checkpoint_sha256(name_or_path: str | os.PathLike) -> str:
    """The SHA-256 of a checkpoint's file, so that results name the exact weights.

    A weights name resolves to a file whose content changes when new weights ship; results
    files record this digest beside the name, which makes stale results detectable.

    Args:
        name_or_path: a file path or a shipped weights name (see :func:`resolve_checkpoint`).

    Returns:
        The hex digest of the resolved file's bytes.

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
    """
    digest = hashlib.sha256()
    with resolve_checkpoint(name_or_path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    overrides: Sequence[str] = (),
) -> tuple[nn.Module, ExperimentConfig]:
    """Build the model a checkpoint or weights file describes and load it strictly.

    Args:
        name_or_path: a ``.pt`` training checkpoint, a ``.safetensors`` weights file or
            a shipped weights name (see :func:`resolve_checkpoint`).
        device: where to put the model.
        overrides: ``key=value`` strings applied to the stored config before the model is
            built, for options that keep every tensor's shape (e.g.
            ``model.denseflow.iters=12``, ``model.denseflow.bev_samples=4``).

    Returns:
        (model in eval mode, its experiment config with the overrides).

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
        CheckpointError: the file is corrupt, its config (with ``overrides``) is invalid,
            or its tensors do not fit the model that config describes (the message lists
            the keys).
    """
    path, state, config_dict = read_model_state(name_or_path)
    try:
        cfg = config_from_dict(config_dict, f"{path} (stored config)", overrides)
    except ConfigError as exc:
        given = f" with overrides {list(overrides)}" if overrides else ""
        raise CheckpointError(f"{path}: stored config{given} is not valid here: {exc}") from exc
    model = build_model(cfg.model)
    load_state_dict_strict(model, state, str(path))
    return model.to(device).eval(), cfg


def read_model_state(
    name_or_path: str | os.PathLike,
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The model tensors and stored config of a checkpoint or weights file (no code runs).

    Args:
        name_or_path: a ``.pt`` training checkpoint, a ``.safetensors`` weights file or
            a shipped weights name (see :func:`resolve_checkpoint`).

    Returns:
        (resolved path, state dict, config as a plain dict).

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
        CheckpointError: the file is corrupt.
    """
    path = resolve_checkpoint(name_or_path)
    if path.suffix == ".safetensors":
        state, meta = _read_weights(path)
        config_dict = meta["config"]
    else:
        ckpt = load_checkpoint(path)
        state, config_dict = ckpt["model"], ckpt["config"]
    return path, state, config_dict


def init_weights(
    model: nn.Module, name_or_path: str | os.PathLike, modules: Sequence[str] = ()
) -> None:
    """Fill a freshly built model with the weights of a checkpoint (``train.init_from``).

    Without ``modules`` the file's architecture must be the model's: every tensor name and
    shape must match. With ``modules`` only those sub-modules are filled, each one whole
    (every tensor of it, same shapes), from the same-named sub-module of the file or, for
    an entry ``"dst=src"``, from the file's ``src``: a FineMatch can start from the
    encoders a DenseFlow pre-trained (``ground_encoder``, ``bev_refine=refine``).

    Args:
        model: the model to fill.
        name_or_path: checkpoint, weights file or shipped weights name.
        modules: names of the model's sub-modules to fill (``()``: all of it); dotted
            names reach nested ones (``update.gru``).

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
        CheckpointError: corrupt file, weights of another architecture, or a module
            missing on either side (the message lists the mismatching keys).
    """
    path, state, _ = read_model_state(name_or_path)
    source = f"{path} (train.init_from)"
    if not modules:
        load_state_dict_strict(model, state, source)
        return
    own = model.state_dict()
    wanted: dict[str, torch.Tensor] = {}
    picked: dict[str, torch.Tensor] = {}
    for entry in modules:
        dst, _, src = entry.partition("=")
        src = src or dst
        dst_keys = {k: v for k, v in own.items() if k.startswith(f"{dst}.")}
        src_keys = {dst + k[len(src) :]: v for k, v in state.items() if k.startswith(f"{src}.")}
        if not dst_keys:
            raise CheckpointError(f"{source}: the model has no module {dst!r}")
        if not src_keys:
            raise CheckpointError(f"{source}: the file has no module {src!r} (for {entry!r})")
        wanted.update(dst_keys)
        picked.update(src_keys)
    problems = _mismatches(wanted, picked)
    if problems:
        raise CheckpointError(f"{source}: modules {list(modules)} do not fit; {problems}")
    model.load_state_dict(picked, strict=False)


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """``load_state_dict(strict=True)`` with an error that names every mismatching key.

    Args:
        model: the model to fill.
        state: the tensors to load.
        source: the file they came from, for the message.

    Raises:
        CheckpointError: missing keys, unexpected keys or shape mismatches.
    """
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{source}: weights of another architecture or config; {problems}")
    model.load_state_dict(state, strict=True)


def _mismatches(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against ``own``."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", shapes)):  # fmt: skip
        if items:
            problems.append(f"{label} ({len(items)}): {_preview(items)}")
    return "; ".join(problems)


def export_weights(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    max_bytes: int | None = MAX_WEIGHTS_BYTES,
) -> Path:
    """Write a training checkpoint's model as a shippable ``.safetensors`` weights file.

    Args:
        checkpoint: the ``.pt`` training checkpoint (e.g. ``best.pt``).
        out: the ``.safetensors`` file to write.
        max_bytes: refuse to write a larger file (None: no limit).

    Returns:
        The written path.

    Raises:
        CheckpointError: the checkpoint is unreadable, or the weights exceed ``max_bytes``.
    """
    ckpt = load_checkpoint(checkpoint)
    metadata = checkpoint_metadata(ckpt)
    return write_weights(out, ckpt["model"], metadata, max_bytes, source=str(checkpoint))


def average_weights(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    max_bytes: int | None = MAX_WEIGHTS_BYTES,
) -> Path:
    """Write the uniform average of several checkpoints of one model as a weights file.

    A "model soup": checkpoints of one fine-tuning lineage (one started from another) lie
    in one basin of the loss, where their average is often better than either. Floating
    tensors are averaged in float64 and stored in their own dtype; integer tensors (batch
    norm's ``num_batches_tracked``) are the first source's, as are the config and the
    recorded training data. The metadata records the sources (path, SHA-256, step) under
    ``averaged_from``. Nothing measured on a source holds for the average: ``metrics`` is
    empty, and a calibration is dropped (the uncertainty scales reset to 1; run
    ``cvloc calibrate`` on the average).

    Args:
        sources: two or more ``.pt`` checkpoints, weights files or shipped names.
        out: the ``.safetensors`` file to write.
        max_bytes: refuse to write larger weights (None: no limit).

    Returns:
        The written path.

    Raises:
        ValueError: fewer than two sources.
        FileNotFoundError: see :func:`resolve_checkpoint`.
        CheckpointError: a corrupt source, or sources whose model configs, tensor names or
            shapes differ (the message names them).
    """
    if len(sources) < 2:
        raise ValueError(f"expected at least two checkpoints to average, got {len(sources)}")
    read = [_read_with_metadata(source) for source in sources]
    first_path, first_state, first_meta = read[0]
    first_model = _model_section(first_path, first_meta["config"])
    totals = {k: v.double() for k, v in first_state.items() if v.is_floating_point()}
    for path, state, meta in read[1:]:
        diffs = config_differences(first_model, _model_section(path, meta["config"]), "model.")
        problems = _mismatches(first_state, state)
        if diffs or problems:
            found = "; ".join(diffs + ([problems] if problems else []))
            raise CheckpointError(f"{path}: not the model of {first_path}; {found}")
        for key in totals:
            totals[key] += state[key].double()
    averaged = {
        k: (totals[k] / len(read)).to(v.dtype) if k in totals else v
        for k, v in first_state.items()
    }
    config = dict(first_meta["config"])
    config["eval"] = {**config.get("eval", {}), "covariance_scale": 1.0, "yaw_variance_scale": 1.0}
    metadata = {
        **{k: v for k, v in first_meta.items() if k != "calibration"},
        "config": config,
        "code_version": code_version(),
        "metrics": {},
        "averaged_from": [
            {"path": str(path), "sha256": checkpoint_sha256(path), "step": meta["step"]}
            for path, _, meta in read
        ],
    }
    return write_weights(out, averaged, metadata, max_bytes, source=str(first_path))


def _model_section(path: Path | str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The stored model config with this code's defaults filled in (older files lack keys).

    Only the model section is read, so a stored data or training key that this code no
    longer knows does not matter here.
    """
    model = {"model": config.get("model", {})}
    try:
        return config_to_dict(config_from_dict(model, f"{path} (stored config)").model)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: stored model config is not valid here: {exc}") from exc


def _read_with_metadata(
    name_or_path: str | os.PathLike,
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and weights-file metadata (:func:`checkpoint_metadata`) of either format."""
    path = resolve_checkpoint(name_or_path)
    if path.suffix == ".safetensors":
        state, meta = _read_weights(path)
        return path, state, meta
    ckpt = load_checkpoint(path)
    return path, ckpt["model"], checkpoint_metadata(ckpt)


def checkpoint_metadata(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The weights-file metadata of a training checkpoint (decoded, see :func:`write_weights`).

    ``training_data`` records the working sizes and prior ranges of the data the model
    trained on (:func:`cvloc.localize_inputs.training_settings`) while that data is still
    at hand: a model trained on a pairs directory stays usable where the directory is not.
    It is None when they cannot be read.

    Args:
        ckpt: a loaded training checkpoint.

    Returns:
        ``format``, ``config``, ``code_version``, ``step``, ``metrics``, ``training_data``.
    """
    from cvloc.localize_inputs import readable_training_settings

    try:
        settings = readable_training_settings(config_from_dict(ckpt["config"]))
    except (ConfigError, KeyError, ValueError):  # a config this code cannot read
        settings = None
    return {
        "format": WEIGHTS_FORMAT,
        "config": ckpt["config"],
        "code_version": ckpt.get("code_version", code_version()),
        "step": ckpt.get("step", 0),
        "metrics": ckpt.get("metrics", {}),
        "training_data": settings,
    }


def write_weights(
    out: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    max_bytes: int | None = MAX_WEIGHTS_BYTES,
    source: str = "weights",
) -> Path:
    """Write a ``.safetensors`` weights file atomically, with the usual permissions.

    Args:
        out: the file to write.
        tensors: the model tensors.
        metadata: ``format`` (a string) and the other entries (``config``,
            ``code_version``, ``step``, ``metrics``, ...), stored as JSON: the decoded form
            :func:`weights_metadata` returns.
        max_bytes: refuse to write larger weights (None: no limit).
        source: what the tensors came from, for the error message.

    Returns:
        The written path.

    Raises:
        CheckpointError: the weights exceed ``max_bytes``.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_bytes is not None and size > max_bytes:
        raise CheckpointError(
            f"{source}: weights take {size / 2**20:.1f} MiB, more than the "
            f"{max_bytes / 2**20:.1f} MiB limit of shipped weights"
        )
    encoded = {k: v if k == "format" else json.dumps(v) for k, v in metadata.items()}
    out = Path(out)
    # safetensors' save_file creates the file private (0o600); writing its bytes ourselves
    # gives the usual umask permissions, so others can read the weights they are sent.
    data = save(tensors, metadata=encoded)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return out


def weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a weights file (config, code version, step, metrics).

    Args:
        path: the ``.safetensors`` file.

    Returns:
        The metadata with JSON values decoded.

    Raises:
        CheckpointError: the file is corrupt or not a cvloc weights file.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: unreadable weights file, corrupt or truncated ({_first_line(exc)})"
        ) from exc
    if meta.get("format") != WEIGHTS_FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: not a {WEIGHTS_FORMAT} file (no config in metadata)")
    try:
        return {k: v if k == "format" else json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt metadata ({exc})") from exc


def stored_training_data(name_or_path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``training_data`` a weights file records (:func:`checkpoint_metadata`), if any.

    Args:
        name_or_path: weights name or file, or a training checkpoint (which records none).

    Returns:
        Keyword arguments of :class:`cvloc.localize.Localizer`, or None.

    Raises:
        FileNotFoundError: see :func:`resolve_checkpoint`.
        CheckpointError: a corrupt weights file.
    """
    path = resolve_checkpoint(name_or_path)
    if path.suffix != ".safetensors":
        return None
    stored = weights_metadata(path).get("training_data")
    return dict(stored) if stored else None


def check_same_model(ckpt_config: Mapping[str, Any], cfg: ExperimentConfig, source: str) -> None:
    """Refuse a checkpoint whose model config differs from ``cfg.model``.

    The stored model section is compared with this code's defaults filled in, so a
    checkpoint written before a model key existed matches a config that keeps that key's
    default, as :func:`load_model` would build it.

    Args:
        ckpt_config: the checkpoint's stored config dict.
        cfg: the current experiment config.
        source: the checkpoint path, for the message.

    Raises:
        CheckpointError: the model sections differ (the message names every key).
    """
    # Both sides with this code's defaults filled in: a key added since the checkpoint was
    # written means its default, as when the checkpoint is loaded (load_model).
    stored = _model_section(source, ckpt_config)
    diffs = config_differences(stored, config_to_dict(cfg.model), "model.")
    if diffs:
        raise CheckpointError(
            f"{source}: the checkpoint's model config differs from the current one: "
            + "; ".join(diffs)
        )


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and decoded metadata (:func:`weights_metadata`) of a weights file."""
    meta = weights_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({_first_line(exc)})") from exc
    return state, meta


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
