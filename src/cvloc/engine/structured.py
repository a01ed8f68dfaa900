"""Strict construction of typed (dataclass) configs from YAML files and dotlist overrides.

OmegaConf merges every layer onto the dataclass defaults, rejecting unknown keys and
values of the wrong type; the dataclasses are then constructed section by section, deepest
first, so that a ``__post_init__`` check names the section it failed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration could not be loaded: bad key, type, value or file."""


def yaml_layers(path: Path, overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """Read a YAML file and parse dotlist overrides into (source, layer) pairs.

    Args:
        path: the YAML file.
        overrides: ``key=value`` strings.

    Returns:
        The layers, file first.

    Raises:
        ConfigError: the file is unreadable or not a mapping, or an override is malformed.
    """
    try:
        content = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable YAML config ({exc})") from exc
    if not isinstance(content, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return [(str(path), content), *dotlist_layers(overrides)]


def dotlist_layers(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """Dotlist overrides as a layer for :func:`build_structured` (none if there are none).

    Args:
        overrides: ``key=value`` strings.

    Returns:
        ``[("overrides", layer)]``, or ``[]``.

    Raises:
        ConfigError: an override is malformed.
    """
    if not overrides:
        return []
    try:
        return [("overrides", OmegaConf.from_dotlist(list(overrides)))]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"overrides {list(overrides)}: {exc}") from exc


def build_structured(schema: type[T], layers: Sequence[tuple[str, Any]]) -> T:
    """Merge layers onto the defaults of ``schema`` in order; construct and validate it.

    Args:
        schema: the top-level config dataclass.
        layers: (source name, mapping) pairs; later layers win.

    Returns:
        The constructed dataclass.

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid value; the message names
            the key (or section) and the layer it came from.
    """
    merged = OmegaConf.structured(schema)
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            raise ConfigError(_describe(exc, source)) from exc
    _validate_sections(merged, "")
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_plain(value: Any) -> Any:
    """Nested dicts and sequences as dicts and lists (tuples become lists, as in JSON).

    Args:
        value: a nested container of plain values.

    Returns:
        The converted value.
    """
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def _validate_sections(node: DictConfig, prefix: str) -> None:
    """Construct every nested dataclass, deepest first, so an error names its section."""
    for key in node:
        child = node[key]
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            _validate_sections(child, f"{prefix}{key}.")
    try:
        OmegaConf.to_object(node)
    except (ValueError, TypeError) as exc:
        section = prefix.rstrip(".") or "config"
        message = str(exc) if str(exc).startswith(section) else f"{section}: {exc}"
        raise ConfigError(message) from exc


def _describe(exc: OmegaConfBaseException, source: str) -> str:
    """A one-line message naming the offending key and the layer it came from."""
    key = getattr(exc, "full_key", None)
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not key:
        return f"{source}: {first_line}"
    if "not in" in first_line:
        return f"{source}: unknown key '{key}' ({first_line})"
    return f"{source}: bad value for '{key}': {first_line}"


def check_fields(
    section: str,
    obj: Any,
    choices: dict[str, Sequence[str]] | None = None,
    positive: Sequence[str] = (),
    non_negative: Sequence[str] = (),
) -> None:
    """Validate fields of a config dataclass; errors name ``section.field``.

    Args:
        section: the dotted path of ``obj`` in the experiment config (e.g. ``"train"``).
        obj: the dataclass instance.
        choices: field -> allowed values.
        positive: fields that must be > 0 (None passes: an optional field left unset).
        non_negative: fields that must be >= 0 (None passes).

    Raises:
        ValueError: the first violation.
    """
    for name, allowed in (choices or {}).items():
        if getattr(obj, name) not in allowed:
            raise ValueError(
                f"{section}.{name} must be one of {list(allowed)}, got {getattr(obj, name)!r}"
            )
    for names, ok, what in ((positive, (0.0).__lt__, "> 0"), (non_negative, (0.0).__le__, ">= 0")):
        for name in names:
            value = getattr(obj, name)
            if value is not None and not ok(value):
                raise ValueError(f"{section}.{name} must be {what}, got {value}")


def list_yaml(directory: Path) -> list[str]:
    """Names (without ``.yaml``) of the YAML files in a directory.

    Args:
        directory: the directory.

    Returns:
        Sorted names.
    """
    return sorted(p.stem for p in directory.glob("*.yaml"))


def find_yaml(name_or_path: str | Path, directory: Path) -> Path:
    """A YAML file given by path, or by name in ``directory``.

    Args:
        name_or_path: a path (anything ending in ``.yaml`` / ``.yml`` or an existing file)
            or a bare name.
        directory: where names are looked up (``NAME.yaml``).

    Returns:
        The existing file.

    Raises:
        ConfigError: no such file; for a name, the message lists the available names.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: config file not found")
        return candidate
    named = directory / f"{name_or_path}.yaml"
    if not named.is_file():
        raise ConfigError(
            f"unknown config {str(name_or_path)!r}: neither a file nor a preset; "
            f"presets: {list_yaml(directory)}"
        )
    return named
