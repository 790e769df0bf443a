"""The MAC counter behind :func:`mergeplug.cost.profile`: the formulas per product, the classification of a product
by the modules running it, and :class:`CostReport`, what a count gives (the conventions: :mod:`mergeplug.cost`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .merge import current_scope

__all__ = ["CostReport"]

aten = torch.ops.aten


# ------------------------------------------------------------------------------------------------- formulas
def _prod(xs: Sequence[int]) -> int:
    return math.prod(int(x) for x in xs)


def _mm(a: torch.Tensor, b: torch.Tensor) -> int:  # (m, k) @ (k, n)
    return a.shape[0] * a.shape[1] * b.shape[1]


def _bmm(a: torch.Tensor, b: torch.Tensor) -> int:  # (B, m, k) @ (B, k, n)
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _conv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, transposed: bool) -> int:
    # Every output (non-transposed) or input (transposed) element meets c_in/groups x kernel weights per
    # output channel: MACs = batch x spatial x c_out x (c_in / groups) x kernel.
    kernel = _prod(w.shape[2:])
    if transposed:  # weight (c_in, c_out / groups, *kernel)
        return x.numel() * w.shape[1] * kernel
    return out.numel() * w.shape[1] * kernel


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:  # (B, H, Lq, E), (B, H, Lk, E), (B, H, Lk, Ev)
    return _prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


_SDPA_OPS = [
    getattr(aten, name)
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(aten, name)
]

_FORMULAS: dict[Any, Callable[[tuple, Any], int]] = {
    aten.mm: lambda a, out: _mm(a[0], a[1]),
    aten.addmm: lambda a, out: _mm(a[1], a[2]),
    aten.bmm: lambda a, out: _bmm(a[0], a[1]),
    aten.baddbmm: lambda a, out: _bmm(a[1], a[2]),
    aten.mv: lambda a, out: a[0].shape[0] * a[0].shape[1],
    aten.addmv: lambda a, out: a[1].shape[0] * a[1].shape[1],
    aten.dot: lambda a, out: a[0].shape[0],
    aten.convolution: lambda a, out: _conv(a[0], a[1], out, bool(a[6])),
    **{op: (lambda a, out: _sdpa(a[0], a[1], a[2])) for op in _SDPA_OPS},
}


# --------------------------------------------------------------------------------------------- attribution
_ATTENTION = re.compile(r"attention|attn", re.IGNORECASE)
_MLP = re.compile(r"mlp|ffn|feedforward|feed_forward|denserelu|layerff|^ff$|^fc\d|^wi|^wo$", re.IGNORECASE)
_HEAD = re.compile(r"head|output_patch|output_proj|^projection$|lm_head|parameter_projection", re.IGNORECASE)
_EMBED = re.compile(r"embed|input_patch|patchify|value_proj", re.IGNORECASE)


def _kind(stack: list[tuple[str, nn.Module]], in_linear: bool) -> str:
    """Component kind from the module stack (outermost first) of one product."""
    for name, module in reversed(stack):
        last = name.rsplit(".", 1)[-1]
        cls = type(module).__name__
        if _ATTENTION.search(last) or _ATTENTION.search(cls):
            return "attention" if in_linear else "attention-scores"
    for name, module in reversed(stack):
        last = name.rsplit(".", 1)[-1]
        cls = type(module).__name__
        if _MLP.search(last) or _MLP.search(cls):
            return "mlp"
        if _HEAD.search(last):
            return "head"
        if _EMBED.search(last) or _EMBED.search(cls):
            return "embedding"
    return "other"


def _part(name: str) -> str:
    segments = name.split(".")
    for seg in segments:
        if "decoder" in seg.lower():
            return "decoder"
        if "encoder" in seg.lower():
            return "encoder"
    return "other"


def _block(name: str) -> str | None:
    segments = name.split(".")
    for i, seg in enumerate(segments):
        if seg.isdigit():
            return ".".join(segments[: i + 1])
    return None


def _is_weighted(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() >= 2


# --------------------------------------------------------------------------------------------------- report
@dataclass
class CostReport:
    """Parameters, storage and MACs of one model / pipeline call (see the module docstring for conventions).

    Attributes:
        params: ``total``, ``trainable``, ``nonzero`` parameter counts (shared tensors counted once).
        storage: bytes as ``fp32``, ``bf16`` and ``serialized`` (safetensors, parameters and buffers at
            their stored dtypes).
        macs: dense multiply-accumulates of everything the call ran.
        nonzero_macs: MACs with zero weights skipped.
        binary_adds / binary_mults: for binary layers, additions and multiplications that replace their MACs.
        sdpa_macs: the part of ``macs`` run in fused scaled-dot-product-attention kernels (the part PyTorch's
            own counter misses on CPU).
        by_component: MACs per (part, kind), e.g. ``("encoder", "attention-scores")``.
        by_block: MACs per block path (``"encoder.block.3"``).
        block_tokens: tokens entering each block at its first call (dim 1 of the first 3-D tensor argument of
            the first module run inside the block).
        series: series (rows) forecast by the call, for per-series figures; None if unknown.
        token_counts: :func:`mergeplug.token_counts` after the call, for a merged model.
    """

    params: dict[str, int]
    storage: dict[str, int]
    macs: int = 0
    nonzero_macs: int = 0
    binary_adds: int = 0
    binary_mults: int = 0
    sdpa_macs: int = 0
    by_component: dict[tuple[str, str], int] = field(default_factory=dict)
    by_block: dict[str, int] = field(default_factory=dict)
    block_tokens: dict[str, int] = field(default_factory=dict)
    series: int | None = None
    token_counts: list[int] | None = None

    @property
    def flops(self) -> int:
        """Dense FLOPs (2 x MACs)."""
        return 2 * self.macs

    @property
    def macs_per_series(self) -> float | None:
        return None if not self.series else self.macs / self.series

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (component keys joined as ``part/kind``)."""
        return {
            "params": dict(self.params),
            "storage_bytes": dict(self.storage),
            "macs": self.macs,
            "flops": self.flops,
            "nonzero_macs": self.nonzero_macs,
            "binary_adds": self.binary_adds,
            "binary_mults": self.binary_mults,
            "sdpa_macs": self.sdpa_macs,
            "series": self.series,
            "macs_per_series": self.macs_per_series,
            "by_component": {f"{p}/{k}": v for (p, k), v in sorted(self.by_component.items())},
            "by_block": dict(self.by_block),
            "block_tokens": dict(self.block_tokens),
            "token_counts": self.token_counts,
        }

    def __str__(self) -> str:
        p, s = self.params, self.storage
        lines = [
            f"parameters: {p['total']:,} total, {p['trainable']:,} trainable, {p['nonzero']:,} non-zero",
            f"storage: fp32 {_mb(s['fp32'])}, bf16 {_mb(s['bf16'])}, serialized {_mb(s['serialized'])}",
            f"MACs: {_num(self.macs)} (FLOPs {_num(self.flops)}), non-zero {_num(self.nonzero_macs)}"
            + (f", per series {_num(self.macs_per_series)}" if self.series else ""),
        ]
        if self.binary_adds:
            lines.append(f"binary layers: {_num(self.binary_adds)} additions, {_num(self.binary_mults)} mults")
        if self.by_component:
            lines.append(f"{'component':<28}{'MACs':>12}{'share':>8}")
            for (part, kind), v in sorted(self.by_component.items(), key=lambda kv: -kv[1]):
                lines.append(f"{part + ' ' + kind:<28}{_num(v):>12}{v / max(self.macs, 1):>8.1%}")
        if self.by_block:
            lines.append(f"{'block':<28}{'tokens':>8}{'MACs':>12}")
            for name, v in self.by_block.items():
                tok = self.block_tokens.get(name)
                lines.append(f"{name:<28}{'' if tok is None else tok:>8}{_num(v):>12}")
        return "\n".join(lines)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


# ------------------------------------------------------------------------------------------ params, storage
# ------------------------------------------------------------------------------------------------- counting
class _Counter(TorchDispatchMode):
    """Counts the MACs of every product and attributes them to the module stack kept by global hooks."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.stack: list[tuple[str, nn.Module]] = []
        self.report = CostReport(params={}, storage={})
        self._module_macs: list[int] = []  # MACs of the products run inside each weighted module on the stack

    # module hooks
    def pre(self, module: nn.Module, args: tuple) -> None:
        name = self.names.get(id(module), type(module).__name__)
        self.stack.append((name, module))
        self._module_macs.append(0)
        blk = _block(name)
        if blk is not None and blk not in self.report.block_tokens:  # first module run inside this block
            first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() == 3), None)
            if first is not None:
                self.report.block_tokens[blk] = int(first.shape[1])

    def post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self.stack or self.stack[-1][1] is not module:
            return
        self.stack.pop()
        macs = self._module_macs.pop()
        if self._module_macs:
            self._module_macs[-1] += macs
        if macs and _is_weighted(module):
            rep = self.report
            # a binary / sparse layer may define its effective weight (mergeplug.binary.SparseBinaryLinear)
            w = module.effective_weight() if callable(getattr(module, "effective_weight", None)) else module.weight
            density = float(torch.count_nonzero(w.detach())) / max(w.numel(), 1)
            nz = int(round(macs * density))
            rep.nonzero_macs -= macs - nz  # products inside were first counted dense
            if getattr(module, "_mergeplug_binary", False):
                rep.binary_adds += nz
                rep.binary_mults += int(round(macs / max(_prod(w.shape[1:]), 1)))  # one per output

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        formula = _FORMULAS.get(func.overloadpacket)
        if formula is None and isinstance(func, torch._ops.OpOverload):
            # composite ops (linear, matmul, einsum, ...) may reach the mode whole: count their parts
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            macs = int(formula(args, out[0] if isinstance(out, (tuple, list)) else out))
            rep = self.report
            rep.macs += macs
            rep.nonzero_macs += macs
            if func.overloadpacket in _SDPA_OPS:
                rep.sdpa_macs += macs
            in_linear = any(_is_weighted(m) for _, m in self.stack)
            if (named := current_scope()) is not None:
                key = ("other" if not self.stack else _part(self.stack[-1][0]), named)
            else:
                key = (_part(self.stack[-1][0]) if self.stack else "other", _kind(self.stack, in_linear))
            rep.by_component[key] = rep.by_component.get(key, 0) + macs
            blk = next((b for b in (_block(n) for n, _ in self.stack) if b is not None), None)
            if blk is not None:
                rep.by_block[blk] = rep.by_block.get(blk, 0) + macs
            if self._module_macs:
                self._module_macs[-1] += macs
        return out
