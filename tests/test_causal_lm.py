"""Decoder-only models (mergeplug/patches/causal_lm.py): GPT-2 / Llama-style LMs and decoder-only Chronos."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import mergeplug
from mergeplug.models import chronos_causal

V = 100


def _lm(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=V, n_positions=128, n_embd=32, n_layer=4, n_head=4, bos_token_id=None,
                         eos_token_id=None, pad_token_id=0)  # fmt: skip
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _ids(n: int = 60, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, V, (batch, n), generator=torch.Generator().manual_seed(seed))


def _pristine(m: torch.nn.Module) -> bool:
    base = m.base_model
    blocks = base.h if hasattr(base, "h") else base.layers
    return type(m).__module__.startswith("transformers") and not any(b._forward_pre_hooks for b in blocks)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_r0_merged_prefill_generate_and_remove(kind):
    m, ids = _lm(kind), _ids()
    ones = torch.ones_like(ids)
    with torch.inference_mode():
        ref = m(ids, use_cache=False).logits
        ref_gen = m.generate(ids, attention_mask=ones, max_new_tokens=6, do_sample=False)
        mergeplug.apply(m, k=1, causal=True, r=0)
        assert torch.equal(m(ids, use_cache=False).logits, ref)  # nothing merges: bitwise the original
        assert torch.equal(m.generate(ids, attention_mask=ones, max_new_tokens=6, do_sample=False), ref_gen)
        mergeplug.apply(m, k=1, causal=True, r=8)
        cache = DynamicCache(config=m.config)
        out = m(ids, cache=cache, use_cache=True).logits
        counts = mergeplug.token_counts(m)
        assert out.shape == ref.shape and counts == [60, 52, 44, 36, 36]  # merges between the 4 blocks
        assert [cache.get_seq_length(i) for i in range(4)] == counts[:4]  # each block caches the tokens it saw
        assert (out - ref).abs().max() > 1e-3
        for kw in ({"do_sample": False}, {"do_sample": False, "num_beams": 3}, {"do_sample": True, "top_k": 5}):
            gen = m.generate(ids, attention_mask=ones, max_new_tokens=6, **kw)
            assert gen.shape == (2, 66) and torch.equal(gen[:, :60], ids)
        mergeplug.remove(m)
        assert _pristine(m)
        assert torch.equal(m(ids, use_cache=False).logits, ref)
        assert torch.equal(m.generate(ids, attention_mask=ones, max_new_tokens=6, do_sample=False), ref_gen)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_strict_mode_never_sees_the_future(kind):
    """Perturb the tokens after t: logits at <= t stay (to float rounding: the merged length, hence the shape of
    the matrix products, may change), logits after t move."""
    m, ids = _lm(kind), torch.cat([torch.full((2, 20), 7), _ids(40)], 1)  # a repeated run: tokens do merge
    mergeplug.apply(m, k=1, causal=True, threshold=0.3)
    with torch.inference_mode():
        ref = m(ids, use_cache=False).logits
        assert mergeplug.token_counts(m)[-1] < 60
        for t in (0, 5, 19, 20, 33, 50):
            ids2 = ids.clone()
            ids2[:, t + 1 :] = ids2[:, t + 1 :] % (V - 1) + 1
            out = m(ids2, use_cache=False).logits
            assert (out[:, : t + 1] - ref[:, : t + 1]).abs().max() <= 1e-5, t
            assert (out[:, t + 1 :] - ref[:, t + 1 :]).abs().max() > 1e-3, t


def test_decoding_on_the_merged_cache_equals_the_merged_forward():
    """Strict mode, a context whose merges do not involve the last token: prefill N-1 tokens (merged cache) and
    decode token N must give the logits of one merged forward over all N tokens (RoPE at merged positions,
    per-block masks over the per-block caches)."""
    m = _lm("llama")
    ids = torch.cat([torch.full((2, 30), 5), _ids(21)], 1)  # identical tokens have identical hidden states
    mergeplug.apply(m, k=1, causal=True, threshold=0.999)
    with torch.inference_mode():
        full = m(ids, use_cache=False).logits
        full_counts = mergeplug.token_counts(m)
        cache = DynamicCache(config=m.config)
        pre = m(ids[:, :-1], cache=cache, use_cache=True).logits
        pre_counts = mergeplug.token_counts(m)
        step = m(ids[:, -1:], cache=cache, use_cache=True).logits
    assert full_counts[-1] < 40 and full_counts == [c + 1 for c in pre_counts]  # same merges, the new token extra
    assert [cache.get_seq_length(i) for i in range(4)] == full_counts[:4]
    assert (pre - full[:, :-1]).abs().max() <= 1e-5
    assert (step[:, 0] - full[:, -1]).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_beam_reordering_moves_the_merged_cache_facts_with_the_rows(kind):
    m, ids = _lm(kind), _ids(40, batch=3)
    mergeplug.apply(m, k=1, causal=True, r=6)
    nxt = _ids(1, batch=3, seed=5)
    perm = torch.tensor([2, 0, 1])
    with torch.inference_mode():
        cache = DynamicCache(config=m.config)
        m(ids, cache=cache, use_cache=True)
        straight = m(nxt, cache=cache, use_cache=True).logits
        cache = DynamicCache(config=m.config)
        m(ids, cache=cache, use_cache=True)
        m._reorder_cache(cache, perm)  # what beam search does between steps
        permuted = m(nxt[perm], cache=cache, use_cache=True).logits
    assert torch.allclose(permuted, straight[perm], atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_left_padding_never_reaches_real_tokens(kind):
    m, ids = _lm(kind), _ids(50)
    mask = torch.ones_like(ids)
    mask[0, :13] = 0
    mergeplug.apply(m, k=1, causal=True, r=6)
    with torch.inference_mode():
        out = m(ids, attention_mask=mask, use_cache=False).logits
        ids2 = ids.clone()
        ids2[0, :13] = (ids2[0, :13] + 17) % V  # other padding tokens
        out2 = m(ids2, attention_mask=mask, use_cache=False).logits
        assert torch.isfinite(out).all() and mergeplug.token_counts(m)[-1] < 50
        assert (out2[0, 13:] - out[0, 13:]).abs().max() <= 1e-5
        assert torch.equal(out2[1], out[1])
        gen = m.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        assert gen.shape == (2, 54)


def test_settings_and_structures_that_cannot_run_say_why():
    m = _lm("llama")
    with pytest.raises(ValueError, match="causal=True"):
        mergeplug.apply(m, k=1, r=4)
    with pytest.raises(ValueError, match="input_ratio"):
        mergeplug.apply(m, k=1, causal=True, r=4, input_ratio=0.2)
    assert _pristine(m)
    mergeplug.apply(m, k=1, causal=True, r=4)
    with pytest.raises(NotImplementedError, match="2-D"), torch.inference_mode():
        m(_ids(10), attention_mask=torch.zeros(2, 1, 10, 10), use_cache=False)
    mergeplug.remove(m)
    assert _pristine(m)


@pytest.mark.parametrize("backbone", ["gpt2", "llama"])
def test_decoder_only_chronos_merges_its_context(backbone):
    pipe = chronos_causal("test", backbone=backbone, context_length=96, prediction_length=6, num_samples=3)
    ctx = torch.randn(3, 120).cumsum(1)
    ctx[1, :40] = float("nan")  # missing values and left padding: masked tokens

    def predict() -> torch.Tensor:
        torch.manual_seed(0)
        return pipe.predict(ctx, prediction_length=6)

    ref = predict()
    mergeplug.apply(pipe, k=1, causal=True, r=0)
    assert torch.equal(predict(), ref)
    mergeplug.apply(pipe, k=1, causal=True, ratio=0.25)
    out = predict()
    assert out.shape == ref.shape == (3, 3, 6) and torch.isfinite(out).all() and not torch.equal(out, ref)
    assert mergeplug.token_counts(pipe) == [96, 72, 54, 40, 40]  # merges between the 4 blocks
    mergeplug.remove(pipe)
    assert torch.equal(predict(), ref)
    with pytest.raises(ValueError, match="causal=True"):
        mergeplug.apply(pipe, k=1, r=3)


def test_the_merged_cache_carries_its_facts_through_other_calls_copies_crops_and_new_settings():
    import copy

    m, ids = _lm("llama"), _ids(40)
    nxt, other = _ids(1, seed=7), _ids(1, seed=8)
    mergeplug.apply(m, k=1, causal=True, r=5)
    with torch.inference_mode():
        cache = DynamicCache(config=m.config)
        m(ids, cache=cache, use_cache=True)
        twin = copy.deepcopy(cache)
        ref = m(nxt, cache=cache, use_cache=True).logits
        m(_ids(30, seed=3), use_cache=False)  # another forward in between
        assert torch.allclose(m(nxt, cache=twin, use_cache=True).logits, ref, atol=1e-6)
        # crop (assisted decoding does this): decode, cut the token again, decode another
        cache = DynamicCache(config=m.config)
        m(ids, cache=cache, use_cache=True)
        m(other, cache=cache, use_cache=True)
        cache.crop(-1)  # every block drops the token it cached last
        assert torch.allclose(m(nxt, cache=cache, use_cache=True).logits, ref, atol=1e-6)
        # new settings (even "nothing merges") never change how a merged cache decodes
        cache = DynamicCache(config=m.config)
        m(ids, cache=cache, use_cache=True)
        mergeplug.apply(m, k=1, causal=True, r=0)
        assert torch.allclose(m(nxt, cache=cache, use_cache=True).logits, ref, atol=1e-6)
        gen = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, num_beams=4, do_sample=False)
        assert gen.shape == (2, 43)


def test_sliding_windows_and_other_attention_kernels_are_refused():
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, sliding_window=16)  # fmt: skip
    m = MistralForCausalLM(cfg).eval()
    with pytest.raises(NotImplementedError, match="sliding_window = None"):
        mergeplug.apply(m, k=1, causal=True, r=2)
    m.config.sliding_window = None
    mergeplug.apply(m, k=1, causal=True, r=2)
    with torch.inference_mode():
        assert m(_ids(20), use_cache=False).logits.shape == (2, 20, V)
    mergeplug.remove(m)
    llama = _lm("llama")
    llama.config._attn_implementation = "flash_attention_2"
    with pytest.raises(NotImplementedError, match="attn_implementation"):
        mergeplug.apply(llama, k=1, causal=True, r=2)
