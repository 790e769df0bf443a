"""Hugging Face TimeSeriesTransformer / Informer: merging between encoder layers, opt-in causal decoder merging.

Hugging Face **TimeSeriesTransformer / Informer** (``distil=False``, family ``hf-time-series``): tokens merge between
the encoder layers (:func:`~mergeplug.patches.generic.inject_blocks`) and every position is restored before the
decoder. Their decoder merges too when :func:`mergeplug.merge_decoder` turns it on: in training (``future_values``
given) the decoder gets all ``prediction_length`` future positions at once without a cache (``*ForPrediction`` sets
``use_cache=False`` when ``future_values`` is given; ``TimeSeriesTransformerModel`` / ``InformerModel`` callers pass
it), and target tokens merge *causally* between its layers (similarity: the hidden states leaving a layer); each later
layer gets an additive (B, 1, T, T) mask in which query i sees key j iff ``pos_j <= pos_i`` (plus ``log(size_j)``,
proportional attention), and when the decoder returns :func:`~mergeplug.merge.causal_unmerge` gives every future
position its output, before the parameter projection. With ``threshold`` every output at position p depends only on
decoder inputs at positions <= p. ``generate()`` decodes with a cache (``use_cache`` defaults to the config's, True),
and a decoder call that reads or fills a cache runs unmerged, so inference is unchanged; with
``config.use_cache=False`` each step re-runs the whole prefix without a cache and merges it causally like teacher
forcing (the step reads its last position).
Informer's ProbSparse self-attention (``attention_type="prob"``) picks its active queries over the whole sequence,
so it is not causal position by position even unmerged: the strict mode raises for it (the r mode runs).
Autoformer (and Informer with ``distil=True``) raise ``NotImplementedError``: their encoders need the regular
time grid that merged tokens no longer form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import MergeConfig
from ..merge import MergeState, causal_unmerge, merge_layer
from .base import Family, PatchRecord, begin, current, end, mark, register, report
from .generic import inject_blocks


def _hf_ts_encoder_layers(obj: nn.Module) -> nn.ModuleList:
    """The encoder layers of a Hugging Face time-series Transformer, or a clear error for the unsupported ones."""
    name = type(obj).__name__
    if name.startswith("Autoformer"):
        raise NotImplementedError(
            "Autoformer is not supported: its series decomposition and auto-correlation work on the regular time "
            "grid (moving averages and period-based delays over positions), which merged tokens no longer form. "
            "Use TimeSeriesTransformer, Informer (distil=False) or PatchTST."
        )
    if name.startswith("Informer") and getattr(obj.config, "distil", False):
        raise NotImplementedError(
            "Informer with distil=True halves the sequence between its encoder layers with convolutions, which "
            "cannot run on merged tokens; build it with distil=False to merge."
        )
    base = obj.model if hasattr(obj, "model") else obj
    return base.encoder.layers


#: forecast-safe defaults of the hf-time-series family (encoder tokens are time steps; see the README's
#: "choosing a setting" for how they were chosen)
HF_TS_DEFAULTS = {"protect_recent": 8, "min_tokens": 16, "period": "auto"}


def _is_hf_ts(obj: Any) -> bool:
    try:
        from transformers import (
            AutoformerForPrediction,
            AutoformerModel,
            InformerForPrediction,
            InformerModel,
            TimeSeriesTransformerForPrediction,
            TimeSeriesTransformerModel,
        )
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    classes = (TimeSeriesTransformerForPrediction, TimeSeriesTransformerModel, InformerForPrediction, InformerModel,
               AutoformerForPrediction, AutoformerModel)  # fmt: skip
    return isinstance(obj, classes)


def _check_hf_ts(config: MergeConfig) -> None:
    if config.causal:
        raise ValueError("the encoder of a time-series Transformer is bidirectional: use causal=False")


def _no_mask(mask: torch.Tensor) -> bool:
    return bool((mask == 0).all()) if mask.is_floating_point() else bool(mask.bool().all())


def _hf_ts_decoder_check(obj: nn.Module) -> Callable[[MergeConfig], None]:
    """Decoder settings this model can run (called by ``merge_decoder``)."""

    base = obj.model if hasattr(obj, "model") else obj
    n_layers = len(base.decoder.layers)

    def check(config: MergeConfig) -> None:
        if n_layers < 2 and not config.is_noop(1):
            raise ValueError(
                f"{type(obj).__name__} has {n_layers} decoder layer(s): tokens merge between decoder layers, so "
                "decoder merging needs at least 2 (config.decoder_layers)."
            )
        if config.threshold is not None and getattr(obj.config, "attention_type", "full") == "prob":
            raise NotImplementedError(
                f"{type(obj).__name__} with attention_type='prob': ProbSparse self-attention chooses its active "
                "queries over the whole target sequence (and samples keys at random), so its decoder is not causal "
                "position by position even unmerged, and the strict mode (threshold) cannot hold. Build the model "
                "with attention_type='full', or use r / ratio."
            )

    return check


_DECODER = "hf-time-series-decoder"  # per-call key of :class:`_DecoderCall`


@dataclass
class _DecoderCall:
    """One decoder forward of a patched HF time-series model.

    Attributes:
        padding: the decoder's padding mask, until the first layer takes it.
        fresh: the next layer to run is the first of this forward.
        state: the merge state (None: this forward does not merge).
        counts: target tokens entering the first layer, then leaving every layer.
    """

    padding: torch.Tensor | None = None
    fresh: bool = True
    state: MergeState | None = None
    counts: list[int] = field(default_factory=list)


def _inject_hf_ts_decoder(obj: nn.Module, record: PatchRecord) -> None:
    """Hook the decoder of a HF time-series model for the opt-in causal merging between its layers.

    A decoder forward merges when decoder merging is on (``config.decoder``), more than one target
    position comes in and no cache is in use (the layers receive ``cache=None``). The first layer that runs
    starts the merge state (the per-call :class:`_DecoderCall`), every layer but the last merges after it, later
    layers get the rebuilt causal mask, and the decoder's output (B, N, C) is restored by ``causal_unmerge`` when
    the decoder returns, so layers skipped by ``decoder_layerdrop`` in training are harmless.
    """
    from .t5 import causal_attention_bias, decoder_settings  # the decoder settings are shared with T5

    base = obj.model if hasattr(obj, "model") else obj
    decoder, layers = base.decoder, base.decoder.layers
    n_layers = len(layers)

    def active() -> MergeConfig | None:
        config = decoder_settings(record.config)
        return None if config is None or config.is_noop(n_layers - 1) else config  # merges happen between layers

    def start(module: nn.Module, args: tuple, kwargs: dict) -> None:
        begin(record, _DECODER, _DecoderCall(padding=kwargs.get("attention_mask", args[0] if args else None)))

    def pre(i: int, layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        config = active()
        h = args[0]
        call: _DecoderCall | None = current(record, _DECODER)
        if call is None:  # a layer called outside a decoder forward
            return None
        if call.fresh:
            padding, call.fresh, call.padding = call.padding, False, None
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if config is None or cache is not None or h.shape[1] < 2:
                return None
            if padding is not None and padding.dim() != 2:
                raise NotImplementedError(
                    f"{type(decoder).__name__} decoder merging takes a (B, T) decoder_attention_mask, got shape "
                    f"{tuple(padding.shape)}; switch decoder merging off for this call (merge_decoder(model, r=0))."
                )
            mask = None if padding is None else padding.to(h.device).bool()
            state = MergeState.init(h.shape[0], h.shape[1], mask=mask, causal=True, device=h.device)
            call.state, call.counts = state, [h.shape[1]]
            return None
        state = call.state
        if state is None or config is None or state.length == state.source.shape[1]:
            return None  # not merging, or nothing merged yet: the original mask is right
        # the self-attention mask of the merged tokens; the cross-attention mask only loses its query axis
        bias = causal_attention_bias(state, h.dtype, config.proportional_attention)
        bias = bias.expand(-1, -1, state.length, -1)  # (B, 1, T, T): ProbSparse attention wants the full shape
        if len(args) > 1:
            args = (args[0], bias, *args[2:])
        else:
            kwargs = {**kwargs, "attention_mask": bias}
        cross = kwargs.get("encoder_attention_mask")
        if cross is not None and cross.dim() == 4 and cross.shape[2] > 1:
            kwargs = {**kwargs, "encoder_attention_mask": cross[:, :, :1]}  # bidirectional: the same for all queries
        return args, kwargs

    def post(i: int, layer: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor | None:
        call: _DecoderCall | None = current(record, _DECODER)
        config = active()
        if call is None or call.state is None or config is None:
            return None
        if i < n_layers - 1:
            out = merge_layer(out, call.state, config, i)
        call.counts.append(call.state.length)
        return out

    def finish(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        call: _DecoderCall | None = current(record, _DECODER)
        end(record, _DECODER)
        state = None if call is None else call.state
        if state is not None:
            report(record, "decoder_token_counts", call.counts)
        if state is None or state.length == state.source.shape[1]:
            return out
        # (B, T', C) -> (B, N, C): every future position gets an output before the parameter projection
        if isinstance(out, tuple):  # return_dict=False
            return (causal_unmerge(out[0], state), *out[1:])
        out.last_hidden_state = causal_unmerge(out.last_hidden_state, state)
        return out

    mark(decoder, record)
    record.hooks.append(decoder.register_forward_pre_hook(start, with_kwargs=True))
    record.hooks.append(decoder.register_forward_hook(finish, with_kwargs=True))
    for i, layer in enumerate(layers):
        mark(layer, record)
        record.hooks.append(layer.register_forward_pre_hook(lambda m, a, kw, i=i: pre(i, m, a, kw), with_kwargs=True))
        record.hooks.append(
            layer.register_forward_hook(lambda m, a, kw, o, i=i: post(i, m, a, kw, o), with_kwargs=True)
        )
    record.hints.decoder_merging = True
    record.hints.decoder_check = _hf_ts_decoder_check(obj)


def _inject_hf_ts(obj: nn.Module, record: PatchRecord) -> None:
    """Encoder: merging between layers, every position restored before the decoder; decoder: opt-in causal merging."""
    inject_blocks(_hf_ts_encoder_layers(obj), record, seq_dim=1, padding_args=(1,), no_padding=_no_mask)
    _inject_hf_ts_decoder(obj, record)


register(
    Family(
        name="hf-time-series",
        description="Hugging Face TimeSeriesTransformer / Informer (distil=False) models: merging between encoder "
        "layers, every position restored before the decoder; opt-in causal decoder merging in training with "
        "mergeplug.merge_decoder (Autoformer raises NotImplementedError)",
        matches=_is_hf_ts,
        inject=_inject_hf_ts,
        modules=lambda obj: [obj],
        check=_check_hf_ts,
        forecast_defaults=HF_TS_DEFAULTS,
    )
)
