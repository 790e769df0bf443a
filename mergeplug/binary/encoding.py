"""How the packed sparse binary format encodes its tensors (:mod:`mergeplug.binary.packed`): masks as bitmaps or
Rice-coded gaps, and the logical per-layer tensors as three blobs with a compact metadata header."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


# -------------------------------------------------------------------------------------------- mask coding
def _rice_sizes(gaps: np.ndarray) -> tuple[int, int]:
    """(best b, total bits) of Golomb-Rice coding the non-negative ``gaps``."""
    best = (0, -1)
    for b in range(0, 40):
        bits = int((gaps >> b).sum()) + gaps.size * (1 + b)
        if best[1] < 0 or bits < best[1]:
            best = (b, bits)
        if (gaps >> b).max(initial=0) == 0:
            break
    return best


def _rice_encode(positions: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Sorted kept positions (k,) -> (b, packed unary quotients, packed b-bit remainders)."""
    gaps = np.diff(positions, prepend=-1) - 1
    b, _ = _rice_sizes(gaps)
    q = gaps >> b
    unary = np.ones(int(q.sum()) + gaps.size, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0  # each quotient: q ones then a zero
    if b:
        r = gaps & ((1 << b) - 1)
        rbits = ((r[:, None] >> np.arange(b - 1, -1, -1)) & 1).astype(np.uint8).ravel()
    else:
        rbits = np.zeros(0, dtype=np.uint8)
    return b, np.packbits(unary), np.packbits(rbits)


def _rice_decode(b: int, q_bytes: np.ndarray, r_bytes: np.ndarray, k: int) -> np.ndarray:
    zeros = np.flatnonzero(np.unpackbits(q_bytes) == 0)[:k]  # pad bits (zeros) come after the k-th terminator
    q = np.diff(zeros, prepend=-1) - 1
    if b:
        rbits = np.unpackbits(r_bytes)[: k * b].reshape(k, b).astype(np.int64)
        r = rbits @ (1 << np.arange(b - 1, -1, -1, dtype=np.int64))
    else:
        r = np.zeros(k, dtype=np.int64)
    gaps = (q.astype(np.int64) << b) | r
    return np.cumsum(gaps + 1) - 1


def _bits(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.packbits(x.astype(np.uint8)))


# ------------------------------------------------------------------------------------------- packed export
# ``[name, shape, k, mask encoding, rice b, unary-stream bytes, bias dtype or null, aliases]`` (the settings
# shared by every layer are stored once). For a small model the per-tensor header entries and verbose
# metadata of the logical layout would cost more bytes than the weights themselves.
_COMMON = ("density", "alpha", "init", "seed", "train_bias")


def _layer_keys(name: str, info: dict[str, Any]) -> list[str]:
    """Logical tensor keys of one layer, in blob order."""
    keys = [f"{name}.mask_q", f"{name}.mask_r"] if info["mask_encoding"] == "rice" else [f"{name}.mask"]
    return keys + [f"{name}.signs", f"{name}.alpha"] + ([f"{name}.bias"] if info["bias"] else [])


def _to_disk(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Logical layout -> (blobs, compact metadata)."""
    order = [k for name, info in meta["layers"].items() for k in _layer_keys(name, info)] + meta["others"]
    parts: dict[str, list[torch.Tensor]] = {"bits": [], "f32": [], "f16": []}
    own: dict[str, torch.Tensor] = {}
    others = []
    for key in order:
        t = tensors[key]
        blob = {torch.uint8: "bits", torch.float32: "f32", torch.float16: "f16"}.get(t.dtype)
        if key in meta["others"]:
            others.append([key, list(t.shape), blob or "own"])
        if blob is None:
            own[key] = t
        else:
            parts[blob].append(t.reshape(-1))
    blobs = {f"@{k}": torch.cat(v) for k, v in parts.items() if v}  # "@": never a state_dict key
    rows = []
    for name, info in meta["layers"].items():
        rows.append([name, info["shape"], info["k"], info["mask_encoding"], info.get("rice_b", 0),
                     int(tensors[f"{name}.mask_q"].numel()) if info["mask_encoding"] == "rice" else 0,
                     info.get("bias_dtype") if info["bias"] else None, info["aliases"]])  # fmt: skip
    settings = dict(meta["settings"])
    if settings["layers"] == list(meta["layers"]):
        settings.pop("layers")  # the rows give them
    disk = {k: meta[k] for k in ("format", "format_version", "aliases")}
    return {**blobs, **own}, {**disk, "settings": settings, "layers": rows, "others": others}


def _from_disk(data: dict[str, torch.Tensor], disk: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """(blobs, compact metadata) -> (logical tensors, metadata as :func:`save_packed` returns it)."""
    settings = dict(disk["settings"])
    layers: dict[str, Any] = {}
    sizes: dict[str, tuple[str, list[int]]] = {}
    for name, shape, k, enc, b, nq, bias_dtype, aliases in disk["layers"]:
        info = {"shape": shape, "k": k, **{c: settings[c] for c in _COMMON}, "mask_encoding": enc,
                "bias": bias_dtype is not None, "aliases": aliases}  # fmt: skip
        if enc == "rice":
            info["rice_b"] = b
            sizes[f"{name}.mask_q"] = ("bits", [nq])
            sizes[f"{name}.mask_r"] = ("bits", [math.ceil(k * b / 8)])
        else:
            sizes[f"{name}.mask"] = ("bits", [math.ceil(math.prod(shape) / 8)])
        sizes[f"{name}.signs"] = ("bits", [math.ceil(k / 8)])
        sizes[f"{name}.alpha"] = ("f32", [1] if settings["alpha"] == "layer" else [shape[0]])
        if bias_dtype is not None:
            info["bias_dtype"] = bias_dtype
            sizes[f"{name}.bias"] = ("f32" if bias_dtype == "fp32" else "f16", [shape[0]])
        layers[name] = info
    for key, shape, blob in disk["others"]:
        sizes[key] = (blob, shape)
    offsets = {"bits": 0, "f32": 0, "f16": 0}
    tensors: dict[str, torch.Tensor] = {}
    for key, (blob, shape) in sizes.items():
        if blob == "own":
            tensors[key] = data[key]
            continue
        n = math.prod(shape)
        tensors[key] = data[f"@{blob}"][offsets[blob] : offsets[blob] + n].reshape(shape)
        offsets[blob] += n
    settings.setdefault("layers", list(layers))
    meta = {k: disk[k] for k in ("format", "format_version", "aliases")}
    return tensors, {**meta, "settings": settings, "layers": layers, "others": [o[0] for o in disk["others"]]}
