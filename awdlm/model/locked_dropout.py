"""Locked (variational) dropout: one mask per sequence, shared by all time steps."""

from __future__ import annotations

from torch import Tensor, nn


class LockedDropout(nn.Module):
    """Drop the same features of each sequence at every time step.

    Input and output are time-major, ``(T, B, D)``. The mask has shape
    ``(1, B, D)``, is scaled by ``1 / (1 - p)`` and is drawn anew for every
    call in training mode.
    """

    def forward(self, x: Tensor, p: float) -> Tensor:
        if not self.training or p == 0:
            return x
        mask = x.new_empty((1, x.size(1), x.size(2))).bernoulli_(1 - p) / (1 - p)
        return x * mask  # (T, B, D) * (1, B, D)
