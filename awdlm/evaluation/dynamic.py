"""Dynamic evaluation (Krause, Kahembwe, Murray and Renals, 2018).

The evaluation stream is read in segments of ``bptt`` tokens. Each segment is
scored first. Then the gradient of its loss adapts the weights that score the
next segment, so a token never influences its own score or an earlier one.

Two update rules, both pulling the weights back toward the trained ones
(theta_0) at rate ``decay``:

* sgd: ``theta -= lr * g`` then ``theta += decay * (theta_0 - theta)``.
* rms: ``theta -= lr * g / (rms + epsilon)`` then
  ``theta += decay * s * (theta_0 - theta)``, where ``rms`` is the root mean
  square of the training-set gradients per weight and ``s = rms / mean(rms)``
  (capped at ``1 / decay``), so weights whose gradients are usually large
  return faster.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from awdlm.config import DynamicConfig
from awdlm.evaluation.scoring import token_log_probs, windows
from awdlm.model.awd_lstm import AWDLSTM, detach_hidden


def gradient_rms(model: AWDLSTM, train_data: Tensor, bptt: int, batches: int) -> list[Tensor]:
    """Return the root mean square of each parameter's gradient over ``batches`` training windows.

    The model runs in eval mode, as it does while adapting.
    """
    parameters = list(model.parameters())
    squares = [torch.zeros_like(p) for p in parameters]
    hidden = model.init_hidden(train_data.size(1))
    count = 0
    for inputs, targets in windows(train_data, bptt, batches):
        hidden = detach_hidden(hidden)
        output = model(inputs, hidden)
        hidden = output.hidden
        loss = F.cross_entropy(output.logits.view(-1, model.ntoken), targets.reshape(-1))
        for square, grad in zip(squares, torch.autograd.grad(loss, parameters)):
            square += grad.pow(2)
        count += 1
    return [(square / max(count, 1)).sqrt() for square in squares]


class DynamicEvaluator:
    """Score a stream while adapting ``model`` in place; call :meth:`reset` to restore the trained weights."""

    def __init__(self, model: AWDLSTM, config: DynamicConfig, train_data: Tensor | None = None) -> None:
        if config.rule == "rms" and train_data is None:
            raise ValueError("dynamic.rule=rms needs training data to measure the gradient RMS")
        self.model = model
        self.config = config
        self.parameters = list(model.parameters())
        self.trained = [p.detach().clone() for p in self.parameters]
        self.rms: list[Tensor] | None = None
        self.decay_scale: list[Tensor] | None = None
        if config.rule == "rms":
            model.eval()
            with torch.backends.cudnn.flags(enabled=False):
                self.rms = gradient_rms(model, train_data, config.bptt, config.stat_batches)
            mean_rms = torch.stack([r.mean() for r in self.rms]).mean()
            cap = 1 / config.decay if config.decay > 0 else float("inf")
            self.decay_scale = [(r / mean_rms).clamp(max=cap) for r in self.rms]

    def reset(self) -> None:
        with torch.no_grad():
            for parameter, trained in zip(self.parameters, self.trained):
                parameter.copy_(trained)

    def score(self, source: Tensor, limit: int | None = None) -> Iterator[Tensor]:
        """Yield the (T, B) log-probabilities of each segment, scored before the model adapts to it."""
        model, config = self.model, self.config
        # No dropout while adapting; cuDNN's RNN backward only runs in training mode, so cuDNN is off.
        model.eval()
        hidden = model.init_hidden(source.size(1))
        with torch.backends.cudnn.flags(enabled=False):
            for inputs, targets in windows(source, config.bptt, limit):
                output = model(inputs, detach_hidden(hidden))
                hidden = output.hidden
                log_probs = token_log_probs(output.logits, targets)  # (T, B)
                yield log_probs.detach()
                self.adapt(torch.autograd.grad(-log_probs.mean(), self.parameters))

    @torch.no_grad()
    def adapt(self, grads: tuple[Tensor, ...]) -> None:
        config = self.config
        for index, (parameter, grad, trained) in enumerate(zip(self.parameters, grads, self.trained)):
            if self.rms is None:
                parameter -= config.lr * grad
                parameter += config.decay * (trained - parameter)
            else:
                parameter -= config.lr * grad / (self.rms[index] + config.epsilon)
                parameter += config.decay * self.decay_scale[index] * (trained - parameter)
