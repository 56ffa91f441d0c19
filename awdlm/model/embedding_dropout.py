"""Embedding dropout: drop whole word types from the embedding matrix.

A Bernoulli(1 - p) mask of shape (V, 1) is drawn once per training forward and
scaled by 1 / (1 - p). A dropped word's vector is then zero at every position
of the batch, and a kept word's vector is scaled up.

Two strategies give the same numbers:

* ``dense`` expands the mask over the (V, D) weight, multiplies it in, and
  embeds the batch from the masked weight. This is the reference semantics.
* ``gather`` draws the same mask with the same random-number calls but never
  builds a (V, D) tensor except the weight's own gradient. Its outputs and
  gradients are bit-identical to ``dense``.

Why a plain "embed, then multiply by the gathered mask" is not enough: for a
word that occurs k times in the batch, dense computes ``(g_1 + ... + g_k) * s``
while the plain gather computes ``g_1 * s + ... + g_k * s``. Floating-point
rounding makes these differ in the last bits, and the difference grows over
training. :class:`_ScaledEmbedding` therefore runs the stock embedding backward
(which sums a word's occurrences) and scales the summed rows afterwards, the
order that dense uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

STRATEGIES = ("dense", "gather", "naive")


def draw_row_scale(weight: Tensor, p: float) -> Tensor:
    """Draw the (V, 1) row mask of embedding dropout, scaled by 1 / (1 - p).

    Every strategy calls this, so all of them consume the same random numbers.
    """
    mask = weight.new_empty((weight.size(0), 1)).bernoulli_(1 - p)
    return mask / (1 - p)


class _ScaledEmbedding(torch.autograd.Function):
    """Look up ``weight[words] * scale[words]`` with dense-identical gradients."""

    @staticmethod
    def forward(ctx, weight: Tensor, scale: Tensor, words: Tensor) -> Tensor:
        ctx.save_for_backward(scale, words)
        ctx.num_weights = weight.size(0)
        # (T, B, D) * (T, B, 1): the same products that (weight * scale)[words] holds.
        return F.embedding(words, weight) * F.embedding(words, scale)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        scale, words = ctx.saved_tensors
        # The kernel that autograd runs for F.embedding: it sums the occurrences
        # of each word into a (V, D) gradient, in the same order as dense.
        # padding_idx=-1 means "no padding row" at this level.
        grad_weight = torch.ops.aten.embedding_backward(
            grad_output, words, ctx.num_weights, -1, False, False
        )
        grad_weight.mul_(scale)  # (V, D) * (V, 1), in place: no second (V, D) tensor
        return grad_weight, None, None


def embedding_dropout(
    words: Tensor,
    weight: Tensor,
    p: float,
    strategy: str = "dense",
    training: bool = True,
) -> Tensor:
    """Embed ``words`` (any shape of word ids) with embedding dropout.

    Returns a tensor of shape ``words.shape + (D,)``. Outside training, or with
    ``p == 0``, it is a plain lookup and draws no random numbers.
    ``strategy="naive"`` is the drifting variant, kept for benchmarks only.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"invalid embedding dropout strategy {strategy!r}: expected one of "
            f"{', '.join(STRATEGIES)} (override with embed_dropout=dense or embed_dropout=gather)"
        )
    if not training or p == 0:
        return F.embedding(words, weight)

    scale = draw_row_scale(weight, p)  # (V, 1)
    if strategy == "dense":
        return F.embedding(words, weight * scale)  # builds the (V, D) masked weight
    if strategy == "gather":
        return _ScaledEmbedding.apply(weight, scale, words)
    return F.embedding(words, weight) * F.embedding(words, scale)
