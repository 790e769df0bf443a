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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .cost_counter import CostReport, _Counter
from .merge import scope

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
