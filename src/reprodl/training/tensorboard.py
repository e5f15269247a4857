"""Scalars for TensorBoard while training (the ``tensorboard`` extra), where users already look.

:class:`TensorBoardLogger` writes each epoch's metrics (``train_loss``, ``valid_loss``,
``valid_accuracy``, ``learning_rate``) with ``torch.utils.tensorboard.SummaryWriter``, step =
epoch. It is the ``on_epoch`` callback of the built-in trainer (``reprodl train --tensorboard
DIR``) and what ``start_run(..., tensorboard=DIR)`` writes ``run.log`` through. It records
nothing in the provenance: the record already holds every metric.

Example:
    >>> with TensorBoardLogger("runs/digits-cnn") as tb:          # doctest: +SKIP
    ...     train_model_with_metadata_capture(..., on_epoch=tb)
"""

from __future__ import annotations

import math
import os
from typing import Any

from reprodl.errors import MissingDependencyError
from reprodl.provenance import EpochMetrics

_EPOCH_SCALARS = ("train_loss", "valid_loss", "valid_accuracy", "learning_rate")


class TensorBoardLogger:
    """Writes scalars into the TensorBoard log directory ``log_dir`` (created if needed)."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingDependencyError(
                "logging to TensorBoard needs the tensorboard package: install it with "
                "`pip install 'reprodl[tensorboard]'`"
            ) from None
        self.log_dir = str(log_dir)
        self._writer = SummaryWriter(log_dir=self.log_dir)

    def __call__(self, metrics: EpochMetrics) -> None:
        """Log one epoch's metrics (the built-in trainer's ``on_epoch``)."""
        self.log(metrics.epoch, {name: getattr(metrics, name) for name in _EPOCH_SCALARS})

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Log each finite number of ``values`` at ``step``; other values are skipped."""
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(name, float(value), global_step=int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
