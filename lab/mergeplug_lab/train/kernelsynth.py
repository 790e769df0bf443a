"""KernelSynth-style synthetic series: Gaussian-process samples from random compositions of kernels.

A kernel is drawn from a bank (periodic, linear, RBF, rational-quadratic, white noise, constant), up to
``max_kernels`` of them are combined with random ``+`` / ``*``, and series are sampled from the GP prior
with that covariance on ``t = 0 .. length-1`` (scaled to [0, 1]). One Cholesky factor yields several
samples. Everything is numpy and deterministic for a given generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["random_kernel", "sample_gp", "kernelsynth"]

Kernel = Callable[[np.ndarray], np.ndarray]

# Periods in time steps that real data has (hours in a day/week, months in a year, ...), plus free ones.
_PERIODS = (4, 7, 12, 24, 48, 52, 96, 168, 336, 365)


def _distance(t: np.ndarray) -> np.ndarray:
    return t[:, None] - t[None, :]


def _kernel_bank(rng: np.random.Generator, length: int) -> Kernel:
    """One base kernel with random hyper-parameters; the kernel maps t (T,) in [0, 1] to a (T, T) matrix."""
    kind = rng.choice(["periodic", "periodic", "periodic", "linear", "rbf", "rq", "white", "const"])
    if kind == "periodic":
        period = (rng.choice(_PERIODS) if rng.random() < 0.8 else rng.uniform(3, length / 2)) / length
        ls = rng.uniform(0.5, 3.0)
        return lambda t: np.exp(-2.0 * np.sin(np.pi * np.abs(_distance(t)) / period) ** 2 / ls**2)
    if kind == "linear":
        c = rng.uniform(-1.0, 1.0)
        return lambda t: 0.1 + np.outer(t - c, t - c)
    if kind == "rbf":
        ls = rng.choice([0.02, 0.05, 0.1, 0.3, 1.0])
        return lambda t: np.exp(-0.5 * (_distance(t) / ls) ** 2)
    if kind == "rq":
        ls, alpha = rng.choice([0.02, 0.1, 0.5]), rng.choice([0.1, 1.0, 10.0])
        return lambda t: (1.0 + _distance(t) ** 2 / (2 * alpha * ls**2)) ** (-alpha)
    if kind == "white":
        level = rng.choice([0.01, 0.1, 0.5])
        return lambda t: level * np.eye(len(t))
    value = rng.uniform(0.1, 1.0)
    return lambda t: np.full((len(t), len(t)), value)


def random_kernel(rng: np.random.Generator, length: int, max_kernels: int = 5) -> Kernel:
    """A random composition of 1..``max_kernels`` bank kernels joined by ``+`` or ``*``."""
    n = int(rng.integers(1, max_kernels + 1))
    kernel = _kernel_bank(rng, length)
    for _ in range(n - 1):
        other = _kernel_bank(rng, length)
        if rng.random() < 0.5:
            kernel = (lambda a, b: lambda t: a(t) + b(t))(kernel, other)
        else:
            kernel = (lambda a, b: lambda t: a(t) * b(t))(kernel, other)
    return kernel


def sample_gp(kernel: Kernel, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` zero-mean GP samples on ``length`` equally spaced points; returns float32 (n, length)."""
    t = np.linspace(0.0, 1.0, length)
    cov = kernel(t)
    cov = 0.5 * (cov + cov.T)
    jitter = 1e-6 * max(float(np.mean(np.diag(cov))), 1e-6)
    for _ in range(6):
        try:
            chol = np.linalg.cholesky(cov + jitter * np.eye(length))
            break
        except np.linalg.LinAlgError:
            jitter *= 10
    else:  # not positive definite even with large jitter: fall back to an eigen-decomposition
        w, v = np.linalg.eigh(cov)
        chol = v * np.sqrt(np.clip(w, 0, None))
    return (chol @ rng.standard_normal((length, n))).T.astype(np.float32)


def kernelsynth(
    num_series: int, length: int, *, seed: int = 0, per_kernel: int = 4, max_kernels: int = 5, progress: bool = False
) -> np.ndarray:
    """``num_series`` synthetic series of ``length`` steps; float32 (num_series, length)."""
    if num_series < 1 or length < 2:
        raise ValueError(f"num_series must be >= 1 and length >= 2, got {num_series} and {length}")
    rng = np.random.default_rng(seed)
    out = np.empty((num_series, length), dtype=np.float32)
    steps = range(0, num_series, per_kernel)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="kernelsynth", unit="kernel")
    for i in steps:
        m = min(per_kernel, num_series - i)
        samples = sample_gp(random_kernel(rng, length, max_kernels), length, m, rng)
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        out[i : i + m] = samples
    return out
