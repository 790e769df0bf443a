"""Sparse binary projections (Biprop-style) as in-place module swaps, and a packed 1-bit export.

A binarized ``nn.Linear`` computes ``y = x @ W_eff.T + b`` with the effective weight (out, in)

    W_eff = alpha * sign(W) ⊙ M

* ``W`` (out, in) is frozen: the layer's own pretrained weight (``init="weights"``) or a random Kaiming-uniform
  tensor (bound ``sqrt(6 / in_features)``) drawn from ``seed`` (``init="random"``, Biprop; buffer ``latent_weight``).
  ``sign(W)`` is +1 for ``W >= 0`` and -1 otherwise, so a kept weight is never 0.
* ``S`` (out, in), the only learned tensor (parameter ``scores``): ``M`` keeps the ``k = max(1, round(density ·
  numel))`` positions of largest ``|S|`` over the whole layer (exactly ``k`` ones; ``torch.topk``). ``init="weights"``
  starts with ``S = |W|`` (the initial mask keeps the largest-magnitude weights); ``init="random"`` draws ``S``
  Kaiming-uniform (``a=sqrt(5)``) from ``seed`` after ``W``.
* ``alpha``: the mean ``|W|`` over the kept positions, per layer (``alpha="layer"``, a scalar) or per output row
  (``alpha="row"``, shape (out, 1); a row with nothing kept gets 0).

**Straight-through rule** (what reaches the scores). ``M`` is treated as a continuous input of
``W_eff = alpha(M) · sign(W) ⊙ M`` with ``alpha(M) = Σ |W| ⊙ M / n`` (``n`` = number kept in the layer or row,
a constant), and the top-k step passes its gradient straight through, multiplied by ``|W|`` (Biprop):

    dL/dS_ij = sign(S_ij) · |W_ij| · dL/dM_ij,
    dL/dM_ij = alpha · sign(W_ij) · G_ij + (|W_ij| / n) · Σ_(kl in the layer/row) sign(W_kl) M_kl G_kl,

with ``G = dL/dW_eff``; ``sign(S)`` comes from the chain rule through ``|S|``. ``W`` receives no gradient (it is
used detached), and neither does the bias unless ``train_bias=True``. No ``requires_grad`` flag is changed by
:func:`binarize`; :func:`trainable_binary` sets them for fine-tuning.

**Swap, identity and undo.** :func:`binarize` swaps the class of the chosen ``nn.Linear`` modules to a subclass
(:class:`SparseBinaryLinear`, or a generated subclass of a ``nn.Linear`` subclass) and adds ``scores`` (and for
``init="random"`` the buffer ``latent_weight``). The module object, its hooks and its original ``weight`` / ``bias``
parameters stay (values and flags untouched; a tied ``weight`` stays tied to its other users, which remain float),
so :func:`unbinarize` gives back bitwise the original model. Reading ``module.weight`` on a binarized layer returns
the effective weight (code that reads ``.weight`` directly, e.g. ``nn.MultiheadAttention``'s ``out_proj``, uses the
binary weight); the original parameter stays in ``module._parameters["weight"]`` (and in ``state_dict``); writing into
``module.weight.data`` of a binarized layer changes nothing.
Token merging (:func:`mergeplug.apply`) may hook or mark the same layers: both orders work, and ``remove`` /
``unbinarize`` may run in any order (mergeplug records that remember a layer's class are updated on the swap).
Two selected layers sharing one weight parameter share their ``scores`` (and random ``W``), so they stay tied.

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
row per layer, so that headers do not outweigh the weights of a small model (see ``_to_disk``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .patches.base import AUX_ATTR, RECORD_ATTR

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

T = TypeVar("T")
Pattern = str | re.Pattern
Patterns = Pattern | Iterable[Pattern] | None

PACKED_FORMAT_VERSION = 2
PACKED_META_KEY = "mergeplug_packed"
INITS = ("weights", "random")
ALPHAS = ("layer", "row")
MASK_ENCODINGS = ("bitmap", "rice", "auto")
BIAS_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# instance attributes; never prefixed "_mergeplug" (mergeplug.patches.base.restore deletes such keys)
_STATE = "_sbl_state"
_CACHE = "_sbl_cache"
_SETTINGS = "_sparse_binary_settings"
_EXTRA_KEYS = ("scores", "latent_weight", "binary_mask", "binary_sign", "binary_alpha")


# --------------------------------------------------------------------------------------------------- config
@dataclass
class BinarizationConfig:
    """The settings of :func:`binarize` on a model (what :func:`binarization` returns).

    ``include`` / ``exclude`` are stored as strings (regular expressions as ``"re:<pattern>"``); ``layers`` are the
    dotted paths of the binarized ``nn.Linear`` modules (first name of a shared module), relative to the object
    given to :func:`binarize` (a pipeline's ``inner_model``).
    """

    density: float
    include: list[str] | None = None
    exclude: list[str] | None = None
    seed: int = 0
    init: str = "weights"
    train_bias: bool = False
    alpha: str = "layer"
    layers: list[str] = field(default_factory=list)
    packed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _LayerState:
    density: float
    k: int
    init: str
    seed: int
    alpha: str
    train_bias: bool
    packed: bool = False


# ---------------------------------------------------------------------------------------------- the layer
class _TopKMask(torch.autograd.Function):
    """Forward: 0/1 mask (same shape as ``mag``) of the ``k`` largest entries of ``mag`` over the whole tensor.
    Backward: straight-through, scaled by ``|W|`` (Biprop)."""

    @staticmethod
    def forward(ctx: Any, mag: torch.Tensor, weight_mag: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(weight_mag)
        flat = torch.zeros(mag.numel(), dtype=mag.dtype, device=mag.device)
        if k >= mag.numel():
            flat.fill_(1.0)
        else:
            flat[torch.topk(mag.detach().flatten(), k, sorted=False).indices] = 1.0
        return flat.view_as(mag)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight_mag,) = ctx.saved_tensors
        return grad * weight_mag, None, None


def _kept(density: float, numel: int) -> int:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < float(density) <= 1.0:
        raise ValueError(f"density is the fraction of weights kept and must be in (0, 1], got {density!r}")
    return min(numel, max(1, round(float(density) * numel)))


class SparseBinaryLinear(nn.Linear):
    """``nn.Linear`` with the sparse binary weight ``alpha · sign(W) ⊙ M`` (see the module docstring).

    Standalone: ``SparseBinaryLinear(in_features, out_features, density=0.5, seed=0)`` draws its float weight and
    bias as ``nn.Linear`` does, but from ``seed``, and binarizes with ``init`` (default ``"random"``: frozen random
    ``W`` and random scores, Biprop). Existing layers are converted in place by :func:`binarize`.

    Input (..., in_features) -> output (..., out_features).
    """

    _mergeplug_binary = True  # read by mergeplug.cost
    _sbl_float_class: type = nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        density: float = 0.5,
        seed: int = 0,
        init: str = "random",
        alpha: str = "layer",
        train_bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        gen = torch.Generator().manual_seed(seed)
        weight = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(weight.to(device=device, dtype=dtype))
        if bias:
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
            b = torch.empty(out_features).uniform_(-bound, bound, generator=gen)
            self.bias = nn.Parameter(b.to(device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        _convert(self, density=density, seed=seed, init=init, alpha=alpha, train_bias=train_bias)

    # the effective weight shadows the float parameter for every reader of ``.weight``
    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The effective weight (out, in) once binarized; the float parameter before (during construction)."""
        if _STATE in self.__dict__:
            return self.effective_weight()
        w = self._parameters.get("weight")
        if w is None:
            raise AttributeError("weight")
        return w

    @property
    def binary_state(self) -> _LayerState:
        return self.__dict__[_STATE]

    def _latent_source(self) -> torch.Tensor:
        lat = self._buffers.get("latent_weight")
        return lat if lat is not None else self._parameters["weight"]

    def _latent(self) -> torch.Tensor:
        """The frozen W (out, in), detached: the random buffer or the layer's own float weight."""
        return self._latent_source().detach()

    def signed_mask(self) -> torch.Tensor:
        """``sign(W) ⊙ M`` (out, in): +1 / -1 at kept positions, +0.0 elsewhere (no gradient)."""
        with torch.no_grad():
            if self.binary_state.packed:
                return _packed_sm(self._buffers["binary_mask"], self._buffers["binary_sign"], self.alpha_tensor())
            return self._trainable_parts()[0]

    def alpha_tensor(self) -> torch.Tensor:
        """alpha: shape () per layer or (out, 1) per row (no gradient)."""
        if self.binary_state.packed:
            return self._buffers["binary_alpha"]
        with torch.no_grad():
            return self._trainable_parts()[1]

    def _trainable_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        st = self.binary_state
        w = self._latent()
        scores = self._parameters["scores"]
        w_mag = w.abs().to(scores.dtype)
        m = _TopKMask.apply(scores.abs(), w_mag, st.k)
        sign = torch.where(w >= 0, 1.0, -1.0).to(scores.dtype)
        sm = sign * m + 0.0  # +0.0 turns -0.0 (negative sign, not kept) into +0.0, as in packed mode
        kept_mag = w_mag * (sign * sm)  # = |W| ⊙ M, differentiable in M
        # sums and counts in float32 at least (a bfloat16 count of kept weights is not exact above 256), alpha in the
        # scores' dtype; float32 / float64 layers compute exactly what they did
        acc = torch.promote_types(scores.dtype, torch.float32)
        if st.alpha == "layer":
            alpha = kept_mag.sum(dtype=acc) / st.k
        else:
            alpha = kept_mag.sum(1, keepdim=True, dtype=acc) / m.detach().sum(1, keepdim=True, dtype=acc).clamp_min(1.0)
        return sm, alpha.to(scores.dtype)

    def _cache_key(self) -> tuple:
        tensors = (
            [self._buffers[n] for n in ("binary_mask", "binary_sign", "binary_alpha")]
            if self.binary_state.packed
            else [self._parameters["scores"], self._latent_source()]
        )
        key: list[Any] = []
        for t in tensors:
            try:
                version = t._version
            except RuntimeError:  # inference tensors have no version counter
                version = None
            key += [id(t), t.data_ptr(), version, t.dtype, t.device]
        return tuple(key)

    def effective_weight(self) -> torch.Tensor:
        """``alpha · sign(W) ⊙ M``, shape (out, in); differentiable in ``scores`` (straight-through) unless packed.

        Without autograd (``torch.no_grad`` / ``inference_mode``, or a packed layer) the result is cached until the
        scores (or packed buffers) change.
        """
        st = self.binary_state
        use_cache = st.packed or not torch.is_grad_enabled()
        if use_cache:
            key = self._cache_key()
            cached = self.__dict__.get(_CACHE)
            if cached is not None and cached[0] == key:
                return cached[1]
        if st.packed:
            sm = _packed_sm(self._buffers["binary_mask"], self._buffers["binary_sign"], self._buffers["binary_alpha"])
            w = self._buffers["binary_alpha"] * sm
        else:
            sm, alpha = self._trainable_parts()
            w = alpha * sm
        if use_cache:
            self.__dict__[_CACHE] = (key, w)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        bias = self._parameters.get("bias")
        if bias is not None and not self.binary_state.train_bias:
            bias = bias.detach()
        return F.linear(x, self.effective_weight(), bias)

    def extra_repr(self) -> str:
        st = self.binary_state
        mode = "packed" if st.packed else f"init={st.init}, seed={st.seed}"
        return f"{super().extra_repr()}, density={st.density:g}, k={st.k}, alpha={st.alpha}, {mode}"


def _packed_sm(mask: torch.Tensor, sign: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    one = torch.ones((), dtype=like.dtype, device=like.device)
    return torch.where(mask, torch.where(sign, one, -one), torch.zeros_like(one))


_CLASS_CACHE: dict[type, type] = {}


def _binary_class(base: type) -> type:
    if getattr(base, "_mergeplug_binary", False) and issubclass(base, SparseBinaryLinear):
        return base
    if base is nn.Linear:
        return SparseBinaryLinear
    if base not in _CLASS_CACHE:
        _CLASS_CACHE[base] = type(
            f"SparseBinary{base.__name__}", (SparseBinaryLinear, base), {"_sbl_float_class": base}
        )
    return _CLASS_CACHE[base]


def _float_class(cls: type) -> type:
    return cls._sbl_float_class if issubclass(cls, SparseBinaryLinear) else cls


def _retarget_records(module: nn.Module, mapping: Callable[[type], type]) -> None:
    """Update mergeplug patch records that will restore ``module``'s class, so ``remove`` keeps our swap."""
    for attr in (RECORD_ATTR, AUX_ATTR):
        rec = module.__dict__.get(attr)
        if rec is None:
            continue
        rec.swapped[:] = [(m, mapping(c) if m is module else c) for m, c in rec.swapped]


def _convert(
    module: nn.Linear,
    *,
    density: float,
    seed: int,
    init: str,
    alpha: str,
    train_bias: bool,
    shared: dict[int, tuple[nn.Parameter, torch.Tensor | None]] | None = None,
    packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Binarize one ``nn.Linear`` in place (class swap + added parameter / buffers)."""
    w0 = module._parameters["weight"]
    k = _kept(density, w0.numel())
    if packed is not None:
        mask, sign, alpha_t = packed
        module.register_buffer("binary_mask", mask.to(w0.device))
        module.register_buffer("binary_sign", sign.to(w0.device))
        module.register_buffer("binary_alpha", alpha_t.to(device=w0.device, dtype=w0.dtype))
    else:
        tied = None if shared is None else shared.get(id(w0))
        if tied is not None:
            scores, latent = tied
        else:
            gen = torch.Generator().manual_seed(seed)
            if init == "weights":
                latent = None
                scores = nn.Parameter(w0.detach().abs().clone())
            else:
                lat = torch.empty(w0.shape)
                nn.init.kaiming_uniform_(lat, nonlinearity="relu", generator=gen)
                s = torch.empty(w0.shape)
                nn.init.kaiming_uniform_(s, a=math.sqrt(5), generator=gen)
                latent = lat.to(device=w0.device, dtype=w0.dtype)
                scores = nn.Parameter(s.to(device=w0.device, dtype=w0.dtype))
            if shared is not None:
                shared[id(w0)] = (scores, latent)
        module.register_parameter("scores", scores)
        if latent is not None:
            module.register_buffer("latent_weight", latent)
    old = type(module)
    module.__class__ = _binary_class(old)
    module.__dict__[_STATE] = _LayerState(
        density=float(density), k=k, init=init, seed=seed, alpha=alpha, train_bias=train_bias, packed=packed is not None
    )
    _retarget_records(module, _binary_class)


def _revert(module: nn.Module) -> None:
    """Undo :func:`_convert`: remove what it added, original class back (weight / bias were never touched)."""
    for name in _EXTRA_KEYS:
        module._parameters.pop(name, None)
        module._buffers.pop(name, None)
        module._non_persistent_buffers_set.discard(name)
    module.__dict__.pop(_STATE, None)
    module.__dict__.pop(_CACHE, None)
    module.__class__ = _float_class(type(module))
    _retarget_records(module, _float_class)


# ------------------------------------------------------------------------------------------------ selection
def _root(obj: Any) -> nn.Module:
    """The module tree to binarize: a pipeline's ``inner_model`` or the module itself."""
    if isinstance(obj, nn.Module):
        return obj
    inner = getattr(obj, "inner_model", None)
    if isinstance(inner, nn.Module):
        return inner
    model = getattr(obj, "model", None)
    if isinstance(model, nn.Module):
        return model
    raise TypeError(
        f"mergeplug.binarize needs an nn.Module or a pipeline with an inner_model (Chronos), "
        f"got {type(obj).__module__}.{type(obj).__qualname__}"
    )


def _patterns(p: Patterns) -> list[Pattern] | None:
    if p is None:
        return None
    if isinstance(p, (str, re.Pattern)):
        return [p]
    out = list(p)
    for x in out:
        if not isinstance(x, (str, re.Pattern)):
            raise TypeError(f"name patterns must be strings (globs, or 're:<regex>') or re.Pattern, got {x!r}")
    return out


def _as_text(p: Pattern) -> str:
    return f"re:{p.pattern}" if isinstance(p, re.Pattern) else p


def _match(name: str, pattern: Pattern) -> bool:
    """Full match of a dotted module path: ``re.Pattern`` / ``"re:..."`` as regular expressions, else a glob
    (``fnmatch``, case-sensitive; ``*`` also crosses dots)."""
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _linear_names(root: nn.Module) -> dict[int, tuple[nn.Linear, list[str]]]:
    """Every ``nn.Linear`` under ``root`` with all its names (a shared module has several), in module order."""
    found: dict[int, tuple[nn.Linear, list[str]]] = {}
    for name, m in root.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Linear):
            found.setdefault(id(m), (m, []))[1].append(name)
    return found


def binary_layers(obj: Any) -> dict[str, SparseBinaryLinear]:
    """The binarized layers of ``obj`` by (first) dotted name, relative to its root module."""
    root = _root(obj)
    out: dict[str, SparseBinaryLinear] = {}
    seen: set[int] = set()
    for name, m in root.named_modules(remove_duplicate=False):
        if isinstance(m, SparseBinaryLinear) and _STATE in m.__dict__ and id(m) not in seen:
            seen.add(id(m))
            out[name] = m
    return out


# ------------------------------------------------------------------------------------------------------ API
def binarize(
    obj: T,
    density: float = 0.5,
    include: Patterns = None,
    exclude: Patterns = None,
    seed: int = 0,
    init: str = "weights",
    train_bias: bool = False,
    alpha: str = "layer",
) -> T:
    """Swap the chosen ``nn.Linear`` layers of ``obj`` to sparse binary layers, in place; returns ``obj``.

    Args:
        obj: any ``nn.Module``, or a Chronos pipeline (Chronos-T5, Chronos-Bolt, Chronos-2: its ``inner_model``).
        density: fraction of each layer's weights kept, in (0, 1]; ``k = max(1, round(density · numel))``.
        include: name patterns of the layers to binarize (dotted paths relative to the root module, e.g.
            ``"encoder.*"``, ``"*.SelfAttention.[qkvo]"``, ``re.compile(r".*\\.wi")`` or ``"re:.*\\.wi"``); a pattern
            must match the whole path. ``None``: every ``nn.Linear``.
        exclude: patterns of layers to leave float (e.g. the output head ``"lm_head"``); exclusion wins. A shared
            module (several names) is chosen if any name is included and none excluded.
        seed: seed of the random ``W`` and scores (``init="random"``); deterministic.
        init: ``"weights"`` (signs of the layer's weights, scores = ``|W|``) or ``"random"`` (Biprop).
        train_bias: let gradients reach the bias (otherwise it is used detached).
        alpha: ``"layer"`` (one scale per layer) or ``"row"`` (one per output row).

    Binarizing a binarized model first undoes the old binarization (new settings replace the old ones; learned
    scores are dropped).

    Raises:
        ValueError: bad ``density`` / ``init`` / ``alpha``, or no ``nn.Linear`` matches (the message names the
            patterns and some available layers).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if alpha not in ALPHAS:
        raise ValueError(f"alpha must be one of {ALPHAS}, got {alpha!r}")
    _kept(density, 1)  # validates
    root = _root(obj)
    inc, exc = _patterns(include), _patterns(exclude)
    if binarization(root) is not None or binary_layers(root):
        unbinarize(root)
    candidates = _linear_names(root)
    chosen: list[tuple[str, nn.Linear]] = []
    for m, names in candidates.values():
        if inc is not None and not any(_match(n, p) for n in names for p in inc):
            continue
        if exc is not None and any(_match(n, p) for n in names for p in exc):
            continue
        chosen.append((names[0], m))
    if not chosen:
        some = [names[0] for _, names in list(candidates.values())[:8]]
        raise ValueError(
            f"mergeplug.binarize: no nn.Linear layer matches include={[_as_text(p) for p in inc or []] or None} "
            f"exclude={[_as_text(p) for p in exc or []] or None} in {type(root).__name__} "
            f"({len(candidates)} Linear layers"
            + (f", e.g. {', '.join(some)}" if some else "")
            + "). Patterns are globs on the full dotted path ('*' crosses dots) or 're:<regex>'."
        )
    shared: dict[int, tuple[nn.Parameter, torch.Tensor | None]] = {}
    done: list[nn.Module] = []
    try:
        for _, m in chosen:
            _convert(m, density=density, seed=seed, init=init, alpha=alpha, train_bias=train_bias, shared=shared)
            done.append(m)
    except Exception:
        for m in reversed(done):
            _revert(m)
        raise
    root.__dict__[_SETTINGS] = BinarizationConfig(
        density=float(density),
        include=None if inc is None else [_as_text(p) for p in inc],
        exclude=None if exc is None else [_as_text(p) for p in exc],
        seed=seed,
        init=init,
        train_bias=train_bias,
        alpha=alpha,
        layers=[name for name, _ in chosen],
    )
    return obj


def unbinarize(obj: T) -> T:
    """Undo :func:`binarize` / :func:`load_packed`: original classes, parameters and outputs (bitwise)."""
    root = _root(obj)
    for m in list(binary_layers(root).values()):
        _revert(m)
    for m in root.modules():
        m.__dict__.pop(_SETTINGS, None)
    return obj


@contextlib.contextmanager
def suspended(obj: Any) -> Iterator[None]:
    """Inside the block the binarized layers are plain float layers again (original classes, ``state_dict`` without
    scores), e.g. to save the float model; afterwards the same scores / buffers / settings are back (same objects)."""
    root = _root(obj)
    settings = [(m, m.__dict__[_SETTINGS]) for m in root.modules() if _SETTINGS in m.__dict__]
    stash = []
    for m in binary_layers(root).values():
        extra = {n: (m._parameters.get(n), m._buffers.get(n)) for n in _EXTRA_KEYS}
        stash.append((m, m.__dict__[_STATE], extra))
        _revert(m)
    for m, _ in settings:
        del m.__dict__[_SETTINGS]
    try:
        yield
    finally:
        for m, state, extra in stash:
            for n, (param, buf) in extra.items():
                if param is not None:
                    m.register_parameter(n, param)
                if buf is not None:
                    m.register_buffer(n, buf)
            m.__class__ = _binary_class(type(m))
            m.__dict__[_STATE] = state
            _retarget_records(m, _binary_class)
        for m, cfg in settings:
            m.__dict__[_SETTINGS] = cfg


def binarization(obj: Any) -> BinarizationConfig | None:
    """The settings of the current binarization of ``obj`` (None if not binarized)."""
    root = _root(obj)
    for m in root.modules():
        cfg = m.__dict__.get(_SETTINGS)
        if cfg is not None:
            return cfg
    return None


def binary_parameters(obj: Any) -> list[nn.Parameter]:
    """The learnable tensors of the binarized layers: ``scores`` (shared ones once), and biases of layers
    binarized with ``train_bias=True``. For an optimizer: ``torch.optim.Adam(binary_parameters(model))``."""
    out: dict[int, nn.Parameter] = {}
    for m in binary_layers(obj).values():
        s = m._parameters.get("scores")
        if s is not None:
            out.setdefault(id(s), s)
        b = m._parameters.get("bias")
        if b is not None and m.binary_state.train_bias:
            out.setdefault(id(b), b)
    return list(out.values())


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def trainable_binary(obj: Any, train_norms: bool = True) -> list[nn.Parameter]:
    """Freeze every parameter of ``obj`` except the binary layers' scores (and trainable biases) and, with
    ``train_norms``, the parameters of normalisation layers (classes named ``*Norm*``: LayerNorm, T5LayerNorm,
    RMSNorm, BatchNorm...). Sets ``requires_grad`` in place (not undone by :func:`unbinarize`); returns the
    trainable parameters."""
    root = _root(obj)
    keep = {id(p): p for p in binary_parameters(root)}
    if train_norms:
        for m in root.modules():
            if _is_norm(m):
                for p in m.parameters(recurse=False):
                    keep.setdefault(id(p), p)
    for p in root.parameters():
        p.requires_grad_(id(p) in keep)
    for p in keep.values():
        p.requires_grad_(True)
    return list(keep.values())


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


def read_packed_metadata(path: str | os.PathLike, *, raw: bool = False) -> dict[str, Any]:
    """The metadata of a packed file (validated format name and version), as :func:`save_packed` returns it
    (``raw=True``: the compact form stored in the file)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get(PACKED_META_KEY)
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
