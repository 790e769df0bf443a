"""The packed 1-bit file format of a binarized model: :func:`save_packed`, :func:`load_packed`,
:func:`packed_size_report`, :func:`read_packed_metadata`, :func:`packed_float_tensors`, and the mask encodings
(bitmap, Golomb-Rice).

**Packed file** (:func:`save_packed`, format version 2, safetensors). Logically, per binarized layer
``<name>.mask`` (uint8, ``np.packbits`` of the row-major (out, in) mask, 1 bit per position, ``ceil(numel / 8)``
bytes) or, with
``mask_encoding="rice"``, ``<name>.mask_q`` / ``<name>.mask_r`` (Golomb-Rice code of the gaps between kept
positions: unary quotients and fixed-width ``b``-bit remainders, ``b`` chosen per layer to minimise the size);
``<name>.signs`` (uint8, packbits of the signs of the kept weights only, in row-major order, 1 = positive,
``ceil(k / 8)`` bytes); ``<name>.alpha`` (fp32, (1,) or (out,)); ``<name>.bias`` (fp32 by default, exact; fp16 with
``bias_dtype="fp16"``, lossy); every other parameter and buffer of the model at its own dtype (shared tensors
once). The safetensors metadata key ``"mergeplug_packed"`` holds JSON: format name and version, the
binarization settings, per layer its shape, k, density, alpha mode, mask encoding (and Rice ``b``), bias dtype and
aliases, and the aliases of shared tensors. :func:`load_packed` rebuilds the binarized layers in *packed mode*
(buffers ``binary_mask``, ``binary_sign``, ``binary_alpha``; inference only, no scores) with the same effective
weights bit for bit, so outputs are identical.
On disk these tensors are concatenated into three blobs (``bits``, ``f32``, ``f16``) and the metadata is a compact
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .api import _SETTINGS, BinarizationConfig, _linear_names, _root, binarization, binary_layers, unbinarize
from .encoding import _bits, _from_disk, _rice_decode, _rice_encode, _rice_sizes, _to_disk
from .layer import SparseBinaryLinear, _convert, _revert

PACKED_FORMAT_VERSION = 2
PACKED_META_KEY = "mergeplug_packed"
MASK_ENCODINGS = ("bitmap", "rice", "auto")
BIAS_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _layer_payload(
    name: str, m: SparseBinaryLinear, mask_encoding: str, bias_dtype: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    st = m.binary_state
    with torch.no_grad():
        sm = m.signed_mask().cpu()
        alpha_t = m.alpha_tensor().detach().to(torch.float32).cpu().reshape(-1)
    mask = (sm != 0).numpy().ravel()
    signs = (sm > 0).numpy().ravel()[mask]
    out: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {
        "shape": list(sm.shape),
        "k": int(mask.sum()),
        "density": st.density,
        "alpha": st.alpha,
        "init": st.init,
        "seed": st.seed,
        "train_bias": st.train_bias,
    }
    encoding = mask_encoding
    if mask_encoding in ("rice", "auto"):
        positions = np.flatnonzero(mask).astype(np.int64)
        b, bits = _rice_sizes(np.diff(positions, prepend=-1) - 1)
        k = int(positions.size)
        rice_bytes = math.ceil((bits - k * b) / 8) + math.ceil(k * b / 8)  # unary stream + remainder stream
        if mask_encoding == "rice" or rice_bytes < math.ceil(mask.size / 8):
            b, q_bytes, r_bytes = _rice_encode(positions)
            out[f"{name}.mask_q"] = torch.from_numpy(q_bytes)
            out[f"{name}.mask_r"] = torch.from_numpy(r_bytes)
            info["rice_b"] = b
            encoding = "rice"
        else:
            encoding = "bitmap"
    if encoding == "bitmap":
        out[f"{name}.mask"] = _bits(mask)
    info["mask_encoding"] = encoding
    out[f"{name}.signs"] = _bits(signs)
    out[f"{name}.alpha"] = alpha_t.contiguous()
    bias = m._parameters.get("bias")
    info["bias"] = bias is not None
    if bias is not None:
        out[f"{name}.bias"] = bias.detach().to(BIAS_DTYPES[bias_dtype]).cpu().contiguous()
        info["bias_dtype"] = bias_dtype
    return out, info


def _other_tensors(root: nn.Module, skip_prefixes: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every parameter / buffer outside the binarized layers, at its dtype, shared tensors once (+ aliases)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in root.state_dict(keep_vars=True).items():
        if any(key.startswith(p) and "." not in key[len(p) :] for p in skip_prefixes):
            continue
        t = t.detach()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.cpu().contiguous().clone()  # at its own dtype: loads back exactly
    return tensors, aliases


def save_packed(
    obj: Any, path: str | os.PathLike, *, mask_encoding: str = "bitmap", bias_dtype: str = "fp32"
) -> dict[str, Any]:
    """Write a binarized model to one safetensors file in the packed format (module docstring); returns its
    metadata (with ``"bytes"``: the file's size as written).

    Args:
        obj: a model or pipeline binarized by :func:`binarize` (or :func:`load_packed`).
        path: the file to write.
        mask_encoding: ``"bitmap"`` (1 bit per position), ``"rice"`` (Golomb-Rice coded gaps, smaller at low
            density) or ``"auto"`` (per layer, whichever is smaller).
        bias_dtype: ``"fp32"`` (exact) or ``"fp16"`` (half the bias bytes; outputs no longer identical).
    """
    from safetensors.torch import save_file

    if mask_encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask_encoding must be one of {MASK_ENCODINGS}, got {mask_encoding!r}")
    if bias_dtype not in BIAS_DTYPES:
        raise ValueError(f"bias_dtype must be one of {tuple(BIAS_DTYPES)}, got {bias_dtype!r}")
    root = _root(obj)
    cfg = binarization(root)
    layers = binary_layers(root)
    if cfg is None or not layers:
        raise ValueError("save_packed: the model is not binarized (call mergeplug.binarize first)")
    names_of = _linear_names(root)
    tensors: dict[str, torch.Tensor] = {}
    layer_meta: dict[str, Any] = {}
    skip: list[str] = []
    for name, m in layers.items():
        payload, info = _layer_payload(name, m, mask_encoding, bias_dtype)
        all_names = names_of[id(m)][1]
        info["aliases"] = [n for n in all_names if n != name]
        skip += [f"{n}." if n else "" for n in all_names]
        tensors.update(payload)
        layer_meta[name] = info
    others, aliases = _other_tensors(root, skip)
    clash = set(others) & set(tensors)
    if clash:  # pragma: no cover - a layer name colliding with a parameter path cannot happen in one module tree
        raise RuntimeError(f"save_packed: name clash {sorted(clash)[:3]}")
    tensors.update(others)
    meta = {
        "format": "mergeplug-packed",
        "format_version": PACKED_FORMAT_VERSION,
        "settings": cfg.to_dict(),
        "layers": layer_meta,
        "aliases": aliases,
        "others": sorted(others),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blobs, disk_meta = _to_disk(tensors, meta)
    save_file(blobs, str(path), metadata={PACKED_META_KEY: json.dumps(disk_meta, separators=(",", ":"))})
    meta["bytes"] = os.path.getsize(path)
    meta["layer_bytes"] = {
        name: sum(t.nbytes for key, t in tensors.items() if key.rpartition(".")[0] == name) for name in layer_meta
    }
    return meta


# On disk (format 2) the tensors of the logical layout above are concatenated, in a fixed order, into three
# blobs (``bits`` uint8: masks and signs; ``f32`` and ``f16``: alphas, biases and the other float tensors); only
# tensors of other dtypes are stored under their own names. The metadata lists each layer as one row
def read_packed_metadata(path: str | os.PathLike, *, raw: bool = False) -> dict[str, Any]:
    """The metadata of a packed file (validated format name and version), as :func:`save_packed` returns it
    (``raw=True``: the compact form stored in the file)."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such packed file (write one with mergeplug.save_packed)")
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(PACKED_META_KEY)
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a safetensors file, or it is damaged ({exc}): not a packed model") from None
    if text is None:
        raise ValueError(f"{path} is not a mergeplug packed file (no {PACKED_META_KEY!r} metadata)")
    meta = json.loads(text)
    if meta.get("format") != "mergeplug-packed" or not isinstance(meta.get("format_version"), int):
        raise ValueError(f"{path}: not a mergeplug packed file")
    if meta["format_version"] != PACKED_FORMAT_VERSION:
        raise ValueError(
            f"{path} uses packed format {meta['format_version']}; this mergeplug reads {PACKED_FORMAT_VERSION}"
        )
    return meta if raw else _read_packed(path)[1]


def _read_packed(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(logical tensors, metadata) of a packed file."""
    from safetensors import safe_open

    disk = read_packed_metadata(path, raw=True)
    with safe_open(str(path), framework="pt") as f:
        data = {k: f.get_tensor(k) for k in f.keys()}
    return _from_disk(data, disk)


def packed_float_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a packed file outside its binarized layers, under every name the model uses for them.

    With them a model can be built from its config alone (``from_pretrained(None, config=..., state_dict=...)``);
    :func:`load_packed` then adds the binarized layers.
    """
    data, meta = _read_packed(path)
    out = {k: data[k] for k in meta["others"]}
    out.update({alias: data[target] for alias, target in meta["aliases"].items() if target in data})
    return out


def _find_tensor(root: nn.Module, key: str) -> torch.Tensor:
    prefix, _, local = key.rpartition(".")
    mod = root.get_submodule(prefix) if prefix else root
    t = mod._parameters.get(local)
    if t is None:
        t = mod._buffers.get(local)
    if t is None:
        raise KeyError(key)
    return t


def load_packed(model_or_factory: Any, path: str | os.PathLike, *, strict: bool = True) -> Any:
    """Load a packed file into a model of the same architecture; returns the model (binarized, packed mode).

    Args:
        model_or_factory: the float model / pipeline (e.g. built from its config), or a callable returning one.
            Its binarized layers keep their own float ``weight`` for :func:`unbinarize`; everything else is
            overwritten in place with the file's values (cast to the model's dtypes).
        path: a file written by :func:`save_packed`.
        strict: raise if the model has parameters / buffers the file lacks.

    The binarized layers get buffers ``binary_mask`` (bool), ``binary_sign`` (bool) and ``binary_alpha``; their
    effective weights equal the saved model's bit for bit, so a float32 model gives identical outputs.
    """

    is_model = isinstance(model_or_factory, nn.Module) or hasattr(model_or_factory, "inner_model")
    obj = model_or_factory if is_model or not callable(model_or_factory) else model_or_factory()
    root = _root(obj)
    data, meta = _read_packed(path)
    if binarization(root) is not None or binary_layers(root):
        unbinarize(root)
    done: list[nn.Module] = []
    skip: list[str] = []
    try:
        for name, info in meta["layers"].items():
            m = root.get_submodule(name)
            if not isinstance(m, nn.Linear):
                raise TypeError(f"load_packed: {name} is a {type(m).__name__}, not an nn.Linear")
            shape = tuple(info["shape"])
            if tuple(m._parameters["weight"].shape) != shape:
                raise ValueError(f"load_packed: {name} has weight {tuple(m.weight.shape)}, the file {shape}")
            numel, k = math.prod(shape), int(info["k"])
            if info["mask_encoding"] == "rice":
                pos = _rice_decode(info["rice_b"], data[f"{name}.mask_q"].numpy(), data[f"{name}.mask_r"].numpy(), k)
                mask = np.zeros(numel, dtype=bool)
                mask[pos] = True
            else:
                mask = np.unpackbits(data[f"{name}.mask"].numpy())[:numel].astype(bool)
            signs_kept = np.unpackbits(data[f"{name}.signs"].numpy())[:k].astype(bool)
            sign = np.zeros(numel, dtype=bool)
            sign[mask] = signs_kept
            alpha_t = data[f"{name}.alpha"].reshape(() if info["alpha"] == "layer" else (shape[0], 1))
            _convert(
                m,
                density=info["density"],
                seed=info["seed"],
                init=info["init"],
                alpha=info["alpha"],
                train_bias=info["train_bias"],
                packed=(torch.from_numpy(mask).view(shape), torch.from_numpy(sign).view(shape), alpha_t),
            )
            done.append(m)
            if info["bias"]:
                with torch.no_grad():
                    m._parameters["bias"].copy_(data[f"{name}.bias"])
            skip += [f"{n}." if n else "" for n in [name, *info["aliases"]]]
        wanted = [
            key
            for key in root.state_dict(keep_vars=True)
            if not any(key.startswith(p) and "." not in key[len(p) :] for p in skip)
        ]
        source = {**{a: c for a, c in meta["aliases"].items()}, **{k: k for k in meta["others"]}}
        missing = [key for key in wanted if key not in source]
        if missing and strict:
            raise KeyError(f"load_packed: the file lacks {len(missing)} tensors of the model, e.g. {missing[:5]}")
        with torch.no_grad():
            for key in wanted:
                if key in source:
                    _find_tensor(root, key).copy_(data[source[key]])
    except Exception:
        for m in reversed(done):
            _revert(m)
        raise
    settings = BinarizationConfig(**{**meta["settings"], "packed": True})
    root.__dict__[_SETTINGS] = settings
    return obj


def packed_size_report(
    obj: Any, *, mask_encodings: Iterable[str] = ("bitmap", "rice", "auto"), bias_dtype: str = "fp32"
) -> dict[str, Any]:
    """Bytes of the binarized model as files actually written to a temporary directory.

    Returns ``{"dense_fp32": bytes, "packed": {encoding: bytes}, "ratio": {encoding: dense / packed},
    "layers": {name: {"dense_fp32", "packed": {encoding: data bytes}, "numel", "k"}}}``: the dense file is the
    safetensors file of the model with each binarized layer as its fp32 effective weight (+ bias) and every other
    tensor at its dtype (shared ones once); the packed files come from :func:`save_packed`. Per-layer figures are the
    layer's tensor bytes in those files (headers excluded).
    """
    from safetensors.torch import save_file

    root = _root(obj)
    layers = binary_layers(root)
    if not layers:
        raise ValueError("packed_size_report: the model is not binarized (call mergeplug.binarize first)")
    names_of = _linear_names(root)
    dense: dict[str, torch.Tensor] = {}
    skip: list[str] = []
    per_layer: dict[str, Any] = {}
    for name, m in layers.items():
        with torch.no_grad():
            dense[f"{name}.weight"] = m.effective_weight().detach().to(torch.float32).cpu().contiguous().clone()
            b = m._parameters.get("bias")
            if b is not None:
                dense[f"{name}.bias"] = b.detach().to(torch.float32).cpu().contiguous().clone()
        per_layer[name] = {
            "numel": m._parameters["weight"].numel(),
            "k": m.binary_state.k,
            "dense_fp32": sum(dense[f"{name}.{s}"].nbytes for s in ("weight", "bias") if f"{name}.{s}" in dense),
            "packed": {},
        }
        skip += [f"{n}." if n else "" for n in names_of[id(m)][1]]
    others, _ = _other_tensors(root, skip)
    dense.update(others)
    out: dict[str, Any] = {"packed": {}, "ratio": {}, "layers": per_layer}
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = Path(tmp, "dense.safetensors")
        save_file(dense, str(dense_path))
        out["dense_fp32"] = os.path.getsize(dense_path)
        for enc in mask_encodings:
            p = Path(tmp, f"packed-{enc}.safetensors")
            meta = save_packed(root, p, mask_encoding=enc, bias_dtype=bias_dtype)
            out["packed"][enc] = meta["bytes"]
            out["ratio"][enc] = out["dense_fp32"] / meta["bytes"]
            for name in layers:
                per_layer[name]["packed"][enc] = meta["layer_bytes"][name]
    return out
