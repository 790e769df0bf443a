"""Injection machinery shared by every model family: class swaps, hooks, the per-model record, the registry.

A family is one module in :mod:`mergeplug.patches` that calls :func:`register` with a :class:`Family`.
Injection swaps the ``__class__`` of chosen modules to a subclass that mixes in mergeplug's forward
(PEFT-style, no weights touched) and may add forward hooks; everything done is written into a
:class:`PatchRecord`, so :func:`restore` can undo it exactly. The record is attached to the patched modules under
:data:`RECORD_ATTR` (read it back with :func:`record_of` or :func:`find_record`).

Plumbing the families share: :func:`hook_keys` and :func:`call_capturing_keys` (an attention block's keys as the
merge metric), :func:`merge_inputs` (merging the input tokens before the first block, ``input_ratio``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..config import MergeConfig
from ..merge import MergeState, head_mean, match, merge_step, merge_tokens
from .calls import Calls, begin, current, end, in_call, last_forward, report

#: instance attribute (in ``module.__dict__``) under which a patched module holds its :class:`PatchRecord`
RECORD_ATTR = "_mergeplug_record"
AUX_ATTR = "_mergeplug_aux_record"  # auxiliary patches live beside the merging record, never replace it

__all__ = [
    "Family", "PatchRecord", "PatchHints", "Calls", "RECORD_ATTR", "register", "families", "find_family",
    "find_record", "record_of", "swap_class", "set_attribute", "restore", "begin", "current", "end", "in_call",
    "report", "last_forward", "refuse_user_hooks", "hook_keys", "key_metric", "unhooked", "call_capturing_keys",
    "merge_inputs",
]  # fmt: skip

T = TypeVar("T")


@dataclass
class PatchHints:
    """Facts a family's injection writes once, read at run time by the shared code (and by ``mergeplug.apply``).

    Attributes:
        num_layers: layers of the merging stack, which per-layer ``r`` / ``ratio`` lists may not exceed.
        protect_ids: token ids that never merge in a T5 encoder (EOS); None: not set yet (then the model's EOS).
        protect_last: trailing tokens that never merge in a T5 encoder (Chronos-Bolt's [REG]).
        recent_tail: tokens after the most recent context token ([REG], EOS) that ``protect_recent`` counts back from.
        decoder_merging: the model has a decoder that ``mergeplug.merge_decoder`` can merge.
        decoder_check: raises for decoder settings this model cannot run (called by ``merge_decoder``).
        decoder_unsupported: why this model's decoder cannot merge (``merge_decoder`` raises with it).
        bypassed: ``(path, module)`` of the modules a merged forward runs without calling them (it calls their
            parts), so hooks registered on them would not fire: ``mergeplug.apply`` refuses while they hold any.
        extra: family-specific facts (e.g. the TimesFM model whose layers the merged loop runs).
    """

    num_layers: int | None = None
    protect_ids: tuple[int, ...] | None = None
    protect_last: int = 0
    recent_tail: int = 0
    decoder_merging: bool = False
    decoder_check: Callable[[MergeConfig], None] | None = None
    decoder_unsupported: str | None = None
    bypassed: list[tuple[str, nn.Module]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PatchRecord:
    """Everything one ``apply`` did to a model, and the settings its patched modules read at run time.

    Attributes:
        family: name of the model family that was patched.
        config: current merge settings (``apply`` on a patched model replaces this object's contents).
        swapped: (module, original class) pairs.
        hooks: forward-hook handles.
        hints: family facts written at injection (:class:`PatchHints`).
        calls: per-thread state of the calls in progress and of each thread's last forward (:class:`Calls`).
        latest: the facts of the latest forward on any thread (:func:`last_forward` falls back to them).
        added: ``(module, attribute)`` of every instance attribute the patch set, deleted by :func:`restore`.
        aux: an auxiliary patch that is not token merging (e.g. fast sampling); ``apply`` and ``settings``
            ignore such records, ``remove`` undoes them too.
        undo: callbacks run (last first) by :func:`restore`, for changes other than class swaps and hooks.
    """

    family: str
    config: MergeConfig
    swapped: list[tuple[nn.Module, type]] = field(default_factory=list)
    hooks: list[RemovableHandle] = field(default_factory=list)
    hints: PatchHints = field(default_factory=PatchHints)
    calls: Calls = field(default_factory=Calls)
    latest: dict[str, Any] = field(default_factory=dict)
    added: list[tuple[nn.Module, str]] = field(default_factory=list)
    aux: bool = False
    undo: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class Family:
    """A supported model family.

    Attributes:
        name: short name used in messages and saved configs.
        description: what objects it accepts, for the error listing supported families.
        matches: does this family handle ``obj``?
        inject: patch ``obj`` according to ``record`` (fills ``record.swapped`` / ``record.hooks``).
        modules: the ``nn.Module`` objects of ``obj`` to search for an existing record.
        check: raises ``ValueError`` for settings the family cannot run (called on every ``apply``).
        forecast_defaults: for forecasting families, the forecast-safe defaults of ``protect_recent`` and
            ``min_tokens`` (used when ``safe=True`` and the user leaves them at None); empty for other families.
        steps_per_token: input time steps per token of ``obj`` (the patch stride of patch models), which turns a
            ``period`` in time steps into tokens.
        recent_tail: number of trailing tokens after the most recent context token ([REG], EOS), which
            ``protect_recent`` counts back from (families that protect recent tokens read it themselves).
        long_context: the family's long-context defaults, ``(context tokens at least, setting)`` pairs in
            increasing order; a setting holds ``k``, ``reduction``, ``schedule`` and other :func:`mergeplug.apply`
            keyword arguments (see :func:`mergeplug.long_context_default`); empty when none were chosen.
    """

    name: str
    description: str
    matches: Callable[[Any], bool]
    inject: Callable[[Any, PatchRecord], None]
    modules: Callable[[Any], list[nn.Module]]
    check: Callable[[MergeConfig], None] = lambda config: None
    forecast_defaults: dict[str, Any] = field(default_factory=dict)
    steps_per_token: Callable[[Any], float] = lambda obj: 1.0
    long_context: tuple[tuple[int, dict[str, Any]], ...] = ()

    @property
    def forecasting(self) -> bool:
        """Does this family forecast (and so get forecast-safe defaults)?"""
        return bool(self.forecast_defaults)

    def resolve(self, config: MergeConfig, obj: Any) -> MergeConfig:
        """``config`` with this family's forecast-safe defaults and time steps per token filled in."""
        return config.resolved(self.forecast_defaults, self.steps_per_token(obj))


_FAMILIES: list[Family] = []


def register(family: Family, *, first: bool = False) -> Family:
    """Add a family; families registered earlier are tried first (register specific before generic).

    ``first=True`` puts it before every registered family (user models, see ``mergeplug.register_patch``).
    A family registered again under the same name replaces the old one.
    """
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != family.name]
    if first:
        _FAMILIES.insert(0, family)
    else:
        _FAMILIES.append(family)
    return family


def families() -> list[Family]:
    """The registered families, in matching order."""
    return list(_FAMILIES)


def find_family(obj: Any) -> Family:
    """The family that handles ``obj``; ``TypeError`` naming the supported ones otherwise."""
    for fam in _FAMILIES:
        if fam.matches(obj):
            return fam
    supported = "\n".join(f"  - {f.name}: {f.description}" for f in _FAMILIES)
    raise TypeError(
        f"mergeplug does not support objects of type {type(obj).__module__}.{type(obj).__qualname__}.\n"
        f"Supported model families:\n{supported}\n"
        "To add one, write a module in mergeplug/patches/ that calls mergeplug.patches.register(Family(...)) "
        "(mergeplug/patches/patchtst.py is a short example: its blocks run in the shared loop of "
        "mergeplug/patches/loop.py) and import it in mergeplug/patches/__init__.py."
    )


def find_record(mods: list[nn.Module], *, aux: bool = False, family: str | None = None) -> PatchRecord | None:
    """The record of an earlier patch on any of ``mods`` (or their submodules), if any.

    ``aux=False``: token-merging records (``apply``); ``aux=True``: auxiliary ones (e.g. fast sampling).
    ``family``: only records of that family.
    """
    attr = AUX_ATTR if aux else RECORD_ATTR
    for root in mods:
        for m in root.modules():
            rec = m.__dict__.get(attr)
            if rec is not None and (family is None or rec.family == family):
                return rec
    return None


_SUBCLASS_CACHE: dict[tuple[type, type], type] = {}


def record_of(module: nn.Module) -> PatchRecord:
    """The record a patched (swapped or marked) module carries."""
    return module.__dict__[RECORD_ATTR]


def swap_class(module: nn.Module, mixin: type, record: PatchRecord) -> None:
    """Give ``module`` the class ``(mixin, type(module))`` and remember the original in ``record``."""
    orig = type(module)
    key = (mixin, orig)
    if key not in _SUBCLASS_CACHE:
        _SUBCLASS_CACHE[key] = type(f"{mixin.__name__.lstrip('_')}{orig.__name__}", (mixin, orig), {})
    record.swapped.append((module, orig))
    module.__class__ = _SUBCLASS_CACHE[key]
    set_attribute(module, RECORD_ATTR, record, record)


def mark(module: nn.Module, record: PatchRecord) -> None:
    """Attach ``record`` to a module that is hooked but not swapped."""
    record.swapped.append((module, type(module)))
    set_attribute(module, RECORD_ATTR, record, record)


def set_attribute(module: nn.Module, name: str, value: Any, record: PatchRecord) -> None:
    """``module.__dict__[name] = value``, listed in ``record`` so that :func:`restore` deletes it again."""
    if name not in module.__dict__:
        record.added.append((module, name))
    module.__dict__[name] = value


def restore(record: PatchRecord) -> None:
    """Undo everything in ``record``: original classes back, hooks removed, the attributes it added deleted."""
    for undo in reversed(record.undo):
        undo()
    for handle in record.hooks:
        handle.remove()
    for module, orig in reversed(record.swapped):
        module.__class__ = orig
    for module, name in reversed(record.added):
        module.__dict__.pop(name, None)
    record.undo.clear()
    record.hooks.clear()
    record.swapped.clear()
    record.added.clear()
    record.latest.clear()  # (the per-thread state stays: a call in progress, e.g. remove() run by a hook, finishes)


def refuse_user_hooks(record: PatchRecord, *, in_forward: bool = False) -> None:
    """Hooks on modules a merged forward does not call (``PatchHints.bypassed``) would stop firing: refuse, naming
    them; at ``apply`` (a ValueError) and, for hooks registered after it, at every merged forward (a RuntimeError)."""
    hooked = [path for path, m in record.hints.bypassed if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        where = f"{', '.join(hooked[:3])}{', ...' if len(hooked) > 3 else ''}"
        error = RuntimeError if in_forward else ValueError
        raise error(
            f"forward hooks {'were registered after mergeplug.apply' if in_forward else 'are registered'} on "
            f"{where}; a merged {record.family} forward runs those modules' parts without calling them, so the hooks "
            "would not fire. Remove the hooks (or hook a sub-module the model still calls, e.g. the attention's key "
            "projection or the feed-forward layer), or run the model unmerged (mergeplug.remove)"
        )


# ------------------------------------------------------------------------------------ plumbing shared by families


def hook_keys(record: PatchRecord, projections: Iterable[nn.Module]) -> None:
    """Hook key projections (e.g. every block's ``SelfAttention.k``) so that the merge metric costs no extra matmul:
    while this thread's :attr:`Calls.capture` is set (:func:`call_capturing_keys`), a projection's output
    (B, T, H * dk) goes to :attr:`Calls.keys`."""

    def grab(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        calls = record.calls
        if calls.capture:
            calls.keys = output

    grab.mergeplug_key_capture = True  # type: ignore[attr-defined]  # see unhooked()
    for proj in projections:
        record.hooks.append(proj.register_forward_hook(grab))
        mark(proj, record)


def unhooked(module: nn.Module) -> bool:
    """Does calling ``module`` do nothing besides its own ``forward``? No pre-hooks, and no forward hooks other than
    :func:`hook_keys`' (which record only inside :func:`call_capturing_keys`); no global module hooks."""
    glob = nn.modules.module
    if module._forward_pre_hooks or glob._global_forward_pre_hooks or glob._global_forward_hooks:
        return False
    return all(getattr(h, "mergeplug_key_capture", False) for h in module._forward_hooks.values())


def call_capturing_keys(
    record: PatchRecord, attention: Callable[..., T], *args: Any, **kwargs: Any
) -> tuple[T, torch.Tensor | None]:
    """``attention(*args, **kwargs)`` with the hooks of :func:`hook_keys` recording: (its output, the keys)."""
    calls = record.calls
    calls.capture = True
    try:
        out = attention(*args, **kwargs)
    finally:
        calls.capture = False
    keys, calls.keys = calls.keys, None
    return out, keys


def key_metric(keys: torch.Tensor | None, heads: int) -> Callable[[], torch.Tensor]:
    """The merge metric of captured (B, T, H * dk) ``keys``: a function giving them averaged over the ``heads``
    (:func:`mergeplug.merge.head_mean`), computed only when a merge needs it. No keys (the hooks of
    :func:`hook_keys` are gone: ``remove()`` ran inside this forward) is a RuntimeError saying so."""

    def metric() -> torch.Tensor:
        if keys is None:
            raise RuntimeError(
                "the merged forward in progress lost its patch: mergeplug.remove() (or a new apply) ran inside it, "
                "e.g. from a hook, so its remaining blocks cannot merge. Call mergeplug.remove() after the forward "
                "returns."
            )
        return head_mean(keys, heads)

    return metric


def merge_inputs(
    h: torch.Tensor,
    state: MergeState,
    config: MergeConfig,
    *,
    metric: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, bool]:
    """Merge ``config.input_merges(N)`` of the N input tokens ``h`` (B, N, C) before the first block.

    The merges are chosen on ``metric`` (default ``h``; the input embeddings), per group of rows with ``groups``
    (see :func:`mergeplug.merge.match`); ``state`` is updated in place. One merge step removes at most about half of
    the tokens; an ``input_ratio`` above 0.5 runs further steps on the merged tokens (the metric merged alike, each
    step at most half of what is left) until the count is reached or nothing more can merge.

    Returns:
        (B, T', C) tokens and True, or ``h`` itself and False when nothing merges.
    """
    n = h.shape[1]
    r_in = config.input_merges(n)
    merged = False
    # up to one half: one step, as it always was; above: a step halves the tokens at most, 64 are more than enough
    for step in range(1 if config.input_ratio <= 0.5 else 64):
        r = r_in if step == 0 else min(r_in, state.length // 2)
        if r <= 0:
            break
        dst, t_new = match(
            h if metric is None else metric, state, r=r, k=config.k, groups=groups, period=config.token_period,
            min_similarity=config.min_similarity, min_slots=config.min_tokens or 0,
        )  # fmt: skip
        if t_new >= state.length:
            break
        r_in -= state.length - t_new
        if metric is not None:  # a metric apart from h is merged alike (sizes before the step, as merge_step uses)
            metric = None if metric is h else merge_tokens(metric, dst, state.size, t_new)
        h, merged = merge_step(h, state, dst, t_new), True
    return h, merged
