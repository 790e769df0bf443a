"""A compact encoder-only Transformer for multivariate time series, with the sparse-binary-transformer shortcuts.

Structure (one model for three tasks): input projection ``Linear(C, d) · sqrt(d)`` → fixed sinusoidal positions →
``n_layers`` post-norm encoder layers (multi-head self-attention with separate ``q``/``k``/``v``/``o`` linear
layers, ReLU feed-forward) → ReLU → task head. Every projection is an ``nn.Linear``, so
:func:`mergeplug.binarize` turns the dense model into the sparse-binary variant of the same structure.

Tasks:

* ``"classification"``: a per-step head, averaged over the real (unpadded) steps → class logits (B, n_classes).
  Variable-length series come padded with a mask (B, T) (True = real step); padded keys are never attended.
  Optional **fixed Q/K/V activation mask** (``qkv_keep`` < 1): a random, fixed subset of the (position, channel)
  activations of Q, K and V is zeroed (the same mask for the three, drawn once from ``qkv_seed``).
* ``"reconstruction"`` (anomaly detection) and ``"forecast"`` (single step): the last step of the window
  (B, T, C) is zeroed in the input and reconstructed from the other steps → (B, C). Hiding it matters for
  anomaly detection: a model that sees the current step can learn to copy it and reconstruct anomalies too.
  The two tasks differ in data and use (anomaly scores = reconstruction error on clean training data).

Attention modes (``attention``):

* ``"full"``: every step attends to every real step.
* ``"step-t"``: a past step attends only to itself and the current (last) step attends to all steps. A past
  step's attention output is then its own value vector, so only *one* attention row is computed (the last
  step's query against all keys): queries are projected for the last step only, and the last layer runs its
  output projection and feed-forward for the last step only (the head reads nothing else). The saving is real
  in wall-clock time, not only in a FLOP formula. :meth:`CompactTransformer.forward` with ``reference=True``
  computes the same result the slow way (full score matrix under a step-t mask) for tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SBTConfig", "CompactTransformer", "TASKS"]

TASKS = ("classification", "reconstruction", "forecast")


@dataclass
class SBTConfig:
    """Settings of :class:`CompactTransformer`.

    Args:
        n_channels: input variables C.
        task: ``"classification"``, ``"reconstruction"`` or ``"forecast"``.
        n_classes: number of classes (classification only).
        d_model / n_heads / n_layers / d_ff: widths and depth (the reference work: 2 layers, 2 heads, d_ff 256).
        max_len: longest window (positions table and the fixed Q/K/V mask are built for it).
        attention: ``"full"`` or ``"step-t"`` (reconstruction / forecast only).
        qkv_keep: fraction of Q/K/V activations kept by the fixed mask (1.0 = no mask).
        qkv_seed: seed of the fixed mask.
        dropout: dropout in attention outputs and feed-forward (0 in the reference work).
        bias: linear layers with biases. The sparse-binary variant drops them: its weights are frozen random
            signs, and frozen random biases would only add stored bytes.
    """

    n_channels: int
    task: str = "classification"
    n_classes: int | None = None
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    d_ff: int = 256
    max_len: int = 512
    attention: Literal["full", "step-t"] = "full"
    qkv_keep: float = 1.0
    qkv_seed: int = 0
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if self.task == "classification" and (self.n_classes is None or self.n_classes < 2):
            raise ValueError("classification needs n_classes >= 2")
        if self.attention not in ("full", "step-t"):
            raise ValueError(f"attention must be 'full' or 'step-t', got {self.attention!r}")
        if self.attention == "step-t" and self.task == "classification":
            raise ValueError("step-t attention reads out the last step only: use it for reconstruction / forecast")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 < self.qkv_keep <= 1.0:
            raise ValueError(f"qkv_keep is the kept fraction of Q/K/V activations, in (0, 1]; got {self.qkv_keep}")
        if self.n_channels < 1 or self.n_layers < 1:
            raise ValueError("n_channels and n_layers must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sinusoids(n: int, d: int) -> torch.Tensor:
    """(n, d) fixed sinusoidal position table."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe


class Attention(nn.Module):
    """Multi-head self-attention with separate projections (each an ``nn.Linear``, so they can be binarized)."""

    def __init__(self, d: int, heads: int, dropout: float, bias: bool = True) -> None:
        super().__init__()
        self.heads, self.d_head = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=bias) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, dh)
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_head).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, T, dh) -> (B, T, d)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

    def full(self, x: torch.Tensor, key_mask: torch.Tensor | None, act_mask: torch.Tensor | None,
             attn_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Attention of every step. x: (B, T, d); key_mask: (B, T) True = real; act_mask: (T, d) 0/1 or None;
        attn_mask: (T, T) bool, True = may attend (None: all). Returns (B, T, d) before the output projection."""
        q, k, v = self.q(x), self.k(x), self.v(x)
        if act_mask is not None:
            q, k, v = q * act_mask, k * act_mask, v * act_mask
        q, k, v = self._split(q), self._split(k), self._split(v)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, H, T, T)
        if key_mask is not None:
            s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        if attn_mask is not None:
            s = s.masked_fill(~attn_mask, float("-inf"))
        return self._merge(self.drop(s.softmax(-1)) @ v)

    def step_t(self, x: torch.Tensor, act_mask: torch.Tensor | None) -> torch.Tensor:
        """Step-t attention computing one attention row. x: (B, T, d) -> (B, T, d) before the output projection:
        past steps get their own value vector, the last step attends to all steps."""
        k, v = self.k(x), self.v(x)
        q = self.q(x[:, -1:])  # the only query needed
        if act_mask is not None:
            k, v, q = k * act_mask, v * act_mask, q * act_mask[-1:]
        qh, kh, vh = self._split(q), self._split(k), self._split(v)
        s = qh @ kh.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, H, 1, T)
        last = self._merge(self.drop(s.softmax(-1)) @ vh)  # (B, 1, d)
        return torch.cat([v[:, :-1], last], dim=1)


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: x = LN(x + O(attn(x))); x = LN(x + FF(x))."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, bias: bool = True) -> None:
        super().__init__()
        self.attn = Attention(d, heads, dropout, bias)
        self.ff1, self.ff2 = nn.Linear(d, d_ff, bias=bias), nn.Linear(d_ff, d, bias=bias)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(x + self.drop(self.ff2(F.relu(self.ff1(x)))))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, act_mask: torch.Tensor | None,
                mode: str, last_only: bool = False) -> torch.Tensor:  # fmt: skip
        """x: (B, T, d) -> (B, T, d), or (B, 1, d) with ``last_only`` (step-t: the last step alone)."""
        if mode == "step-t":
            a = self.attn.step_t(x, act_mask)
            if last_only:  # the head reads the last step only: skip O and the FFN for the others
                return self.ffn(self.norm1(x[:, -1:] + self.drop(self.attn.o(a[:, -1:]))))
        elif mode == "step-t-reference":
            t = x.shape[1]
            allowed = torch.eye(t, dtype=torch.bool, device=x.device)
            allowed[-1] = True
            a = self.attn.full(x, key_mask, act_mask, attn_mask=allowed)
        else:
            a = self.attn.full(x, key_mask, act_mask)
        return self.ffn(self.norm1(x + self.drop(self.attn.o(a))))


class CompactTransformer(nn.Module):
    """Encoder-only Transformer for multivariate series (see the module docstring)."""

    def __init__(self, config: SBTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Linear(c.n_channels, c.d_model, bias=c.bias)
        self.register_buffer("pos", _sinusoids(c.max_len, c.d_model), persistent=False)
        if c.qkv_keep < 1.0:
            g = torch.Generator().manual_seed(c.qkv_seed)
            keep = (torch.rand(c.max_len, c.d_model, generator=g) < c.qkv_keep).float()
            self.register_buffer("qkv_mask", keep, persistent=False)  # rebuilt from qkv_seed: nothing to store
        else:
            self.qkv_mask = None
        self.layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, c.bias) for _ in range(c.n_layers)
        )
        out = c.n_classes if c.task == "classification" else c.n_channels
        self.head = nn.Linear(c.d_model, out, bias=c.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, reference: bool = False) -> torch.Tensor:
        """Run the model.

        Args:
            x: (B, T, C) input window (classification: padded series; otherwise the last step is ignored and
                predicted).
            mask: (B, T) bool, True = real step (classification with variable lengths); None = all real.
            reference: step-t only: compute the full score matrix under the step-t mask (slow; for tests).

        Returns:
            (B, n_classes) logits for classification, else (B, C): the reconstructed / forecast last step.
        """
        c = self.config
        n_b, t, ch = x.shape
        if ch != c.n_channels:
            raise ValueError(f"expected {c.n_channels} channels, got {ch}: input shape (B, T, C) = {tuple(x.shape)}")
        if t > c.max_len:
            raise ValueError(f"window of {t} steps exceeds max_len={c.max_len}: build the model with a larger max_len")
        if torch.isnan(x).any():
            raise ValueError("input contains NaN: fill or mask missing values before the model")
        if c.task != "classification":  # the current step is what the model must produce
            x = torch.cat([x[:, :-1], torch.zeros_like(x[:, -1:])], dim=1)
        h = self.embed(x) * math.sqrt(c.d_model) + self.pos[:t]
        act = None if self.qkv_mask is None else self.qkv_mask[:t]
        mode = c.attention if not (reference and c.attention == "step-t") else "step-t-reference"
        for i, layer in enumerate(self.layers):
            last = mode == "step-t" and i == len(self.layers) - 1
            h = layer(h, mask if c.task == "classification" else None, act, mode, last_only=last)
        h = F.relu(h)
        if c.task == "classification":
            logits = self.head(h)  # (B, T, K): a prediction per step, averaged over the real steps
            if mask is None:
                return logits.mean(1)
            w = mask.to(logits.dtype)[..., None]
            return (logits * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.head(h[:, -1])
