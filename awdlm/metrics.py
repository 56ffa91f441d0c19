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

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        # purge_step: TensorBoard drops the events at or after this step that
        # earlier writers left in log_dir, so a resumed run repeats no step.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int | None = None) -> None:
        """Write the hyper-parameters, and the final metrics as scalars at ``step``."""
        # run_name="." keeps the hyper-parameters in the run's own directory
        # instead of a timestamped subfolder.
        self.writer.add_hparams(params, metrics, run_name=".", global_step=step)

    def close(self) -> None:
        self.writer.close()
