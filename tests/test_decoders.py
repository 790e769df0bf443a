"""Opt-in causal merging in the decoders of encoder-decoder models under teacher forcing (merge_decoder).

T5 (mergeplug/patches/t5.py) and the Hugging Face time-series models (mergeplug/patches/hf_time_series.py), built from
tiny random configs. Strict-mode checks bound differences by 1e-5, not bitwise: a change after position t can
change the merged length, and matrix products may round rows differently at another length.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_pristine
from transformers import (
    InformerConfig,
    InformerForPrediction,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
    T5Model,
    TimeSeriesTransformerConfig,
    TimeSeriesTransformerForPrediction,
)

import mergeplug
from mergeplug import merge_decoder
from mergeplug.config import MergeConfig
from mergeplug.models import chronos_t5
from mergeplug.patches.base import PatchRecord
from mergeplug.patches.t5 import decoder_token_counts, merged_decoder_forward

# ------------------------------------------------------------------------------------------------------- T5


def _t5(num_decoder_layers: int = 3) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=num_decoder_layers,
                   num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
    return T5ForConditionalGeneration(cfg).eval()


def _t5_batch(n_b: int = 2, n: int = 30, n_dec: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(2, 64, (n_b, n), generator=g), torch.randint(2, 64, (n_b, n_dec), generator=g)


@pytest.mark.parametrize("zero", [{"r": 0}, {"ratio": 0.0}, {"r": [0, 0, 0]}])
def test_t5_decoder_zero_merges_is_bitwise_and_remove_restores(zero):
    model, (ids, labels) = _t5(), _t5_batch()
    with torch.inference_mode():
        ref = model(input_ids=ids, labels=labels)
        merge_decoder(model, k=1, **zero)  # patches the model (no encoder merging) and sets decoder settings
        out = model(input_ids=ids, labels=labels)
        assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)
        assert decoder_token_counts(model) is None  # the decoder ran its original code
        merge_decoder(model, k=1, ratio=0.2)
        merged = model(input_ids=ids, labels=labels)
        assert merged.logits.shape == ref.logits.shape and not torch.equal(merged.logits, ref.logits)
        mergeplug.remove(model)
        assert_pristine(model)
        again = model(input_ids=ids, labels=labels)
        assert torch.equal(again.logits, ref.logits) and torch.equal(again.loss, ref.loss)


def test_t5_decoder_r_mode_shortens_the_decoder_and_stays_close():
    model, (ids, labels) = _t5(), _t5_batch()
    with torch.inference_mode():
        ref = model(input_ids=ids, labels=labels)
        mergeplug.apply(model, k=1, ratio=0.2)  # encoder merging as before ...
        enc_only = model(input_ids=ids, labels=labels)
        merge_decoder(model, k=1, r=2)  # ... plus 2 target tokens per decoder block
        out = model(input_ids=ids, labels=labels)
        assert decoder_token_counts(model) == [40, 38, 36, 34]
        assert mergeplug.token_counts(model) == [30, 24, 19, 15]  # the encoder still merges
        assert torch.isfinite(out.loss) and abs(out.loss - enc_only.loss) < 0.05 * enc_only.loss
        assert out.cache is None  # labels: the merged decoder runs without a cache (use_cache=False)
        merge_decoder(model, k=1, ratio=0.25)
        out = model(input_ids=ids, labels=labels)
        assert decoder_token_counts(model) == [40, 30, 22, 16]
        assert torch.isfinite(out.loss) and abs(out.loss - ref.loss) < 0.2 * ref.loss
        mergeplug.apply(model, k=1, ratio=0.2)  # new settings replace the old ones: decoder merging is off again
        assert torch.equal(model(input_ids=ids, labels=labels).logits, enc_only.logits)
    mergeplug.remove(model)


def test_t5_strict_decoder_never_sees_the_future():
    model, (ids, labels) = _t5(), _t5_batch()
    dec = model._shift_right(labels)
    merge_decoder(model, k=1, threshold=0.0)

    def run(d: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, decoder_input_ids=d, use_cache=False).logits

    with torch.inference_mode():
        ref = run(dec)
        assert decoder_token_counts(model)[-1] < 40  # target tokens do merge
        for t in (0, 1, 4, 9, 20, 21, 33, 38):
            d2 = dec.clone()
            d2[:, t + 1 :] = (d2[:, t + 1 :] + 7) % 64
            out = run(d2)
            assert (out[:, : t + 1] - ref[:, : t + 1]).abs().max() <= 1e-5, t  # the past does not see the future
            assert (out[:, t + 1 :] - ref[:, t + 1 :]).abs().max() > 1e-3, t  # the future does
        merge_decoder(model, k=1, r=6)  # control: in the r mode later targets can change which earlier tokens merge
        ref = run(dec)
        leak = 0.0
        for t in range(0, 39, 3):
            d2 = dec.clone()
            d2[:, t + 1 :] = (d2[:, t + 1 :] + 7) % 64
            leak = max(leak, (run(d2)[:, : t + 1] - ref[:, : t + 1]).abs().max().item())
        assert leak > 1e-2
    mergeplug.remove(model)


def test_t5_generate_and_cached_calls_are_unchanged():
    model, (ids, labels) = _t5(), _t5_batch()
    with torch.inference_mode():
        ref = model.generate(ids, max_new_tokens=12, do_sample=False)
        cached = model(input_ids=ids, labels=labels, use_cache=True).logits
        for settings in ({"ratio": 0.3}, {"threshold": 0.0}, {"r": 5}):
            mergeplug.apply(model, k=1, r=0)
            merge_decoder(model, k=1, **settings)
            assert torch.equal(model.generate(ids, max_new_tokens=12, do_sample=False), ref)
            assert decoder_token_counts(model) is None  # every decoder call used the cache: original code
            out = model(input_ids=ids, labels=labels, use_cache=True)  # an explicit cache: unmerged, bitwise
            assert torch.equal(out.logits, cached) and out.cache is not None
        # the merged memory of an encoder-merged model is decoded exactly as without decoder merging
        mergeplug.apply(model, k=1, ratio=0.2)
        enc_only = model.generate(ids, max_new_tokens=12, do_sample=False)
        merge_decoder(model, k=1, ratio=0.3)
        assert torch.equal(model.generate(ids, max_new_tokens=12, do_sample=False), enc_only)
    mergeplug.remove(model)


def test_t5_training_loss_backpropagates_through_the_merged_decoder():
    model, (ids, labels) = _t5(), _t5_batch()
    model.train()
    mergeplug.apply(model, k=1, ratio=0.2)
    merge_decoder(model, k=1, ratio=0.25)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    assert decoder_token_counts(model) == [40, 30, 22, 16]
    grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad.abs().sum() > 0
    assert model.decoder.block[-1].layer[-1].DenseReluDense.wo.weight.grad.abs().sum() > 0
    model.zero_grad()
    merge_decoder(model, k=1, threshold=0.2)
    model(input_ids=ids, labels=labels).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.decoder.parameters() if p.grad is not None)
    mergeplug.remove(model)
    model.eval()


def test_t5_merged_decoder_loop_matches_stock_when_nothing_merges():
    """The merged decoder re-implements T5Stack's loop; without merges it agrees with the original, padding too."""
    model, (ids, labels) = _t5(), _t5_batch()
    dec = model._shift_right(labels)
    enc_mask = torch.ones_like(ids)
    enc_mask[0, :6] = 0
    dec_mask = torch.ones_like(dec)
    dec_mask[1, 30:] = 0  # right padding of the targets
    with torch.inference_mode():
        memory = model.encoder(input_ids=ids, attention_mask=enc_mask).last_hidden_state
        kwargs = dict(encoder_hidden_states=memory, encoder_attention_mask=enc_mask, attention_mask=dec_mask)
        ref = model.decoder(input_ids=dec, use_cache=False, **kwargs).last_hidden_state
        record = PatchRecord("t5", MergeConfig(r=0))
        try:
            merge_decoder(model, r=1)  # installs the key hooks
            out = merged_decoder_forward(model.decoder, record, MergeConfig(causal=True, r=0), dec, dec_mask,
                                         memory, enc_mask, None).last_hidden_state  # fmt: skip
            merged = model.decoder(input_ids=dec, use_cache=False, **kwargs).last_hidden_state
        finally:
            mergeplug.remove(model)
    real = dec_mask.bool()
    torch.testing.assert_close(out[real], ref[real], rtol=1e-5, atol=1e-5)
    assert merged.shape == ref.shape and torch.isfinite(merged).all()


def test_t5_model_and_chronos_t5():
    torch.manual_seed(0)
    base = T5Model(_t5().config).eval()
    ids, labels = _t5_batch()
    with torch.inference_mode():
        ref = base(input_ids=ids, decoder_input_ids=labels, use_cache=False).last_hidden_state
        merge_decoder(base, k=1, ratio=0.25)
        out = base(input_ids=ids, decoder_input_ids=labels, use_cache=False).last_hidden_state
        assert out.shape == ref.shape and decoder_token_counts(base) == [40, 30, 22, 16]
        mergeplug.remove(base)
    pipe = chronos_t5("test", prediction_length=6, num_samples=5)
    ctx = torch.randn(3, 60).cumsum(-1)
    torch.manual_seed(1)
    samples = pipe.predict(ctx, prediction_length=6)
    mergeplug.apply(pipe, k=1, r=0)
    merge_decoder(pipe, k=1, ratio=0.3)
    torch.manual_seed(1)
    assert torch.equal(pipe.predict(ctx, prediction_length=6), samples)  # generate() decodes with a cache
    token_ids, mask, _ = pipe.tokenizer.context_input_transform(ctx)
    targets = torch.randint(2, 100, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        loss = pipe.model.model(input_ids=token_ids, attention_mask=mask, labels=targets).loss
    assert torch.isfinite(loss) and decoder_token_counts(pipe)[-1] < 24
    mergeplug.remove(pipe)


def test_t5_decoder_unsupported_settings_and_structures_say_why():
    model, (ids, labels) = _t5(), _t5_batch()
    with pytest.raises(TypeError, match="no decoder"):
        merge_decoder(T5EncoderModel(model.config).eval(), k=1, r=2)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        merge_decoder(model, ratio=1.0)
    merge_decoder(model, k=1, r=2)
    with torch.inference_mode():
        memory = model.encoder(input_ids=ids).last_hidden_state
        per_query = torch.zeros(2, 1, 40, 30)
        with pytest.raises(NotImplementedError, match="encoder_attention_mask"):
            model.decoder(input_ids=labels, encoder_hidden_states=memory, encoder_attention_mask=per_query,
                          use_cache=False)  # fmt: skip
        with pytest.raises(NotImplementedError, match="output_hidden_states"):
            model(input_ids=ids, labels=labels, output_hidden_states=True)
    mergeplug.remove(model)
    assert_pristine(model)
    model.decoder.block[1].layer = model.decoder.block[1].layer[::2]  # a decoder block without cross-attention
    mergeplug.apply(model, k=1, r=2)  # the encoder still merges ...
    with pytest.raises(NotImplementedError, match="decoder block 1 is not T5 self-attention, cross-attention"):
        merge_decoder(model, k=1, r=2)  # ... the decoder says why it cannot
    mergeplug.remove(model)


# ------------------------------------------------------------------------------------ HF time-series models


def _hf_ts(kind: str, **kw) -> TimeSeriesTransformerForPrediction | InformerForPrediction:
    cfg_cls, model_cls = {
        "tst": (TimeSeriesTransformerConfig, TimeSeriesTransformerForPrediction),
        "informer": (InformerConfig, InformerForPrediction),
    }[kind]
    torch.manual_seed(0)
    settings = dict(prediction_length=24, context_length=32, lags_sequence=[1, 2, 3], num_time_features=1, d_model=16,
                    encoder_layers=2, decoder_layers=3, encoder_attention_heads=2, decoder_attention_heads=2,
                    encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.0, num_parallel_samples=4)  # fmt: skip
    return model_cls(cfg_cls(**{**settings, **kw})).eval()


def _ts_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return dict(
        past_values=torch.randn(2, 35, generator=g).cumsum(1),
        past_time_features=torch.linspace(0, 1, 35).expand(2, 35)[..., None],
        past_observed_mask=torch.ones(2, 35),
        future_values=torch.randn(2, 24, generator=g).cumsum(1),
        future_time_features=torch.linspace(1, 1.5, 24).expand(2, 24)[..., None],
    )


TS_KINDS = [("tst", {}), ("informer", {"distil": False, "attention_type": "full"})]


def _params_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kind,kw", TS_KINDS + [("informer", {"distil": False})])
def test_hf_ts_decoder_zero_merges_bitwise_r_mode_merges_remove_restores(kind, kw):
    model, batch = _hf_ts(kind, **kw), _ts_batch()
    with torch.inference_mode():
        torch.manual_seed(0)  # ProbSparse attention samples keys at random
        ref = model(**batch)
        for zero in ({"r": 0}, {"ratio": 0.0}):
            merge_decoder(model, k=1, **zero)
            torch.manual_seed(0)
            out = model(**batch)
            assert torch.equal(out.loss, ref.loss) and _params_equal(out.params, ref.params)
        merge_decoder(model, k=1, ratio=0.3)
        torch.manual_seed(0)
        out = model(**batch)
        assert decoder_token_counts(model) == [24, 17, 12, 12]  # merges between the 3 decoder layers
        assert out.params[0].shape == (2, 24) and torch.isfinite(out.loss)
        assert not torch.equal(out.loss, ref.loss) and abs(out.loss - ref.loss) < 0.05 * ref.loss.abs()
        mergeplug.apply(model, k=1, ratio=0.3)  # the encoder merges too (settings replaced: decoder off) ...
        merge_decoder(model, k=1, ratio=0.3)  # ... and the decoder again
        torch.manual_seed(0)
        assert torch.isfinite(model(**batch).loss) and mergeplug.token_counts(model) == [32, 22, 22]
        mergeplug.remove(model)
        torch.manual_seed(0)
        again = model(**batch)
        assert torch.equal(again.loss, ref.loss) and _params_equal(again.params, ref.params)
    assert_pristine(model)


@pytest.mark.parametrize("kind,kw", TS_KINDS)
def test_hf_ts_strict_decoder_never_sees_the_future(kind, kw):
    """Perturb future values / time features after t: parameters at <= t stay, later ones move.

    The decoder input at position p holds the lags future_values[p-1], [p-2], [p-3] and future_time_features[p]:
    perturbing future_values after t changes decoder inputs from position t+2 on."""
    model, batch = _hf_ts(kind, **kw), _ts_batch()
    merge_decoder(model, k=1, threshold=0.5)
    with torch.inference_mode():
        ref = model(**batch).params
        assert decoder_token_counts(model)[-1] < 24
        g = torch.Generator().manual_seed(3)
        for t in (0, 3, 8, 15, 19):
            for key, first in (("future_values", t + 2), ("future_time_features", t + 1)):
                b2 = {**batch, key: batch[key].clone()}
                b2[key][:, t + 1 :] += 5 * torch.randn(b2[key][:, t + 1 :].shape, generator=g)
                out = model(**b2).params
                for x, y in zip(out, ref, strict=True):
                    assert (x[:, :first] - y[:, :first]).abs().max() <= 1e-5, (key, t)  # the past: unchanged
                later = max((x[:, first:] - y[:, first:]).abs().max() for x, y in zip(out, ref, strict=True))
                assert later > 1e-3, (key, t)  # the future: moves
    mergeplug.remove(model)


@pytest.mark.parametrize("kind,kw", TS_KINDS + [("informer", {"distil": False})])
def test_hf_ts_generate_unchanged_and_training_backpropagates(kind, kw):
    model, batch = _hf_ts(kind, **kw), _ts_batch()
    gen_batch = {k: v for k, v in batch.items() if k != "future_values"}
    with torch.inference_mode():
        torch.manual_seed(1)
        ref = model.generate(**gen_batch).sequences
        merge_decoder(model, k=1, ratio=0.3)
        torch.manual_seed(1)
        assert torch.equal(model.generate(**gen_batch).sequences, ref)  # every decoder call uses a cache
        assert decoder_token_counts(model) is None
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and decoder_token_counts(model) == [24, 17, 12, 12]
    grads = [p.grad for p in model.model.decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.model.decoder.layers[0].fc1.weight.grad.abs().sum() > 0
    model.eval()
    mergeplug.remove(model)


def test_hf_ts_decoder_unsupported_structures_say_why_and_layerdrop_works():
    prob = _hf_ts("informer", distil=False)  # attention_type="prob" by default
    with pytest.raises(NotImplementedError, match="attention_type='full'"):
        merge_decoder(prob, k=1, threshold=0.5)
    with pytest.raises(ValueError, match="at least 2"):
        merge_decoder(_hf_ts("tst", decoder_layers=1), k=1, ratio=0.3)
    model, batch = _hf_ts("tst", decoder_layerdrop=0.5), _ts_batch()
    merge_decoder(model, k=1, ratio=0.3)
    model.train()
    for seed in range(6):  # layers skipped at random: the decoder output is still restored to every position
        torch.manual_seed(seed)
        out = model(**batch)
        assert out.params[0].shape == (2, 24) and torch.isfinite(out.loss)
    model.eval()
    with pytest.raises(NotImplementedError, match="decoder_attention_mask"), torch.inference_mode():
        model(**batch, decoder_attention_mask=torch.ones(2, 1, 24, 24))
    mergeplug.remove(model)
    assert_pristine(model)


def test_apply_decoder_argument_and_save_load_keep_decoder_merging(tmp_path):
    """``mergeplug.apply(..., decoder={...})`` is merge_decoder in one call; save_pretrained keeps the setting."""
    model, (ids, labels) = _t5(), _t5_batch()
    with torch.inference_mode():
        mergeplug.apply(model, k=1, ratio=0.2)
        merge_decoder(model, k=1, r=2)
        ref = model(input_ids=ids, labels=labels).logits
        mergeplug.remove(model)
        mergeplug.apply(model, k=1, ratio=0.2, decoder={"k": 1, "r": 2})
        assert torch.equal(model(input_ids=ids, labels=labels).logits, ref)
        assert decoder_token_counts(model) == [40, 38, 36, 34]
        saved = mergeplug.save_pretrained(model, tmp_path / "t5")
        loaded = mergeplug.from_pretrained(saved)
        assert torch.equal(loaded(input_ids=ids, labels=labels).logits, ref)
        assert mergeplug.decoder_token_counts(loaded) == [40, 38, 36, 34]
        card = (tmp_path / "t5" / "README.md").read_text()
        assert 'decoder={"k": 1, "r": 2' in card
        mergeplug.apply(model, k=1, ratio=0.2)  # new settings without decoder=: the decoder runs unmerged again
        model(input_ids=ids, labels=labels)
        assert not torch.equal(model(input_ids=ids, labels=labels).logits, ref)


def test_a_refused_apply_or_merge_decoder_leaves_the_model_as_it_was():
    """Issue 34, point 5: every setting is checked before the model changes, and a call that fails later is undone
    (a model patched by the call is restored, an earlier patch keeps its settings)."""
    from mergeplug.models import chronos_bolt

    pipe = chronos_t5("test")
    bad = [{"k": 0}, {"r": -1}, {"ratio": 1.5}, {"threshold": 0.5, "ratio": 0.1}, {"input_ratio": 0.5}, {"x": 1}]
    for decoder in bad:
        with pytest.raises(ValueError):
            mergeplug.apply(pipe, ratio=0.2, decoder=decoder)
        assert mergeplug.settings(pipe) is None, decoder
    mergeplug.apply(pipe, ratio=0.1)
    for decoder in bad:
        with pytest.raises(ValueError):
            mergeplug.apply(pipe, ratio=0.2, decoder=decoder)
        assert mergeplug.settings(pipe).ratio == 0.1, decoder
    mergeplug.remove(pipe)
    with pytest.raises(ValueError):
        merge_decoder(pipe, k=0)
    assert mergeplug.settings(pipe) is None  # no r=0 patch left behind
    bolt = chronos_bolt("test")
    with pytest.raises(ValueError, match="decoder must be a dict"):
        mergeplug.apply(bolt, ratio=0.2, decoder="x")
    with pytest.raises(TypeError, match="no decoder that mergeplug can merge"):
        mergeplug.apply(bolt, ratio=0.2, decoder={})
    with pytest.raises(TypeError, match="no decoder that mergeplug can merge"):
        merge_decoder(bolt, r=1)
    assert mergeplug.settings(bolt) is None
