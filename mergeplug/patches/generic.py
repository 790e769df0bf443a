"""Token merging between the blocks of any stack: plain PyTorch ``nn.TransformerEncoder`` and user models.

The blocks are treated as black boxes that map hidden states (B, T, C) (or (T, B, C)) to the same shape:
forward hooks merge tokens *between* blocks, so every later block runs on the shorter sequence, and after the
last block the tokens are copied back (``unmerge``; ``causal_unmerge`` in the causal modes) so that the rest
of the model sees every position. The similarity is the cosine of the hidden states leaving the block.

* ``causal=True``: merged tokens sit at their latest member; when the blocks receive a causal mask (``is_causal``
  / ``src_mask`` of ``nn.TransformerEncoderLayer``), it is rebuilt from the merged tokens' positions (a token
  sees the tokens at or before its position). With ``threshold`` (strict mode) every output at position p
  depends only on inputs at positions <= p; with ``r`` / ``ratio`` the *choice* of merges can depend on later
  inputs (good for a prefill whose only used output is the last position).
* Padding masks cannot follow merged tokens through a black-box block: a block that receives one raises.
* Proportional attention needs access to the attention logits, which a black box does not give: it is not
  applied here (model-specific families such as ``t5`` and ``patchtst`` do apply it).

:func:`register_patch` adds a user model in one call (the README shows one).

Hugging Face **TimeSeriesTransformer / Informer** (``distil=False``, family ``hf-time-series``): tokens merge
between the encoder layers and every position is restored before the decoder. Their decoder merges too when
:func:`mergeplug.merge_decoder` turns it on: in training (``future_values`` given) the decoder gets all
``prediction_length`` future positions at once without a cache (``*ForPrediction`` sets ``use_cache=False`` when
``future_values`` is given; ``TimeSeriesTransformerModel`` / ``InformerModel`` callers pass it), and target tokens
merge *causally* between its layers (similarity: the hidden states leaving a layer); each later layer gets an
additive (B, 1, T, T) mask in which query i sees key j iff ``pos_j <= pos_i`` (plus ``log(size_j)``, proportional
attention), and when the decoder returns :func:`~mergeplug.merge.causal_unmerge` gives every future position its
output, before the parameter projection. With ``threshold`` every output at position p depends only on decoder
inputs at positions <= p. ``generate()`` decodes with a cache (``use_cache`` defaults to the config's, True), and
a decoder call that reads or fills a cache runs unmerged, so inference is unchanged; with ``config.use_cache=False``
each step re-runs the whole prefix without a cache and merges it causally like teacher forcing (the step reads
its last position).
Informer's ProbSparse self-attention (``attention_type="prob"``) picks its active queries over the whole sequence,
so it is not causal position by position even unmerged: the strict mode raises for it (the r mode runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import MergeConfig
from ..merge import MergeState, causal_unmerge, match, merge_layer, merge_step, recent_mask, unmerge
from .base import Family, PatchRecord, mark, register

__all__ = ["register_patch", "inject_blocks"]


def _get(obj: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _replace_first(out: Any, x: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return x
    return (x, *out[1:]) if isinstance(out, tuple) else type(out)([x, *out[1:]])


def _causal_mask(pos: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(T, T) float mask: query i sees key j iff pos_j <= pos_i (rows share positions: uses row 0)."""
    p = pos[0]
    allowed = p[None, :] <= p[:, None]
    return torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill(~allowed, float("-inf"))


def inject_blocks(
    blocks: nn.ModuleList,
    record: PatchRecord,
    *,
    seq_dim: int = 1,
    mask_kwargs: tuple[str, ...] = (),
    padding_kwargs: tuple[str, ...] = (),
    causal_flag: str = "is_causal",
    unsupported_kwargs: tuple[str, ...] = (),
    no_padding: Callable[[torch.Tensor], bool] | None = None,
    padding_args: tuple[int, ...] = (),
) -> None:
    """Hook ``blocks`` so that tokens merge between them (see the module docstring).

    Args:
        blocks: the stack, run in order by its parent with the hidden states as first argument.
        record: the patch record (settings are read at run time).
        seq_dim: the token dimension of the hidden states (1 for (B, T, C), 0 for (T, B, C)).
        mask_kwargs: keyword arguments holding an attention mask; a causal one is rebuilt for the merged
            tokens, any other raises.
        padding_kwargs: keyword arguments holding a padding mask; a block receiving one raises.
        causal_flag: the keyword argument that says a mask is causal (``tgt_is_causal`` for decoder layers).
        unsupported_kwargs: keyword arguments that must be None (e.g. a decoder's ``memory_mask``, whose query
            axis would have to follow the merged tokens).
        no_padding: tells a padding mask that pads nothing (e.g. all ones); such a mask is dropped instead of
            raising (``generate`` passes one).
        padding_args: positions (in ``args``) of padding / attention masks, handled like ``padding_kwargs``.
    """
    n_layers = len(blocks)
    if n_layers == 0:
        raise ValueError("inject_blocks: the block list is empty")
    record.hints["num_layers"] = n_layers
    scratch = record.scratch

    def to_btc(x: torch.Tensor) -> torch.Tensor:
        return x if seq_dim == 1 else x.transpose(0, 1)

    def pre(i: int, block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        cfg: MergeConfig = record.config
        if cfg.is_noop(n_layers):
            return None
        if i == 0:  # a sequence no longer than the token floor runs the original blocks, bitwise
            n = to_btc(args[0]).shape[1]
            scratch["short"] = cfg.is_noop(n_layers, n)
            if scratch["short"]:
                scratch["token_counts"] = [n] * (n_layers + 1)
        if scratch.get("short"):
            return None
        for key in padding_kwargs:
            mask = kwargs.get(key)
            if mask is not None and no_padding is not None and no_padding(mask):
                kwargs = {**kwargs, key: None}
        for pos in padding_args:
            mask = args[pos] if len(args) > pos else None
            if mask is None:
                continue
            if no_padding is None or not no_padding(mask):
                raise NotImplementedError(
                    f"{type(block).__name__} received a padding / attention mask, which cannot follow merged tokens "
                    "through a black-box block. Run without padding, or write a model family in mergeplug/patches/."
                )
            args = (*args[:pos], None, *args[pos + 1 :])
        for key in padding_kwargs + unsupported_kwargs:
            if kwargs.get(key) is not None:
                raise NotImplementedError(
                    f"{type(block).__name__} received {key}, which cannot follow merged tokens through a black-box "
                    "block (padding mask or per-query mask). Run without it, or write a model family in "
                    "mergeplug/patches/."
                )
        x = to_btc(args[0])
        if i == 0:  # a new forward: fresh state, optional merging of the input tokens
            n_b, n, _ = x.shape
            protected = recent_mask(
                n_b, n, cfg.protect_recent, tail=record.hints.get("recent_tail", 0), device=x.device
            )
            # sizes and positions in float32 whatever x's dtype (bfloat16 rounds positions above 256)
            state = MergeState.init(n_b, n, protected=protected, causal=cfg.causal, device=x.device)
            scratch["state"], scratch["token_counts"] = state, [n]
            r_in = cfg.input_merges(n)
            if r_in > 0:
                dst, t_new = match(
                    x, state, r=r_in, k=cfg.k, period=cfg.token_period, min_similarity=cfg.min_similarity
                )
                if t_new < n:
                    x = merge_step(x, state, dst, t_new)
                    args = (x if seq_dim == 1 else x.transpose(0, 1), *args[1:])
                    scratch["token_counts"][0] = t_new
        state: MergeState = scratch["state"]
        n = state.source.shape[1]
        for key in mask_kwargs:
            mask = kwargs.get(key)
            if mask is None or state.length == n:
                continue
            if not kwargs.get(causal_flag):
                raise NotImplementedError(
                    f"{type(block).__name__} received an attention mask ({key}) not flagged {causal_flag}=True; only a "
                    "causal mask can be rebuilt for merged tokens. Pass is_causal=True with a causal mask, run "
                    "without a mask, or write a model family in mergeplug/patches/."
                )
            if not cfg.causal:
                raise ValueError(
                    f"{type(block).__name__} runs causally ({causal_flag}=True) but merging is bidirectional: "
                    "use mergeplug.apply(..., causal=True)"
                )
            kwargs = {**kwargs, key: _causal_mask(state.pos, x)}
        return args, kwargs

    def post(i: int, block: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        cfg: MergeConfig = record.config
        if cfg.is_noop(n_layers) or scratch.get("short"):
            return None
        state: MergeState = scratch["state"]
        h = to_btc(_first_tensor(out))
        if i < n_layers - 1:
            h = merge_layer(h, state, cfg, i)
        scratch["token_counts"].append(state.length)
        if i == n_layers - 1:  # back to every position for the rest of the model
            h = causal_unmerge(h, state) if state.causal else unmerge(h, state)
            scratch.pop("state", None)
        return _replace_first(out, h if seq_dim == 1 else h.transpose(0, 1))

    for i, block in enumerate(blocks):
        mark(block, record)
        record.hooks.append(block.register_forward_pre_hook(lambda m, a, kw, i=i: pre(i, m, a, kw), with_kwargs=True))
        record.hooks.append(
            block.register_forward_hook(lambda m, a, kw, o, i=i: post(i, m, a, kw, o), with_kwargs=True)
        )


def register_patch(
    match_: type | Callable[[Any], bool],
    *,
    blocks: str,
    seq_dim: int | Callable[[Any], int] = 1,
    name: str | None = None,
    description: str = "",
    mask_kwargs: tuple[str, ...] = (),
    padding_kwargs: tuple[str, ...] = (),
) -> Family:
    """Make ``mergeplug.apply`` work on your own model: tokens merge between the blocks of ``obj.<blocks>``.

    Args:
        match_: the model class (instances of it and of subclasses match) or a predicate.
        blocks: attribute path of the ``nn.ModuleList`` of blocks (e.g. ``"layers"``, ``"encoder.layer"``).
        seq_dim: token dimension of the hidden states the blocks exchange (or a function of the model).
        name: family name (default: the class name).
        mask_kwargs / padding_kwargs: see :func:`inject_blocks`.

    Returns:
        The registered :class:`~mergeplug.patches.base.Family` (registered before the built-in generic ones).
    """
    if isinstance(match_, type):
        cls = match_

        def matches(obj: Any) -> bool:
            return isinstance(obj, cls)

        label = name or cls.__name__
    else:
        matches, label = match_, name or getattr(match_, "__name__", "custom")

    def inject(obj: Any, record: PatchRecord) -> None:
        try:
            stack = _get(obj, blocks)
        except AttributeError:
            raise TypeError(
                f"{type(obj).__name__} has no attribute path {blocks!r} (the blocks to merge between)"
            ) from None
        if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f"{type(obj).__name__}.{blocks} is a {type(stack).__name__}, not an nn.ModuleList")
        dim = seq_dim(obj) if callable(seq_dim) else seq_dim
        inject_blocks(stack, record, seq_dim=dim, mask_kwargs=mask_kwargs, padding_kwargs=padding_kwargs)

    family = Family(
        name=label,
        description=description or f"{label}: tokens merge between the blocks of .{blocks}",
        matches=matches,
        inject=inject,
        modules=lambda obj: [obj],
    )
    return register(family, first=True)  # user families win over the built-in ones


def _register_torch_stack(cls: type, name: str, description: str, **block_options: Any) -> None:
    """A family for a ``torch.nn`` stack whose ``layers`` exchange (B, T, C) or (T, B, C) hidden states."""

    def seq_dim(stack: nn.Module) -> int:
        return 1 if getattr(stack.layers[0].self_attn, "batch_first", False) else 0

    register(
        Family(
            name=name,
            description=description,
            matches=lambda obj: isinstance(obj, cls),
            inject=lambda obj, record: inject_blocks(obj.layers, record, seq_dim=seq_dim(obj), **block_options),
            modules=lambda obj: [obj],
        )
    )


_register_torch_stack(
    nn.TransformerEncoder,
    "torch-transformer-encoder",
    "torch.nn.TransformerEncoder (batch_first or not; tokens merge between its layers)",
    mask_kwargs=("src_mask",),
    padding_kwargs=("src_key_padding_mask",),
)
_register_torch_stack(
    nn.TransformerDecoder,
    "torch-transformer-decoder",
    "torch.nn.TransformerDecoder (target tokens merge between its layers; causal masks follow them)",
    mask_kwargs=("tgt_mask",),
    padding_kwargs=("tgt_key_padding_mask",),
    causal_flag="tgt_is_causal",
    unsupported_kwargs=("memory_mask",),
)


def _mamba_blocks(obj: nn.Module) -> nn.ModuleList:
    return obj.backbone.layers if hasattr(obj, "backbone") else obj.layers


def _is_mamba(obj: Any) -> bool:
    try:
        from transformers import MambaForCausalLM, MambaModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(obj, (MambaModel, MambaForCausalLM))


def _check_mamba(config: MergeConfig) -> None:
    if not config.causal:
        raise ValueError(
            "Mamba is causal: merge with causal=True (add threshold=... for the strict mode in which no output "
            "depends on later inputs)"
        )


register(
    Family(
        name="mamba",
        description="Hugging Face MambaModel / MambaForCausalLM (causal merging between Mamba blocks)",
        matches=_is_mamba,
        inject=lambda obj, record: inject_blocks(
            _mamba_blocks(obj),
            record,
            seq_dim=1,
            padding_kwargs=("attention_mask",),
            no_padding=lambda mask: bool(mask.bool().all()),
        ),
        modules=lambda obj: [obj],
        check=_check_mamba,
    )
)


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


def _inject_hf_ts_decoder(obj: nn.Module, record: PatchRecord) -> None:
    """Hook the decoder of a HF time-series model for the opt-in causal merging between its layers.

    A decoder forward merges when decoder merging is on (``config.extra["decoder"]``), more than one target
    position comes in and no cache is in use (the layers receive ``cache=None``). The first layer that runs
    starts the merge state (``record.scratch["decoder_state"]``), every layer but the last merges after it, later
    layers get the rebuilt causal mask, and the decoder's output (B, N, C) is restored by ``causal_unmerge`` when
    the decoder returns, so layers skipped by ``decoder_layerdrop`` in training are harmless.
    """
    from .t5 import causal_attention_bias, decoder_settings  # the decoder settings are shared with T5

    base = obj.model if hasattr(obj, "model") else obj
    decoder, layers = base.decoder, base.decoder.layers
    n_layers = len(layers)
    scratch = record.scratch

    def active() -> MergeConfig | None:
        config = decoder_settings(record.config)
        return None if config is None or config.is_noop(n_layers - 1) else config  # merges happen between layers

    def start(module: nn.Module, args: tuple, kwargs: dict) -> None:
        scratch["decoder_state"] = None
        scratch["decoder_fresh"] = True  # the next layer to run is the first of this forward
        scratch["decoder_padding"] = kwargs.get("attention_mask", args[0] if args else None)

    def pre(i: int, layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        config = active()
        h = args[0]
        if scratch.pop("decoder_fresh", False):
            padding = scratch.pop("decoder_padding", None)
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
            scratch["decoder_state"], scratch["decoder_token_counts"] = state, [h.shape[1]]
            return None
        state: MergeState | None = scratch.get("decoder_state")
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
        state: MergeState | None = scratch.get("decoder_state")
        config = active()
        if state is None or config is None:
            return None
        if i < n_layers - 1:
            out = merge_layer(out, state, config, i)
        scratch["decoder_token_counts"].append(state.length)
        return out

    def finish(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        state: MergeState | None = scratch.pop("decoder_state", None)
        scratch.pop("decoder_fresh", None)
        scratch.pop("decoder_padding", None)
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
    record.hints["decoder_merging"] = True
    record.hints["decoder_check"] = _hf_ts_decoder_check(obj)


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
