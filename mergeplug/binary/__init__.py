"""Sparse binary projections (Biprop-style) as in-place module swaps, and a packed 1-bit export.

A binarized ``nn.Linear`` computes ``y = x @ W_eff.T + b`` with the effective weight (out, in)

    W_eff = alpha * sign(W) ⊙ M

``W`` frozen (the layer's own weight, or random from ``seed``), ``M`` the top-k mask of the learned ``scores`` over
the layer (``density`` = fraction kept), ``alpha`` the mean ``|W|`` over the kept positions (per layer or per row);
gradients reach the scores straight through. The package in three modules (each docstring gives the details):

* :mod:`~mergeplug.binary.layer`: the layer :class:`SparseBinaryLinear` (the exact definition of ``W``, ``M``,
  ``alpha`` and the straight-through rule) and the in-place class swap of one ``nn.Linear`` and its undo.
* :mod:`~mergeplug.binary.api`: the user API, :func:`binarize` / :func:`unbinarize` / :func:`suspended` /
  :func:`binarization` / :func:`binary_layers` / :func:`binary_parameters` / :func:`trainable_binary` (swap, identity
  and undo; composition with token merging).
* :mod:`~mergeplug.binary.packed`: the packed file format (format version 2, safetensors): :func:`save_packed`,
  :func:`load_packed`, :func:`packed_size_report`, :func:`read_packed_metadata`, :func:`packed_float_tensors`, and
  the mask encodings (1-bit bitmap or Golomb-Rice-coded gaps).

Imports go one way: ``packed`` -> ``api`` -> ``layer``.
"""

from .api import (
    BinarizationConfig,
    binarization,
    binarize,
    binary_layers,
    binary_parameters,
    suspended,
    trainable_binary,
    unbinarize,
)
from .api import _root as _root  # private; mergeplug.hub and the tests use it
from .layer import SparseBinaryLinear
from .packed import (
    PACKED_FORMAT_VERSION,
    load_packed,
    packed_float_tensors,
    packed_size_report,
    read_packed_metadata,
    save_packed,
)

__all__ = [
    "SparseBinaryLinear",
    "BinarizationConfig",
    "binarize",
    "unbinarize",
    "binarization",
    "binary_layers",
    "binary_parameters",
    "trainable_binary",
    "save_packed",
    "load_packed",
    "packed_size_report",
    "read_packed_metadata",
    "packed_float_tensors",
    "suspended",
    "PACKED_FORMAT_VERSION",
]
