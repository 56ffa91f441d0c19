"""TensorBoard logging behind a small writer interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class MetricsWriter:
    """Write scalars and hyper-parameters as TensorBoard events into a run directory.

    Names are slash-grouped (``train/ppl``, ``val/loss``, ``optim/lr``) so
    TensorBoard shows one panel per group.
    """

    def __init__(self, log_dir: Path) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        # run_name="." keeps the hyper-parameters in the run's own directory
        # instead of a timestamped subfolder.
        self.writer.add_hparams(params, metrics, run_name=".")

    def close(self) -> None:
        self.writer.close()
