"""Merged vs unmerged forward time for every supported family, at a realistic size and a long context.

``python -m mergeplug_lab.bench_families`` builds each model from a config (random weights: speed only), then uses
:func:`mergeplug.cost.compare` (:mod:`mergeplug.timing`: warm-up, paired interleaved rounds, speed-up with its 95%
interval) for the unmerged model and two merge settings that remove 75% of the tokens by the last layer, local (k=1)
and global, and reports the MACs ratio, the measured speed-up, the efficiency (speed-up / MACs ratio), the tokens at
the last layer and the relative L2 change of the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mergeplug import apply, decoder_token_counts, remove
from mergeplug._cli import quiet_third_party
from mergeplug.config import schedule_for_reduction
from mergeplug.cost import compare
from mergeplug.timing import speed_cell

__all__ = ["CASES", "run", "main"]


def _torch_encoder(n: int) -> tuple[nn.Module, Callable[[], Any], int, dict]:
    layer = nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False).eval()
    x = torch.randn(4, n, 512)
    return model, lambda: model(x), 5, {}  # merges happen between the 6 layers: 5 merge points


def _torch_decoder(n: int) -> tuple[nn.Module, Callable[[], Any], int, dict]:
    layer = nn.TransformerDecoderLayer(512, 8, 2048, dropout=0.0, batch_first=True)
    model = nn.TransformerDecoder(layer, 6).eval()
    tgt, mem = torch.randn(4, n, 512), torch.randn(4, 512, 512)
    mask = nn.Transformer.generate_square_subsequent_mask(n)
    return model, lambda: model(tgt, mem, tgt_mask=mask, tgt_is_causal=True), 5, {"causal": True}


def _mamba(n: int) -> tuple[nn.Module, Callable[[], Any], int, dict]:
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(vocab_size=4096, hidden_size=256, state_size=16, num_hidden_layers=8, expand=2)
    model = MambaForCausalLM(cfg).eval()
    ids = torch.randint(0, 4096, (2, n))
    return model, lambda: model(ids, use_cache=False).logits, 7, {"causal": True}


def _patchtst(n: int) -> tuple[nn.Module, Callable[[], Any], int, dict]:
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    cfg = PatchTSTConfig(num_input_channels=1, context_length=n, prediction_length=64, patch_length=16,
                         patch_stride=8, d_model=256, num_attention_heads=8, num_hidden_layers=4, ffn_dim=512,
                         loss="mse")  # fmt: skip
    model = PatchTSTForPrediction(cfg).eval()
    x = torch.randn(16, n, 1).cumsum(1)
    return model, lambda: model(past_values=x).prediction_outputs, 4, {}


def _t5_encoder(n: int) -> tuple[nn.Module, Callable[[], Any], int, dict]:
    from transformers import T5EncoderModel

    from mergeplug.models import t5_config

    model = T5EncoderModel(t5_config("small", vocab_size=4096)).eval()
    ids = torch.randint(2, 4096, (4, n))

    def call() -> torch.Tensor:  # a merged encoder returns its shorter sequence: copy tokens back to compare
        out = model(ids)
        return out.unmerged() if getattr(out, "token_source", None) is not None else out.last_hidden_state

    return model, call, 6, {}


def _t5_decoder(n: int) -> tuple[nn.Module, Callable[[], Any], int, dict]:
    """Chronos-T5 small under teacher forcing: n target positions, 512 encoder tokens, only the decoder merges."""
    from transformers import T5ForConditionalGeneration

    from mergeplug.models import t5_config

    model = T5ForConditionalGeneration(t5_config("small", vocab_size=4096)).eval()
    ids, labels = torch.randint(2, 4096, (4, 512)), torch.randint(2, 4096, (4, n))
    return model, lambda: model(input_ids=ids, labels=labels).logits, 6, {"decoder": True}


def _chronos2(n: int) -> tuple[nn.Module, Callable[[], Any], int, dict]:
    """Chronos-2 with the published base dimensions (119.5M parameters), 8 series in groups of 2, 4 output
    patches; merging inside each of the 12 blocks (between time and group attention)."""
    from mergeplug.models import chronos2

    model = chronos2("base", context_length=n).model
    t = torch.arange(n, dtype=torch.float32)
    ctx = 10 + 3 * torch.sin(2 * torch.pi * t / 24) + torch.randn(8, n).cumsum(-1) * 0.3
    groups = torch.arange(8) // 2
    return model, lambda: model(ctx, group_ids=groups, num_output_patches=4).quantile_preds, 12, {}


def _causal_lm(backbone: str) -> Callable[[int], tuple[nn.Module, Callable[[], Any], int, dict]]:
    """A decoder-only LM's prefill (KV cache built, logits of the last position only, as ``generate`` does)."""

    def build(n: int) -> tuple[nn.Module, Callable[[], Any], int, dict]:
        from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

        if backbone == "gpt2":  # GPT-2 small's width and depth, Chronos' vocabulary
            cfg = GPT2Config(vocab_size=4096, n_positions=n, n_embd=768, n_layer=12, n_head=12)
            model = GPT2LMHeadModel(cfg).eval()
        else:
            cfg = LlamaConfig(vocab_size=4096, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                              num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=n)  # fmt: skip
            model = LlamaForCausalLM(cfg).eval()
        ids = torch.randint(2, 4096, (max(1, 4096 // n), n))
        return model, lambda: model(ids, use_cache=True, logits_to_keep=1).logits, 11, {"causal": True}

    return build


CASES: dict[str, Callable[[int], tuple[nn.Module, Callable[[], Any], int, dict]]] = {
    "t5 (Chronos-T5 small encoder)": _t5_encoder,
    "t5 decoder (Chronos-T5 small, teacher forcing)": _t5_decoder,
    "patchtst (d 256, 4 layers)": _patchtst,
    "torch-transformer-encoder (d 512, 6 layers)": _torch_encoder,
    "torch-transformer-decoder (d 512, 6 layers, causal)": _torch_decoder,
    "mamba (hidden 256, 8 layers)": _mamba,
    "chronos-2 (base: d 768, 12 blocks, groups of 2)": _chronos2,
    "causal-lm GPT-2 (d 768, 12 layers, prefill)": _causal_lm("gpt2"),
    "causal-lm Llama (d 768, 12 layers, RoPE, prefill)": _causal_lm("llama"),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run(
    context: int = 2048,
    reps: int = 3,
    cases: list[str] | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[dict[str, Any]]:
    """One row per (family, setting); the models and inputs are built on ``device`` in ``dtype``."""
    dev = torch.device(device)
    rows = []
    for name, build in CASES.items():
        if cases and not any(c in name for c in cases):
            continue
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # parameters and float inputs made by the builders, in this dtype
        try:
            with dev:
                model, call, merge_points, extra = build(context)
        finally:
            torch.set_default_dtype(default)
        sched = schedule_for_reduction(0.75, merge_points)
        settings = {"unmerged": None}
        for label, k in (("k=1, 75%", 1), ("global, 75%", None)):
            # plain merging (safe=False): random weights, so the reductions are met and only speed is measured
            if extra.get("decoder"):  # only the decoder's target tokens merge
                settings[label] = {"r": 0, "safe": False, "decoder": {"k": k, **sched}}
            else:
                settings[label] = {"k": k, "safe": False, **sched, **extra}
        with torch.inference_mode():
            ref = call().float()
            diffs, dec_counts = {}, {}
            for label, kw in settings.items():
                if kw:
                    apply(model, **kw)
                    diffs[label] = _rel(call().float(), ref)
                    dec_counts[label] = decoder_token_counts(model)
                    remove(model)
        for r in compare(model, settings, run=call, reps=reps):
            if extra.get("decoder"):  # the tokens that count are the decoder's
                r["token_counts"] = dec_counts.get(r["label"])
            rows.append(
                {"family": name, "context": context, "device": str(dev), "dtype": str(dtype).removeprefix("torch."),
                 **r, "efficiency": r["speedup"] / r["macs_ratio"] if "speedup" in r else None,
                 "output_rel_diff": diffs.get(r["label"], 0.0)}
            )  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'family':<54}{'setting':<14}{'MACs ratio':>11}{'time s':>9}  {'speed-up [95% interval]':<28}{'effic.':>8}"
        f"{'tokens':>8}{'rel diff':>10}"
    ]
    for r in rows:
        last = r["token_counts"][-1] if r.get("token_counts") else "-"
        speed = "reference" if r["label"] == "unmerged" else speed_cell(r)
        time_s = f"{r['time_s']:>9.3f}" if "time_s" in r else f"{'':>9}"
        eff = f"{r['efficiency']:>8.2f}" if r.get("efficiency") is not None else f"{'':>8}"
        lines.append(
            f"{r['family']:<54}{r['label']:<14}{r['macs_ratio']:>10.2f}x{time_s}  {speed:<28}{eff}"
            f"{last!s:>8}{r['output_rel_diff']:>10.2e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    p = argparse.ArgumentParser(prog="python -m mergeplug_lab.bench_families", description=__doc__.split("\n\n")[0])
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--reps", type=int, default=6, help="paired timing rounds at least (6 give a 95%% interval)")
    p.add_argument("--cases", nargs="*", default=None, help="substrings of the family names to run")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {a.device}: this torch build has no usable CUDA (torch.cuda.is_available() is False)")
    rows = run(a.context, a.reps, a.cases, a.device, getattr(torch, a.dtype))
    print(format_table(rows))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
