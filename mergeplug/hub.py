"""Save and load merged models the way the Hugging Face ecosystem expects, with generated model cards.

A mergeplug directory (local, or a Hugging Face Hub repository) holds:

* ``mergeplug_config.json``: the format version, the mergeplug version, the model family, how to load the
  base model (``loader``: ``chronos`` for ``BaseChronosPipeline`` or ``transformers`` with the model class),
  ``base_model`` (a hub id or path, if known), whether the weights are in the directory, and every merge
  setting (``merge``: the keyword arguments of :func:`mergeplug.apply`, ``null`` when unmerged);
* the weights and ``config.json`` as ``save_pretrained`` writes them (``model.safetensors``), unless the
  directory only *references* its base model (``save_pretrained(..., weights=False)`` with ``base_model``):
  then loading fetches the base model and applies the settings, like a PEFT adapter without adapter weights;
* ``mergeplug_packed.safetensors`` if the model is binarized (:func:`mergeplug.binarize`; the config's
  ``binarization`` field holds its settings): the sparse binary layers packed by :func:`mergeplug.save_packed`
  (``model.safetensors`` keeps the float weights they were made from, for plain loaders); :func:`from_pretrained`
  loads it on top with :func:`mergeplug.load_packed`, so outputs are identical. With
  ``save_pretrained(..., float_weights=False)`` the directory holds no ``model.safetensors`` at all, only
  ``config.json`` and the packed file (the storage the packed format promises): :func:`from_pretrained` builds
  the model from ``config.json`` and the packed file alone;
* ``README.md``: a model card generated with ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData`` (YAML
  metadata, how to use it, the settings, the cost counted by :mod:`mergeplug.cost` and, given a
  ``mergeplug-eval`` results directory, the measured speed-up and accuracy tables).

The weights are always saved from the unpatched classes (the patch is removed for the save and re-applied),
so the saved model loads with plain ``transformers`` / ``chronos`` too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .config import MergeConfig
from .core import APPLY_KEYS, apply_kwargs, unmerged

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "save_pretrained",
    "from_pretrained",
    "write_config",
    "read_config",
    "model_card",
    "push_to_hub",
]

FORMAT_VERSION = 1
CONFIG_NAME = "mergeplug_config.json"
PACKED_NAME = "mergeplug_packed.safetensors"  # binarized layers (mergeplug.binary.save_packed), if any


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
        cfg = path / CONFIG_NAME
        return cfg.is_file() and is_packed_only(json.loads(cfg.read_text()))
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


# ------------------------------------------------------------------------------------------------------ save
def save_pretrained(
    obj: Any,
    directory: str | Path,
    *,
    base_model: str | None = None,
    weights: bool = True,
    results: str | Path | None = None,
    license: str = "apache-2.0",
    model_name: str | None = None,
    card: bool = True,
    float_weights: bool = True,
) -> Path:
    """Write ``obj`` (patched by :func:`mergeplug.apply` or not) to ``directory`` with its settings and a model card.

    Args:
        obj: a Chronos pipeline (Chronos-T5, Chronos-Bolt, Chronos-2) or a Hugging Face ``PreTrainedModel``.
        directory: created if needed; existing files of the same names are overwritten.
        base_model: hub id (or path) of the model the weights come from, for the card's metadata and for
            ``weights=False``.
        weights: write the weights (``save_pretrained``). ``False`` writes only the settings and the card
            and needs ``base_model``: :func:`from_pretrained` then loads the base model and applies them.
        results: a ``mergeplug-eval run`` output directory whose tables go into the card.
        license: SPDX id for the card's metadata.
        model_name: title of the card (default: the directory's name).
        card: write ``README.md`` (callers that write their own card, with :func:`model_card`, pass False).
        float_weights: for a binarized model, also write the float weights (``model.safetensors``, what plain
            ``transformers`` / ``chronos`` loaders read and what :func:`mergeplug.unbinarize` returns to).
            ``False`` writes only ``config.json`` and the packed file: the directory is as small as the packed
            format, and only :func:`from_pretrained` loads it.

    Returns:
        ``directory`` as a ``Path``.
    """
    if not weights and not base_model:
        raise ValueError("weights=False saves only a reference to the base model: pass base_model='<hub id or path>'")
    if not float_weights:  # checked before anything is written: a refused call leaves the directory as it was
        from .binary import binarization

        if binarization(_inner(obj)) is None:
            raise ValueError(
                "float_weights=False stores only packed sparse binary layers, but the model is not binarized: "
                "call mergeplug.binarize first, or keep float_weights=True"
            )
        if not weights:
            raise ValueError("float_weights=False needs weights=True (the packed file is the weights)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    meta = write_config(obj, out, base_model=base_model, weights=weights, float_weights=float_weights)
    if not float_weights:
        stale = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
        for f in [out / n for n in stale] + sorted(out.glob("model-*-of-*.safetensors")):
            f.unlink(missing_ok=True)  # stale float files must not be mistaken for this model's weights
        _inner(obj).config.save_pretrained(out)
    elif weights:
        from .binary import suspended

        # from the original classes (then patched again with the same settings); binarized layers: their float
        # weights (the packed file holds the binary ones)
        with unmerged(obj), suspended(obj):
            _inner(obj).save_pretrained(out)
    if meta["binarization"] is not None:
        from .binary import save_packed

        save_packed(obj, out / PACKED_NAME, mask_encoding="auto")  # per layer the smaller mask encoding
    if card:
        model_card(out, obj=obj, results=results, license=license, model_name=model_name).save(out / "README.md")
    return out


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
    from . import __version__
    from .core import settings

    info = _describe(obj)
    try:
        config = settings(obj)
    except TypeError:  # a model no family patches: saved as it is
        config = None
    family = None
    if config is not None:
        from .patches import find_family

        family = find_family(obj).name
    from .binary import binarization

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


# ------------------------------------------------------------------------------------------------------ load
def read_config(directory_or_hub_id: str | Path) -> tuple[dict[str, Any], Path]:
    """``mergeplug_config.json`` of a local directory or hub repository (validated) and its local directory."""
    from . import __version__

    path = Path(directory_or_hub_id)
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
        cfg_path = _hub_download(str(directory_or_hub_id), CONFIG_NAME)
        path = cfg_path.parent
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path} is not valid JSON ({exc})") from None
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{cfg_path} has no integer format_version: not a mergeplug config")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path} was written in mergeplug format {version} (by mergeplug {meta.get('mergeplug_version')}); "
            f"this mergeplug ({__version__}) reads format <= {FORMAT_VERSION}: upgrade mergeplug "
            "(pip install -U mergeplug)"
        )
    family = meta.get("family")
    if family is not None:
        from .patches import families

        known = [f.name for f in families()]
        if family not in known:
            raise ValueError(
                f"{cfg_path} names the model family {family!r}, which this mergeplug does not know (known: "
                f"{', '.join(known)}); upgrade mergeplug or install the package that registers it"
            )
    if meta.get("loader") not in ("chronos", "transformers"):
        raise ValueError(f"{cfg_path}: unknown loader {meta.get('loader')!r} (expected 'chronos' or 'transformers')")
    return meta, path


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


def from_pretrained(directory_or_hub_id: str | Path, **kwargs: Any) -> Any:
    """Load what :func:`save_pretrained` wrote, with the same merge settings applied.

    Args:
        directory_or_hub_id: a local directory or a Hugging Face Hub repository id.
        kwargs: passed to the loader (``BaseChronosPipeline.from_pretrained`` or the model class's
            ``from_pretrained``), e.g. ``device_map`` or ``dtype``.

    Returns:
        The pipeline or model, patched as it was when saved (unpatched if it was saved unmerged).

    Raises:
        FileNotFoundError: the directory has no ``mergeplug_config.json``.
        ValueError: a newer format version, or a family / loader this mergeplug does not know.
        OSError: a hub id while offline (nothing cached), or a base model that cannot be loaded.
    """
    from .core import apply

    meta, path = read_config(directory_or_hub_id)
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
            import transformers

            cls = getattr(transformers, meta["model_class"], None)
            if cls is None:
                raise ValueError(f"transformers has no class {meta['model_class']!r}: upgrade transformers")
            obj = cls.from_pretrained(source, **kwargs).eval()
    except OSError as exc:
        raise OSError(
            f"could not load the model of {directory_or_hub_id} from {source!r} ({exc}). A hub id needs internet "
            "or a filled cache."
        ) from exc
    if meta.get("merge"):
        settings_ = dict(meta["merge"])
        decoder = settings_.pop("decoder", None)
        merge = MergeConfig(**settings_)  # validates
        apply(obj, **{k: getattr(merge, k) for k in APPLY_KEYS}, decoder=decoder)
    return load_binary_layers(obj, meta, directory_or_hub_id, path)


def _packed_path(meta: dict[str, Any], directory_or_hub_id: str | Path, path: Path) -> Path:
    name = meta["binarization"].get("file", PACKED_NAME)
    return path / name if Path(directory_or_hub_id).is_dir() else _hub_download(str(directory_or_hub_id), name)


def _from_config_and_packed(meta: dict[str, Any], directory_or_hub_id: str | Path, path: Path, kwargs: dict) -> Any:
    """Build the model of a ``float_weights=False`` directory from ``config.json`` and the packed file's float
    tensors (the binarized layers' weights are left at their initialisation: :func:`load_binary_layers` replaces
    those layers and then copies their effective weights into them)."""
    import transformers
    from transformers import AutoConfig

    from .binary import packed_float_tensors

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
            cls = getattr(transformers, meta["model_class"], None)
            if cls is None:
                raise ValueError(f"transformers has no class {meta['model_class']!r}: upgrade transformers")
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

        from .binary import _root, binary_layers, load_packed, packed_float_tensors

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


# ------------------------------------------------------------------------------------------------------ card
_USAGE = """```python
import mergeplug
{imports}
# {what}, with the settings below applied
model = mergeplug.from_pretrained({location})
```

"""
_USAGE_PLAIN = """or load it with its own library (and patch it with plain `mergeplug.apply`):

```python
{plain}
```"""
_USAGE_PACKED_ONLY = (
    "Only `mergeplug.from_pretrained` loads it: the directory holds no float weights (`model.safetensors`), just "
    "`config.json` and the packed sparse binary file."
)


def _plain_usage(meta: dict[str, Any], location: str, location_import: str = "", mergeable: bool = True) -> str:
    """Code that loads the model without mergeplug's loader (formatted as ``ruff format`` would).

    ``location``: Python expression of the directory (used when the weights are in it, with ``location_import``).
    """
    base = json.dumps(meta["base_model"]) if meta.get("base_model") else location
    imports = [location_import] if location_import and base == location else []
    if meta["loader"] == "chronos":
        imports.append("from chronos import BaseChronosPipeline")
        code = [f"model = BaseChronosPipeline.from_pretrained({base})"]
    else:
        cls = meta["model_class"]
        imports.append(f"from transformers import {cls}")
        code = [f"model = {cls}.from_pretrained({base})"]
    merge = meta.get("merge")
    if not merge and not mergeable:
        code.append(f"# no mergeplug family patches {meta['model_class']} yet: mergeplug.apply would raise")
    elif not merge:
        imports.insert(0, "import mergeplug")
        code.append("mergeplug.apply(model, k=1, ratio=0.2)  # saved unmerged: this merges")
    else:
        defaults = MergeConfig()
        args = ", ".join(
            f"{k}={json.dumps(v) if isinstance(v, str) else repr(v)}"
            for k, v in merge.items()
            if k == "k" or (k in APPLY_KEYS and v is not None and v != getattr(defaults, k))
        )
        if merge.get("decoder"):
            pairs = ", ".join(f"{json.dumps(k)}: {v!r}" for k, v in merge["decoder"].items() if v is not None)
            args += f", decoder={{{pairs}}}"
        imports.insert(0, "import mergeplug")
        code.append(f"mergeplug.apply(model, {args})")
    return "\n".join(imports) + "\n\n" + "\n".join(code)


def _mergeable(obj: Any) -> bool:
    """Does a registered family patch ``obj`` (True when unknown)?"""
    if obj is None:
        return True
    from .patches import families

    return any(f.matches(obj) for f in families())


def _settings_table(meta: dict[str, Any]) -> str:
    merge = meta.get("merge")
    if not merge:
        return "Token merging: not applied (saved unmerged)."
    rows = ["| setting | value |", "| --- | --- |"]
    rows += [f"| `{k}` | `{v!r}` |" for k, v in merge.items()]
    rows.append(f"| family | `{meta.get('family')}` |")
    note = (
        "\n\n`k` is the locality (merge only with tokens at most `k` positions away; `None` = global), "
        "`r` / `ratio` the tokens merged per layer, `input_ratio` the share merged before the first block. "
        + (
            "Forecast-safe merging (`safe=True`): the `protect_recent` tokens before the forecast origin never merge, "
            "no step leaves fewer than `min_tokens` tokens, only pairs at least `min_similarity` alike merge, and "
            "`period` lets a token merge with its seasonal twin (`'auto'`: found per series)."
            if merge.get("safe", True)
            else "Plain merging (`safe=False`, the local-merging paper's): no forecast-safe protections."
        )
    )
    return "\n".join(rows) + note


def _binary_line(meta: dict[str, Any]) -> str:
    b = meta.get("binarization")
    if not b:
        return "Binary / sparse projections: none."
    return (
        f"Binary / sparse projections: {len(b['layers'])} linear layers are sparse binary (alpha · sign(W) ⊙ M, "
        f"density {b['density']:g}, init `{b['init']}`), stored packed (1-bit mask and signs) in `{b['file']}`; "
        "`mergeplug.from_pretrained` restores them. "
        + (
            "There are no float weights in this directory."
            if is_packed_only(meta)
            else "Plain loaders see the float weights they were made from."
        )
    )


def _cost_lines(obj: Any) -> str:
    from .cost import parameter_counts, storage_bytes

    p, s = parameter_counts(obj), storage_bytes(obj)
    return (
        f"- Parameters: {p['total']:,} ({p['nonzero']:,} non-zero).\n"
        f"- Storage: {s['fp32'] / 1e6:.2f} MB as float32, {s['bf16'] / 1e6:.2f} MB as bfloat16, "
        f"{s['serialized'] / 1e6:.2f} MB as serialized (safetensors)."
    )


def _results_section(results: str | Path) -> str:
    from .eval.report import load_rows, markdown

    rows = load_rows(results)
    text = (
        f"Measured with `mergeplug-eval` ({len({r['dataset'] for r in rows})} datasets; speed-up = unmerged time / "
        "merged time, interleaved repetitions, medians; MACs ratio counted by `mergeplug.cost`):\n\n" + markdown(rows)
    )
    precheck = Path(results) / "precheck.md"
    if precheck.exists():
        text += "\n\n### Spectral pre-check\n\n" + precheck.read_text().strip()
    return text


def model_card(
    directory: str | Path,
    *,
    obj: Any = None,
    results: str | Path | None = None,
    license: str = "apache-2.0",
    model_name: str | None = None,
    extra_sections: Sequence[tuple[str, str]] = (),
    tags: Sequence[str] = (),
    description: str | None = None,
    location: str | None = None,
    location_import: str = "",
):
    """The ``huggingface_hub.ModelCard`` of a mergeplug directory (``mergeplug_config.json`` must exist).

    ``obj``: the loaded model or pipeline, for the cost section (loaded from ``directory`` when omitted and the
    weights are there). ``results``: a ``mergeplug-eval`` results directory for the measured tables (and its
    ``precheck.md``, if present). ``extra_sections``: (title, markdown) pairs appended to the card;
    ``description`` replaces the opening paragraph; ``location``: the Python expression shown as the argument
    of ``mergeplug.from_pretrained`` (default: the directory path as a string; use the repo id once pushed), with
    ``location_import`` the import line it needs.
    """
    from huggingface_hub import ModelCard, ModelCardData

    meta, path = read_config(directory)
    name = model_name or path.resolve().name
    if obj is None and meta.get("weights", True):
        obj = from_pretrained(path)
    is_chronos = meta["loader"] == "chronos"
    base = meta.get("base_model")
    data = ModelCardData(
        license=license,
        library_name="chronos-forecasting" if is_chronos else "transformers",
        pipeline_tag="time-series-forecasting",
        base_model=base if base and not Path(base).exists() else None,
        tags=list(
            dict.fromkeys(
                ["time-series", "forecasting", "mergeplug"]
                + (["token-merging"] if meta.get("merge") else [])
                + (["chronos"] if is_chronos else [])
                + ([meta["family"]] if meta.get("family") else [])
                + list(tags)
            )
        ),
    )
    what = f"a {meta.get('pipeline_class') or meta['model_class']}"
    location = location or json.dumps(path.as_posix())
    sections = [
        (
            "Use",
            _USAGE.format(location=location, imports=location_import + "\n" if location_import else "", what=what)
            + (
                _USAGE_PACKED_ONLY
                if is_packed_only(meta)
                else _USAGE_PLAIN.format(plain=_plain_usage(meta, location, location_import, _mergeable(obj)))
            ),
        ),
        ("Merge and compression settings", _settings_table(meta) + "\n\n" + _binary_line(meta)),
    ]
    if obj is not None:
        sections.append(("Cost (mergeplug.cost)", _cost_lines(obj)))
    if results is not None:
        sections.append(("Measured speed and accuracy", _results_section(results)))
    sections += list(extra_sections)
    intro = description or (
        f"{what[2:]} saved with mergeplug {meta['mergeplug_version']} (format {meta['format_version']})"
        + (f", based on `{base}`" if base else "")
        + "."
    )
    body = f"# {name}\n\n{intro}\n\n" + "\n\n".join(f"## {t}\n\n{b.strip()}" for t, b in sections) + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def push_to_hub(
    directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False, commit_message: str = ""
) -> str:
    """Upload a directory written by :func:`save_pretrained` to the Hugging Face Hub; returns the commit URL.

    A thin call to ``huggingface_hub.HfApi``: ``create_repo(exist_ok=True)`` then ``upload_folder``. It needs
    network access and a token (``token=`` or ``huggingface-cli login``).
    """
    from huggingface_hub import HfApi

    read_config(directory)  # refuse directories that are not mergeplug's
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(directory), repo_id=repo_id, commit_message=commit_message or "Upload with mergeplug"
    )
    return str(info)
