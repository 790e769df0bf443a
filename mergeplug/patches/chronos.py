"""Chronos-T5 (``ChronosPipeline``) and Chronos-Bolt (``ChronosBoltPipeline``) from chronos-forecasting.

* Chronos-T5: the T5 encoder merges (EOS protected, padding / missing values merge only with each other);
  ``generate()`` decodes against the merged memory, so the per-sample cross-attention reads fewer tokens.
  ``pipeline.embed`` keeps its documented shape (B, N, C): merged embeddings are copied back to every
  position they stand for.
* Chronos-Bolt: the encoder merges patch tokens ([REG] protected); the decoder's single query and the quantile
  head read the merged memory. ``pipeline.embed`` again returns one embedding per patch (+[REG]).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Family, PatchRecord, current, in_call, record_of, register, swap_class
from .causal_lm import check_causal_lm_config, inject_causal_lm
from .t5 import OUTPUT_SLOT, MergedEncoderOutput, OutputSlot, check_encoder_config, inject_encoder, inject_seq2seq

try:  # chronos-forecasting is a dependency, but keep the import error readable
    from chronos import ChronosBoltPipeline, ChronosPipeline
    from chronos.chronos import ChronosModel
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
except ImportError as exc:  # pragma: no cover - exercised only without the dependency
    raise ImportError(
        "mergeplug's Chronos support needs chronos-forecasting: pip install 'chronos-forecasting>=2.0'"
    ) from exc


#: forecast-safe defaults (see the README's "choosing a setting" for how they were chosen). Chronos-T5's tokens are
#: time steps, Chronos-Bolt's are patches of 16 steps.
CHRONOS_T5_DEFAULTS = {"protect_recent": 64, "min_tokens": 64, "period": "auto"}
BOLT_DEFAULTS = {"protect_recent": 8, "min_tokens": 16, "period": "auto"}


class _UnmergingChronosModel:
    """Mixin for ``ChronosModel``: ``encode`` returns one embedding per input token, as documented."""

    def encode(self, input_ids, attention_mask):
        out = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return out.unmerged() if isinstance(out, MergedEncoderOutput) else out.last_hidden_state


_BOLT_FORWARD = "chronos-bolt-forward"  # per-call key: this thread is inside the patched Bolt model's forward


class _MergingBolt:
    """Mixin for ``ChronosBoltModelForForecasting``.

    Inside ``forward`` the merged memory and its additive mask go to the decoder; a direct ``encode`` call
    (``pipeline.embed``) gets per-patch embeddings (merged tokens copied back).
    """

    def forward(self, *args: Any, **kwargs: Any):
        with in_call(record_of(self), _BOLT_FORWARD, True):
            return super().forward(*args, **kwargs)

    def encode(self, context, mask=None):
        record = record_of(self)
        with in_call(record, OUTPUT_SLOT, OutputSlot()) as slot:
            hidden, loc_scale, input_embeds, attention_mask = super().encode(context, mask)
        out = slot.value
        if not isinstance(out, MergedEncoderOutput):  # nothing merged: original path
            return hidden, loc_scale, input_embeds, attention_mask
        if current(record, _BOLT_FORWARD):
            return (
                hidden,
                loc_scale,
                input_embeds,
                out.attention_bias(hidden.dtype, record.config.proportional_attention),
            )
        return out.unmerged(), loc_scale, input_embeds, attention_mask


def _chronos_t5_model(obj: Any) -> ChronosModel:
    return obj.model if isinstance(obj, ChronosPipeline) else obj


def _is_chronos(obj: Any, model_type: str) -> bool:
    return isinstance(obj, (ChronosPipeline, ChronosModel)) and _chronos_t5_model(obj).config.model_type == model_type


def _inject_chronos_t5(obj: Any, record: PatchRecord) -> None:
    model = _chronos_t5_model(obj)
    record.hints.protect_ids = (model.config.eos_token_id,)
    record.hints.recent_tail = 1  # the EOS token the tokenizer appends after the context
    inject_seq2seq(model.model, record)
    swap_class(model, _UnmergingChronosModel, record)


def _bolt_model(obj: Any) -> ChronosBoltModelForForecasting:
    return obj.model if isinstance(obj, ChronosBoltPipeline) else obj


def _inject_bolt(obj: Any, record: PatchRecord) -> None:
    model = _bolt_model(obj)
    record.hints.protect_last = record.hints.recent_tail = 1 if model.chronos_config.use_reg_token else 0
    inject_encoder(model.encoder, record)
    swap_class(model, _MergingBolt, record)


def _modules(getter):
    def modules(obj: Any) -> list[nn.Module]:
        return [getter(obj)]

    return modules


register(
    Family(
        name="chronos-t5",
        description="chronos.ChronosPipeline (Chronos-T5, seq2seq) or its ChronosModel",
        matches=lambda obj: _is_chronos(obj, "seq2seq"),
        inject=_inject_chronos_t5,
        check=check_encoder_config,
        forecast_defaults=CHRONOS_T5_DEFAULTS,
        modules=_modules(lambda obj: obj.model if isinstance(obj, ChronosPipeline) else obj),
    )
)
register(
    Family(
        name="chronos-bolt",
        description="chronos.ChronosBoltPipeline or its ChronosBoltModelForForecasting",
        matches=lambda obj: isinstance(obj, (ChronosBoltPipeline, ChronosBoltModelForForecasting)),
        inject=_inject_bolt,
        check=check_encoder_config,
        modules=_modules(_bolt_model),
        forecast_defaults=BOLT_DEFAULTS,
        steps_per_token=lambda obj: float(_bolt_model(obj).chronos_config.input_patch_stride),
    )
)
register(
    Family(
        name="chronos-causal",
        description="chronos.ChronosPipeline / ChronosModel with model_type='causal' (a decoder-only LM: causal "
        "merging in the prefill of the context, see mergeplug.patches.causal_lm)",
        matches=lambda obj: _is_chronos(obj, "causal"),
        inject=lambda obj, record: inject_causal_lm(_chronos_t5_model(obj).model, record),
        check=check_causal_lm_config,
        modules=_modules(lambda obj: _chronos_t5_model(obj).model),
    )
)
