"""The continuous cache pointer of Grave, Joulin and Usunier (2017).

The cache stores, per column, the last ``window`` hidden states h_i of the
last LSTM layer, each with the word x_{i+1} that followed it. At step t the
cache distribution is

    p_cache(w) ∝ sum over cached i with x_{i+1} = w of exp(theta * h_t · h_i)

and the prediction is ``(1 - lambdah) * p_model + lambdah * p_cache``. The
cache contains only words that were already scored, so it never contains
the word being predicted at its own position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from awdlm.config import CacheConfig
from awdlm.evaluation.scoring import token_log_probs, windows
from awdlm.model.awd_lstm import AWDLSTM


class NeuralCache:
    """The cached hidden states and next words of each column, and the mixture with the model."""

    def __init__(self, window: int, theta: float, lambdah: float) -> None:
        self.window = window
        self.theta = theta
        self.lambdah = lambdah
        self.keys: Tensor | None = None  # (L, B, D) past hidden states, oldest first
        self.values: Tensor | None = None  # (L, B) the word that followed each of them

    def mix(self, hidden: Tensor, model_log_probs: Tensor, targets: Tensor) -> Tensor:
        """Return the mixture's log p(target) for one window, then add the window to the cache.

        ``hidden`` is (T, B, D), ``model_log_probs`` and ``targets`` are (T, B).
        """
        steps = hidden.size(0)
        past = 0 if self.keys is None else self.keys.size(0)
        keys = hidden if self.keys is None else torch.cat([self.keys, hidden])  # (L + T, B, D)
        values = targets if self.values is None else torch.cat([self.values, targets])  # (L + T, B)

        # Step t (row) may attend to key s (column) when s is one of the `window` states before it.
        query_index = past + torch.arange(steps, device=hidden.device).unsqueeze(1)  # (T, 1)
        key_index = torch.arange(past + steps, device=hidden.device).unsqueeze(0)  # (1, L + T)
        visible = (key_index < query_index) & (key_index >= query_index - self.window)  # (T, L + T)

        scores = self.theta * torch.einsum("tbd,sbd->bts", hidden.float(), keys.float())  # (B, T, L + T)
        scores = scores.masked_fill(~visible, -math.inf)
        log_attention = torch.log_softmax(scores, dim=-1)
        same_word = values.t().unsqueeze(1) == targets.t().unsqueeze(2)  # (B, T, L + T)
        log_cache = torch.logsumexp(log_attention.masked_fill(~same_word, -math.inf), dim=-1).t()  # (T, B)

        # In log space, lambdah = 0 leaves the model's log-probabilities bit for bit.
        mixed = torch.logaddexp(
            model_log_probs + math.log1p(-self.lambdah),
            log_cache + (math.log(self.lambdah) if self.lambdah > 0 else -math.inf),
        )
        # The very first step of a stream has an empty cache: the model alone predicts it.
        has_keys = visible.any(dim=1).unsqueeze(1)  # (T, 1)
        mixed = torch.where(has_keys, mixed, model_log_probs)

        self.keys = keys[-self.window :]
        self.values = values[-self.window :]
        return mixed


@torch.no_grad()
def score_with_cache(
    model: AWDLSTM, source: Tensor, bptt: int, cache: CacheConfig, limit: int | None = None
) -> Iterator[Tensor]:
    """Yield the (T, B) log-probabilities of each window under the model mixed with the cache pointer."""
    model.eval()
    hidden = model.init_hidden(source.size(1))
    pointer = NeuralCache(cache.window, cache.theta, cache.lambdah)
    for inputs, targets in windows(source, bptt, limit):
        output = model(inputs, hidden)
        hidden = output.hidden
        # In eval mode no dropout applies, so last_raw is the state the decoder reads.
        yield pointer.mix(output.last_raw, token_log_probs(output.logits, targets), targets)
