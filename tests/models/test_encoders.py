import pickle

import pytest
import torch
from safetensors.torch import save_file

from cvloc.models.encoders import NORMS, EncoderConfig, ResNetEncoder, load_pretrained

TINY = EncoderConfig(base_channels=8, blocks_per_stage=(1, 2, 1))


def _torchvision_like_state(config: EncoderConfig) -> dict[str, torch.Tensor]:
    """A ResNet state dict as torchvision names it: the backbone plus layer4 and fc."""
    torch.manual_seed(1)
    state = {
        k: torch.randn_like(v.float()).to(v.dtype)
        for k, v in ResNetEncoder(config, 4).state_dict().items()
        if not k.startswith("proj.")
    }
    state["layer4.0.conv1.weight"] = torch.randn(8, 8, 3, 3)
    state["fc.weight"] = torch.randn(10, 8)
    state["fc.bias"] = torch.randn(10)
    return state


class TestResNetEncoder:
    @pytest.mark.parametrize("batch", [1, 2])
    @pytest.mark.parametrize("norm", NORMS)
    def test_cardinality(self, batch, norm):
        enc = ResNetEncoder(EncoderConfig(base_channels=8, norm=norm), out_dim=12)
        out = enc(torch.rand(batch, 3, 32, 48))
        assert out.shape == (batch, 12, 4, 6)

    def test_torchvision_names(self):
        keys = set(ResNetEncoder(EncoderConfig(), 256).state_dict())
        for key in (
            "conv1.weight",
            "bn1.running_var",
            "layer1.1.conv2.weight",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.bias",
            "layer3.0.downsample.0.weight",
            "layer3.1.bn2.weight",
            "proj.weight",
        ):
            assert key in keys
        assert "mean" not in keys and "std" not in keys  # normalisation is not a weight
        # torchvision's resnet18 has 122 entries: 90 up to layer3, then layer4 and fc.
        assert len([k for k in keys if not k.startswith("proj.")]) == 90

    def test_resnet18_shapes(self):
        state = ResNetEncoder(EncoderConfig(), 256).state_dict()
        assert state["conv1.weight"].shape == (64, 3, 7, 7)
        assert state["layer3.0.conv1.weight"].shape == (256, 128, 3, 3)
        assert state["layer3.0.downsample.0.weight"].shape == (256, 128, 1, 1)

    def test_normalisation_inside(self):
        enc = ResNetEncoder(TINY, 4).eval()
        grey = torch.ones(1, 3, 16, 16) * torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        # A mean-coloured image is zero after normalisation: every conv sees zeros.
        stem = enc.conv1((grey - enc.mean) / enc.std)
        assert stem.abs().max() < 1e-6

    @pytest.mark.parametrize("norm", ["batch", "none"])
    def test_stride_4_is_the_dilated_stride_8_network(self, norm):
        # A trous equivalence, an independent check of the dilation plan: with the same
        # weights, the stride-4 encoder's every second cell is the stride-8 encoder's
        # output (exact up to rounding in eval mode; padding and borders included).
        config = EncoderConfig(base_channels=8, blocks_per_stage=(1, 2, 2), norm=norm)
        torch.manual_seed(0)
        enc8 = ResNetEncoder(config, 6).eval()
        enc4 = ResNetEncoder(config, 6, output_stride=4).eval()
        if norm == "batch":  # non-trivial running statistics
            for m in enc8.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
        enc4.load_state_dict(enc8.state_dict())  # same names and shapes
        image = torch.rand(2, 3, 40, 56)
        with torch.no_grad():
            out8, out4 = enc8(image), enc4(image)
        assert out8.shape == (2, 6, 5, 7) and out4.shape == (2, 6, 10, 14)
        torch.testing.assert_close(out4[..., ::2, ::2], out8, atol=1e-5, rtol=1e-5)

    def test_exception(self):
        with pytest.raises(ValueError, match="output_stride"):
            ResNetEncoder(TINY, 4, output_stride=2)
        with pytest.raises(ValueError, match="norm"):
            EncoderConfig(norm="layer")
        with pytest.raises(ValueError, match="blocks_per_stage"):
            EncoderConfig(blocks_per_stage=(2, 0, 2))
        with pytest.raises(ValueError, match="image"):
            ResNetEncoder(TINY, 4)(torch.rand(1, 1, 16, 16))


class TestLoadPretrained:
    @pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
    def test_loads_backbone_only(self, tmp_path, suffix):
        state = _torchvision_like_state(TINY)
        path = tmp_path / f"resnet{suffix}"
        if suffix == ".pth":
            torch.save({f"module.{k}": v for k, v in state.items()}, path)
        else:
            save_file(state, str(path))
        enc = ResNetEncoder(TINY, 4)
        proj_before = enc.proj.weight.clone()
        report = load_pretrained(enc, path)
        own = enc.state_dict()
        assert report.missing == []
        assert report.unused == ["fc.bias", "fc.weight", "layer4.0.conv1.weight"]
        assert "layer3.0.downsample.0.weight" in report.loaded
        for key in report.loaded:
            torch.testing.assert_close(own[key], state[key])
        torch.testing.assert_close(enc.proj.weight, proj_before)

    def test_checkpoint_dict_and_missing(self, tmp_path):
        state = _torchvision_like_state(TINY)
        del state["layer1.0.conv1.weight"]
        path = tmp_path / "ckpt.pt"
        torch.save({"state_dict": state, "epoch": 3}, path)
        report = load_pretrained(ResNetEncoder(TINY, 4), path)
        assert report.missing == ["layer1.0.conv1.weight"]
        assert "missing 1" in str(report)

    def test_shape_mismatch_is_an_error(self, tmp_path):
        path = tmp_path / "r.pth"
        torch.save(_torchvision_like_state(TINY), path)
        enc = ResNetEncoder(EncoderConfig(base_channels=16, blocks_per_stage=(1, 2, 1)), 4)
        before = enc.conv1.weight.clone()
        with pytest.raises(ValueError, match=r"shape mismatch.*conv1\.weight"):
            load_pretrained(enc, path)
        torch.testing.assert_close(enc.conv1.weight, before)  # nothing loaded

    def test_no_matching_key(self, tmp_path):
        path = tmp_path / "r.pth"
        torch.save({"backbone.conv1.weight": torch.zeros(8, 3, 7, 7)}, path)
        with pytest.raises(ValueError, match="no key matches"):
            load_pretrained(ResNetEncoder(TINY, 4), path)

    def test_never_unpickles_code(self, tmp_path):
        path = tmp_path / "evil.pth"
        marker = tmp_path / "ran"

        class Evil:
            def __reduce__(self):
                return (marker.touch, ())

        with open(path, "wb") as f:
            pickle.dump({"conv1.weight": Evil()}, f, protocol=2)
        with pytest.raises(pickle.UnpicklingError):
            load_pretrained(ResNetEncoder(TINY, 4), path)
        assert not marker.exists()
