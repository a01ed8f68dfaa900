"""Visibility head: shapes, an untrained head keeps the match weights, it learns a mask."""

import torch

from cvloc.models.visibility import INITIAL_LOGIT, VisibilityHead


def inputs(B=2, C=6, Z=3, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, C, H, W, generator=g),
        torch.randn(B, Z, H, W, generator=g),
        torch.rand(B, Z, H, W, generator=g) > 0.3,
        torch.rand(B, 1, H, W, generator=g),
    )


def test_shape_and_initial_probability():
    head = VisibilityHead(6, 3, hidden=8)
    logits = head(*inputs())
    assert logits.shape == (2, 1, 8, 8)
    # The last layer starts at zero: every cell at sigmoid(INITIAL_LOGIT), about 0.98.
    torch.testing.assert_close(logits, torch.full_like(logits, INITIAL_LOGIT))


def test_learns_a_mask_from_its_features():
    # Cells whose first feature channel is positive are "seen": a few hundred Adam steps
    # on the binary cross-entropy separate them.
    torch.manual_seed(0)
    head = VisibilityHead(6, 3, hidden=8)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    x = inputs(seed=1)
    target = (x[0][:, :1] > 0).float()
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(*x), target)
        loss.backward()
        opt.step()
    accuracy = ((head(*x) > 0).float() == target).float().mean()
    assert accuracy > 0.95
