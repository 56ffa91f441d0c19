"""The non-monotonically triggered switch to weight averaging (NT-ASGD)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def stalled(history: list[float], val_loss: float, nonmono: int) -> bool:
    """Return True when ``val_loss`` is worse than the best of ``history`` except its last ``nonmono``."""
    return len(history) > nonmono and val_loss > min(history[: len(history) - nonmono])


class NonMonotoneAveraging:
    """Decide when to start averaging and keep the running average of the weights.

    After each validation, :meth:`observe` compares the loss with the best of
    all earlier losses except the last ``nonmono``; a worse loss starts the
    average. From then on :meth:`update` is called after every optimizer step,
    and :attr:`averaged` contains the mean of the weights over those steps in its
    own copy of the model, so training continues on the untouched raw weights.
    """

    def __init__(self, nonmono: int) -> None:
        self.nonmono = nonmono
        self.history: list[float] = []
        self.averaged: AveragedModel | None = None

    @property
    def active(self) -> bool:
        return self.averaged is not None

    def observe(self, val_loss: float) -> bool:
        """Record a validation loss; return True when it should trigger averaging."""
        trigger = not self.active and stalled(self.history, val_loss, self.nonmono)
        self.history.append(val_loss)
        return trigger

    def start(self, model: nn.Module) -> None:
        # AveragedModel copies the model; its first update takes the weights as they are.
        self.averaged = AveragedModel(model)

    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the running mean.

        This is the mean that ``AveragedModel.update_parameters`` keeps. That
        method copies the step count ``n_averaged``, a CPU tensor, to the GPU
        on every step, and the copy waits for the GPU's queued work. Here the
        count is read on the CPU, so nothing waits.
        """
        if self.averaged is None:
            return
        count = int(self.averaged.n_averaged)
        with torch.no_grad():
            for averaged, current in zip(self.averaged.module.parameters(), model.parameters(), strict=True):
                if count == 0:
                    averaged.copy_(current)
                else:
                    averaged.lerp_(current, 1 / (count + 1))
        self.averaged.n_averaged += 1

    def eval_model(self, model: nn.Module) -> nn.Module:
        """Return the model whose weights evaluation and checkpoints use."""
        return self.averaged.module if self.averaged is not None else model

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore the history and, when averaging had started, the running average of ``model``."""
        self.history = list(state["history"])
        self.averaged = None
        if state["averaged"] is not None:
            self.start(model)
            self.averaged.load_state_dict(state["averaged"])
