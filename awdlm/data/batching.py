"""Batch columns and BPTT windows.

The token stream is cut into ``B`` contiguous columns; the tail that does not
fill a whole row is dropped. For the stream a b c ... x and ``B = 4``::

    a g m s
    b h n t     batchify -> (N // B, B), time-major
    c i o u
    d j p v     get_batch(source, i=1, seq_len=2) -> input  rows 1-2: b h n t / c i o u
    e k q w                                          target rows 2-3: c i o u / d j p v
    f l r x

Each column is read top to bottom across batches, so the hidden state carried
from one window to the next continues the same text.
"""

from __future__ import annotations


import torch
from torch import Tensor


def batchify(data: Tensor, batch_size: int) -> Tensor:
    """Reshape a 1-D token stream into ``(N // batch_size, batch_size)`` columns."""
    rows = data.size(0) // batch_size
    if rows < 2:
        raise ValueError(
            f"a stream of {data.size(0)} tokens is too short for batch size {batch_size}: "
            f"each column needs at least 2 tokens"
        )
    return data[: rows * batch_size].view(batch_size, rows).t().contiguous()


def get_batch(source: Tensor, i: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """Return the window of rows ``i .. i+seq_len-1`` and its targets, one row later.

    The window is shortened at the end of ``source``. Both tensors are (T, B).
    """
    seq_len = min(seq_len, source.size(0) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]


class BPTTSampler:
    """Variable-length BPTT: base ``bptt`` w.p. 0.95 else ``bptt / 2``, length ~ N(base, 5), at least 5.

    Draws come from its own generator, so the sequence of lengths depends only
    on the seed, and its state can be saved and restored.
    """

    def __init__(self, bptt: int, seed: int) -> None:
        self.bptt = bptt
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> int:
        base = self.bptt if torch.rand((), generator=self.generator).item() < 0.95 else self.bptt / 2
        length = base + 5 * torch.randn((), generator=self.generator).item()
        return max(5, int(length))

