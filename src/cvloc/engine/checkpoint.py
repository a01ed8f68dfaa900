"""Training-state plumbing for checkpoints: atomic writes, RNG states, code version.

Everything here produces or consumes plain containers and tensors, so that checkpoints
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvloc import __version__


def code_version() -> dict[str, str]:
    """The package version and, when run from a git checkout, its commit.

    Returns:
        ``{"cvloc": __version__, "git_sha": sha or "unknown"}``.
    """
    sha = "unknown"
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0:
            sha = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass  # no git binary or not a checkout: the version string is all we know
    return {"cvloc": __version__, "git_sha": sha}


def capture_rng_state() -> dict[str, Any]:
    """The torch, CUDA, NumPy and Python RNG states as tensors and lists.

    Returns:
        A dict that ``torch.load(weights_only=True)`` can read back.
    """
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the RNG states saved by :func:`capture_rng_state`.

    Args:
        state: the saved dict.
    """
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write a file through a temporary sibling, fsync it, then rename it into place.

    Args:
        path: final path.
        write: called with the temporary path; writes the content there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling created by the writer itself, so the file gets the usual umask
    # permissions (mkstemp would make it private).
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"))
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str
) -> list[str]:
    """Keys whose values differ between two nested config dicts.

    Args:
        saved: the stored config (section).
        current: the current config (same section).
        prefix: dotted path of the section, for the messages.

    Returns:
        ``"key: checkpoint X, now Y"`` lines (empty when equal).
    """
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return diffs
