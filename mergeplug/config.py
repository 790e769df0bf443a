"""Merge settings: validation and per-layer schedules (model-agnostic)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# the schedules live in mergeplug/schedules.py; importable from here too
from .schedules import SCHEDULES, Schedule, _is_number, ratio_for_reduction, schedule_for_reduction

__all__ = [
    "MergeConfig", "DECODER_KEYS", "ratio_for_reduction", "schedule_for_reduction", "SCHEDULES", "Schedule",
]  # fmt: skip


def _k(text: str) -> int | None:
    return None if text.lower() in ("global", "none") else int(text)


def _ints(text: str) -> int | list[int]:
    values = [int(v) for v in text.split(":")]
    return values if len(values) > 1 else values[0]


def _floats(text: str) -> float | list[float]:
    values = [float(v) for v in text.split(":")]
    return values if len(values) > 1 else values[0]


def _bool(text: str) -> bool:
    if text.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError("use true or false")
    return text.lower() in ("1", "true", "yes")


def _period(text: str) -> float | str:
    return text if text == "auto" else 0.0 if text in ("none", "off") else float(text)


def _setting(default: Any, syntax: str, parse: Callable[[str], Any] | None, help: str) -> Any:
    """A :class:`MergeConfig` field that is a user setting: its default, how it is written in a setting string
    (``syntax``, ``parse``; None: not in strings) and its help text (the docstring and the CLI help come from it)."""
    return field(default=default, metadata={"setting": True, "syntax": syntax, "parse": parse, "help": help})


@dataclass
class MergeConfig:
    """Token-merging settings shared by every patched model family: the one place that defines each setting (type,
        range, default, help); ``mergeplug.apply``'s arguments, ``--merge`` strings (:meth:`from_string`, ``str()``),
        saved configs and model cards are derived from its fields. Adding a setting: a field here (with
        :func:`_setting`), its check in ``__post_init__`` and its use in the engine.

        Args:
    {args}
            steps_per_token: input time steps per token (1 for Chronos-T5 and TimeSeriesTransformer, the patch stride
                for patch models); set by ``mergeplug.apply`` from the model, not by users.
            extra: auxiliary patches' settings (fast sampling's ``exact``); not a merge setting.
    """

    k: int | None = _setting(
        1,
        "int >= 1 or global",
        _k,
        "locality: an A token may merge only with B tokens at most ``k`` positions away in the sequence entering the "
        "merge step (``k=1``: immediate neighbours; with the alternate A/B split an even ``k`` adds nothing over "
        "``k-1``). ``None`` = global (ToMe). Must be >= 1.",
    )
    r: int | list[int] | None = _setting(
        None,
        "int, or ints per layer joined by ':'",
        _ints,
        "tokens merged per layer, an int for every layer or a list with one entry per layer (missing entries mean "
        "0). Capped per layer at what can merge (about half the tokens, fewer with padding, protected tokens or a "
        "narrow band); the cap is applied so every row of a batch keeps one length.",
    )
    ratio: float | list[float] | None = _setting(
        None,
        "float in [0, 1), or floats per layer joined by ':'",
        _floats,
        "alternative to ``r``: fraction of the *current* tokens merged in each layer, in [0, 1), or a list with one "
        "fraction per layer; values above 0.5 hit the cap above.",
    )
    threshold: float | None = _setting(
        None,
        "float in [-1, 1]",
        float,
        "strict causal mode only (``causal=True``): merge an A token into its successor when its cosine similarity "
        "to its predecessor is >= threshold, in [-1, 1].",
    )
    causal: bool = _setting(
        False,
        "true or false",
        _bool,
        "causal merging (decoders / causal models): merged tokens sit at their latest member and never attend to "
        "later positions.",
    )
    proportional_attention: bool = _setting(
        True, "true or false", _bool, "add log(size) of each key to the attention logits (ToMe)."
    )
    input_ratio: float = _setting(
        0.0,
        "float in [0, 1)",
        float,
        "fraction of the *input* tokens merged before the first block, with the input embeddings as the similarity "
        "metric, in [0, 1); 0 = off. One merge step removes at most about half; above 0.5 further steps run on the "
        "merged input tokens. This also shrinks the first block's attention, which the per-layer schedule (applied "
        "after each block's attention) cannot.",
    )
    safe: bool = _setting(
        True,
        "true or false",
        _bool,
        "forecast-safe merging (default ``True``). For forecasting families (Chronos-T5, Chronos-Bolt, Chronos-2, "
        "PatchTST, TimeSeriesTransformer / Informer) ``protect_recent`` and ``min_tokens`` left at ``None`` take the "
        "family's defaults (see ``mergeplug.patches.families()``); ``safe=False`` is the plain merging of the "
        "local-merging paper (both 0 unless given). Other families have no such defaults.",
    )
    protect_recent: int | None = _setting(
        None,
        "int >= 0",
        int,
        "number of tokens just before the forecast origin (the last context tokens, before [REG] / EOS / read-out "
        "tokens) that never merge; ``None`` = the family default (see ``safe``).",
    )
    min_tokens: int | None = _setting(
        None,
        "int >= 0",
        int,
        "floor on the sequence: no merge step (input merging included) leaves fewer than this many token slots; "
        "short series are left (almost) untouched. ``None`` = the family default (see ``safe``).",
    )
    period: float | str | None = _setting(
        None,
        "time steps >= 1, auto or off",
        _period,
        "seasonal period in *time steps* of the input series (e.g. 24 for hourly data with a daily cycle). An A token "
        "may then also merge with the B tokens nearest to one period before and after it (its seasonal twins, found "
        "by position), besides its ``k`` neighbours: still O(T·k·C). Converted to tokens with the family's time "
        'steps per token (``steps_per_token``, set by ``mergeplug.apply``). ``"auto"``: each series\' period is '
        "found from its own tokens (:func:`mergeplug.merge.detect_period`; the forecast-safe default of forecasting "
        "families); ``0``: off; ``None``: the family default (see ``safe``).",
    )
    min_similarity: float | None = _setting(
        None,
        "float in [-1, 1]",
        float,
        "a pair merges only if its cosine similarity is at least this (in [-1, 1]); where fewer pairs are alike, "
        "fewer tokens merge than ``r`` / ``ratio`` ask. A batch keeps one length, so the series (for PatchTST: the "
        "channel) with the fewest alike pairs sets the count for the whole batch. ``None``: the family default (see "
        "``safe``); ``-1``: off.",
    )
    decoder: MergeConfig | None = _setting(
        None,
        "",
        None,
        "causal merging of the decoder of an encoder-decoder model when it processes several target positions at "
        "once (teacher forcing / training): a causal MergeConfig, or a dict of :func:`mergeplug.merge_decoder`'s "
        "settings (``k``, ``r`` / ``ratio`` / ``threshold``, ``proportional_attention``); T5 / Chronos-T5 and "
        "Hugging Face time-series Transformers; ``generate()`` is unaffected. None: off.",
    )
    steps_per_token: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decoder is not None and not isinstance(self.decoder, MergeConfig):
            self.decoder = MergeConfig.for_decoder(self.decoder)
        if self.k is not None:
            if isinstance(self.k, bool) or not isinstance(self.k, int):
                raise ValueError(f"k must be an int >= 1 or None (global merging), got {self.k!r}")
            if self.k < 1:
                raise ValueError(f"k must be >= 1 (1 = merge only with immediate neighbours) or None, got {self.k}")
        chosen = [n for n in ("r", "ratio", "threshold") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give only one of r, ratio, threshold; got {', '.join(chosen)}")
        if not chosen:
            self.r = 0
        if self.r is not None:
            values = self.r if isinstance(self.r, (list, tuple)) else [self.r]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"r must be an int >= 0 or a list of them (one per layer), got {self.r!r}")
            if isinstance(self.r, tuple):
                self.r = list(self.r)
        if self.ratio is not None:
            values = self.ratio if isinstance(self.ratio, (list, tuple)) else [self.ratio]
            for v in values:
                if not _is_number(v) or not 0.0 <= v < 1.0:
                    raise ValueError(
                        f"ratio must be in [0, 1) (fraction of tokens merged per layer) or a list of such values, "
                        f"got {self.ratio!r}"
                    )
            # plain floats (NumPy scalars do not go into a saved JSON config)
            self.ratio = [float(v) for v in values] if isinstance(self.ratio, (list, tuple)) else float(self.ratio)
        if not _is_number(self.input_ratio) or not 0.0 <= self.input_ratio < 1.0:
            raise ValueError(
                f"input_ratio must be a number in [0, 1) (fraction of input tokens merged), got {self.input_ratio!r}"
            )
        self.input_ratio = float(self.input_ratio)
        for name in ("safe", "causal", "proportional_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("protect_recent", "min_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be an int >= 0 (a number of tokens) or None (family default), got {v!r}")
        if self.period is not None and self.period != "auto":
            p = self.period
            if not _is_number(p) or not math.isfinite(p) or not (p == 0 or p >= 1):
                raise ValueError(
                    f"period must be a number of time steps >= 1 (e.g. 24 for hourly data), 'auto' (found per series "
                    f"from its tokens), 0 (off) or None (the family default), got {self.period!r}"
                )
            if self.threshold is not None:
                raise ValueError(
                    "period (seasonal candidates) applies to the r / ratio modes, not to threshold merging"
                )
        if self.min_similarity is not None:
            v = self.min_similarity
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1.0 <= v <= 1.0:
                raise ValueError(f"min_similarity is a cosine similarity in [-1, 1] (-1: off) or None, got {v!r}")
            if self.threshold is not None:
                raise ValueError("min_similarity applies to the r / ratio modes; threshold merging has its own floor")
        if self.min_tokens and self.threshold is not None:
            raise ValueError("min_tokens applies to the r / ratio modes; threshold merging decides per token (drop it)")
        if not _is_number(self.steps_per_token) or not self.steps_per_token > 0:
            raise ValueError(f"steps_per_token must be > 0, got {self.steps_per_token!r}")
        if self.threshold is not None:
            if not self.causal:
                raise ValueError("threshold selects the strict causal mode: pass causal=True with it")
            if not _is_number(self.threshold) or not -1.0 <= self.threshold <= 1.0:
                raise ValueError(f"threshold is a cosine similarity and must be in [-1, 1], got {self.threshold}")

    def merges_at(self, layer: int, length: int) -> int:
        """Number of tokens to merge in ``layer`` when ``length`` tokens enter it (before the engine's caps), at
        most what keeps ``min_tokens`` slots."""
        if self.ratio is not None:
            r = int(math.floor(_per_layer(self.ratio, layer) * length + 0.5))
        else:
            r = int(_per_layer(self.r, layer))
        return self._floored(r, length)

    def input_merges(self, length: int) -> int:
        """Number of input tokens to merge before the first block (before capping), at most what keeps
        ``min_tokens`` slots."""
        return self._floored(int(math.floor(self.input_ratio * length + 0.5)), length)

    def _floored(self, r: int, length: int) -> int:
        return max(0, min(r, length - (self.min_tokens or 0)))

    @property
    def token_period(self) -> float | str | None:
        """The seasonal period in tokens (``period / steps_per_token``), ``"auto"`` or None."""
        if self.period is None or self.period == "auto":
            return self.period
        if not self.period:
            return None
        return float(self.period) / float(self.steps_per_token)

    def resolved(self, defaults: dict[str, Any], steps_per_token: float = 1.0) -> MergeConfig:
        """A copy with ``protect_recent`` / ``min_tokens`` filled in (``defaults`` when ``safe``, else 0), ``period``
        and ``min_similarity`` too where they are None and the defaults give them (``safe`` only), and
        ``steps_per_token`` set: the settings a patched model runs with."""
        out = replace(self, extra=dict(self.extra), steps_per_token=float(steps_per_token))
        for name in ("protect_recent", "min_tokens"):
            if getattr(out, name) is None:
                setattr(out, name, int(defaults.get(name, 0)) if self.safe else 0)
        if self.safe and self.threshold is None:
            if out.period is None:
                out.period = defaults.get("period")
            if out.min_similarity is None:
                out.min_similarity = defaults.get("min_similarity")
        return out

    def is_noop(self, num_layers: int, length: int | None = None) -> bool:
        """True when no layer would merge anything: patched models then run the original code path.

        ``length``: tokens entering the model; a sequence of at most ``min_tokens`` tokens never merges (the floor
        holds in every step), so short series run the original code, bitwise."""
        if self.threshold is not None:
            return False
        if length is not None and self.min_tokens and length <= self.min_tokens:
            return True
        if self.input_ratio > 0:
            return False
        return all(_per_layer(self.ratio if self.ratio is not None else self.r, i) == 0 for i in range(num_layers))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (``decoder`` as a nested dict)."""
        return asdict(self)

    # ------------------------------------------------------------------------------------ derived from the fields

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The user settings, in order (the fields made with :func:`_setting`; ``decoder`` last)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("setting"))

    @classmethod
    def parse_value(cls, key: str, text: str) -> Any:
        """The value of setting ``key`` written as ``text`` in a setting string; ``KeyError`` for a key that is not
        a setting (or has no string form), ``ValueError`` for a bad value."""
        found = {f.name: f for f in fields(cls) if f.metadata.get("parse")}
        if key not in found:
            raise KeyError(key)
        return found[key].metadata["parse"](text)

    @classmethod
    def settings_help(cls, indent: int = 8) -> str:
        """Every setting with its help text, one wrapped paragraph each (docstrings of MergeConfig and ``apply``)."""
        lines = []
        for f in fields(cls):
            if f.metadata.get("setting"):
                lines += textwrap.wrap(f"{f.name}: {f.metadata['help']}", 120 - indent, initial_indent=" " * indent,
                                       subsequent_indent=" " * (indent + 4))  # fmt: skip
        return "\n".join(lines)

    @classmethod
    def string_keys(cls) -> dict[str, str]:
        """Key -> how its value is written, for every setting a setting string may hold (CLI help)."""
        return {f.name: f.metadata["syntax"] for f in fields(cls) if f.metadata.get("parse")}

    @staticmethod
    def string_pairs(text: str) -> list[tuple[str, str]]:
        """The ``(key, value)`` texts of a setting string ``"k=1,ratio=0.2"``, each key once (a ValueError naming the
        string otherwise)."""
        pairs: list[tuple[str, str]] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise ValueError(f"merge setting {text!r}: expected key=value, got {part!r}")
            key, value = (x.strip() for x in part.split("=", 1))
            if key in (k for k, _ in pairs):
                raise ValueError(f"merge setting {text!r}: {key!r} is given twice; give each key once")
            pairs.append((key, value))
        return pairs

    @classmethod
    def from_string(cls, text: str) -> MergeConfig:
        """Settings from ``"k=1,ratio=0.2,protect_recent=24"`` (the inverse of ``str()``); the message of a bad
        string names the key and the keys there are."""
        kwargs: dict[str, Any] = {}
        for key, value in cls.string_pairs(text):
            try:
                kwargs[key] = cls.parse_value(key, value)
            except KeyError:
                known = ", ".join(cls.string_keys())
                raise ValueError(f"unknown merge key {key!r} in {text!r}; known keys: {known}") from None
            except ValueError as exc:
                raise ValueError(f"merge setting {text!r}: bad value for {key!r}: {exc}") from None
        return cls(**kwargs)

    def __str__(self) -> str:
        """``k`` and every setting that differs from its default, as :meth:`from_string` reads them."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.metadata.get("parse") or (f.name != "k" and value == f.default):
                continue
            if f.name == "r" and value == 0:  # what no amount at all means (``__post_init__``)
                continue
            if value is None:
                text = "global" if f.name == "k" else None
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, list):
                text = ":".join(str(v) for v in value)
            else:
                text = str(value)
            if text is not None:
                parts.append(f"{f.name}={text}")
        return ",".join(parts)

    @classmethod
    def for_decoder(cls, settings: MergeConfig | dict[str, Any]) -> MergeConfig:
        """Validated causal settings for a decoder (``causal=True`` implied, no input merging) from a dict of
        :func:`mergeplug.merge_decoder`'s settings (``DECODER_KEYS``), or a MergeConfig, checked the same way."""
        if isinstance(settings, MergeConfig):
            if settings.input_ratio:
                raise ValueError(
                    "input_ratio is not supported for decoders: merge target tokens with r, ratio or threshold"
                )
            settings = {k: getattr(settings, k) for k in DECODER_KEYS}
        if not isinstance(settings, dict) or not set(settings) <= set(DECODER_KEYS):
            raise ValueError(
                f"decoder must be a dict of mergeplug.merge_decoder settings ({', '.join(DECODER_KEYS)}), got "
                f"{settings!r}"
            )
        return cls(causal=True, **settings)


#: the settings of a decoder (``MergeConfig.decoder``, ``mergeplug.merge_decoder``)
DECODER_KEYS: tuple[str, ...] = ("k", "r", "ratio", "threshold", "proportional_attention")


MergeConfig.__doc__ = (MergeConfig.__doc__ or "").replace("{args}", MergeConfig.settings_help())


def _per_layer(value: float | list | None, layer: int) -> float:
    """Entry ``layer`` of a per-layer list (0 past its end), or the scalar itself."""
    if isinstance(value, list):
        return value[layer] if layer < len(value) else 0
    return value or 0
