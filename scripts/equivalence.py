"""Every family under every setting: record the outputs, or compare two recordings bit for bit.

A refactoring of the engine or the families must leave every output unchanged. This script builds one small model
per family from a config (fixed seeds, fixed inputs), applies a grid of settings (amounts, locality, schedules,
protections, causal and strict modes, decoder merging; r=0 and ``remove()`` too) and records, for each case, the
outputs, the token counts and any error message. Run it before and after a change and compare::

    python scripts/equivalence.py record before.pt     # on the old commit
    python scripts/equivalence.py record after.pt      # on the new one
    python scripts/equivalence.py compare before.pt after.pt

``compare`` prints the number of outputs and every mismatch (``torch.equal``; messages must match word for word)
and exits 1 on any.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import nn

import mergeplug
from mergeplug.config import SCHEDULES, schedule_for_reduction

Case = tuple[Any, Callable[[], Any], int, dict[str, Any]]  # (object to patch, run, merge layers, fixed kwargs)


def _walk(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cumsum(1)


def _seeded(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        torch.manual_seed(0)
        return fn()

    return run


def _t5_encoder() -> Case:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4, dropout_rate=0.0)
    model = T5EncoderModel(cfg).eval()
    ids = torch.randint(2, 64, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :7] = 0

    def run() -> list[torch.Tensor]:
        out = model(input_ids=ids, attention_mask=mask)
        full = out.unmerged() if getattr(out, "token_source", None) is not None else out.last_hidden_state
        return [out.last_hidden_state, full]

    return model, run, 3, {}


def _t5_seq2seq(decoder: bool) -> Callable[[], Case]:
    def build() -> Case:
        from transformers import T5Config, T5ForConditionalGeneration

        torch.manual_seed(0)
        cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=3, num_heads=4,
                       dropout_rate=0.0, decoder_start_token_id=0)  # fmt: skip
        model = T5ForConditionalGeneration(cfg).eval()
        g = torch.Generator().manual_seed(1)
        ids, labels = torch.randint(2, 64, (2, 30), generator=g), torch.randint(2, 64, (2, 24), generator=g)

        def run() -> list[torch.Tensor]:
            out = model(input_ids=ids, labels=labels)
            gen = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
            return [out.logits, out.loss, gen]

        extra = {"decoder": {"k": 1, "ratio": 0.2}} if decoder else {}
        return model, run, 3, extra

    return build


def _chronos_t5() -> Case:
    from mergeplug.models import chronos_t5

    pipe = chronos_t5("test", context_length=64, prediction_length=4, num_samples=2)
    ctx = _walk(3, 70, seed=2)
    ctx[1, :10] = float("nan")

    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        emb, _ = pipe.embed(ctx)
        return [pipe.predict(ctx, prediction_length=4), emb]

    return pipe, run, 2, {}


def _chronos_bolt() -> Case:
    from mergeplug.models import chronos_bolt

    pipe = chronos_bolt("test", context_length=512)
    ctx = _walk(2, 512, seed=3)
    ctx[0, :40] = float("nan")

    def run() -> list[torch.Tensor]:
        emb, _ = pipe.embed(ctx)
        return [pipe.predict(ctx, prediction_length=16), emb]

    return pipe, run, 2, {}


def _chronos_causal() -> Case:
    from mergeplug.models import chronos_causal

    pipe = chronos_causal("test", backbone="llama", context_length=96, prediction_length=4, num_samples=2)
    ctx = _walk(2, 110, seed=4)
    return pipe, _seeded(lambda: pipe.predict(ctx, prediction_length=4)), 3, {"causal": True}


def _chronos2() -> Case:
    from mergeplug.models import chronos2

    pipe = chronos2("test", context_length=512)
    ctx, groups = _walk(4, 512, seed=5), torch.tensor([0, 0, 1, 2])
    ctx[3, :64] = float("nan")

    def run() -> list[torch.Tensor]:
        grouped = pipe.model(ctx, group_ids=groups, num_output_patches=2).quantile_preds
        return [grouped, *pipe.predict(ctx[:, None], prediction_length=16)]

    return pipe, run, 2, {}


def _patchtst() -> Case:
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    torch.manual_seed(0)
    config = PatchTSTConfig(num_input_channels=2, context_length=128, prediction_length=12, patch_length=8,
                            patch_stride=4, d_model=32, num_attention_heads=4, num_hidden_layers=3,
                            ffn_dim=64)  # fmt: skip
    model = PatchTSTForPrediction(config).eval()
    x = _walk(3, 128, 2, seed=6)
    return model, lambda: model(past_values=x).prediction_outputs, 3, {}


def _hf_ts(decoder: bool) -> Callable[[], Case]:
    def build() -> Case:
        from transformers import TimeSeriesTransformerConfig, TimeSeriesTransformerForPrediction

        torch.manual_seed(0)
        cfg = TimeSeriesTransformerConfig(prediction_length=24, context_length=40, lags_sequence=[1, 2, 3],
                                          num_time_features=1, d_model=16, encoder_layers=3, decoder_layers=3,
                                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                          decoder_ffn_dim=32, dropout=0.0, num_parallel_samples=3)  # fmt: skip
        model = TimeSeriesTransformerForPrediction(cfg).eval()
        g = torch.Generator().manual_seed(7)
        batch = dict(
            past_values=torch.randn(2, 43, generator=g).cumsum(1),
            past_time_features=torch.linspace(0, 1, 43).expand(2, 43)[..., None],
            past_observed_mask=torch.ones(2, 43),
            future_values=torch.randn(2, 24, generator=g).cumsum(1),
            future_time_features=torch.linspace(1, 1.5, 24).expand(2, 24)[..., None],
        )

        def run() -> list[torch.Tensor]:
            out = model(**batch)
            return [out.loss, *out.params]

        extra = {"decoder": {"k": 1, "ratio": 0.3}} if decoder else {}
        return model, run, 2, extra

    return build


def _torch_encoder() -> Case:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()
    x = _walk(2, 40, 32, seed=8) / 4
    return enc, lambda: enc(x), 3, {}


def _torch_decoder() -> Case:
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    dec = nn.TransformerDecoder(layer, 4).eval()
    tgt, mem = _walk(2, 40, 32, seed=9) / 4, _walk(2, 12, 32, seed=10) / 4
    mask = nn.Transformer.generate_square_subsequent_mask(40)
    return dec, lambda: dec(tgt, mem, tgt_mask=mask, tgt_is_causal=True), 3, {"causal": True}


def _mamba() -> Case:
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=4, expand=2)
    model = MambaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(11))
    return model, lambda: model(ids, use_cache=False).logits, 3, {"causal": True}


def _causal_lm(kind: str) -> Callable[[], Case]:
    def build() -> Case:
        from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        if kind == "gpt2":
            cfg = GPT2Config(vocab_size=100, n_positions=128, n_embd=32, n_layer=4, n_head=4, bos_token_id=None,
                             eos_token_id=None, pad_token_id=0)  # fmt: skip
            model = GPT2LMHeadModel(cfg).eval()
        else:
            cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              pad_token_id=0)  # fmt: skip
            model = LlamaForCausalLM(cfg).eval()
        ids = torch.randint(1, 100, (2, 50), generator=torch.Generator().manual_seed(12))
        mask = torch.ones(2, 50, dtype=torch.long)
        mask[1, :6] = 0

        def run() -> list[torch.Tensor]:
            logits = model(ids, attention_mask=mask, use_cache=True).logits
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
            return [logits, gen]

        return model, run, 3, {"causal": True}

    return build


def _timesfm() -> Case:
    from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

    torch.manual_seed(0)
    cfg = TimesFm2_5Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, context_length=1024, horizon_length=64)  # fmt: skip
    model = TimesFm2_5ModelForPrediction(cfg).eval()
    series = [_walk(1, 1024, seed=14)[0], _walk(1, 600, seed=15)[0]]

    def run() -> list[torch.Tensor]:
        out = model(past_values=series)
        return [out.mean_predictions, out.full_predictions]

    return model, run, 3, {"causal": True}


class _UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True) for _ in "abc")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _user() -> Case:
    mergeplug.register_patch(_UserNet, blocks="layers", name="equivalence-user")
    net = _UserNet().eval()
    x = _walk(2, 30, 16, seed=13)
    return net, lambda: net(x), 2, {}


CASES: dict[str, Callable[[], Case]] = {
    "t5-encoder": _t5_encoder,
    "t5-seq2seq": _t5_seq2seq(False),
    "t5-seq2seq+decoder": _t5_seq2seq(True),
    "chronos-t5": _chronos_t5,
    "chronos-bolt": _chronos_bolt,
    "chronos-causal": _chronos_causal,
    "chronos-2": _chronos2,
    "patchtst": _patchtst,
    "hf-time-series": _hf_ts(False),
    "hf-time-series+decoder": _hf_ts(True),
    "torch-encoder": _torch_encoder,
    "torch-decoder": _torch_decoder,
    "mamba": _mamba,
    "causal-lm-gpt2": _causal_lm("gpt2"),
    "causal-lm-llama": _causal_lm("llama"),
    "timesfm-2.5": _timesfm,
    "user-register_patch": _user,
}


def settings(layers: int, causal: bool) -> dict[str, dict[str, Any]]:
    """The grid: name -> ``apply`` keyword arguments (``causal`` families get the causal and strict modes)."""
    grid: dict[str, dict[str, Any]] = {
        "r=0": {"r": 0},
        "r=2": {"r": 2},
        "r=list": {"r": [3] + [1] * (layers - 1)},
        "ratio=0.3": {"ratio": 0.3},
        "ratio=0.3,k=global": {"ratio": 0.3, "k": None},
        "ratio=0.3,k=3": {"ratio": 0.3, "k": 3},
        "ratio=0.4,plain": {"ratio": 0.4, "safe": False},
        "ratio=0.4,no-prop": {"ratio": 0.4, "proportional_attention": False},
        "ratio=0.3,protect=2,min=4": {"ratio": 0.3, "protect_recent": 2, "min_tokens": 4},
        "ratio=0.3,min=12": {"ratio": 0.3, "min_tokens": 12},
        "ratio=0.3,period=4": {"ratio": 0.3, "period": 4},
        "ratio=0.3,min_sim=0.5": {"ratio": 0.3, "min_similarity": 0.5},
        "input=0.3,r=1": {"input_ratio": 0.3, "r": 1},
        "input=0.7": {"input_ratio": 0.7, "ratio": 0.0},
        "min_tokens=1000": {"ratio": 0.3, "min_tokens": 1000},
    }
    for reduction, schedule, k in [(0.75, s, 1) for s in SCHEDULES] + [(0.9, "front-input", None), (0.9, "input", 3)]:
        try:
            grid[f"reduce={reduction},{schedule},k={k}"] = {
                **schedule_for_reduction(reduction, layers, schedule),
                "k": k,
            }
        except ValueError:  # more than this many layers can remove
            pass
    if causal:
        for name in list(grid):
            grid[name] = {**grid[name], "causal": True}
        grid["threshold=0.9"] = {"causal": True, "threshold": 0.9}
        grid["threshold=0.5,k=3"] = {"causal": True, "threshold": 0.5, "k": 3}
    return grid


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value.detach().clone()]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    raise TypeError(f"unexpected output type {type(value).__name__}")


def record() -> dict[str, Any]:
    """name -> list of tensors (outputs, then token counts) or an error string."""
    out: dict[str, Any] = {}
    for fam, build in CASES.items():
        obj, run, layers, extra = build()
        causal = bool(extra.get("causal"))
        with torch.no_grad():
            out[f"{fam}/original"] = _flat(run())
            for name, kwargs in settings(layers, causal).items():
                key = f"{fam}/{name}"
                try:
                    mergeplug.apply(obj, **{**extra, **kwargs})
                    value = _flat(run())
                    counts = mergeplug.token_counts(obj)
                    value.append(torch.tensor(counts if counts is not None else [-1]))
                    dec = mergeplug.decoder_token_counts(obj) if "decoder" in extra else None
                    if dec is not None:
                        value.append(torch.tensor(dec))
                    out[key] = value
                except Exception as exc:  # the error is part of the behaviour
                    out[key] = f"{type(exc).__name__}: {exc}"
            mergeplug.remove(obj)
            out[f"{fam}/removed"] = _flat(run())
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Every difference between two recordings (missing keys, shapes, values, messages)."""
    bad = [f"{k}: only in the first" for k in a.keys() - b.keys()]
    bad += [f"{k}: only in the second" for k in b.keys() - a.keys()]
    for key in sorted(a.keys() & b.keys()):
        x, y = a[key], b[key]
        if isinstance(x, str) or isinstance(y, str):
            if x != y:
                bad.append(
                    f"{key}: {x if isinstance(x, str) else 'outputs'} != {y if isinstance(y, str) else 'outputs'}"
                )
        elif len(x) != len(y) or not all(s.shape == t.shape and torch.equal(s, t) for s, t in zip(x, y, strict=True)):
            bad.append(f"{key}: outputs differ")
    return bad


def count(rec: dict[str, Any]) -> tuple[int, int]:
    """(tensors recorded, cases that raised)."""
    return sum(len(v) for v in rec.values() if not isinstance(v, str)), sum(isinstance(v, str) for v in rec.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("record").add_argument("out")
    cmp = sub.add_parser("compare")
    cmp.add_argument("first")
    cmp.add_argument("second")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    if args.cmd == "record":
        rec = record()
        torch.save(rec, args.out)
        tensors, errors = count(rec)
        print(f"{len(rec)} cases, {tensors} output tensors, {errors} cases refused with a message -> {args.out}")
        return 0
    a, b = torch.load(args.first, weights_only=True), torch.load(args.second, weights_only=True)
    bad = compare(a, b)
    tensors, errors = count(a)
    print(f"{len(a)} cases ({tensors} output tensors, {errors} messages): {len(bad)} mismatches")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
