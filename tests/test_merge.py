"""The model-agnostic merge engine: band similarity, matching rules, merging, unmerging."""

import pytest
import torch
import torch.nn.functional as F

from mergeplug.merge import (
    MergeState,
    band_scores,
    causal_unmerge,
    gather_rows,
    match,
    merge_step,
    merge_tokens,
    unmerge,
)


def _brute_scores(metric, k, causal):
    m = F.normalize(metric, dim=-1)
    a, b = m[:, ::2], m[:, 1::2]
    full = a @ b.transpose(1, 2)
    ia = torch.arange(a.shape[1])[:, None] * 2
    jb = torch.arange(b.shape[1])[None, :] * 2 + 1
    ok = torch.ones_like(full[0], dtype=torch.bool)
    if k is not None:
        ok &= (jb - ia).abs() <= k
    if causal:
        ok &= jb > ia
    return full.masked_fill(~ok, float("-inf"))


@pytest.mark.parametrize("t", [2, 7, 16, 33])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, None])
@pytest.mark.parametrize("causal", [False, True])
def test_band_scores_equal_the_full_matrix_on_the_band(t, k, causal):
    torch.manual_seed(t)
    metric = torch.randn(3, t, 8)
    scores, cand = band_scores(metric, k, causal=causal)
    brute = _brute_scores(metric, k, causal)
    # scatter the band back into a full matrix and compare
    full = torch.full_like(brute, float("-inf"))
    valid = scores > float("-inf")
    for bi in range(3):
        for i in range(scores.shape[1]):
            for w in range(scores.shape[2]):
                if valid[bi, i, w]:
                    full[bi, i, cand[i, w]] = scores[bi, i, w]
    torch.testing.assert_close(full, brute)


def test_band_is_narrow_for_small_k():
    """Local similarity is computed on the band: W candidates per A token, not the whole of B."""
    scores, _ = band_scores(torch.randn(2, 512, 16), 1)
    assert scores.shape == (2, 256, 2)
    scores, _ = band_scores(torch.randn(2, 512, 16), 5)
    assert scores.shape == (2, 256, 6)  # B tokens at distance 1, 3, 5 on both sides


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_stay_within_k_and_keep_order(k):
    torch.manual_seed(0)
    n_b, t = 4, 40
    state = MergeState.init(n_b, t)
    metric = torch.randn(n_b, t, 8)
    dst, t_new = match(metric, state, r=12, k=k)
    assert t_new == t - 12
    # every token that shares a destination with another lies within k of the B token it joined
    for b in range(n_b):
        for slot in range(t_new):
            members = (dst[b] == slot).nonzero().flatten()
            assert 1 <= len(members)
            assert (members.max() - members.min()) <= 2 * k
    x = torch.arange(t, dtype=torch.float32)[None, :, None].expand(n_b, t, 1)
    merge_step(x, state, dst, t_new)
    if k == 1:  # neighbours only: merged tokens are contiguous runs, positions strictly ascending
        assert (state.pos.diff(dim=1) > 0).all()


def test_size_weighted_average_and_conservation():
    torch.manual_seed(1)
    n_b, t, c = 2, 12, 5
    x = torch.randn(n_b, t, c)
    state = MergeState.init(n_b, t)
    dst, t_new = match(torch.randn(n_b, t, 4), state, r=4, k=None)
    size0 = state.size.clone()
    y = merge_step(x, state, dst, t_new)
    dst2, t2 = match(torch.randn(n_b, t_new, 4), state, r=3, k=None)
    size1 = state.size.clone()
    z = merge_step(y, state, dst2, t2)
    assert state.size.sum(1).tolist() == [float(t)] * n_b
    # reference: average of the original tokens each final token stands for (sizes compose)
    for b in range(n_b):
        for slot in range(t2):
            members = (state.source[b] == slot).nonzero().flatten()
            torch.testing.assert_close(z[b, slot], x[b, members].mean(0))
            assert state.size[b, slot] == len(members)
    assert torch.equal(merge_tokens(x, dst, size0, t_new), y)
    assert size1.shape == (n_b, t_new)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_tokens_equals_a_scatter_reference_bitwise(dtype):
    """The flattened index_add_ merge gives exactly the numbers of the per-element scatter_add_ it replaced (same
    summation order), including empty slots (size 0) and sizes above 1."""
    torch.manual_seed(3)
    n_b, t, c = 3, 40, 7
    x = torch.randn(n_b, t, c).to(dtype)
    size = torch.randint(0, 4, (n_b, t)).float()
    dst = torch.sort(torch.randint(0, 25, (n_b, t)), dim=1).values
    w = size.to(dtype)[..., None]
    total = x.new_zeros(n_b, 25, 1).scatter_add_(1, dst[..., None], w)
    ref = x.new_zeros(n_b, 25, c).scatter_add_(1, dst[..., None].expand(-1, -1, c), x * w) / total.clamp_min(1e-12)
    assert torch.equal(merge_tokens(x, dst, size, 25), ref)


def test_gather_rows_equals_gather_with_an_expanded_index():
    torch.manual_seed(4)
    x = torch.randn(3, 9, 5)
    index = torch.randint(0, 9, (3, 14))
    ref = x.gather(1, index[..., None].expand(-1, -1, 5))
    assert torch.equal(gather_rows(x, index), ref)
    assert torch.equal(gather_rows(x[:1], index), x[:1].expand(3, -1, -1).gather(1, index[..., None].expand(-1, -1, 5)))
    assert torch.equal(gather_rows(x.transpose(1, 2).contiguous().transpose(1, 2), index), ref)  # non-contiguous


def test_unmerge_copies_each_token_back_to_its_sources():
    torch.manual_seed(2)
    n_b, t = 3, 20
    state = MergeState.init(n_b, t)
    x = torch.randn(n_b, t, 6)
    for r in (5, 4, 3):
        dst, t_new = match(torch.randn(n_b, state.length, 4), state, r=r, k=1)
        x = merge_step(x, state, dst, t_new)
    full = unmerge(x, state)
    assert full.shape == (n_b, t, 6)
    for b in range(n_b):
        for p in range(t):
            assert torch.equal(full[b, p], x[b, state.source[b, p]])


def test_protected_and_padding_rules():
    torch.manual_seed(3)
    n_b, t = 2, 16
    mask = torch.ones(n_b, t, dtype=torch.bool)
    mask[0, :6] = False  # left padding in row 0
    protected = torch.zeros(n_b, t, dtype=torch.bool)
    protected[:, -1] = True  # EOS / [REG]
    state = MergeState.init(n_b, t, mask=mask, protected=protected)
    metric = torch.randn(n_b, t, 8)
    metric[:, -2] = metric[:, -1]  # the protected token's neighbour is its exact copy: still never merged
    x = torch.randn(n_b, t, 3)
    for _ in range(3):
        dst, t_new = match(metric, state, r=3, k=1)
        x = merge_step(x, state, dst, t_new)
        metric = torch.randn(n_b, state.length, 8)
        metric[:, -2] = metric[:, -1]
    orig_mask = mask
    for b in range(n_b):
        for slot in range(state.length):
            members = (state.source[b] == slot).nonzero().flatten()
            assert orig_mask[b, members].all() or (~orig_mask[b, members]).all(), "padding merged with real tokens"
            assert state.mask[b, slot] == orig_mask[b, members[0]]
    assert (state.size[:, -1] == 1).all() and state.protected[:, -1].all()
    # row 0 merged its padding first (pairs of padding are free to merge)
    assert state.size[0][~state.mask[0]].sum() == 6 and (~state.mask[0]).sum() < 6


def test_r_is_capped_to_what_can_merge():
    state = MergeState.init(2, 10)
    dst, t_new = match(torch.randn(2, 10, 4), state, r=100, k=1)
    assert t_new == 5  # 5 A tokens, all merged
    state = MergeState.init(1, 1)
    dst, t_new = match(torch.randn(1, 1, 4), state, r=3, k=1)
    assert t_new == 1 and dst.tolist() == [[0]]


def test_causal_positions_are_latest_member():
    torch.manual_seed(4)
    n_b, t = 2, 24
    state = MergeState.init(n_b, t, causal=True)
    x = torch.randn(n_b, t, 4)
    for r in (6, 4):
        dst, t_new = match(torch.randn(n_b, state.length, 4), state, r=r, k=3)
        x = merge_step(x, state, dst, t_new)
    for b in range(n_b):
        for slot in range(state.length):
            members = (state.source[b] == slot).nonzero().flatten()
            assert state.pos[b, slot] == members.max()
    assert (state.pos.diff(dim=1) > 0).all()
    with pytest.raises(ValueError, match="causal"):
        causal_unmerge(x, MergeState.init(n_b, t))
