"""SimRefiner: identity at zero residual, locality of the local residual, modes, statistics."""

import pytest
import torch
import torch.nn.functional as F

from cvloc.geometry.checks import ShapeError
from cvloc.models.simrefiner import LocalResidual, SimRefiner, SimRefinerConfig
from cvloc.models.simstats import similarity_stats

H, W = 5, 6
N = H * W


def random_inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = 5 * torch.randn(B, N, N, generator=g)
    valid = torch.rand(B, N, generator=g) > 0.2
    return S, valid


def randomise(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def naive_local(module, S, valid):
    """Delta_local by explicit loops over the 4-D diagonal taps (reference)."""
    B = S.shape[0]
    r = module.radius
    S4 = (S * valid[..., None]).reshape(B, H, W, H, W)
    taps = []
    for di in range(-r, r + 1):
        for dj in range(-r, r + 1):
            shifted = torch.zeros_like(S4)
            for i in range(H):
                for j in range(W):
                    if not (0 <= i + di < H and 0 <= j + dj < W):
                        continue
                    for k in range(H):
                        for c in range(W):
                            if 0 <= k + di < H and 0 <= c + dj < W:
                                shifted[:, i, j, k, c] = S4[:, i + di, j + dj, k + di, c + dj]
            taps.append(shifted.reshape(B, N, N))
    x = torch.stack(taps, -1)  # B,N,M,T
    hidden = torch.relu(F.linear(x, module.taps.weight, module.taps.bias))
    return F.linear(hidden, module.out.weight, module.out.bias)[..., 0]


class TestSimRefiner:
    @pytest.mark.parametrize("mode", ["both", "local", "global", "none"])
    def test_cardinality(self, mode):
        S, valid = random_inputs()
        refiner = SimRefiner(SimRefinerConfig(mode=mode, iters=2))
        randomise(refiner)
        out = refiner(S, (H, W), valid)
        assert out.shape == S.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        if mode == "none":
            assert out is S and not list(refiner.parameters())
        else:
            assert not torch.equal(out, S)

    @pytest.mark.parametrize("mode", ["both", "local", "global"])
    def test_zero_residual_returns_input_exactly(self, mode):
        S, valid = random_inputs()
        refiner = SimRefiner(SimRefinerConfig(mode=mode, iters=3))
        assert torch.equal(refiner(S, (H, W), valid), S)  # the initialisation
        randomise(refiner)
        with torch.no_grad():
            for head in (refiner.local, refiner.global_):
                if head is not None:
                    head.out.weight.zero_()
                    head.out.bias.zero_()
        assert torch.equal(refiner(S, (H, W), valid), S)

    @pytest.mark.parametrize("radius", [1, 2])
    def test_local_residual_matches_naive_4d_taps(self, radius, monkeypatch):
        # Small blocks: the block boundaries (halo rows) must not change the result.
        monkeypatch.setattr("cvloc.models.simrefiner._BLOCK_ENTRIES", 2 * W * N)
        S, valid = random_inputs()
        local = LocalResidual(channels=3, radius=radius)
        randomise(local)
        expected = naive_local(local, S, valid)
        assert torch.allclose(local(S, (H, W), valid), expected, atol=1e-5)

    def test_local_residual_is_local(self):
        S, valid = random_inputs(B=1)
        valid[:] = True
        local = LocalResidual(channels=3, radius=1)
        randomise(local)
        S2 = S.clone()
        n, m = 2 * W + 3, 1 * W + 1  # BEV cell (2, 3), satellite cell (1, 1)
        S2[0, n, m] += 10.0
        changed = (local(S2, (H, W), valid) - local(S, (H, W), valid)).abs() > 0
        changed = changed[0].reshape(H, W, H, W).nonzero().tolist()
        # Only entries (n - d, m - d) read tap d of the perturbed entry.
        assert changed
        assert all(
            (i - 2, j - 3) == (k - 1, c - 1) and max(abs(i - 2), abs(j - 3)) <= 1
            for i, j, k, c in changed
        )

    def test_gradients_and_gate_range(self):
        S, valid = random_inputs()
        S.requires_grad_(True)
        refiner = SimRefiner(SimRefinerConfig(iters=2))
        randomise(refiner)
        refiner(S, (H, W), valid).square().mean().backward()
        assert torch.isfinite(S.grad).all() and S.grad.abs().sum() > 0
        assert all(p.grad is not None for p in refiner.parameters())

    def test_rejects_bad_shapes_and_configs(self):
        refiner = SimRefiner(SimRefinerConfig())
        with pytest.raises(ShapeError):
            refiner(torch.zeros(1, N, N + 1), (H, W), torch.ones(1, N, dtype=torch.bool))
        with pytest.raises(ValueError):
            SimRefinerConfig(mode="off")
        with pytest.raises(ValueError):
            SimRefinerConfig(iters=0)


class TestSimilarityStats:
    def test_values_and_masking(self):
        S, valid = random_inputs()
        rows, cols = similarity_stats(S, valid)
        assert rows.shape == (2, N, 4) and cols.shape == (2, N, 4)
        assert torch.allclose(rows[..., 0], S.amax(2))
        assert torch.allclose(rows[..., 2], S.mean(2))
        b, m = 1, 7
        seen = S[b, valid[b], m]
        assert torch.allclose(cols[b, m, 0], seen.max())
        assert torch.allclose(
            cols[b, m, 1], seen.logsumexp(0) - torch.log(torch.tensor(len(seen)))
        )
        assert torch.allclose(cols[b, m, 3], seen.std(correction=0), atol=1e-5)
        # Unseen rows do not enter the column statistics, and carry no gradient.
        S2 = torch.where(valid[..., None], S, S + 100.0)
        assert torch.allclose(similarity_stats(S2, valid)[1], cols)
        assert not similarity_stats(S.requires_grad_(), valid)[0].requires_grad

    def test_no_valid_rows_gives_zero_columns(self):
        S, _ = random_inputs(B=1)
        _, cols = similarity_stats(S, torch.zeros(1, N, dtype=torch.bool))
        assert (cols == 0).all()
