import pytest
import torch

from cvloc.geometry.checks import ShapeError
from cvloc.models.update import (
    SepConvGRU,
    UpdateBlock,
    UpdateConfig,
    convex_upsample,
    upsample_flow,
)

SMALL = UpdateConfig(corr_dims=(12, 10), flow_dims=(8, 6), motion_dim=16, head_dim=12)


class TestUpsample:
    @pytest.mark.parametrize("scale", [2, 8])
    def test_constant_flow(self, scale):
        flow = torch.tensor([1.5, -0.25]).view(1, 2, 1, 1).expand(2, 2, 3, 5)
        mask = torch.randn(2, 9 * scale * scale, 3, 5)
        up = upsample_flow(flow, mask, scale)
        assert up.shape == (2, 2, 3 * scale, 5 * scale)
        expected = torch.tensor([1.5, -0.25]).view(1, 2, 1, 1) * scale
        torch.testing.assert_close(up, expected.expand_as(up))

    def test_convex_stays_in_range(self):
        x = torch.rand(2, 1, 4, 4)
        up = convex_upsample(x, torch.randn(2, 9 * 16, 4, 4) * 5, 4)
        assert up.min() >= x.min() - 1e-6 and up.max() <= x.max() + 1e-6

    def test_centre_weight_is_nearest(self):
        s = 4
        x = torch.randn(1, 3, 2, 3)
        mask = torch.full((1, 9, s, s, 2, 3), -1e4)
        mask[:, 4] = 0.0  # all weight on the cell itself (centre of the 3x3 window)
        up = convex_upsample(x, mask.view(1, 9 * s * s, 2, 3), s)
        nearest = x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        torch.testing.assert_close(up, nearest)

    def test_neighbour_layout(self):
        # Mask channel k s^2 + a s + b: neighbour k (row-major 3x3) of fine pixel (a, b).
        s = 2
        x = torch.arange(9.0).view(1, 1, 3, 3)
        mask = torch.full((1, 9, s, s, 3, 3), -1e4)
        mask[:, 5, 0, 1] = 0.0  # fine pixel (0, 1) takes the right neighbour
        for a, b in ((0, 0), (1, 0), (1, 1)):
            mask[:, 4, a, b] = 0.0
        up = convex_upsample(x, mask.view(1, 9 * s * s, 3, 3), s)
        # Cell (1, 1) = 4: its fine pixel (row 2, col 3) reads cell (1, 2) = 5.
        assert up[0, 0, 2, 3] == 5.0 and up[0, 0, 2, 2] == 4.0

    def test_exception(self):
        with pytest.raises(ShapeError, match="mask"):
            upsample_flow(torch.zeros(1, 2, 3, 3), torch.zeros(1, 9 * 4, 3, 3), 8)


class TestUpdateBlock:
    @pytest.mark.parametrize("use_confidence", [True, False])
    def test_cardinality(self, use_confidence):
        block = UpdateBlock(8, 6, 2 * 9, 4, use_confidence, SMALL)
        hidden, context = torch.rand(2, 8, 3, 5), torch.rand(2, 6, 3, 5)
        out = block(hidden, context, torch.rand(2, 18, 3, 5), torch.rand(2, 2, 3, 5))
        assert out.hidden.shape == (2, 8, 3, 5)
        assert out.delta_flow.shape == (2, 2, 3, 5)
        assert out.mask.shape == (2, 9 * 16, 3, 5)
        if use_confidence:
            assert out.confidence.shape == (2, 1, 3, 5)
            assert out.confidence.min() >= 0 and out.confidence.max() <= 1
        else:
            assert out.confidence is None and block.confidence_head is None

    def test_gru_kernels(self):
        gru = SepConvGRU(4, 3)
        assert gru.convz1.kernel_size == (1, 5) and gru.convz2.kernel_size == (5, 1)
        assert gru(torch.rand(1, 4, 6, 6), torch.rand(1, 3, 6, 6)).shape == (1, 4, 6, 6)

    def test_config_exception(self):
        with pytest.raises(ValueError, match="motion_dim"):
            UpdateConfig(motion_dim=2)
