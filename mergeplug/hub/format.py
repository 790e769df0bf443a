"""The on-disk format of a mergeplug directory: ``mergeplug_config.json`` (written by :func:`write_config`, read
and validated by :func:`read_config`), the file names (:data:`CONFIG_NAME`, :data:`PACKED_NAME`,
:data:`WEIGHT_PATTERNS`), what a model is and how to load it again (``loader``, ``model_class``,
``pipeline_class``), and where a directory or hub id lives (a local path, or a file fetched from the Hub).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..core import apply_kwargs

FORMAT_VERSION = 1
CONFIG_NAME = "mergeplug_config.json"
PACKED_NAME = "mergeplug_packed.safetensors"  # binarized layers (mergeplug.binary.save_packed), if any
# the weight files of a directory (the float weights as transformers writes them, the packed binary layers): a
# save that writes weights supersedes those of a previous save that it does not write again
WEIGHT_PATTERNS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*-of-*.bin",
    PACKED_NAME,
)
# the fields of mergeplug_config.json whose JSON type read_config checks (each may be null but model_class)
_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "model_class": (str, "a string"),
    "pipeline_class": (str, "a string"),
    "family": (str, "a string"),
    "base_model": (str, "a string"),
    "weights": (bool, "true or false"),
    "float_weights": (bool, "true or false"),
    "merge": (dict, "an object (the keyword arguments of mergeplug.apply)"),
    "binarization": (dict, "an object"),
}


# ------------------------------------------------------------------------------------------------ what it is
def is_packed_only(meta: dict[str, Any]) -> bool:
    """Whether a ``mergeplug_config.json`` (as a dict) describes a directory without float weights."""
    return meta.get("float_weights", True) is False


def saved_packed_only(directory_or_hub_id: str | Path) -> bool:
    """Whether a local directory or hub repository was written by ``save_pretrained(..., float_weights=False)``
    (False for directories and repositories without a ``mergeplug_config.json``, and for hub ids offline: the stock
    loaders handle those)."""
    path = Path(directory_or_hub_id)
    if path.exists():
        return (path / CONFIG_NAME).is_file() and is_packed_only(read_config(path)[0])
    if str(directory_or_hub_id).count("/") != 1:
        return False
    try:
        meta, _ = read_config(directory_or_hub_id)
    except (OSError, ValueError):
        return False
    return is_packed_only(meta)


def _is_chronos_pipeline(obj: Any) -> bool:
    try:
        from chronos import BaseChronosPipeline
    except ImportError:  # pragma: no cover - chronos-forecasting is a dependency
        return False
    return isinstance(obj, BaseChronosPipeline)


def _inner(obj: Any) -> nn.Module:
    """The ``PreTrainedModel`` whose ``save_pretrained`` writes the weights."""
    if _is_chronos_pipeline(obj):
        return obj.inner_model
    if isinstance(obj, nn.Module) and hasattr(obj, "save_pretrained"):
        return obj
    raise TypeError(
        f"mergeplug.save_pretrained: cannot save a {type(obj).__module__}.{type(obj).__qualname__}; give a Chronos "
        "pipeline (BaseChronosPipeline) or a Hugging Face model (transformers PreTrainedModel)"
    )


def _original_class(module: nn.Module) -> type:
    cls = type(module)
    while cls.__module__.startswith("mergeplug"):  # a patched class (mixin, original): the original is its last base
        cls = cls.__bases__[-1]
    return cls


def _describe(obj: Any) -> dict[str, Any]:
    """How to load ``obj`` again: ``loader`` (chronos / transformers), ``model_class``, ``pipeline_class``."""
    inner = _inner(obj)
    model_class = _original_class(inner).__name__
    if _is_chronos_pipeline(obj):
        return {"loader": "chronos", "pipeline_class": type(obj).__name__, "model_class": model_class}
    if getattr(inner.config, "chronos_config", None):  # a Chronos inner model: loads as a pipeline
        pipeline = getattr(inner.config, "chronos_pipeline_class", None) or "ChronosPipeline"
        return {"loader": "chronos", "pipeline_class": pipeline, "model_class": model_class}
    return {"loader": "transformers", "model_class": model_class}


# --------------------------------------------------------------------------------------------- base models
#: published Chronos checkpoints: pipeline class, d_model, encoder layers (from their config.json files)
KNOWN_BASES: dict[str, tuple[str, int, int]] = {
    **{f"amazon/chronos-t5-{s}": ("ChronosPipeline", d, n)
       for s, d, n in (("tiny", 256, 4), ("mini", 384, 4), ("small", 512, 6), ("base", 768, 12), ("large", 1024, 24))},
    **{f"amazon/chronos-bolt-{s}": ("ChronosBoltPipeline", d, n)
       for s, d, n in (("tiny", 256, 4), ("mini", 384, 4), ("small", 512, 6), ("base", 768, 12))},
    "amazon/chronos-2": ("Chronos2Pipeline", 768, 12),
}  # fmt: skip
#: the config attribute mergeplug.models' builders set on models with random weights
RANDOM_WEIGHTS_ATTR = "mergeplug_random_weights"


def check_base_model(obj: Any, base_model: str | None, *, weights: bool = True) -> None:
    """Refuse a ``base_model`` the saved model cannot come from: random weights built by :mod:`mergeplug.models`
    (when the weights are saved) or, for a published Chronos checkpoint or a local directory, another family or
    size (``d_model``, layers)."""
    if not base_model:
        return
    config = _inner(obj).config
    if weights and getattr(config, RANDOM_WEIGHTS_ATTR, False):
        raise ValueError(
            f"base_model={base_model!r}, but this model has random weights (built by mergeplug.models: its config has "
            f"{RANDOM_WEIGHTS_ATTR}=True), so it is not based on any checkpoint: save it without base_model"
        )
    have = (_describe(obj).get("pipeline_class"), getattr(config, "d_model", None),
            getattr(config, "num_layers", None))  # fmt: skip
    want = KNOWN_BASES.get(base_model)
    local = Path(base_model) / "config.json"
    if want is None and local.is_file():
        other = json.loads(local.read_text())
        pipeline = other.get("chronos_pipeline_class") or ("ChronosPipeline" if other.get("chronos_config") else None)
        want = (pipeline, other.get("d_model"), other.get("num_layers"))
    if want is None:
        return  # an id we cannot check offline
    names = ("pipeline class", "d_model", "encoder layers")
    diff = [f"{n} {w} there, {h} here" for n, w, h in zip(names, want, have, strict=True) if w is not None and w != h]
    if diff:
        raise ValueError(
            f"base_model={base_model!r} does not match this model ({'; '.join(diff)}): name the checkpoint the "
            "weights come from, or save without base_model"
        )


# ---------------------------------------------------------------------------------------------------- write
def write_config(
    obj: Any,
    directory: str | Path,
    *,
    base_model: str | None = None,
    weights: bool = True,
    float_weights: bool = True,
) -> dict:
    """Write (and return) ``mergeplug_config.json`` for ``obj``'s current settings; no weights, no card.

    ``weights`` / ``float_weights`` record what :func:`save_pretrained` writes next to it (see there).
    """
    from ..core import settings
    from ..version import __version__

    check_base_model(obj, base_model, weights=weights)
    info = _describe(obj)
    try:
        config = settings(obj)
    except TypeError:  # a model no family patches: saved as it is
        config = None
    family = None
    if config is not None:
        from ..patches import find_family

        family = find_family(obj).name
    from ..binary import binarization

    binary = binarization(_inner(obj))
    meta = {
        "format_version": FORMAT_VERSION,
        "mergeplug_version": __version__,
        "family": family,
        **info,
        "base_model": base_model,
        "weights": weights,
        "float_weights": float_weights,
        "merge": None if config is None else apply_kwargs(config),
        "binarization": None if binary is None else {**binary.to_dict(), "file": PACKED_NAME},
    }
    Path(directory, CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ----------------------------------------------------------------------------------------------------- read
def read_config(directory_or_hub_id: str | Path) -> tuple[dict[str, Any], Path]:
    """``mergeplug_config.json`` of a local directory or hub repository (validated) and its local directory.

    Raises:
        FileNotFoundError: a local path (see :func:`_local_or_hub`) that does not exist, or a directory without
            ``mergeplug_config.json``.
        ValueError: a config that is damaged (not a JSON object, a field of the wrong type), of a newer format, or
            that names a family / loader this mergeplug does not know.
    """
    from ..version import __version__

    location = _local_or_hub(directory_or_hub_id)
    path = Path(location)
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.exists():
            raise FileNotFoundError(
                f"{path} has no {CONFIG_NAME}: it was not written by mergeplug.save_pretrained. For a plain "
                "model directory, load it with its own library and call mergeplug.apply(model, ...)."
            )
    elif path.exists():
        raise NotADirectoryError(f"{path} is a file; give the directory mergeplug.save_pretrained wrote")
    else:
        cfg_path = _hub_download(str(location), CONFIG_NAME)
        path = cfg_path.parent
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(cfg_path, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _damaged(cfg_path, f"a JSON {type(meta).__name__}, not an object")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{cfg_path} has no integer format_version: not a mergeplug config")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path} was written in mergeplug format {version} (by mergeplug {meta.get('mergeplug_version')}); "
            f"this mergeplug ({__version__}) reads format <= {FORMAT_VERSION}: upgrade mergeplug "
            "(pip install -U mergeplug)"
        )
    for key, (kind, described) in _FIELD_TYPES.items():
        value = meta.get(key)
        if (value is not None or key == "model_class") and not isinstance(value, kind):
            raise _damaged(cfg_path, f"{key!r} must be {described}, not {json.dumps(value)[:80]}")
    family = meta.get("family")
    if family is not None:
        from ..patches import families

        known = [f.name for f in families()]
        if family not in known:
            raise ValueError(
                f"{cfg_path} names the model family {family!r}, which this mergeplug does not know (known: "
                f"{', '.join(known)}); upgrade mergeplug or install the package that registers it"
            )
    if meta.get("loader") not in ("chronos", "transformers"):
        raise ValueError(f"{cfg_path}: unknown loader {meta.get('loader')!r} (expected 'chronos' or 'transformers')")
    return meta, path


def _local_or_hub(directory_or_hub_id: str | Path) -> Path | str:
    """A local path (as a ``Path``, ``~`` expanded) or a Hugging Face Hub id (as a ``str``).

    What exists here is local; so is a ``Path``, and a string that starts with ``.``, ``/`` or ``~``, is absolute,
    holds a path separator more than once (hub ids are ``name`` or ``owner/name``) or whose parent directory exists:
    if it does not exist, FileNotFoundError names it (rather than the Hub complaining about a malformed repo id).
    Any other string is a hub id.
    """
    text = str(directory_or_hub_id)
    path = Path(text).expanduser()
    local = (
        path.exists()
        or isinstance(directory_or_hub_id, Path)
        or text.startswith((".", "/", "~"))
        or path.is_absolute()
        or any(text.count(sep) > 1 for sep in {"/", os.sep})
        or (path.parent != Path(".") and path.parent.is_dir())
    )
    if not local:
        return text
    if not path.exists():
        where = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        raise FileNotFoundError(
            f"{text}: no such directory{where}. Give the directory mergeplug.save_pretrained wrote, or a Hugging Face "
            "Hub id ('owner/name')."
        )
    return path


def _damaged(file: Path, what: str) -> ValueError:
    """The error for a damaged file of a mergeplug directory: the file, what is wrong with it, and the fix."""
    return ValueError(
        f"{file} is damaged: {what}. Re-save the model with mergeplug.save_pretrained (or copy or download the "
        "directory again)."
    )


def _check_weight_files(directory: Path) -> None:
    """Raise :func:`_damaged`'s error for a weight file of ``directory`` that is not a complete safetensors file
    (truncated by a full disk or an interrupted copy), before a loader fails on it with a less clear message."""
    from safetensors import SafetensorError, safe_open

    for pattern in WEIGHT_PATTERNS:
        for file in sorted(directory.glob(pattern)):
            if file.suffix == ".safetensors":
                try:
                    with safe_open(str(file), framework="pt"):  # reads and checks the header against the file size
                        pass
                except SafetensorError as exc:
                    raise _damaged(
                        file, f"not a complete safetensors file ({exc}; {file.stat().st_size} bytes)"
                    ) from None


def _hub_download(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except LocalEntryNotFoundError as exc:
        raise OSError(
            f"{repo_id!r} is not a local directory and the Hugging Face Hub cannot be reached (offline?) nor has "
            f"a cached copy ({type(exc).__name__}). Give the path of a directory written by "
            "mergeplug.save_pretrained, or go online once to fill the cache."
        ) from None
    except (HfHubHTTPError, ValueError) as exc:
        raise OSError(f"cannot fetch {filename} of {repo_id!r} from the Hugging Face Hub: {exc}") from None
