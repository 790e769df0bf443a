"""Efficiency figures of a compact Transformer: parameters, storage from bytes written, FLOPs, inference time.

Two FLOP conventions, side by side:

* **honest** (:func:`honest_flops`): the products the forward really runs, counted by :func:`mergeplug.profile`
  for every layer at every time step of the window (so step-t attention is credited only because it really
  skips work). A dense multiply-accumulate is 2 FLOPs. A sparse-binary layer does one addition per kept
  weight per output and one multiplication (the scale α) per output. The fixed Q/K/V activation mask is not
  credited: the projections compute every activation and the mask zeroes some afterwards (a kernel that
  skipped them would save up to ``1 - qkv_keep`` of the Q/K/V products; the reference convention credits it).
* **reference** (:func:`reference_flops`): the convention of the sparse-binary-transformer reference code, to
  compare with its claims: only the Q/K/V projections are multiplied by the window length (embedding,
  feed-forward and head counted for one step), sparse layers scaled by their density, attention by formula.

Storage: the dense model's fp32 safetensors file vs the packed sparse-binary file, both written to disk and
measured with ``os.path.getsize``; plus the reference convention (32 bits per dense parameter, 1 bit per
binary weight position).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mergeplug.binary import binary_layers
from mergeplug.cost import profile
from mergeplug_lab.sbt.model import CompactTransformer

__all__ = ["parameter_summary", "storage_summary", "honest_flops", "reference_flops", "time_forward"]


def _float_parameters(model: nn.Module, binary: dict[str, nn.Module]) -> list[nn.Parameter]:
    """Parameters outside the binary layers (whose scores and frozen weights are training state)."""
    skip = {id(p) for m in binary.values() for p in m.parameters(recurse=False)}
    return [p for p in model.parameters() if id(p) not in skip]


def parameter_summary(model: nn.Module) -> dict[str, int]:
    """Parameters of the model *as deployed*: ``total`` (binary layers count one weight per position, scores and
    frozen random weights are training state) and ``nonzero`` (kept weights of binary layers)."""
    binary = binary_layers(model)
    total = nonzero = 0
    for p in _float_parameters(model, binary):
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    for m in binary.values():
        w = m.effective_weight().detach()
        total += w.numel()
        nonzero += int(torch.count_nonzero(w))
        if m.bias is not None:
            total += m.bias.numel()
            nonzero += int(torch.count_nonzero(m.bias.detach()))
    return {"total": total, "nonzero": nonzero}


def storage_summary(model: nn.Module) -> dict[str, Any]:
    """Bytes written: the dense fp32 safetensors file, or the packed file of a binarized model."""
    from safetensors.torch import save_file

    binary = binary_layers(model)
    with tempfile.TemporaryDirectory() as tmp:
        if binary:
            from mergeplug.binary import save_packed

            path = Path(tmp, "packed.safetensors")
            save_packed(model, path, mask_encoding="auto")
            kind = "packed"
        else:
            path = Path(tmp, "model.safetensors")
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
            kind = "fp32"
        size = os.path.getsize(path)
    ref_bits = sum(32 * p.numel() for p in _float_parameters(model, binary))
    for m in binary.values():
        ref_bits += m.weight.numel() + (32 * m.bias.numel() if m.bias is not None else 0)
    return {"bytes": size, "format": kind, "reference_bytes": ref_bits / 8}


def honest_flops(model: CompactTransformer, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """FLOPs per window of the forward on ``x`` (B, T, C), every layer at every step (see the module docstring).

    Returns ``flops`` (per window), ``dense_macs`` (the products run, per window) and ``binary_adds``.
    """
    rep = profile(model, x, mask) if mask is not None else profile(model, x)
    n = x.shape[0]
    float_macs = rep.nonzero_macs - rep.binary_adds  # products outside binary layers
    flops = 2 * float_macs + rep.binary_adds + rep.binary_mults
    return {"flops": flops / n, "dense_macs": rep.macs / n, "binary_adds": rep.binary_adds / n}


def reference_flops(model: CompactTransformer, t: int) -> float:
    """FLOPs per window under the reference code's convention (see the module docstring)."""
    c = model.config
    d, f = c.d_model, c.d_ff

    def dens(layer: nn.Module) -> float:
        if getattr(layer, "_mergeplug_binary", False):
            w = layer.effective_weight()
            return float(torch.count_nonzero(w)) / w.numel()
        return 1.0

    total = 2 * c.n_channels * d * dens(model.embed)
    for layer in model.layers:
        a = layer.attn
        total += 2 * t * d * d * (dens(a.q) + dens(a.k) + dens(a.v)) * c.qkv_keep
        total += 2 * d * d * dens(a.o)
        total += 2 * (t if c.attention == "step-t" else t * t) * d * 2
        total += 2 * d * f * (dens(layer.ff1) + dens(layer.ff2))
    out = c.n_classes if c.task == "classification" else c.n_channels
    total += 2 * d * out * dens(model.head)
    return float(total)


@torch.no_grad()
def time_forward(models: dict[str, nn.Module], x: torch.Tensor, mask: torch.Tensor | None = None,
                 reps: int = 7) -> dict[str, float]:  # fmt: skip
    """Median seconds per forward of each model on ``x``, interleaved (one warm-up each)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    args = (x,) if mask is None else (x, mask)
    for m in models.values():
        m.eval()(*args)
    for _ in range(reps):
        for k, m in models.items():
            t0 = time.perf_counter()
            m(*args)
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}
