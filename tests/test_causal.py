"""Causal merging: the strict mode never lets an output see the future, exactly."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mergeplug.merge import MergeState, causal_unmerge, match, merge_step


class TinyCausalLM(nn.Module):
    """A small causal Transformer built on the engine: merge after attention, causal unmerge at the end."""

    def __init__(self, d: int = 16, layers: int = 3, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in range(layers)
        )

    def forward(self, x, *, threshold=None, r=None, k=1):
        """x: (B, N, d) -> (B, N, d).

        Each layer runs at the fixed length N (merged tokens first, masked empty slots after them): the
        merged length depends on the data, and BLAS/SIMD reductions over a different length can round
        differently in the last bit. Fixed shapes make the check below test information flow bit for bit.
        """
        n_b, n, d = x.shape
        state = MergeState.init(n_b, n, causal=True, dtype=x.dtype)
        h, merged = x, 0
        min_val = torch.finfo(x.dtype).min
        for qkv, out, mlp in zip(self.qkv, self.out, self.mlp, strict=True):
            t = state.length
            pad = n - t
            hp = F.pad(h, (0, 0, 0, pad))
            pos = F.pad(state.pos, (0, pad), value=float("inf"))
            real = F.pad(state.mask, (0, pad), value=False)
            size = F.pad(state.size, (0, pad), value=1.0)
            q, key, v = qkv(hp).view(n_b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            scores = q @ key.transpose(-1, -2) / q.shape[-1] ** 0.5 + size.log()[:, None, None, :]
            allowed = (pos[:, None, :] <= pos[:, :, None]) & real[:, None, :]
            scores = scores.masked_fill(~allowed[:, None], min_val)
            hp = hp + out((scores.softmax(-1) @ v).transpose(1, 2).reshape(n_b, n, d))
            dst, t_new = match(key.mean(1)[:, :t], state, r=r, threshold=threshold, k=k)
            merged += t - t_new
            h = merge_step(hp[:, :t], state, dst, t_new)
            h = (F.pad(h, (0, 0, 0, n - t_new)) + mlp(F.pad(h, (0, 0, 0, n - t_new))))[:, :t_new]
        self.merged = merged
        return causal_unmerge(h, state)


@pytest.mark.parametrize("k", [1, 3, 70, None])
def test_strict_causal_outputs_never_depend_on_later_inputs(k):
    torch.manual_seed(0)
    model = TinyCausalLM().double().eval()
    n_b, n = 4, 40
    x = torch.randn(n_b, n, 16, dtype=torch.float64).cumsum(1) * 0.3  # smooth: many neighbours alike
    with torch.no_grad():
        ref = model(x, threshold=0.3, k=k)
        assert model.merged > 0, "the test needs merges to be meaningful"
        for t in range(0, n - 1, 3):
            for trial in range(2):
                x2 = x.clone()
                x2[:, t + 1 :] = torch.randn(n_b, n - t - 1, 16, dtype=torch.float64) * (1 + trial)
                out = model(x2, threshold=0.3, k=k)
                assert torch.equal(out[:, : t + 1], ref[:, : t + 1]), f"output at <= {t} changed"
                assert not torch.equal(out[:, t + 1 :], ref[:, t + 1 :])


def test_top_r_selection_is_not_strictly_causal():
    """Negative control: the same check catches the documented leak of the fixed-count (top-r) causal mode."""
    torch.manual_seed(0)
    model = TinyCausalLM().double().eval()
    n_b, n = 4, 40
    x = torch.randn(n_b, n, 16, dtype=torch.float64).cumsum(1) * 0.3
    leaked = False
    with torch.no_grad():
        ref = model(x, r=6, k=1)
        for t in range(0, n - 1, 3):
            x2 = x.clone()
            x2[:, t + 1 :] = torch.randn(n_b, n - t - 1, 16, dtype=torch.float64)
            out = model(x2, r=6, k=1)
            leaked |= not torch.allclose(out[:, : t + 1], ref[:, : t + 1])
    assert leaked


def test_threshold_needs_causal_state():
    with pytest.raises(ValueError, match="causal=True"):
        match(torch.randn(1, 8, 4), MergeState.init(1, 8), threshold=0.5)


def test_causal_unmerge_fills_real_positions_from_real_tokens_only():
    """Left padding: the first real token merges into its successor; its output must come from a real token
    (here the one that absorbed it), never from the padding before it."""
    state = MergeState.init(1, 8, mask=torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]]), causal=True)
    x = torch.arange(8.0)[None, :, None]
    dst = torch.tensor([[0, 0, 1, 2, 2, 3, 4, 5]])  # pads 0->1, real 3 -> 4 (causal: into the later token)
    merged = merge_step(x, state, dst, 6)
    out = causal_unmerge(merged, state)[0, :, 0]
    assert state.mask.tolist() == [[False, False, True, True, True, True]]
    assert out[3] == merged[0, 2, 0] == 3.5  # position 3: its own merged token, not padding slot 1
    assert out[:3].tolist() == [0.5, 0.5, 2.0] and out[4:].tolist() == [3.5, 5.0, 6.0, 7.0]
