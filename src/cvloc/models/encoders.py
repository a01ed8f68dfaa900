"""ResNet-18-style image encoders at 1/8 resolution (DenseFlow paper sections 3.1, 3.2, 4.3).

DenseFlow extracts ground and satellite features with two separate ResNet-18 networks at
1/8 of the input resolution with 256 channels (section 4.3), and a context encoder "of the
same architecture" on the ground image (section 3.2). :class:`ResNetEncoder` is that
network: the torchvision ResNet stem and BasicBlock stages with the same module names
(``conv1``, ``bn1``, ``layer1`` ... ``layer3``), so an ImageNet ResNet-18 state dict can
initialise it (:func:`load_pretrained`), followed by a 1x1 projection ``proj``.

The third stage keeps stride 1 (torchvision's ``layer3`` has stride 2): its weights have
the same shapes, and the output stays at 1/8 resolution.

``output_stride=4`` also keeps ``layer2`` at stride 1 and dilates the 3x3 convolutions after
it by 2 (DeepLab's atrous ResNet), so the receptive field in image pixels stays that of the
stride-8 network and every weight keeps its shape: a stride-8 model's weights initialise a
stride-4 one. It matches the feature cell of the paper's KITTI setting (stride 8 at 0.2 m
per pixel: 1.6 m) on our synthetic ``kitti-small`` satellite images (0.392 m per pixel).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cvloc.geometry.checks import check_shape

logger = logging.getLogger(__name__)

NORMS = ("batch", "instance", "group", "none")
# ImageNet statistics of the torchvision ResNet weights, for RGB images in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_STRIDE = 8
OUTPUT_STRIDES = (4, 8)


@dataclass(frozen=True)
class EncoderConfig:
    """Width, depth and normalisation of a :class:`ResNetEncoder` backbone.

    Attributes:
        base_channels: channels of the stem and of ``layer1`` (64 in ResNet-18); ``layer2``
            and ``layer3`` have 2x and 4x as many.
        blocks_per_stage: BasicBlocks in ``layer1``, ``layer2``, ``layer3`` ((2, 2, 2) in
            ResNet-18).
        norm: ``"batch"``, ``"instance"`` (no affine parameters, as RAFT's feature
            encoder), ``"group"`` (channels / 8 groups) or ``"none"``.
        pretrained_path: optional local ResNet-18 state dict (``.pth`` / ``.pt`` /
            ``.safetensors``) loaded into the backbone by :func:`load_pretrained`; None
            keeps the random initialisation.
    """

    base_channels: int = 64
    blocks_per_stage: tuple[int, int, int] = (2, 2, 2)
    norm: str = "batch"
    pretrained_path: str | None = None

    def __post_init__(self) -> None:
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be positive, got {self.base_channels}")
        if len(self.blocks_per_stage) != 3 or min(self.blocks_per_stage) < 1:
            raise ValueError(
                f"blocks_per_stage must be 3 positive counts, got {self.blocks_per_stage}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name.

    Args:
        kind: one of :data:`NORMS`.
        channels: number of channels C of the (B, C, H, W) input.

    Returns:
        The layer (``nn.Identity`` for ``"none"``).
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 8), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 convolutions with a residual connection.

    Module names follow torchvision (``conv1``, ``bn1``, ``conv2``, ``bn2``,
    ``downsample``). Input (B, C_in, H, W) -> output (B, C_out, H / stride, W / stride).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: stride of the first convolution (1 or 2).
        norm: normalisation name, see :func:`make_norm`.
        dilation: dilation of the first and of the second convolution (default (1, 1)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: str,
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        d1, d2 = dilation
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, d1, d1, bias=False)
        self.bn1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, d2, d2, bias=False)
        self.bn2 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                make_norm(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, C_in, H, W).

        Returns:
            (B, C_out, H / stride, W / stride).
        """
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18-style encoder: RGB image -> features at 1/8 (or 1/4) resolution.

    Stem 7x7/2 conv + 3x3/2 max pool (1/4), ``layer1`` (1/4), ``layer2`` (stride 2, 1/8),
    ``layer3`` (stride 1, 1/8), then a 1x1 projection ``proj`` to ``out_dim`` channels.
    With ``output_stride=4``, ``layer2`` has stride 1 and the convolutions after its first
    one are dilated by 2 (module docstring). Images in [0, 1] are normalised with the
    ImageNet mean and std inside the encoder.

    Args:
        config: backbone width, depth and normalisation.
        out_dim: channels of the output features.
        output_stride: 8 or 4, image pixels per feature cell.
    """

    def __init__(self, config: EncoderConfig, out_dim: int, output_stride: int = OUTPUT_STRIDE):
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        c, norm, blocks = config.base_channels, config.norm, config.blocks_per_stage
        widths = (c, 2 * c, 4 * c)
        # Stride 4: layer2 keeps the resolution and what follows its first 3x3 convolution
        # is dilated by 2, so that every later convolution sees the same image extent.
        d = OUTPUT_STRIDE // output_stride
        self.conv1 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(c, widths[0], blocks[0], 1, norm, (1, 1))
        self.layer2 = self._stage(widths[0], widths[1], blocks[1], 2 // d, norm, (1, d))
        self.layer3 = self._stage(widths[1], widths[2], blocks[2], 1, norm, (d, d))
        self.proj = nn.Conv2d(widths[2], out_dim, 1)
        for name, stats in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
            self.register_buffer(name, torch.tensor(stats).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    @staticmethod
    def _stage(
        in_ch: int, out_ch: int, blocks: int, stride: int, norm: str, dilation: tuple[int, int]
    ) -> nn.Sequential:
        """``blocks`` BasicBlocks; ``dilation``: of the first convolution, of all others."""
        first, rest = dilation
        layers = [BasicBlock(in_ch, out_ch, stride, norm, (first, rest))]
        layers += [BasicBlock(out_ch, out_ch, 1, norm, (rest, rest)) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Encode an image.

        Args:
            image: (B, 3, H, W) RGB in [0, 1]; H and W divisible by the output stride s.

        Returns:
            (B, out_dim, H / s, W / s) features.
        """
        check_shape(image, ["B", 3, "H", "W"], "image")
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.proj(x)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        loaded: backbone keys initialised from the file.
        missing: backbone keys absent from the file (kept at their current values).
        unused: file keys that are not part of the backbone (e.g. ``layer4.*``, ``fc.*``).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"loaded {len(self.loaded)} backbone tensors; missing {len(self.missing)}: "
            f"{self.missing}; unused from the file {len(self.unused)}: {self.unused}"
        )


def load_pretrained(encoder: ResNetEncoder, path: str | Path) -> LoadReport:
    """Initialise the backbone of an encoder from a local ResNet state dict.

    Only the backbone (``conv1``, ``bn1``, ``layer1`` ... ``layer3``) is loaded, never
    ``proj``; file keys are matched by name after removing a ``module.`` prefix. The file
    is read with ``torch.load(weights_only=True)`` (``.pth`` / ``.pt``; a checkpoint dict
    with a ``state_dict`` entry is accepted) or ``safetensors`` (``.safetensors``), so no
    code from it is executed.

    Args:
        encoder: the encoder to initialise in place.
        path: local file path.

    Returns:
        The report of loaded, missing and unused keys (also logged at INFO level).

    Raises:
        ValueError: a matching key has a different shape (nothing is loaded then), no key
            matches at all, or the file does not hold a tensor mapping.
    """
    state = _read_state_dict(Path(path))
    own = {k: v for k, v in encoder.state_dict().items() if not k.startswith("proj.")}
    matched = {k: v for k, v in state.items() if k in own}
    bad = [
        f"{k}: file {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
        for k, v in matched.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {len(bad)} keys: {bad}")
    if not matched:
        raise ValueError(f"{path}: no key matches the encoder backbone (e.g. {next(iter(own))})")
    encoder.load_state_dict(matched, strict=False)
    report = LoadReport(
        loaded=sorted(matched),
        missing=sorted(set(own) - set(matched)),
        unused=sorted(set(state) - set(own)),
    )
    logger.info("%s: %s", path, report)
    return report


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: object = load_file(str(path), device="cpu")
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{path}: expected a mapping of names to tensors")
    return {k.removeprefix("module."): v for k, v in raw.items()}
