"""What the harness can evaluate: Chronos pipelines, any GluonTS predictor, and the shipped supervised models.

Every model is wrapped as a :class:`Forecaster`: GluonTS test inputs in, (N, Q, H) quantiles out (Q = the
nine levels 0.1..0.9). Model specs accepted by :func:`load_model` (and ``mergeplug-eval run --model``):

- a local directory or hub id of a Chronos-T5 / Chronos-Bolt / Chronos-2 model (``BaseChronosPipeline``),
  or of a ``PatchTSTForPrediction`` / ``TimeSeriesTransformerForPrediction`` checkpoint;
- ``mergeplug:<name>``: a shipped reference model (``mergeplug_assets/checkpoints``, ``mergeplug:bolt-ref``),
  or a per-dataset family (``mergeplug:patchtst``, ``mergeplug:tst``: the model trained on each dataset);
- ``random:chronos-t5-<size>``, ``random:chronos-bolt-<size>``, ``random:chronos-2-<size>``: random weights
  built from a config (speed and plumbing checks only);
- ``predictor:<module.Class>``: a GluonTS predictor class, built per dataset with ``prediction_length``
  (and ``season_length`` / ``freq`` when its constructor takes them), e.g.
  ``predictor:gluonts.model.npts.NPTSPredictor``;
- a :class:`Forecaster` instance (Python API).
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _assets
from ..core import encoder_layers
from ..forecast import QUANTILES, chronos_quantile_forecast
from .data import EvalDataset

__all__ = [
    "QUANTILES",
    "Forecaster",
    "ChronosForecaster",
    "PredictorForecaster",
    "SupervisedForecaster",
    "load_model",
    "checkpoint_dir",
    "chronos_quantiles",
]

PER_DATASET = ("patchtst", "tst")


class Forecaster:
    """Quantile forecasts for GluonTS test inputs.

    Attributes:
        name: the model spec.
        target: what ``mergeplug.apply`` acts on (``None``: token merging does not apply to this model).
        num_layers: encoder layers (for ``reduction=`` merge settings), if known.
    """

    name: str = ""
    target: Any = None
    num_layers: int | None = None

    def for_dataset(self, ds: EvalDataset) -> Forecaster:
        """The forecaster to use on ``ds`` (per-dataset models pick their checkpoint here)."""
        return self

    def mergeable(self) -> bool:
        """Can ``mergeplug.apply`` patch this model (a registered family matches it)?"""
        from ..patches import families

        return self.target is not None and any(f.matches(self.target) for f in families())

    def quantiles(
        self,
        inputs: Sequence[dict[str, Any]],
        h: int,
        *,
        batch_size: int = 32,
        seed: int | None = None,
        shard: tuple[int, int] = (0, 1),
        progress: bool = False,
        desc: str = "",
    ) -> np.ndarray:
        """(N, Q, H) quantiles for ``inputs`` (``{"target": (T,), "start": pd.Period, ...}``)."""
        raise NotImplementedError  # pragma: no cover - abstract


def _sharded(
    predict: Callable[[int, int], np.ndarray],
    n: int,
    batch_size: int,
    seed: int | None,
    shard: tuple[int, int],
    progress: bool,
    desc: str,
) -> np.ndarray:
    """Run ``predict(start, stop)`` per batch; batch ``b`` is seeded with ``seed + b`` and computed by
    process ``b % world``; results are gathered across processes (``accelerate``) in batch order."""
    rank, world = shard
    starts = list(range(0, n, batch_size))
    mine: dict[int, np.ndarray] = {}
    for b in tqdm(range(rank, len(starts), world), desc=desc, disable=not progress, leave=False):
        if seed is not None:
            torch.manual_seed(seed + b)
            np.random.seed((seed + b) % 2**32)
        mine[b] = predict(starts[b], min(starts[b] + batch_size, n))
    if world > 1:
        from accelerate.utils import gather_object

        for part in gather_object([mine]):
            mine.update(part)
    return np.concatenate([mine[b] for b in range(len(starts))], axis=0)


def chronos_quantiles(
    pipe,
    contexts: Sequence[np.ndarray],
    h: int,
    *,
    batch_size: int = 32,
    seed: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
    desc: str = "",
) -> np.ndarray:
    """(N, Q, H) quantile forecasts of a Chronos-T5 / Bolt / Chronos-2 pipeline (NaNs are missing values).

    Batch ``b`` is seeded with ``seed + b``, so a forecast does not depend on which process computes it;
    ``shard=(rank, world)`` computes batches ``rank, rank + world, ...`` and gathers them.
    """

    def predict(a: int, b: int) -> np.ndarray:
        return chronos_quantile_forecast(pipe, [np.asarray(c, dtype=np.float32) for c in contexts[a:b]], h)

    return _sharded(predict, len(contexts), batch_size, seed, shard, progress, desc)


def _layers(obj: Any) -> int | None:
    """Encoder layers of a pipeline or model (:func:`mergeplug.core.encoder_layers`), None when its config does not
    tell."""
    try:
        return encoder_layers(obj)
    except ValueError:
        return None


class ChronosForecaster(Forecaster):
    """A Chronos pipeline (T5, Bolt or Chronos-2); merging applies to it."""

    def __init__(self, pipe, name: str = "") -> None:
        self.pipe = pipe
        self.target = pipe
        self.name = name
        self.num_layers = _layers(pipe)

    def quantiles(self, inputs, h, *, batch_size=32, seed=None, shard=(0, 1), progress=False, desc=""):
        contexts = [np.asarray(inp["target"], dtype=np.float32) for inp in inputs]
        return chronos_quantiles(
            self.pipe, contexts, h, batch_size=batch_size, seed=seed, shard=shard, progress=progress, desc=desc
        )


class PredictorForecaster(Forecaster):
    """Any GluonTS predictor, built per dataset by ``factory(ds)``; quantiles from ``forecast.quantile``."""

    def __init__(self, factory: Callable[[EvalDataset], Any], name: str = "") -> None:
        self.factory = factory
        self.name = name
        self.predictor = None

    def for_dataset(self, ds: EvalDataset) -> PredictorForecaster:
        built = PredictorForecaster(self.factory, self.name)
        built.predictor = self.factory(ds)
        return built

    def quantiles(self, inputs, h, *, batch_size=32, seed=None, shard=(0, 1), progress=False, desc=""):
        if self.predictor is None:
            raise RuntimeError("call for_dataset(ds) first: GluonTS predictors are built per dataset")

        def predict(a: int, b: int) -> np.ndarray:
            forecasts = list(self.predictor.predict(list(inputs[a:b])))
            return np.stack([np.stack([f.quantile(q)[:h] for q in QUANTILES]) for f in forecasts])

        return _sharded(predict, len(inputs), batch_size, seed, shard, progress, desc)


class SupervisedForecaster(Forecaster):
    """PatchTST / TimeSeriesTransformer checkpoints; ``family`` set: one model per dataset in ``root``."""

    def __init__(self, model: torch.nn.Module | None = None, *, root: Path | None = None, family: str = "", name=""):
        self.model = model.eval() if model is not None else None
        self.target = self.model
        self.root, self.family, self.name = root, family, name
        config = self.model.config if self.model is not None else self._family_config()
        if config is not None:
            self.num_layers = _layers(SimpleNamespace(config=config))

    def _family_config(self):
        """Config of one of the family's models (they share the architecture), or None."""
        from transformers import AutoConfig

        for path in sorted(self.root.glob(f"{self.family}-*")) if self.root is not None else []:
            if (path / "config.json").exists():
                return AutoConfig.from_pretrained(path)
        return None

    def mergeable(self) -> bool:
        if self.model is None:  # a family: its models share one class
            return self.family in ("patchtst", "tst")
        return super().mergeable()

    def for_dataset(self, ds: EvalDataset) -> SupervisedForecaster:
        if not self.family:
            return self
        path = self.root / f"{self.family}-{ds.base or ds.name}"  # a variant uses its base dataset's model
        if not path.exists():
            have = sorted(p.name[len(self.family) + 1 :] for p in self.root.glob(f"{self.family}-*"))
            raise ValueError(
                f"{self.name}: no {self.family} model was trained on {ds.name!r}; it has models for: {', '.join(have)}"
            )
        return SupervisedForecaster(_load_supervised(path), name=self.name)

    def quantiles(self, inputs, h, *, batch_size=32, seed=None, shard=(0, 1), progress=False, desc=""):
        from .supervised import supervised_quantiles

        if self.model is None:
            raise RuntimeError("call for_dataset(ds) first: this family has one model per dataset")

        def predict(a: int, b: int) -> np.ndarray:
            return supervised_quantiles(self.model, list(inputs[a:b]), h, batch_size=b - a)

        return _sharded(predict, len(inputs), batch_size, seed, shard, progress, desc)


def _looks_local(spec: str) -> bool:
    """A model spec that can only be a local path (not a Hub id ``name`` / ``owner/name``)."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


def checkpoint_dir(name: str = "") -> Path:
    """Directory of a shipped reference checkpoint (``mergeplug_assets/checkpoints/<name>``, in the separate
    ``mergeplug-assets`` package; no name: their parent)."""
    return _assets.checkpoint_dir(name)


def _load_supervised(path: Path) -> torch.nn.Module:
    from transformers import PatchTSTForPrediction, TimeSeriesTransformerForPrediction

    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    cls = {"patchtst": PatchTSTForPrediction, "time_series_transformer": TimeSeriesTransformerForPrediction}
    return cls[model_type].from_pretrained(path).eval()


SUPERVISED_TYPES = ("patchtst", "time_series_transformer")


def _with_binary_layers(model: Any, path: Path) -> Any:
    """Load the packed sparse binary layers of a directory written by ``mergeplug.save_pretrained`` (if any)."""
    from ..hub import CONFIG_NAME, load_binary_layers, read_config

    if not (path / CONFIG_NAME).exists():
        return model
    meta, local = read_config(path)
    return load_binary_layers(model, meta, path, local)


def _predictor_factory(dotted: str) -> Callable[[EvalDataset], Any]:
    module, _, attr = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"predictor:{dotted}: cannot import {dotted!r} ({exc}); give module.Class") from None
    from gluonts.model.predictor import Predictor

    if not (isinstance(cls, type) and issubclass(cls, Predictor)):  # never call anything else
        raise ValueError(
            f"predictor:{dotted} is not a GluonTS predictor class (a subclass of gluonts.model.predictor.Predictor, "
            "e.g. predictor:gluonts.model.npts.NPTSPredictor); it is not called"
        )
    params = inspect.signature(cls).parameters

    def build(ds: EvalDataset):
        kwargs: dict[str, Any] = {"prediction_length": ds.prediction_length}
        if "season_length" in params:
            kwargs["season_length"] = ds.season
        if "freq" in params:
            kwargs["freq"] = ds.freq
        return cls(**kwargs)

    return build


def _random_chronos(spec: str):
    from .. import models

    body = spec[len("random:") :]
    family, _, size = body.rpartition("-")
    builders = {"chronos-t5": models.chronos_t5, "chronos-bolt": models.chronos_bolt, "chronos-2": models.chronos2}
    if family not in builders:
        raise ValueError(
            f"unknown random model {spec!r}; use random:chronos-t5-<size>, random:chronos-bolt-<size> or "
            f"random:chronos-2-<size> with size in {sorted(models.SIZES)}"
        )
    return builders[family](size)


def load_model(spec: str | Forecaster, *, device: str = "cpu", dtype: str = "float32") -> Forecaster:
    """A :class:`Forecaster` for a model spec (see the module docstring)."""
    if isinstance(spec, Forecaster):
        return spec
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if spec.startswith("random:"):
        pipe = _random_chronos(spec)
        pipe.model.to(device=device, dtype=torch_dtype)
        return ChronosForecaster(pipe, spec)
    if spec.startswith("predictor:"):
        return PredictorForecaster(_predictor_factory(spec[len("predictor:") :]), spec)
    path: str | Path = spec
    if spec.startswith("mergeplug:"):
        name = spec[len("mergeplug:") :]
        if name in PER_DATASET:
            return SupervisedForecaster(root=checkpoint_dir(), family=name, name=spec)
        path = checkpoint_dir(name)
        if not path.exists():
            have = sorted(
                {
                    p.name.split("-")[0] if p.name.split("-")[0] in PER_DATASET else p.name
                    for p in checkpoint_dir().glob("*")
                    if (p / "config.json").exists()
                }
            )
            raise ValueError(f"unknown shipped model {spec!r}; shipped: {', '.join(f'mergeplug:{h}' for h in have)}")
    if not Path(path).exists() and _looks_local(str(path)):
        raise FileNotFoundError(f"--model {spec}: no such directory (a local model folder, a Hub id 'owner/name', "
                                "mergeplug:<shipped name> or random:<family>-<size>)")  # fmt: skip
    config = Path(path) / "config.json"
    supervised = config.exists() and json.loads(config.read_text()).get("model_type") in SUPERVISED_TYPES
    from ..hub import saved_packed_only

    if saved_packed_only(path):  # no float weights: only mergeplug loads it
        from ..hub import from_pretrained

        if supervised:
            return SupervisedForecaster(from_pretrained(path), name=spec)
        return ChronosForecaster(from_pretrained(path, device_map=device, dtype=torch_dtype), spec)
    if supervised:
        return SupervisedForecaster(_with_binary_layers(_load_supervised(Path(path)), Path(path)), name=spec)
    from chronos import BaseChronosPipeline

    try:
        pipe = BaseChronosPipeline.from_pretrained(str(path), device_map=device, dtype=torch_dtype)
    except OSError as exc:
        raise OSError(
            f"could not load model {spec!r} ({exc}). A hub id needs internet (or a filled local cache); "
            "offline, pass a local directory, mergeplug:<name> or random:chronos-t5-<size>."
        ) from exc
    return ChronosForecaster(_with_binary_layers(pipe, Path(path)), spec)
