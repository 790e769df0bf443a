"""Injection machinery shared by every model family: class swaps, hooks, the per-model record, the registry.

A family is one module in :mod:`mergeplug.patches` that calls :func:`register` with a :class:`Family`.
Injection swaps the ``__class__`` of chosen modules to a subclass that mixes in mergeplug's forward
(PEFT-style, no weights touched) and may add forward hooks; everything done is written into a
:class:`PatchRecord`, so :func:`restore` can undo it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..config import MergeConfig

RECORD_ATTR = "_mergeplug_record"
AUX_ATTR = "_mergeplug_aux_record"  # auxiliary patches live beside the merging record, never replace it

__all__ = ["Family", "PatchRecord", "register", "families", "find_family", "find_record", "swap_class", "restore"]


@dataclass
class PatchRecord:
    """Everything one ``apply`` did to a model, and the settings its patched modules read at run time.

    Attributes:
        family: name of the model family that was patched.
        config: current merge settings (``apply`` on a patched model replaces this object's contents).
        swapped: (module, original class) pairs.
        hooks: forward-hook handles.
        hints: family-specific facts for the shared T5 code (e.g. ``protect_ids``, ``protect_last``), and
            ``num_layers``: the merging stack's layers, which per-layer ``r`` / ``ratio`` lists may not exceed.
        scratch: per-forward scratch space (captured attention keys, the last merged encoder output).
        aux: an auxiliary patch that is not token merging (e.g. fast sampling); ``apply`` and ``settings``
            ignore such records, ``remove`` undoes them too.
        undo: callbacks run (last first) by :func:`restore`, for changes other than class swaps and hooks.
    """

    family: str
    config: MergeConfig
    swapped: list[tuple[nn.Module, type]] = field(default_factory=list)
    hooks: list[RemovableHandle] = field(default_factory=list)
    hints: dict[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)
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
    """

    name: str
    description: str
    matches: Callable[[Any], bool]
    inject: Callable[[Any, PatchRecord], None]
    modules: Callable[[Any], list[nn.Module]]
    check: Callable[[MergeConfig], None] = lambda config: None
    forecast_defaults: dict[str, Any] = field(default_factory=dict)
    steps_per_token: Callable[[Any], float] = lambda obj: 1.0

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
        "(see mergeplug/patches/t5.py for an example) and import it in mergeplug/patches/__init__.py."
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


def swap_class(module: nn.Module, mixin: type, record: PatchRecord) -> None:
    """Give ``module`` the class ``(mixin, type(module))`` and remember the original in ``record``."""
    orig = type(module)
    key = (mixin, orig)
    if key not in _SUBCLASS_CACHE:
        _SUBCLASS_CACHE[key] = type(f"{mixin.__name__.lstrip('_')}{orig.__name__}", (mixin, orig), {})
    record.swapped.append((module, orig))
    module.__class__ = _SUBCLASS_CACHE[key]
    module.__dict__[RECORD_ATTR] = record


def mark(module: nn.Module, record: PatchRecord) -> None:
    """Attach ``record`` to a module that is hooked but not swapped."""
    record.swapped.append((module, type(module)))
    module.__dict__[RECORD_ATTR] = record


def restore(record: PatchRecord) -> None:
    """Undo everything in ``record``: original classes back, hooks removed, record attributes deleted."""
    for undo in reversed(record.undo):
        undo()
    for handle in record.hooks:
        handle.remove()
    for module, orig in reversed(record.swapped):
        module.__class__ = orig
        for key in [key for key in module.__dict__ if key.startswith("_mergeplug") and key != AUX_ATTR]:
            del module.__dict__[key]
    record.undo.clear()
    record.hooks.clear()
    record.swapped.clear()
    record.scratch.clear()
