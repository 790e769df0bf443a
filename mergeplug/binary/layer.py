"""The sparse binary layer: :class:`SparseBinaryLinear` and the in-place conversion of an ``nn.Linear`` to it and
back (``_convert`` / ``_revert``; the user API is in :mod:`mergeplug.binary.api`).

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..patches.base import AUX_ATTR, RECORD_ATTR

# instance attributes of the sparse binary layers (their own; a merging patch deletes only what it added)
_STATE = "_sbl_state"
_CACHE = "_sbl_cache"
_EXTRA_KEYS = ("scores", "latent_weight", "binary_mask", "binary_sign", "binary_alpha")


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
