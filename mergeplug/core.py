"""``mergeplug.apply`` / ``mergeplug.remove``: dispatch to the model family that handles an object."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from .config import DECODER_KEYS, MergeConfig, schedule_for_reduction
from .patches import find_family
from .patches.base import PatchRecord, find_record, last_forward, refuse_user_hooks, restore
from .patches.t5 import decoder_config

__all__ = [
    "apply", "merge_decoder", "remove", "settings", "token_counts", "recording_token_counts", "apply_kwargs",
    "unmerged", "APPLY_KEYS", "encoder_layers", "long_context_default",
]  # fmt: skip

#: the ``apply`` arguments a :class:`MergeConfig` records (``decoder`` apart), from its fields
APPLY_KEYS: tuple[str, ...] = tuple(name for name in MergeConfig.setting_names() if name != "decoder")
_AMOUNTS = ("r", "ratio", "threshold")

T = TypeVar("T")


def apply(obj: T, config: MergeConfig | None = None, **overrides: Any) -> T:
    """Inject local token merging into ``obj`` and return the same object.

    ``obj``: a ``ChronosPipeline`` (Chronos-T5), ``ChronosBoltPipeline``, ``Chronos2Pipeline``, their inner model, a
    Hugging Face model or any other registered family (``mergeplug.patches.families()``). The settings are
    ``config`` (a :class:`MergeConfig`, e.g. ``MergeConfig.from_string("k=1,ratio=0.2")`` or another model's
    ``mergeplug.settings``) with the keyword arguments on top (an amount given here, ``r`` / ``ratio`` /
    ``threshold``, replaces the config's), or the keyword arguments alone:

        {settings}

    Applying to an already patched model replaces its settings; ``r=0`` (or ``ratio=0``) runs the original
    code, so outputs are bitwise those of the unpatched model. An amount is required: ``k`` alone says where tokens
    may merge, not how many, and no single amount is safe for every model and context, so ``apply(model, k=1)``
    without ``r`` / ``ratio`` / ``threshold`` / ``input_ratio`` (or ``decoder``) is refused rather than merging
    nothing silently. Example: ``mergeplug.apply(pipe, k=1, **schedule_for_reduction(0.5, num_layers))``.

    Raises:
        TypeError: unsupported object (the message lists the supported families), or an unknown setting.
        ValueError: invalid settings (the message gives the allowed range), or no amount given.
    """
    unknown = sorted(set(overrides) - set(MergeConfig.setting_names()))
    if unknown:
        raise TypeError(
            f"mergeplug.apply got unknown setting(s) {', '.join(unknown)}; the settings are "
            f"{', '.join(MergeConfig.setting_names())}"
        )
    if config is not None and not isinstance(config, MergeConfig):
        raise TypeError(
            f"mergeplug.apply: config must be a mergeplug.MergeConfig (or None), got {type(config).__name__}; pass "
            "settings as keyword arguments, or MergeConfig.from_string('k=1,ratio=0.2')"
        )
    given = {} if config is None else {name: getattr(config, name) for name in MergeConfig.setting_names()}
    if any(overrides.get(name) is not None for name in _AMOUNTS):  # an amount here replaces the config's
        given = {key: value for key, value in given.items() if key not in _AMOUNTS}
    given.update(overrides)
    config = MergeConfig(**given)
    family = find_family(obj)
    family.check(config)
    if (
        all(given.get(name) is None for name in _AMOUNTS)
        and not given.get("input_ratio")
        and given.get("decoder") is None
    ):
        raise ValueError(
            "mergeplug.apply needs an amount to merge: r=<tokens per layer>, ratio=<fraction of the tokens per "
            "layer>, or **mergeplug.schedule_for_reduction(0.5, num_layers) (the fraction removed by the last "
            "layer); mergeplug.tune(pipeline, series, prediction_length=...) finds one on your data. r=0 keeps the "
            "model patched and bitwise unchanged."
        )
    if config.protect_recent and not family.forecasting:
        raise ValueError(
            f"protect_recent applies to forecasting families (chronos-t5, chronos-bolt, chronos-2, patchtst, "
            f"hf-time-series), whose tokens end at a forecast origin; {family.name} has none: drop protect_recent"
        )
    config = family.resolve(config, obj)
    record = find_record(family.modules(obj))
    created = record is None
    previous = None if created else record.config
    if not created:  # already patched (possibly through its pipeline or inner model): new settings
        _check_layers(config, record)
        record.config = config
    else:
        record = PatchRecord(family=family.name, config=config)
    try:
        if created:
            family.inject(obj, record)
            _check_layers(config, record)
        refuse_user_hooks(record)
        if config.decoder is not None:
            _check_decoder(family, record, config.decoder)
    except Exception:  # undo: a model patched here is restored, an earlier patch gets its settings back
        if created:
            restore(record)
        else:
            record.config = previous
        raise
    return obj


def _check_layers(config: MergeConfig, record: PatchRecord) -> None:
    """Refuse per-layer ``r`` / ``ratio`` lists longer than the patched stack (the extra values would be ignored)."""
    layers = record.hints.num_layers
    for name in ("r", "ratio"):
        value = getattr(config, name)
        if isinstance(value, (list, tuple)) and layers is not None and len(value) > layers:
            raise ValueError(
                f"{name} has {len(value)} per-layer values but this {record.family} model merges in {layers} layers; "
                "give at most one value per layer (or one number for all)"
            )


def merge_decoder(
    obj: T,
    *,
    k: int | None = 1,
    r: int | list[int] | None = None,
    ratio: float | list[float] | None = None,
    threshold: float | None = None,
    proportional_attention: bool = True,
) -> T:
    """Opt in to causal token merging in the decoder of an encoder-decoder model (teacher forcing).

    Works on models of the ``t5`` (``T5ForConditionalGeneration`` / ``T5Model``), ``chronos-t5`` and
    ``hf-time-series`` families. A model not patched yet is patched first with no encoder merging
    (``mergeplug.apply(obj, r=0)``); otherwise the encoder settings stay. Calling it again replaces the decoder
    settings; ``r=0`` switches decoder merging off; ``mergeplug.apply`` resets them.

    Args:
        obj: the model (or pipeline) to change; returned.
        k: locality of the decoder merges (``None``: global).
        r / ratio: tokens (or fraction of the current tokens) merged per decoder layer: the r mode, in which
            *which* tokens merge can depend on later targets (fine for training: every position is scored).
        threshold: strict causal mode: every decoder output at position p depends only on decoder inputs at
            positions <= p (see :mod:`mergeplug.merge`).
        proportional_attention: add ``log(size)`` of every merged target token to the self-attention logits.

    Raises:
        TypeError: the model has no decoder mergeplug can merge (the message says which families do).
        ValueError / NotImplementedError: invalid settings, or settings the model's decoder cannot run.
    """
    family = find_family(obj)
    config = decoder_config(k=k, r=r, ratio=ratio, threshold=threshold, proportional_attention=proportional_attention)
    record = find_record(family.modules(obj))
    patched_here = record is None
    if patched_here:
        apply(obj, r=0)
        record = find_record(family.modules(obj))
    try:
        _check_decoder(family, record, config)
    except Exception:
        if patched_here and record is not None:  # the r=0 patch made for this call goes again
            restore(record)
        raise
    record.config = replace(record.config, decoder=config)
    return obj


def _check_decoder(family: Any, record: PatchRecord | None, config: MergeConfig) -> None:
    """Raise unless the patched model of ``record`` can merge its decoder with ``config``."""
    if record is not None and record.hints.decoder_unsupported:
        raise NotImplementedError(record.hints.decoder_unsupported)
    if record is None or not record.hints.decoder_merging:
        raise TypeError(
            f"{family.name}: this object has no decoder that mergeplug can merge. Decoder merging supports "
            "T5ForConditionalGeneration / T5Model, Chronos-T5 and Hugging Face TimeSeriesTransformer / Informer "
            "(distil=False); pass the encoder-decoder model itself."
        )
    check = record.hints.decoder_check
    if check is not None:
        check(config)


def remove(obj: T, *, merging_only: bool = False) -> T:
    """Undo :func:`apply` (and :func:`mergeplug.fast_sampling`): original classes, no hooks; outputs are bitwise
    those of a never-patched model. ``merging_only``: undo token merging and keep auxiliary patches (fast
    sampling)."""
    family = find_family(obj)
    for aux in (False,) if merging_only else (False, True):  # token merging, then auxiliary patches
        while (record := find_record(family.modules(obj), aux=aux)) is not None:
            restore(record)
    return obj


def settings(obj: Any) -> MergeConfig | None:
    """The merge settings currently applied to ``obj``, or None if it is not patched."""
    record = find_record(find_family(obj).modules(obj))
    return None if record is None else record.config


def apply_kwargs(config: MergeConfig) -> dict[str, Any]:
    """The :func:`apply` keyword arguments that reproduce ``config`` (JSON-serialisable; decoder merging as a nested
    ``decoder`` dict)."""
    out = {k: getattr(config, k) for k in APPLY_KEYS}
    if config.decoder is not None:
        out["decoder"] = {k: getattr(config.decoder, k) for k in DECODER_KEYS}
    return out


@contextmanager
def unmerged(obj: T) -> Iterator[T]:
    """Inside the block ``obj`` runs without token merging (e.g. to ``save_pretrained`` it from its own classes); its
    merge settings are applied again afterwards. Auxiliary patches (fast sampling) stay. A model that is not merged
    is left as it is."""
    config = settings(obj)
    if config is None:
        yield obj
        return
    kwargs = apply_kwargs(config)
    remove(obj, merging_only=True)
    try:
        yield obj
    finally:
        apply(obj, **kwargs)


def token_counts(obj: Any) -> list[int] | None:
    """Token counts of the last merged encoder forward: [entering block 0, leaving block 0, ..., leaving block L-1].

    Counts are slots per row (rows of a batch share one length); None if ``obj`` is not patched or has not run
    a merged forward since it was patched.
    """
    record = find_record(find_family(obj).modules(obj))
    return None if record is None else last_forward(record, "token_counts")


def encoder_layers(obj: Any) -> int:
    """Encoder layers of a pipeline or model, from its config (``num_layers`` / ``num_hidden_layers`` /
    ``encoder_layers``); a ValueError naming ``num_layers=`` when the config does not tell."""
    inner = getattr(obj, "inner_model", None) or getattr(obj, "model", None) or obj
    config = getattr(inner, "config", None)
    for name in ("num_layers", "num_hidden_layers", "encoder_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell how many encoder layers {type(obj).__name__} has: pass num_layers=")


def long_context_default(
    obj: Any, context: int, *, num_layers: int | None = None, describe: bool = False
) -> dict[str, Any] | tuple[str, dict[str, Any]] | None:
    """The family's long-context default for ``context`` time steps of history: :func:`apply` keyword arguments
    (a reduction and schedule, when the entry has one, turned into ``ratio`` / ``input_ratio`` for the model's
    ``num_layers``, read from its config when None; an entry without a reduction holds protections only, to
    combine with a setting of your own), or None when the family has none for this many tokens (then the
    forecast-safe defaults of :func:`apply` hold). ``describe=True``: ``(setting string, keyword arguments)``.

    Chronos-2's were chosen on the validation windows of ``mergeplug:chronos2-ref`` (``docs/merging.md``, "Long
    contexts"): protections only. Example: ``mergeplug.apply(pipe, k=None, **mergeplug.schedule_for_reduction(0.75,
    12, "front"), **mergeplug.long_context_default(pipe, 2048))``.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be a number of time steps >= 1, got {context!r}")
    family = find_family(obj)
    tokens = math.ceil(context / family.steps_per_token(obj))
    chosen = None
    for at_least, setting in family.long_context:
        if tokens >= at_least:
            chosen = setting
    if chosen is None:
        return None
    kwargs = {k: v for k, v in chosen.items() if k not in ("reduction", "schedule")}
    if "reduction" in chosen:
        layers = num_layers or encoder_layers(obj)
        kwargs.update(schedule_for_reduction(chosen["reduction"], layers, chosen.get("schedule", "constant")))
    if not describe:
        return kwargs
    label = ",".join(f"{k}={'global' if v is None else v}" for k, v in chosen.items())
    return label, kwargs


@contextmanager
def recording_token_counts(obj: Any) -> Iterator[list[list[int]]]:
    """Collect the token counts of every encoder forward of a patched ``obj`` run inside the block.

    Yields a list that receives one entry per forward, as :func:`token_counts` gives it (a forward that ran the
    original code because its series were too short records its constant counts); it stays empty while ``obj``
    is not patched. The harness reads it to tell a setting that merged nothing on a dataset from one that did.
    """
    family = find_family(obj)
    roots = family.modules(obj)
    seen: list[list[int]] = []
    if find_record(roots) is None:
        yield seen
        return

    def after(*_: Any) -> None:
        counts = token_counts(obj)
        if counts is not None and (not seen or counts is not last[0]):
            seen.append(list(counts))
            last[0] = counts

    last: list[Any] = [None]
    handles = [root.register_forward_hook(after) for root in roots]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


apply.__doc__ = (apply.__doc__ or "").replace(" " * 8 + "{settings}", MergeConfig.settings_help(indent=8))
