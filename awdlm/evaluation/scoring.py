"""Plain scoring of a batchified stream: per-token log-probabilities and their mean."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from awdlm.data import get_batch
from awdlm.model.awd_lstm import AWDLSTM


def token_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """Return log p(target) for each position: logits (T, B, V), targets (T, B) -> (T, B)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (T, B, V)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def windows(source: Tensor, bptt: int, limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the fixed-length (inputs, targets) windows that evaluation reads, both (T, B)."""
    for window, i in enumerate(range(0, source.size(0) - 1, bptt)):
        if limit is not None and window >= limit:
            return
        yield get_batch(source, i, bptt)


@torch.no_grad()
def score_stream(model: AWDLSTM, source: Tensor, bptt: int, limit: int | None = None) -> Iterator[Tensor]:
    """Yield the (T, B) target log-probabilities of each window, hidden state carried across windows.

    ``source`` is batchified, ``(N, B)``. The model is put in eval mode.
    """
    model.eval()
    hidden = model.init_hidden(source.size(1))
    for inputs, targets in windows(source, bptt, limit):
        output = model(inputs, hidden)
        hidden = output.hidden
        yield token_log_probs(output.logits, targets)


def mean_loss(window_log_probs: Iterator[Tensor]) -> tuple[float, int]:
    """Return the mean negative log-probability (nats per token) and the number of tokens."""
    total = None
    tokens = 0
    for log_probs in window_log_probs:
        window_total = log_probs.sum(dtype=torch.float64)
        total = window_total if total is None else total + window_total
        tokens += log_probs.numel()
    if total is None:
        return math.nan, 0
    return -total.item() / tokens, tokens


def evaluate(model: AWDLSTM, source: Tensor, bptt: int, limit: int | None = None) -> tuple[float, int]:
    """Return the mean cross-entropy per token (nats) over ``source`` and the tokens scored."""
    return mean_loss(score_stream(model, source, bptt, limit))


def perplexity(loss: float) -> float:
    """exp(loss), saturating at inf instead of raising on overflow."""
    return math.exp(loss) if loss < 700 else math.inf


def bits_per_character(loss: float) -> float:
    """Convert a loss in nats per character to bits per character."""
    return loss / math.log(2)
