"""Training data for the reference models: training parts of offline datasets, TSMixup, KernelSynth.

Only the *training part* of a registered dataset is ever used: the harness' test region (the last
``prediction_length * windows`` values of every series, see :mod:`mergeplug.eval.data`) is cut off
before anything is sampled, so in-domain evaluation never sees a test value.

Batches are a pure function of ``(seed, step)``: a resumed run draws exactly the batches an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mergeplug._assets import data_file
from mergeplug.eval.data import load_dataset
from mergeplug_lab.train.kernelsynth import kernelsynth

__all__ = [
    "Batch",
    "TrainingSeries",
    "training_series",
    "multivariate_training_parts",
    "WindowSampler",
    "DEFAULT_TRAIN_DATASETS",
    "DEFAULT_ZERO_SHOT",
    "MULTIVARIATE_TRAIN",
]

# In-domain for the shipped reference models: their training parts are seen, their test windows are not.
DEFAULT_TRAIN_DATASETS = (
    "electricity_hourly",
    "sf_traffic_hourly",
    "solar_hourly",
    "wind_hourly",
    "traffic_volume_hourly",
    "m1_yearly",
    "m1_quarterly",
    "m1_monthly",
    "m3_yearly",
    "m3_quarterly",
    "m3_monthly",
    "m3_other",
)
# Shipped multivariate series (hourly, 7 variables each) whose variables form groups of related series; only the
# first 70% of the time steps is ever sampled (the compact Transformer's chronological train split: its validation
# and test parts, and the injected-anomaly test region, come later).
MULTIVARIATE_TRAIN = {"beijing_pm25": "beijing_pm25_hourly.npz", "household_power": "household_power_hourly.npz"}
MULTIVARIATE_TRAIN_FRACTION = 0.7
# Never seen in training: the zero-shot part of the evaluation.
DEFAULT_ZERO_SHOT = (
    "tourism_yearly",
    "tourism_quarterly",
    "tourism_monthly",
    "bikesharing_hourly",
    "taylor_30min",
    "m4_hourly_sample",
)


@dataclass
class TrainingSeries:
    """Training parts of some datasets.

    Attributes:
        names: dataset name per group.
        series: one list per dataset of float32 (T_i,) arrays (training parts only).
        test_lengths: values cut from the end of every series of that dataset.
    """

    names: list[str]
    series: list[list[np.ndarray]]
    test_lengths: list[int]
    summary: list[dict] = field(default_factory=list)

    def describe(self) -> list[dict]:
        """What was seen: per dataset the number of series and values, and what was held out."""
        return [
            {
                "dataset": n,
                "series": len(s),
                "values": int(sum(len(x) for x in s)),
                "held_out_last": t,
            }
            for n, s, t in zip(self.names, self.series, self.test_lengths, strict=True)
        ]


def training_series(
    datasets: tuple[str, ...] | list[str] = DEFAULT_TRAIN_DATASETS, min_length: int = 8
) -> TrainingSeries:
    """Training parts (everything before the harness' test windows) of registered datasets."""
    names, groups, cuts = [], [], []
    for name in datasets:
        ds = load_dataset(name)
        cut = ds.prediction_length * ds.windows
        parts = [np.asarray(e["target"][:-cut], dtype=np.float32) for e in ds.entries]
        parts = [p for p in parts if np.isfinite(p).sum() >= min_length]
        if parts:
            names.append(name)
            groups.append(parts)
            cuts.append(cut)
    if not names:
        raise ValueError(f"no usable training series in {list(datasets)}")
    return TrainingSeries(names, groups, cuts)


def multivariate_training_parts(names: tuple[str, ...] | list[str] = tuple(MULTIVARIATE_TRAIN)) -> list[np.ndarray]:
    """Training parts (first 70% of the time steps) of shipped multivariate series: float32 (T, V) arrays."""
    parts = []
    for name in names:
        if name not in MULTIVARIATE_TRAIN:
            raise ValueError(f"unknown multivariate series {name!r}; shipped: {', '.join(MULTIVARIATE_TRAIN)}")
        values = np.load(data_file(MULTIVARIATE_TRAIN[name]), allow_pickle=False)["values"].astype(np.float32)
        parts.append(values[: int(len(values) * MULTIVARIATE_TRAIN_FRACTION + 1e-9)])
    return parts


class Batch(NamedTuple):
    """One training batch.

    Attributes:
        context: float32 (B, C), NaN = missing, right-aligned (NaN-padded on the left).
        target: float32 (B, H), NaN = missing (or past the series' end).
        cut: int64 (B,), index in its series of the first target value (-1 for mixtures, synthetic series and
            group members).
        group: int64 (B,) group ids (Chronos-2's ``group_ids``: rows with one id are related series forecast
            together); ``None``: every row on its own.
    """

    context: np.ndarray
    target: np.ndarray
    cut: np.ndarray
    group: np.ndarray | None = None


def _window(x: np.ndarray, cut: int, context: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Context ``x[cut-context:cut]`` and target ``x[cut:cut+horizon]``, NaN-padded to full length."""
    ctx = np.full(context, np.nan, dtype=np.float32)
    tgt = np.full(horizon, np.nan, dtype=np.float32)
    a = max(0, cut - context)
    ctx[context - (cut - a) :] = x[a:cut]
    b = min(len(x), cut + horizon)
    tgt[: b - cut] = x[cut:b]
    return ctx, tgt


def _usable(context: np.ndarray, target: np.ndarray, complete: bool = False, max_z: float = 50.0) -> bool:
    """A window the standardised quantile loss can learn from.

    Needs two observed context values with non-zero spread and at least one observed target value, and no
    target value more than ``max_z`` context standard deviations from the context mean (a flat context,
    e.g. solar power at night, followed by a jump would otherwise give losses of 1e4 and more).
    ``complete``: every target value must be observed.
    """
    if complete and not np.isfinite(target).all():
        return False
    c = context[np.isfinite(context)]
    t = target[np.isfinite(target)]
    if len(c) < 2 or len(t) == 0:
        return False
    std = float(c.std())
    return std > 1e-8 * max(1.0, float(np.abs(c).mean())) and float(np.abs(t - c.mean()).max()) <= max_z * std


class WindowSampler:
    """Draws (context, target) batches from real training parts, TSMixup mixtures and KernelSynth series.

    Args:
        data: training parts (``None``: synthetic only).
        context_length: longest context C.
        horizon: target length H.
        synthetic: number of KernelSynth series in the bank (0: none); cached in ``cache_dir``.
        mix: probabilities of (real, mixup, synthetic) per sample.
        min_context: shortest context drawn for a batch (contexts vary per batch to train short and long).
        fixed_context: every batch has the full context length, and real windows start at least
            ``min_context`` values into their series.
        complete_target: only windows whose target is fully observed.
        curriculum_steps: the longest context grows geometrically from 128 to ``context_length`` over these
            steps (short contexts first: a small model learns to read seasonality from a few patches within
            a few hundred steps, and stalls for thousands when it starts with 64 patches).
        seed: base seed; batch ``step`` uses ``np.random.default_rng([seed, step])``.
        multivariate: (T, V) arrays whose variables are related series (groups drawn from them share one cut).
        group_fraction: expected fraction of a batch's rows that belong to groups of 2 to ``max_group`` related
            series (0: no groups; :attr:`Batch.group` is then ``None``). A group is ``V`` variables of a
            multivariate array at one time (half of the groups, when there are arrays), or a synthetic group: a
            KernelSynth series with copies of it that are scaled, shifted, noisy and delayed by up to 48 steps,
            so that a leading member's context shows part of the others' future.
        progress: a progress bar while the KernelSynth bank is generated.
        dataset_weights: relative weight of each dataset of ``data`` when a real window is drawn (empty: every
            dataset equally, then a series of it uniformly).
    """

    def __init__(
        self,
        data: TrainingSeries | None,
        *,
        context_length: int,
        horizon: int,
        synthetic: int = 0,
        mix: tuple[float, float, float] = (0.5, 0.2, 0.3),
        min_context: int = 32,
        fixed_context: bool = False,
        complete_target: bool = False,
        curriculum_steps: int = 0,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        multivariate: list[np.ndarray] | None = None,
        group_fraction: float = 0.0,
        max_group: int = 4,
        dataset_weights: list[float] | tuple[float, ...] = (),
        progress: bool = False,
    ) -> None:
        if not 0 <= group_fraction <= 1:
            raise ValueError(f"group_fraction must be in [0, 1], got {group_fraction}")
        if group_fraction and max_group < 2:
            raise ValueError(f"max_group must be at least 2 for groups, got {max_group}")
        self.multivariate = [m for m in (multivariate or []) if m.ndim == 2 and m.shape[1] >= 2]
        self.group_fraction = group_fraction
        self.max_group = max_group
        self.fixed_context = fixed_context
        self.complete_target = complete_target
        self.curriculum_steps = curriculum_steps
        self.data = data
        self.context_length = context_length
        self.horizon = horizon
        self.min_context = min(min_context, context_length)
        self.seed = seed
        p = np.asarray(mix, dtype=float)
        if data is None:
            p[:2] = 0
        if synthetic == 0:
            p[2] = 0
        if p.sum() <= 0:
            raise ValueError("nothing to sample: give training data or synthetic > 0")
        self.mix = p / p.sum()
        self.weights = None
        if dataset_weights:
            w = np.asarray(dataset_weights, dtype=float)
            n = len(data.series) if data is not None else 0
            if len(w) != n or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(
                    f"dataset_weights needs one weight >= 0 per training dataset ({n}), not all 0; got "
                    f"{list(dataset_weights)}"
                )
            self.weights = w / w.sum()
        self.bank = self._bank(synthetic, cache_dir, progress) if synthetic else None
        if group_fraction and self.bank is None and not self.multivariate:
            raise ValueError("groups need multivariate arrays or synthetic > 0")

    def _bank(self, n: int, cache_dir: str | Path | None, progress: bool = False) -> np.ndarray:
        length = self.context_length + self.horizon
        if cache_dir is not None:
            path = Path(cache_dir) / f"kernelsynth_{n}x{length}_seed{self.seed}.npy"
            if path.exists():
                return np.load(path)
        bank = kernelsynth(n, length, seed=self.seed, progress=progress)
        if cache_dir is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, bank)
        return bank

    def _real(self, rng: np.random.Generator, context: int) -> tuple[np.ndarray, np.ndarray, int]:
        if self.weights is None:
            g = int(rng.integers(len(self.data.series)))
        else:
            g = int(rng.choice(len(self.weights), p=self.weights))
        group = self.data.series[g]
        x = group[int(rng.integers(len(group)))]
        # at least a few context values (all of them for a fixed-context sampler); the target may run past the end
        first = min(self.min_context if self.fixed_context else 4, len(x) - 1)
        cut = int(rng.integers(first, len(x)))
        return (*_window(x, cut, context, self.horizon), cut)

    def _mixup(self, rng: np.random.Generator, context: int) -> tuple[np.ndarray, np.ndarray]:
        k = int(rng.integers(1, 4))
        weights = rng.dirichlet(np.ones(k))
        ctx = np.zeros(context, np.float32)
        tgt = np.zeros(self.horizon, np.float32)
        for w in weights:
            c, t, _ = self._real(rng, context)
            with warnings.catch_warnings():  # an all-missing component: NaN scale (handled below), no warning
                warnings.simplefilter("ignore", RuntimeWarning)
                scale = np.nanmean(np.abs(c))
            scale = scale if np.isfinite(scale) and scale > 0 else 1.0
            ctx += w * c / scale  # NaN where any component is unobserved
            tgt += w * t / scale
        return ctx, tgt, -1

    def _synthetic(self, rng: np.random.Generator, context: int) -> tuple[np.ndarray, np.ndarray, int]:
        x = self.bank[int(rng.integers(len(self.bank)))]
        return (*_window(x, len(x) - self.horizon, context, self.horizon), -1)

    def _real_group(self, rng: np.random.Generator, context: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        values = self.multivariate[int(rng.integers(len(self.multivariate)))]
        cols = rng.choice(values.shape[1], size=min(size, values.shape[1]), replace=False)
        cut = int(rng.integers(min(self.min_context if self.fixed_context else 4, len(values) - 1), len(values)))
        return [_window(values[:, c], cut, context, self.horizon) for c in cols]

    def _synthetic_group(self, rng: np.random.Generator, context: int, size: int) -> list[tuple[np.ndarray, ...]]:
        x = self.bank[int(rng.integers(len(self.bank)))]
        std = float(x.std()) or 1.0
        members = [x]
        for _ in range(size - 1):
            lag = int(rng.integers(0, 49))
            y = np.full_like(x, np.nan)
            y[lag:] = x[: len(x) - lag]
            y = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 3.0) * y + rng.normal(0, 2 * std)
            members.append((y + rng.normal(0, rng.uniform(0, 0.3) * std, len(y))).astype(np.float32))
        order = rng.permutation(size)
        cut = len(x) - self.horizon
        return [_window(members[i], cut, context, self.horizon) for i in order]

    def _groups(self, rng: np.random.Generator, context: int, batch_size: int) -> list[list[tuple[np.ndarray, ...]]]:
        """Groups filling about ``group_fraction`` of the batch (each member a usable window)."""
        groups, rows = [], 0
        budget = int(rng.binomial(batch_size, self.group_fraction))
        while budget - rows >= 2:
            size = int(rng.integers(2, min(self.max_group, budget - rows) + 1))
            real = self.multivariate and (self.bank is None or rng.random() < 0.5)
            for _ in range(20):
                members = (self._real_group if real else self._synthetic_group)(rng, context, size)
                members = [m for m in members if _usable(m[0], m[1], self.complete_target)]
                if len(members) >= 2:
                    break
            else:
                break
            groups.append(members)
            rows += len(members)
        return groups

    def context_cap(self, step: int) -> int:
        """Longest context of batch ``step`` (``context_length`` once the curriculum is over)."""
        if self.fixed_context or step >= self.curriculum_steps:
            return self.context_length
        start = min(128, self.context_length)
        cap = start * (self.context_length / start) ** (step / self.curriculum_steps)
        return min(self.context_length, int(-(-cap // 16) * 16))

    def batch(self, step: int, batch_size: int) -> Batch:
        """Batch number ``step`` (a pure function of the seed and ``step``).

        The context length is ``context_length`` for a fixed-context sampler; otherwise it is the longest
        allowed at this step (:meth:`context_cap`) for half of the batches and log-uniform in
        ``[min_context, cap]`` (rounded up to a multiple of 16) for the rest.
        """
        rng = np.random.default_rng([self.seed, step])
        cap = self.context_cap(step)
        if self.fixed_context or rng.random() < 0.5:
            context = cap
        else:
            context = int(np.exp(rng.uniform(np.log(min(self.min_context, cap)), np.log(cap))))
            context = min(cap, -(-context // 16) * 16)
        groups = self._groups(rng, context, batch_size) if self.group_fraction else []
        ctxs, tgts, cuts, ids = [], [], [], []
        for g, members in enumerate(groups):
            for c, t in members:
                ctxs.append(c)
                tgts.append(t)
                cuts.append(-1)
                ids.append(g)
        kinds = rng.choice(3, size=batch_size - len(ctxs), p=self.mix)
        draw = (self._real, self._mixup, self._synthetic)
        for kind in kinds:
            for _ in range(20):  # redraw windows the loss cannot use (see _usable)
                c, t, cut = draw[kind](rng, context)
                if _usable(c, t, self.complete_target):
                    break
            else:
                if self.bank is None:
                    raise ValueError(
                        f"no usable training window in 20 draws (context {context}, horizon {self.horizon}): the "
                        "series are too short, flat or missing for these settings"
                    )
                c, t, cut = self._synthetic(rng, context)
            ctxs.append(c)
            tgts.append(t)
            cuts.append(cut)
            ids.append(len(groups) + len(ids))
        group = np.asarray(ids, dtype=np.int64) if self.group_fraction else None
        return Batch(np.stack(ctxs), np.stack(tgts), np.asarray(cuts, dtype=np.int64), group)
