"""The non-monotonically triggered switch to weight averaging (NT-ASGD)."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel


class NonMonotoneAveraging:
    """Decide when to start averaging and keep the running average of the weights.

    After each validation, :meth:`observe` compares the loss with the best of
    all earlier losses except the last ``nonmono``; a worse loss starts the
    average. From then on :meth:`update` is called after every optimizer step,
    and :attr:`averaged` holds the mean of the weights over those steps in its
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
        trigger = (
            not self.active
            and len(self.history) > self.nonmono
            and val_loss > min(self.history[: len(self.history) - self.nonmono])
        )
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
