"""Shape and value guards used at public boundaries.

A failed check raises :class:`ShapeError` (a ``ValueError``) naming the argument, the
expected shape and the actual one, in the spirit of kornia's ``KORNIA_CHECK_SHAPE``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ShapeError(ValueError):
    """A tensor argument does not have the documented shape."""


def check_shape(x: torch.Tensor, shape: Sequence[str | int], name: str = "tensor") -> None:
    """Check that ``x`` matches a symbolic shape.

    Args:
        x: tensor to check.
        shape: one entry per dimension: an int (exact size), a letter (any size, but the
            same letter must take the same size throughout this call), or ``"*"`` as the
            first entry for any number of leading dimensions.
        name: argument name used in the error message.

    Raises:
        ShapeError: when the rank or a size does not match.
    """
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    dims = list(shape)
    actual = tuple(x.shape)
    if dims and dims[0] == "*":
        dims = dims[1:]
        ok_rank = x.dim() >= len(dims)
        actual_tail = actual[x.dim() - len(dims) :] if ok_rank else actual
    else:
        ok_rank = x.dim() == len(dims)
        actual_tail = actual
    expected = "(" + ", ".join(str(d) for d in shape) + ")"
    if not ok_rank:
        raise ShapeError(f"{name}: expected shape {expected}, got {actual}")
    bound: dict[str, int] = {}
    for want, have in zip(dims, actual_tail, strict=True):
        if isinstance(want, int):
            if want != have:
                raise ShapeError(f"{name}: expected shape {expected}, got {actual}")
        elif want in bound and bound[want] != have:
            raise ShapeError(
                f"{name}: expected shape {expected}, got {actual} "
                f"({want} is {bound[want]} elsewhere)"
            )
        else:
            bound[want] = have


def check_same_batch(*named: tuple[str, torch.Tensor]) -> None:
    """Check that tensors share their leading (batch) size.

    Args:
        named: pairs of (argument name, tensor).

    Raises:
        ShapeError: when the first dimensions differ.
    """
    sizes = {name: t.shape[0] for name, t in named}
    if len(set(sizes.values())) > 1:
        raise ShapeError(f"batch sizes differ: {sizes}")
