"""The user API of the sparse binary layers: :func:`binarize`, :func:`unbinarize`, :func:`suspended`,
:func:`binarization` (:class:`BinarizationConfig`), :func:`binary_layers`, :func:`binary_parameters`,
:func:`trainable_binary`, and the selection of layers by name patterns.


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
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from .layer import _EXTRA_KEYS, _STATE, SparseBinaryLinear, _binary_class, _convert, _kept, _retarget_records, _revert

T = TypeVar("T")
Pattern = str | re.Pattern
Patterns = Pattern | Iterable[Pattern] | None

INITS = ("weights", "random")
ALPHAS = ("layer", "row")
# instance attributes of the sparse binary layers (their own; a merging patch deletes only what it added)
_SETTINGS = "_sparse_binary_settings"


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
    out = [p] if isinstance(p, (str, re.Pattern)) else list(p)
    for x in out:
        if not isinstance(x, (str, re.Pattern)):
            raise TypeError(f"name patterns must be strings (globs, or 're:<regex>') or re.Pattern, got {x!r}")
        if isinstance(x, str) and x.startswith("re:"):
            try:
                re.compile(x[3:])
            except re.error as exc:
                raise ValueError(f"name pattern {x!r} is not a valid regular expression ({exc})") from None
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
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
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
