"""The built-in trainer's evaluation: a model's mean loss and accuracy on a dataset (sharded over the ranks
under torchrun, the sums all-reduced) and the metrics a record's ``results.final`` holds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from reprodl.data.datasets import WrappedDataSet, collate
from reprodl.training.distributed import Group, all_reduce_sum

VALIDATION_SHARDED = "sharded over the ranks (every world_size-th sample), sums all-reduced: the whole set's metrics"


def evaluate_loss_accuracy(
    model: torch.nn.Module,
    ds: WrappedDataSet,
    loss_fn: Any,
    device: torch.device,
    batch_size: int = 256,
    *,
    group: Group | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``ds`` (the model's train/eval mode is restored).

    In a process ``group`` each rank evaluates every ``world_size``-th sample (from its rank on)
    and the sums are all-reduced: every rank gets the metrics of the whole of ``ds``.
    """
    n = max(len(ds), 1)
    if group is None:
        loss_sum, correct = _loss_correct_sums(model, ds, loss_fn, device, batch_size)
        return float(loss_sum) / n, float(correct) / n
    shard = torch.utils.data.Subset(ds, range(group.rank, len(ds), group.world_size))
    loss_sum, correct = _loss_correct_sums(model, shard, loss_fn, device, batch_size)
    sums = all_reduce_sum(torch.stack([loss_sum.cpu(), correct.cpu().double()]))
    return float(sums[0]) / n, float(sums[1]) / n


@torch.no_grad()
def _loss_correct_sums(
    model: torch.nn.Module, ds: Any, loss_fn: Any, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the losses, number of correct predictions) of ``model`` on ``ds``, on the device."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += loss_fn(out, y).detach().double() * len(y)
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    return loss_sum, correct


def final_metric_names(validated: bool) -> tuple[str, ...]:
    """The metrics in a record's ``results.final``: with validation data, its loss and accuracy too."""
    return ("train_loss", "valid_loss", "valid_accuracy") if validated else ("train_loss",)
