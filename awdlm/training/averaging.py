"""The non-monotonically triggered switch to weight averaging (NT-ASGD)."""

from __future__ import annotations

from typing import Any

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
        if self.averaged is not None:
            self.averaged.update_parameters(model)

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
