"""Cost accounting for any PyTorch model or pipeline: parameters, storage, and multiply-accumulates per forward.

:func:`profile` runs the model (or a pipeline's ``predict``) once under a counting
``TorchDispatchMode`` and records every matrix product that really executes, so a merged model is
counted with the token counts it actually has in each layer (they shrink layer by layer), a Chronos-T5
forecast is counted with every decoding step and every sample, and the cost of finding merges is counted
too (it runs inside :func:`mergeplug.merge.match`, reported as the ``matching`` component).

What is counted, and the conventions (the same as PyTorch's ``torch.utils.flop_counter`` and the papers):

* MACs (multiply-accumulates) of ``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``mv``, ``addmv``, ``dot``,
  convolutions and fused scaled-dot-product attention (``Lq·Lk·(E + Ev)`` per head). FLOPs = 2 x MACs.
  Element-wise work (norms, activations, softmax, bias adds, the scatter that merges tokens) is not
  counted, as in PyTorch's counter. One difference, found here: on CPU, ``scaled_dot_product_attention``
  dispatches to ``_scaled_dot_product_flash_attention_for_cpu``, which PyTorch's counter (2.13) does not
  count (it reports 0 FLOPs for it); this counter counts it.
* Sparse layers: for a module with a 2-D+ ``weight`` containing zeros, ``nonzero_macs`` scales the
  module's MACs by the weight's density (of ``module.effective_weight()`` when the module defines it;
  exact for linear layers: every row meets the same weights).
* Binary layers: a module with ``_mergeplug_binary = True`` (±α weights) reports its non-zero MACs as
  additions (``binary_adds``) and one multiplication per output (``binary_mults``, the α scale).
* ``nn.TransformerEncoderLayer`` / ``nn.MultiheadAttention`` have a fused inference fast path whose products
  no counter can see; :func:`profile` switches it off while counting (``torch.backends.mha``), which gives the
  same products as the fused kernel computes.
* Components: every product is attributed to the innermost modules running it and classified by module
  path into a part (``encoder`` / ``decoder`` / ``other``) and a kind (``attention`` projections,
  ``attention-scores`` for the products inside attention that are not a linear layer, ``mlp``,
  ``embedding``, ``head``, ``matching``, ``other``), and per block (the first indexed module in the
  path, e.g. ``encoder.block.3``).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .merge import current_scope, scope

__all__ = [
    "CostReport",
    "profile",
    "parameter_counts",
    "storage_bytes",
    "model_fingerprint",
    "compare",
    "format_comparison",
    "scope",
]

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
def _roots(obj: Any) -> list[nn.Module]:
    """The ``nn.Module`` trees of ``obj``: itself, or the modules among a pipeline's attributes."""
    if isinstance(obj, nn.Module):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [m for o in obj for m in _roots(o)]
    found = [v for v in vars(obj).values() if isinstance(v, nn.Module)] if hasattr(obj, "__dict__") else []
    # a pipeline may hold its model and that model's inner model: keep only the outermost trees
    inner = {id(m) for r in found for m in r.modules() if m is not r}
    return [m for m in found if id(m) not in inner]


def _unique(tensors: Iterator[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    seen: set[tuple[int, tuple[int, ...], torch.dtype]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors:
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def _named_params(roots: list[nn.Module]) -> dict[str, torch.Tensor]:
    return _unique((f"{i}.{n}", p) for i, r in enumerate(roots) for n, p in r.named_parameters())


def parameter_counts(obj: Any) -> dict[str, int]:
    """``{"total", "trainable", "nonzero"}`` parameter counts of a module or pipeline (shared weights once)."""
    params = _named_params(_roots(obj))
    return {
        "total": sum(p.numel() for p in params.values()),
        "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "nonzero": sum(int(torch.count_nonzero(p.detach())) for p in params.values()),
    }


def model_fingerprint(obj: Any) -> str:
    """``"<parameters>:<hash>"``: the parameter count and a hash of every parameter's name and shape (merging's
    class swaps and the weights' values leave it unchanged; another architecture or size changes it). The harness
    records it in every result row, and a model card accepts only rows of the model it describes."""
    import hashlib

    params = _named_params(_roots(obj))
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(f"{name.split('.', 1)[1]}:{tuple(params[name].shape)};".encode())
    return f"{sum(p.numel() for p in params.values())}:{h.hexdigest()[:16]}"


def storage_bytes(obj: Any) -> dict[str, int]:
    """Bytes of the parameters as ``fp32`` and ``bf16``, and of the safetensors file ``save`` would write
    (``serialized``: parameters and buffers at their stored dtypes, shared tensors once, header included)."""
    from safetensors.torch import save

    roots = _roots(obj)
    n = sum(p.numel() for p in _named_params(roots).values())
    state = _unique((f"{i}.{k}", v) for i, r in enumerate(roots) for k, v in r.state_dict().items())
    blob = save({k: v.detach().contiguous() for k, v in state.items()})
    return {"fp32": 4 * n, "bf16": 2 * n, "serialized": len(blob)}


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


def _default_run(obj: Any, args: tuple, kwargs: dict) -> Any:
    if isinstance(obj, nn.Module):
        return obj(*args, **kwargs)
    if hasattr(obj, "predict"):
        return obj.predict(*args, **kwargs)
    raise TypeError(f"profile: do not know how to run {type(obj).__name__}; pass run=callable")


def _series(args: tuple) -> int | None:
    if not args:
        return None
    x = args[0]
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.dim() >= 1 else None
    if isinstance(x, (list, tuple)):
        return len(x)
    return None


def profile(
    obj: Any,
    *args: Any,
    run: Callable[[], Any] | None = None,
    series: int | None = None,
    storage: bool = True,
    **kwargs: Any,
) -> CostReport:
    """Count the cost of one call of a model or pipeline.

    Args:
        obj: an ``nn.Module`` (called as ``obj(*args, **kwargs)``) or a pipeline with ``predict`` (called as
            ``obj.predict(*args, **kwargs)``, e.g. a ``ChronosPipeline`` with a (B, T) context). Parameters,
            storage and module names come from ``obj`` (a pipeline's module attributes).
        run: call this instead (no arguments), e.g. ``lambda: pipe.predict_quantiles(ctx, 64)``.
        series: rows the call forecasts, for per-series figures (default: the first argument's length).
        storage: also measure the serialized size (one in-memory safetensors serialization).

    Returns:
        A :class:`CostReport`; ``print(report)`` shows a table by component and block.

    The call runs under ``torch.inference_mode``; random sampling inside it consumes the global RNG as usual.
    """
    roots = _roots(obj)
    names: dict[int, str] = {}
    for root in roots:
        for name, module in root.named_modules():
            names.setdefault(id(module), name or type(root).__name__)
    counter = _Counter(names)
    hooks = [
        nn.modules.module.register_module_forward_pre_hook(counter.pre),
        nn.modules.module.register_module_forward_hook(counter.post, always_call=True),
    ]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # fused nn.Transformer*Layer kernels hide their products
    try:
        with torch.inference_mode(), counter:
            if run is not None:
                run()
            else:
                _default_run(obj, args, kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in hooks:
            h.remove()
    rep = counter.report
    rep.params = parameter_counts(roots)
    rep.storage = storage_bytes(roots) if storage else {"fp32": 4 * rep.params["total"], "bf16": 0, "serialized": 0}
    rep.series = series if series is not None else _series(args)
    try:
        from .core import token_counts

        rep.token_counts = token_counts(obj)
    except TypeError:  # not a family mergeplug patches
        rep.token_counts = None
    return rep


# ------------------------------------------------------------------------------------------------ comparing
def compare(
    obj: Any,
    settings: Mapping[str, Mapping[str, Any] | None],
    *args: Any,
    reps: int = 6,
    run: Callable[[], Any] | None = None,
    seed: int = 0,
    series: int | None = None,
    min_time: float = 0.2,
    time_budget: float = 60.0,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """MACs ratio next to the measured speed-up (with its 95% interval), for several merge settings of one model.

    Args:
        obj: a model or pipeline :func:`mergeplug.apply` accepts.
        settings: label -> keyword arguments of :func:`mergeplug.apply` (``None`` or ``{}``: unmerged).
            The first setting is the reference of the ratios.
        args / kwargs / run / series: the call, as for :func:`profile`.
        reps / min_time / time_budget: paired rounds at least, seconds of work per measurement, seconds of timing at
            most (:func:`mergeplug.timing.paired_speedups`).

    Returns:
        One row per setting: ``label``, ``macs``, ``macs_per_series``, ``macs_ratio`` (reference MACs / these),
        ``token_counts``, and either the speed fields of :meth:`mergeplug.timing.Speedup.fields` (``speedup``,
        ``speedup_low``, ``speedup_high``, ``speed_verdict``, ``time_s``, ...) or, for a merge setting that merged no
        token (same MACs as the reference, constant token counts), ``noop`` with the reason and no timing. The
        model is left unmerged.
    """
    from .core import apply, remove
    from .timing import paired_speedups

    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be an int >= 1, got {reps!r}")

    def configure(kw: Mapping[str, Any] | None) -> None:
        if kw:
            apply(obj, **kw)
        else:
            remove(obj)

    def call() -> None:
        torch.manual_seed(seed)
        with torch.inference_mode():
            run() if run is not None else _default_run(obj, args, kwargs)
        if torch.cuda.is_available():  # GPU kernels run asynchronously: wait for them, or the timer stops early
            torch.cuda.synchronize()

    labels = list(settings)
    reports: dict[str, CostReport] = {}
    try:
        for label in labels:
            configure(settings[label])
            torch.manual_seed(seed)
            reports[label] = profile(obj, *args, run=run, series=series, storage=False, **kwargs)
        ref = labels[0]
        noop = {}
        for label in labels[1:]:
            counts = reports[label].token_counts
            if settings[label] and reports[label].macs == reports[ref].macs and counts and min(counts) == max(counts):
                noop[label] = f"no token merged ({counts[0]} tokens in every block)"
        timed = [label for label in labels if label not in noop]
        speeds = paired_speedups(
            {label: call for label in timed}, setup=lambda label: configure(settings[label]), min_time=min_time,
            min_rounds=reps, max_rounds=max(reps, 40), budget_s=time_budget,
        )  # fmt: skip
    finally:
        remove(obj)
    rows = []
    for label in labels:
        row = {
            "label": label,
            "macs": reports[label].macs,
            "macs_per_series": reports[label].macs_per_series,
            "macs_ratio": reports[ref].macs / max(reports[label].macs, 1),
            "token_counts": reports[label].token_counts,
        }
        row.update({"noop": noop[label]} if label in noop else speeds[label].fields())
        rows.append(row)
    return rows


def format_comparison(rows: Sequence[Mapping[str, Any]]) -> str:
    """A text table of :func:`compare` rows: theoretical (MACs) ratio next to the measured speed-up and interval."""
    from .timing import speed_cell

    out = io.StringIO()
    w = max([len("setting")] + [len(r["label"]) for r in rows]) + 2
    speed_head = "speed-up [95% interval]"
    out.write(f"{'setting':<{w}}{'GMACs':>10}{'MACs ratio':>12}{'time s':>10}  {speed_head:<28}  tokens (last)\n")
    for i, r in enumerate(rows):
        last = r["token_counts"][-1] if r.get("token_counts") else "-"
        time_s = f"{r['time_s']:>10.3f}" if "time_s" in r else f"{'':>10}"
        speed = "reference" if i == 0 else speed_cell(r)
        out.write(f"{r['label']:<{w}}{r['macs'] / 1e9:>10.3f}{r['macs_ratio']:>11.2f}x{time_s}  {speed:<28}  {last}\n")
    return out.getvalue().rstrip("\n")
