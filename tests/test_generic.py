"""Merging between blocks of plain PyTorch Transformers and user models (mergeplug/patches/generic.py)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import mergeplug


def _encoder(batch_first: bool = True, norm_first: bool = False) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first, norm_first=norm_first)
    return nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()


def _x(batch_first: bool = True, n: int = 40) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, n, 32).cumsum(1) / 4
    return x if batch_first else x.transpose(0, 1).contiguous()


@pytest.mark.parametrize("batch_first,norm_first", [(True, False), (False, True)])
def test_r0_remove_and_merged_shapes(batch_first, norm_first):
    enc, x = _encoder(batch_first, norm_first), _x(batch_first)
    with torch.inference_mode():
        ref = enc(x)
        mergeplug.apply(enc, k=1, r=0)
        assert torch.equal(enc(x), ref)  # nothing merges: the original computation, bitwise
        mergeplug.apply(enc, k=1, ratio=0.3)
        merged = enc(x)
        assert merged.shape == ref.shape and not torch.equal(merged, ref)
        assert mergeplug.token_counts(enc) == [40, 28, 20, 14, 14]  # merges between the 4 layers
        mergeplug.remove(enc)
        assert torch.equal(enc(x), ref) and not enc.layers[0]._forward_hooks


def test_global_band_equals_global_merging():
    enc, x = _encoder(), _x()
    with torch.inference_mode():
        mergeplug.apply(enc, k=None, r=6)
        glob = enc(x)
        mergeplug.apply(enc, k=200, r=6)  # a band wider than the sequence is global merging
        assert torch.equal(enc(x), glob)


def _decoder() -> nn.TransformerDecoder:
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerDecoder(layer, 4).eval()


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_strict_causal_mode_never_sees_the_future(kind):
    """Perturb the inputs after t: outputs at <= t stay (to the last bits of float rounding, see below), outputs
    after t move. The merge decisions up to t use inputs up to t only, so the same tokens merge; but a later
    change can change how many tokens the batch keeps, and a matrix product may round a row differently when
    the number of rows changes, which is why the bound is 1e-5 and not bitwise."""
    model = _encoder() if kind == "encoder" else _decoder()
    x, mem = _x(), torch.randn(2, 25, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(40)

    def run(inp):
        if kind == "encoder":
            return model(inp, mask=mask, is_causal=True)
        return model(inp, mem, tgt_mask=mask, tgt_is_causal=True)

    with torch.inference_mode():
        plain = run(x)
    mergeplug.apply(model, k=1, causal=True, threshold=0.0)
    with torch.inference_mode():
        ref = run(x)
        assert mergeplug.token_counts(model)[-1] < 40  # tokens do merge
        torch.manual_seed(3)
        for t in (0, 3, 7, 19, 20, 30, 31, 38):
            x2 = x.clone()
            x2[:, t + 1 :] += torch.randn(2, 39 - t, 32)
            out = run(x2)
            assert (out[:, : t + 1] - ref[:, : t + 1]).abs().max() <= 1e-5, t  # the past does not see the future
            assert (out[:, t + 1 :] - ref[:, t + 1 :]).abs().max() > 1e-2, t  # the future does
        mergeplug.remove(model)
        assert torch.equal(run(x), plain)


def test_decoder_r0_remove_and_unsupported_masks():
    dec, x, mem = _decoder(), _x(), torch.randn(2, 25, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(40)
    with torch.inference_mode():
        ref = dec(x, mem, tgt_mask=mask, tgt_is_causal=True)
        mergeplug.apply(dec, k=1, causal=True, r=0)
        assert torch.equal(dec(x, mem, tgt_mask=mask, tgt_is_causal=True), ref)
        mergeplug.apply(dec, k=1, causal=True, r=5)
        out = dec(x, mem, tgt_mask=mask, tgt_is_causal=True)
        assert out.shape == ref.shape and mergeplug.token_counts(dec) == [40, 35, 30, 25, 25]
        with pytest.raises(NotImplementedError, match="memory_mask"):
            dec(x, mem, tgt_mask=mask, tgt_is_causal=True, memory_mask=torch.zeros(40, 25))
        mergeplug.remove(dec)
        assert torch.equal(dec(x, mem, tgt_mask=mask, tgt_is_causal=True), ref)


def test_masks_that_cannot_follow_merged_tokens_raise():
    enc, x = _encoder(), _x()
    mergeplug.apply(enc, k=1, ratio=0.3)
    pad = torch.zeros(2, 40, dtype=torch.bool)
    pad[0, :5] = True
    with pytest.raises(NotImplementedError, match="padding mask"), torch.inference_mode():
        enc(x, src_key_padding_mask=pad)
    mask = nn.Transformer.generate_square_subsequent_mask(40)
    with pytest.raises(ValueError, match="causal=True"), torch.inference_mode():
        enc(x, mask=mask, is_causal=True)  # a causal model with bidirectional merging
    mergeplug.apply(enc, k=1, causal=True, r=4)
    with pytest.raises(NotImplementedError, match="is_causal=True"), torch.inference_mode():
        enc(x, mask=torch.zeros(40, 40), is_causal=False)


class TinyNet(nn.Module):
    """A user's own Transformer: embedding, a list of blocks, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 16)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True) for _ in range(3)
        )
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T)
        h = self.embed(x[..., None])
        for block in self.blocks:
            h = block(h)
        return self.head(h)[..., 0]


def test_register_patch_for_a_custom_model():
    mergeplug.register_patch(TinyNet, blocks="blocks")
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(3, 50).cumsum(1)
    with torch.inference_mode():
        ref = net(x)
        mergeplug.apply(net, k=1, ratio=0.25)
        out = net(x)
        assert out.shape == ref.shape and mergeplug.token_counts(net) == [50, 37, 28, 28]
        mergeplug.remove(net)
        assert torch.equal(net(x), ref)
    with pytest.raises(TypeError, match="no attribute path 'layers'"):
        mergeplug.register_patch(TinyNet, blocks="layers", name="tiny-bad")
        mergeplug.apply(TinyNet(), k=1, r=1)
    mergeplug.register_patch(TinyNet, blocks="blocks")  # registering again replaces the family
    assert sum(f.name == "TinyNet" for f in mergeplug.patches.families()) == 1


def test_register_patch_refuses_bad_arguments_and_leaves_the_registry_working():
    """Issue 34, point 6: a string instead of a class once broke every later apply / remove in the process; a
    sequence axis other than 0 / 1 merged across the batch. Both are refused at registration."""
    before = [f.name for f in mergeplug.patches.families()]
    with pytest.raises(TypeError, match="match_ must be the model class or a predicate"):
        mergeplug.register_patch("notaclass", blocks="b")
    for blocks in ("", "layers..0", 3):
        with pytest.raises(ValueError, match="blocks must be the attribute path"):
            mergeplug.register_patch(TinyNet, blocks=blocks, name="tiny-bad")
    for seq_dim in (5, 2, -1, True):
        with pytest.raises(ValueError, match="seq_dim must be 1"):
            mergeplug.register_patch(TinyNet, blocks="blocks", seq_dim=seq_dim, name="tiny-bad")
    assert [f.name for f in mergeplug.patches.families()] == before
    enc, x = _encoder(), _x()
    with torch.inference_mode():
        ref = enc(x)
        mergeplug.apply(enc, k=1, r=4)  # the registry still works
        mergeplug.remove(enc)
        assert torch.equal(enc(x), ref)


def _mamba():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=100, hidden_size=32, state_size=8, num_hidden_layers=4, expand=2, conv_kernel=4)
    return MambaForCausalLM(cfg).eval()


def test_mamba_causal_merging_between_blocks():
    m = _mamba()
    ids = torch.randint(0, 100, (2, 60), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = m(ids, use_cache=False).logits
        mergeplug.apply(m, k=1, causal=True, r=0)
        assert torch.equal(m(ids, use_cache=False).logits, ref)
        mergeplug.apply(m, k=1, causal=True, r=8)
        out = m(ids, use_cache=False).logits
        assert out.shape == ref.shape and mergeplug.token_counts(m) == [60, 52, 44, 36, 36]
        gen = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
        assert gen.shape == (2, 64)  # decoding continues from the state of the merged prefill
        mergeplug.apply(m, k=1, causal=True, threshold=0.0)  # strict: the past never sees the future
        strict = m(ids, use_cache=False).logits
        assert mergeplug.token_counts(m)[-1] < 60
        for t in (0, 10, 30, 50):
            ids2 = ids.clone()
            ids2[:, t + 1 :] = (ids2[:, t + 1 :] + 1) % 100
            out2 = m(ids2, use_cache=False).logits
            assert (out2[:, : t + 1] - strict[:, : t + 1]).abs().max() <= 1e-5, t
            assert (out2[:, t + 1 :] - strict[:, t + 1 :]).abs().max() > 1e-3, t
        mergeplug.remove(m)
        assert torch.equal(m(ids, use_cache=False).logits, ref)
    with pytest.raises(ValueError, match="Mamba is causal"):
        mergeplug.apply(m, k=1, r=3)
    mergeplug.apply(m, k=1, causal=True, r=3)
    pad = torch.ones_like(ids)
    pad[0, :5] = 0
    with pytest.raises(NotImplementedError, match="attention_mask"), torch.inference_mode():
        m(ids, attention_mask=pad, use_cache=False)
    mergeplug.remove(m)


def _hf_ts(kind: str, **kw):
    from transformers import (
        AutoformerConfig,
        AutoformerForPrediction,
        InformerConfig,
        InformerForPrediction,
        TimeSeriesTransformerConfig,
        TimeSeriesTransformerForPrediction,
    )

    cfg_cls, model_cls = {
        "tst": (TimeSeriesTransformerConfig, TimeSeriesTransformerForPrediction),
        "informer": (InformerConfig, InformerForPrediction),
        "autoformer": (AutoformerConfig, AutoformerForPrediction),
    }[kind]
    torch.manual_seed(0)
    cfg = cfg_cls(prediction_length=8, context_length=48, lags_sequence=[1, 2, 3], num_time_features=1, d_model=16,
                  encoder_layers=3, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.0, **kw)  # fmt: skip
    return model_cls(cfg).eval()


def _ts_batch():
    g = torch.Generator().manual_seed(0)
    past = torch.randn(2, 51, generator=g).cumsum(1)
    return dict(
        past_values=past,
        past_time_features=torch.linspace(0, 1, 51).expand(2, 51)[..., None],
        past_observed_mask=torch.ones(2, 51),
        future_values=torch.randn(2, 8, generator=g),
        future_time_features=torch.linspace(1, 1.2, 8).expand(2, 8)[..., None],
    )


@pytest.mark.parametrize("kind,kw", [("tst", {}), ("informer", {"distil": False})])
def test_hf_time_series_encoders_merge_and_restore(kind, kw):
    model, batch = _hf_ts(kind, **kw), _ts_batch()
    with torch.inference_mode():
        ref = model(**batch).loss
        mergeplug.apply(model, k=1, r=0)
        assert torch.equal(model(**batch).loss, ref)
        mergeplug.apply(model, k=1, ratio=0.3)
        merged = model(**batch).loss
        assert torch.isfinite(merged) and not torch.equal(merged, ref)
        assert mergeplug.token_counts(model) == [48, 34, 24, 24]  # merges after encoder layers 0 and 1
        mergeplug.remove(model)
        assert torch.equal(model(**batch).loss, ref)
    with pytest.raises(ValueError, match="bidirectional"):
        mergeplug.apply(model, k=1, causal=True, r=2)


def test_hf_time_series_unsupported_structures_say_why():
    with pytest.raises(NotImplementedError, match="Autoformer is not supported"):
        mergeplug.apply(_hf_ts("autoformer"), k=1, r=2)
    with pytest.raises(NotImplementedError, match="distil=False"):
        mergeplug.apply(_hf_ts("informer", distil=True), k=1, r=2)


def test_apply_refuses_user_hooks_that_a_merged_forward_would_skip():
    """Issue 34, point 4: hooks on T5 / Bolt blocks and their self-attention layer, Chronos-2 blocks and PatchTST
    layers stopped firing while merged. apply refuses while they are registered (the model stays unpatched) and
    works once they are removed; a generic family (between blocks) calls its blocks, so their hooks stay."""
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    from mergeplug.models import chronos2, chronos_bolt, chronos_t5

    bolt, t5, c2 = chronos_bolt("test"), chronos_t5("test"), chronos2("test")
    patchtst = PatchTSTForPrediction(PatchTSTConfig(num_input_channels=1, context_length=64, patch_length=8,
                                                    patch_stride=8, d_model=16, num_attention_heads=2,
                                                    num_hidden_layers=2, ffn_dim=32))  # fmt: skip
    cases = [
        (bolt, bolt.model.encoder.block[1], "encoder.block[1]"),
        (bolt, bolt.model.encoder.block[0].layer[0], "encoder.block[0].layer[0]"),
        (t5, t5.model.model.encoder.block[0], "encoder.block[0]"),
        (c2, c2.model.encoder.block[1], "encoder.block[1]"),
        (patchtst, patchtst.model.encoder.layers[0], "encoder.layers[0]"),
    ]
    for obj, module, path in cases:
        handle = module.register_forward_hook(lambda m, args, out: None)
        with pytest.raises(ValueError, match=rf"forward hooks are registered on {re.escape(path)}.*would not fire"):
            mergeplug.apply(obj, k=1, ratio=0.2)
        assert mergeplug.settings(obj) is None, path
        handle.remove()
        mergeplug.apply(obj, k=1, ratio=0.2, safe=False)
        handle = module.register_forward_hook(lambda m, args, out: None)  # after apply: refused at the forward
        with pytest.raises(RuntimeError, match=rf"registered after mergeplug.apply on {re.escape(path)}.*not fire"):
            run = getattr(obj, "predict", None)
            if run is None:
                obj(past_values=torch.randn(1, 64, 1))
            else:
                ctx = torch.randn(1, 512).cumsum(1)
                run(ctx[:, None] if type(obj).__name__ == "Chronos2Pipeline" else ctx, prediction_length=8)
        handle.remove()
        mergeplug.remove(obj)
    enc = _encoder()
    seen = []
    enc.layers[1].register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    mergeplug.apply(enc, k=1, r=4)
    with torch.inference_mode():
        enc(_x())
    assert seen == [36]  # fired, on the merged sequence
