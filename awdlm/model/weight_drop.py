"""Weight dropping (DropConnect) on the hidden-to-hidden weights of an LSTM."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call


class WeightDropLSTM(nn.Module):
    """A single-layer ``nn.LSTM`` whose ``weight_hh_l0`` is dropped in training.

    Each training forward draws one fresh DropConnect mask over the recurrent
    weight and runs the stock LSTM with the dropped weight passed through
    :func:`torch.func.functional_call`. The parameter itself is never
    replaced, so the module keeps the standard ``state_dict`` keys
    (``lstm.weight_hh_l0`` ...), the fused LSTM kernels, gradients that reach
    the raw weight, and works with ``copy.deepcopy``, ``.to(dtype)`` and
    :class:`torch.optim.swa_utils.AveragedModel`. In eval mode the full weight
    is used.
    """

    def __init__(self, input_size: int, hidden_size: int, wdrop: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.wdrop = wdrop

    def forward(
        self, x: Tensor, hidden: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # x: (T, B, input_size); hidden: two (1, B, hidden_size) tensors.
        if not self.training or self.wdrop == 0:
            return self.lstm(x, hidden)
        dropped = F.dropout(self.lstm.weight_hh_l0, p=self.wdrop, training=True)
        return functional_call(self.lstm, {"weight_hh_l0": dropped}, (x, hidden))

    def extra_repr(self) -> str:
        return f"wdrop={self.wdrop}"
