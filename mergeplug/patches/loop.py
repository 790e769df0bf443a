"""The merged block loop the explicit-forward families share (T5 encoder and decoder, Chronos-2, PatchTST).

A merged forward runs, for every block: the block's attention sublayer (which also gives the merge metric), the
layer's scheduled merge (:func:`mergeplug.merge.merge_layer`), then the rest of the block on the shorter sequence;
the input tokens may merge first (``input_ratio``, :func:`~mergeplug.patches.base.merge_inputs`). A family
subclasses :class:`MergedBlocks` with its attention sublayer, the rest of its block and what has to follow the
tokens when they change (attention masks, position biases, rotary positions); one instance serves one forward, so
nothing of it is shared between calls or threads. The helpers every family needs around the loop are here too:
:func:`short_input` (a forward that cannot merge runs the original code), :func:`protected_tokens` (what never
merges) and :meth:`MergedBlocks.unmerged` (every input position back after the last block).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..config import MergeConfig
from ..merge import MergeState, causal_unmerge, merge_layer, recent_mask, unmerge
from .base import PatchRecord, merge_inputs, refuse_user_hooks, report

__all__ = ["MergedBlocks", "short_input", "protected_tokens", "unmerged"]


def short_input(record: PatchRecord, num_layers: int, length: int | None) -> bool:
    """Does this forward run the original code? Yes when the settings merge nothing, or when ``length`` tokens are
    no more than the token floor (``min_tokens``); a short forward reports ``length`` tokens for every layer."""
    config = record.config
    if not config.is_noop(num_layers, length):
        return False
    if length is not None and not config.is_noop(num_layers):  # short: at most min_tokens tokens, nothing merges
        report(record, "token_counts", [length] * (num_layers + 1))
    return True


def protected_tokens(
    config: MergeConfig,
    n_b: int,
    n: int,
    device: torch.device | str,
    *,
    tail: int = 0,
    last: int = 0,
    first: int = 0,
    ids: tuple[torch.Tensor, Sequence[int]] | None = None,
) -> torch.Tensor:
    """(B, N) bool: the tokens that never merge.

    Args:
        config: the settings (``protect_recent``: that many tokens before the ``tail`` trailing ones).
        tail: trailing tokens after the most recent context token ([REG], EOS, future patches).
        last: trailing tokens that never merge themselves (read-out tokens).
        first: leading tokens that never merge (a CLS token).
        ids: ``(input_ids (B, N), token ids)``: tokens with these ids never merge (EOS).
    """
    prot = torch.zeros(n_b, n, dtype=torch.bool, device=device)
    if ids is not None:  # comparisons with host numbers: no tensor of ids copied to the device
        input_ids, tokens = ids
        for token in tokens:
            prot |= input_ids == token
    if last > 0:
        prot[:, -last:] = True
    if first > 0:
        prot[:, :first] = True
    recent = config.protect_recent
    return prot | recent_mask(n_b, n, recent, tail=tail, device=device) if recent else prot


class MergedBlocks:
    """One merged forward through a stack of blocks (subclass it per family).

    Args:
        record: the patch record (the merge-key hooks, where the token counts are reported).
        config: the settings of this stack (the decoder's for a decoder).
        state: the merge state of the input tokens (masks, protection, positions set by the family).
        groups: (B,) group label of every row: rows of a group share their merge decisions (Chronos-2).
        counts_as: the name the token counts are reported under (``"token_counts"``; decoders
            ``"decoder_token_counts"``).

    Attributes:
        merged: tokens have merged in this forward (the masks and positions are no longer the original ones).
        dtype: the dtype of the tokens (set by :meth:`run`, for the masks and biases).
    """

    def __init__(
        self,
        record: PatchRecord,
        config: MergeConfig,
        state: MergeState,
        *,
        groups: torch.Tensor | None = None,
        counts_as: str = "token_counts",
    ) -> None:
        self.record, self.config, self.state, self.groups = record, config, state, groups
        self.counts_as = counts_as
        self.merged = False
        self.dtype = torch.float32

    # ------------------------------------------------------------------------------------- filled by a family

    def attention(self, i: int, block: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
        """Block ``i``'s attention sublayer on (B, T, C) tokens: (its output, the merge metric (B, T, D) or a function
        giving it)."""
        raise NotImplementedError

    def rest(self, i: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The rest of block ``i`` (after the merge) on (B, T', C) tokens."""
        raise NotImplementedError

    def tokens_changed(self) -> None:
        """Called once before the first block and after every merge that removed tokens: rebuild what follows the
        tokens (masks, biases, positions; :attr:`merged` tells whether they are still the original ones)."""

    # ----------------------------------------------------------------------------------------------- the loop

    def run(
        self, blocks: Sequence[nn.Module], h: torch.Tensor, input_metric: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Merge the input tokens (``input_ratio``, chosen on ``input_metric``, default ``h``), then run every block
        with its scheduled merge; reports the token counts (entering block 0, then leaving every block).

        Args:
            blocks: the blocks, in order.
            h: (B, N, C) input tokens (after the stack's embedding and dropout).

        Returns:
            (B, T', C) tokens leaving the last block (merged; see :meth:`unmerged`).
        """
        refuse_user_hooks(self.record, in_forward=True)  # hooks added after apply would silently not fire
        state, config = self.state, self.config
        self.dtype = h.dtype
        h, self.merged = merge_inputs(h, state, config, metric=input_metric, groups=self.groups)
        counts = [state.length]  # tokens entering block 0
        self.tokens_changed()
        for i, block in enumerate(blocks):
            h, metric = self.attention(i, block, h)
            before = state.length
            h = merge_layer(h, state, config, i, metric=metric, groups=self.groups)
            if state.length < before:
                self.merged = True
                self.tokens_changed()
            counts.append(state.length)  # tokens leaving block i
            h = self.rest(i, block, h)
        report(self.record, self.counts_as, counts)
        return h

    def unmerged(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T', C) -> (B, N, C): every input position gets its merged token (the latest one at or before it in a
        causal stack)."""
        return unmerged(h, self.state)


def unmerged(h: torch.Tensor, state: MergeState) -> torch.Tensor:
    """(B, T', C) -> (B, N, C): every input position gets its merged token (in a causal ``state`` the latest one at or
    before it, :func:`~mergeplug.merge.causal_unmerge`; else :func:`~mergeplug.merge.unmerge`)."""
    return causal_unmerge(h, state) if state.causal else unmerge(h, state)
