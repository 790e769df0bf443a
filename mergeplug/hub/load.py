"""Loading a mergeplug directory: :func:`from_pretrained` (the model with its saved merge settings applied, or
built from ``config.json`` and the packed file alone) and :func:`load_binary_layers`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import MergeConfig
from ..core import APPLY_KEYS
from .format import (
    CONFIG_NAME,
    PACKED_NAME,
    _check_weight_files,
    _hub_download,
    _local_or_hub,
    is_packed_only,
    read_config,
)


def from_pretrained(directory_or_hub_id: str | Path, **kwargs: Any) -> Any:
    """Load what :func:`save_pretrained` wrote, with the same merge settings applied.

    Args:
        directory_or_hub_id: a local directory or a Hugging Face Hub repository id.
        kwargs: passed to the loader (``BaseChronosPipeline.from_pretrained`` or the model class's
            ``from_pretrained``), e.g. ``device_map`` or ``dtype``.

    Returns:
        The pipeline or model, patched as it was when saved (unpatched if it was saved unmerged).

    Raises:
        FileNotFoundError: a local path that does not exist, or a directory without ``mergeplug_config.json``.
        ValueError: a damaged config or weight file (truncated safetensors), a newer format version, or a family /
            loader this mergeplug does not know.
        OSError: a hub id while offline (nothing cached), or a base model that cannot be loaded.
    """
    from ..core import apply

    if not isinstance(directory_or_hub_id, (str, os.PathLike)) or not str(directory_or_hub_id).strip():
        raise ValueError(
            f"from_pretrained needs a local directory or a Hub repository id ('user/name'), got {directory_or_hub_id!r}"
        )
    directory_or_hub_id = _local_or_hub(directory_or_hub_id)
    meta, path = read_config(directory_or_hub_id)
    if isinstance(directory_or_hub_id, Path):
        _check_weight_files(path)
    merge, decoder = _merge_settings(meta, path / CONFIG_NAME)  # checked before the (slow) load of the weights
    if meta.get("weights", True):
        source = str(path) if Path(directory_or_hub_id).is_dir() else str(directory_or_hub_id)
    else:
        source = meta.get("base_model")
        if not source:
            raise ValueError(f"{path / CONFIG_NAME}: weights=false but no base_model to load them from")
    try:
        if is_packed_only(meta):
            obj = _from_config_and_packed(meta, directory_or_hub_id, path, kwargs)
        elif meta["loader"] == "chronos":
            from chronos import BaseChronosPipeline

            obj = BaseChronosPipeline.from_pretrained(source, **kwargs)
        else:
            obj = _transformers_class(meta, path / CONFIG_NAME).from_pretrained(source, **kwargs).eval()
    except OSError as exc:
        raise OSError(
            f"could not load the model of {directory_or_hub_id} from {source!r} ({exc}). A hub id needs internet "
            "or a filled cache."
        ) from exc
    if merge is not None:
        apply(obj, **{k: getattr(merge, k) for k in APPLY_KEYS}, decoder=decoder)
    return load_binary_layers(obj, meta, directory_or_hub_id, path)


def _transformers_class(meta: dict[str, Any], cfg_path: Path) -> type:
    """The ``transformers`` model class a config names (``model_class``): a ``PreTrainedModel`` subclass, or a
    ValueError saying what is wrong with the name."""
    import transformers

    name = meta["model_class"]
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    if cls is None:
        raise ValueError(f"transformers has no class {name!r}: upgrade transformers")
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(
            f"{cfg_path} names model_class {name!r}, which is not a transformers model class (a PreTrainedModel "
            "such as PatchTSTForPrediction): the config is damaged; re-save the model with mergeplug.save_pretrained"
        )
    return cls


def _merge_settings(meta: dict[str, Any], cfg_path: Path) -> tuple[MergeConfig | None, dict | None]:
    """The validated merge settings of a config and its ``decoder`` settings (``None, None``: saved unmerged)."""
    if not meta.get("merge"):
        return None, None
    settings_ = dict(meta["merge"])
    decoder = settings_.pop("decoder", None)
    try:
        return MergeConfig(**settings_), decoder
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{cfg_path}: merge settings this mergeplug cannot apply ({exc}). If a newer mergeplug "
            f"({meta.get('mergeplug_version')}) wrote them, upgrade mergeplug; else re-save the model with "
            "mergeplug.save_pretrained."
        ) from None


def _packed_path(meta: dict[str, Any], directory_or_hub_id: str | Path, path: Path) -> Path:
    name = meta["binarization"].get("file", PACKED_NAME)
    return path / name if Path(directory_or_hub_id).is_dir() else _hub_download(str(directory_or_hub_id), name)


def _from_config_and_packed(meta: dict[str, Any], directory_or_hub_id: str | Path, path: Path, kwargs: dict) -> Any:
    """Build the model of a ``float_weights=False`` directory from ``config.json`` and the packed file's float
    tensors (the binarized layers' weights are left at their initialisation: :func:`load_binary_layers` replaces
    those layers and then copies their effective weights into them)."""
    import transformers
    from transformers import AutoConfig

    from ..binary import packed_float_tensors

    if not meta.get("binarization"):
        raise ValueError(f"{path / CONFIG_NAME}: float_weights=false but no binarization (packed file) to load")
    if not Path(directory_or_hub_id).is_dir():
        _hub_download(str(directory_or_hub_id), "config.json")
    config = AutoConfig.from_pretrained(str(path))
    state = packed_float_tensors(_packed_path(meta, directory_or_hub_id, path))
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the binarized layers' weights are "missing" on purpose
    try:
        import chronos

        pipeline_class = meta.get("pipeline_class") or "ChronosPipeline"
        if meta["loader"] == "transformers" or pipeline_class == "ChronosPipeline":  # a transformers class
            cls = _transformers_class(meta, path / CONFIG_NAME)
            model = cls.from_pretrained(None, config=config, state_dict=state, **kwargs).eval()
            if meta["loader"] == "transformers":
                return model
            from chronos import ChronosConfig, ChronosModel

            ccfg = ChronosConfig(**config.chronos_config)
            return chronos.ChronosPipeline(tokenizer=ccfg.create_tokenizer(), model=ChronosModel(ccfg, model))
        from chronos import chronos2, chronos_bolt

        model_cls = getattr(chronos_bolt, meta["model_class"], None) or getattr(chronos2, meta["model_class"], None)
        pipe_cls = getattr(chronos, pipeline_class, None)
        if model_cls is None or pipe_cls is None:
            raise ValueError(
                f"chronos-forecasting has no {meta['model_class']} / {pipeline_class}: upgrade chronos-forecasting"
            )
        return pipe_cls(model=model_cls.from_pretrained(None, config=config, state_dict=state, **kwargs))
    finally:
        transformers.logging.set_verbosity(verbosity)


def load_binary_layers(obj: Any, meta: dict[str, Any], directory_or_hub_id: str | Path, path: Path) -> Any:
    """Load the packed sparse binary layers named by a config's ``binarization`` field (if any) into ``obj``.

    ``path`` is the local directory :func:`read_config` returned for ``directory_or_hub_id``.
    """
    if meta.get("binarization"):
        import torch

        from ..binary import _root, binary_layers, load_packed, packed_float_tensors

        packed = _packed_path(meta, directory_or_hub_id, path)
        load_packed(obj, packed)
        if is_packed_only(meta):  # no float file: unbinarize() gives the binary weights as float weights
            root = _root(obj)
            in_file = set(packed_float_tensors(packed))
            names: dict[int, list[str]] = {}
            for n, p in root.named_parameters(remove_duplicate=False):
                names.setdefault(id(p), []).append(n)
            with torch.no_grad():
                for m in binary_layers(root).values():
                    w = m._parameters["weight"]
                    if not in_file.intersection(names.get(id(w), [])):  # a weight tied to a stored tensor (T5's
                        w.copy_(m.effective_weight())  # lm_head = the embedding) keeps that tensor's values
    return obj
