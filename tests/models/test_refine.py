import torch

from cvloc.models.refine import RefineBlock


class TestRefineBlock:
    def test_cardinality(self):
        block = RefineBlock(6)
        assert block(torch.rand(2, 6, 5, 7)).shape == (2, 6, 5, 7)

    def test_layers(self):
        convs = [m for m in RefineBlock(6).modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.kernel_size for c in convs] == [(7, 7), (3, 3), (3, 3), (1, 1)]

    def test_disabled_is_identity(self):
        block = RefineBlock(6, enabled=False)
        x = torch.rand(1, 6, 4, 4)
        assert block(x) is x
        assert not list(block.parameters())
