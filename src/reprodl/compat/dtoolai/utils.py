"""dtoolAI's utilities: ``image_dataset_from_dirtree``, ``train``, ``evaluate_model``, provenance, README helpers.

``train`` and ``evaluate_model`` are dtoolAI's plain loops (no capture: use
:func:`reprodl.compat.dtoolai.training.train_model_with_metadata_capture` for a recorded model);
their progress goes to the ``reprodl.compat.dtoolai`` logger instead of stdout.
The ``dtoolai-provenance`` command (dtoolAI's ``print_provenance``) is installed with reprodl;
:func:`provenance_lines` gives what it prints.
"""

from __future__ import annotations

import logging
import os
import pprint
import time
from collections import defaultdict
from typing import Any

import torch

from reprodl.data.creators import create_from_dirtree
from reprodl.store import open_dataset

__all__ = [
    "evaluate_model",
    "image_dataset_from_dirtree",
    "nested_dict_as_string",
    "provenance_lines",
    "readme_dict_from_source_dataset",
    "train",
]

log = logging.getLogger("reprodl.compat.dtoolai")


def image_dataset_from_dirtree(dirtree_dirpath: str | os.PathLike[str], output_base_uri: str, output_name: str) -> str:
    """Create an ImageDataSet from ``dirtree/<category>/<image>`` (reprodl's creator: every image
    checked first); returns its URI."""
    where = os.path.abspath(dirtree_dirpath)
    readme = {"description": f"Created from directory {where} by dtoolAI's image_dataset_from_dirtree"}
    return create_from_dirtree(dirtree_dirpath, os.fspath(output_base_uri), output_name, readme=readme)


def provenance_lines(model_uri: str) -> list[str]:
    """What ``dtoolai-provenance MODEL_URI`` prints (architecture name, training parameters, source
    dataset URI, name and README), as lines; the command itself is installed with reprodl."""

    from reprodl.compat.dtoolai.trained import TrainedTorchModel

    ttm = TrainedTorchModel(model_uri)
    lines = [
        f"Network architecture name: {ttm.model_name}",
        f"Model training parameters: {pprint.pformat(ttm.model_params)}",
    ]
    source_uri = ttm.provenance.data_by_role("train")[0].uri
    lines.append(f"Source dataset URI: {source_uri}")
    source = open_dataset(source_uri)
    lines += [f"Source dataset name: {source.name}", f"Source dataset readme:\n{source.get_readme_content()}"]
    return lines


def evaluate_model(model: torch.nn.Module, dl_eval: Any) -> int:
    """The number of samples of ``dl_eval`` that ``model`` classifies correctly."""
    model.eval()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.to(device)
    correct = 0
    with torch.no_grad():
        for data, label in dl_eval:
            data, label = torch.as_tensor(data).to(device), torch.as_tensor(label).to(device)
            pred = model(data).argmax(dim=1, keepdim=True)
            correct += pred.eq(label.view_as(pred)).sum().item()
    return int(correct)


def train(
    model: torch.nn.Module, dl: Any, optimiser: Any, loss_fn: Any, n_epochs: int, dl_eval: Any = None
) -> dict[str, list[float]]:
    """Train for ``n_epochs``; the history: ``epoch_loss`` (summed batch losses), ``valid_loss`` with ``dl_eval``."""
    history: dict[str, list[float]] = defaultdict(list)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.to(device)
    for epoch in range(n_epochs):
        epoch_loss, t_start = 0.0, time.time()
        model.train()
        for n, (data, label) in enumerate(dl):
            data, label = data.to(device), label.to(device)
            optimiser.zero_grad()
            loss = loss_fn(model(data), label)
            loss.backward()
            epoch_loss += loss.item()
            optimiser.step()
            if n % 10 == 0:
                log.info("  Epoch %d, batch %d/%d, running loss %s", epoch, n, len(dl), epoch_loss)
        history["epoch_loss"].append(epoch_loss)
        log.info("Epoch %d, training loss %s, time %s", epoch, epoch_loss, time.time() - t_start)
        if dl_eval:
            history["valid_loss"].append(_loss(model, dl_eval, loss_fn, device))
    return history


def _loss(model: torch.nn.Module, dl: Any, loss_fn: Any, device: torch.device) -> float:
    """The summed loss over ``dl`` (dtoolAI summed it over the training loader: this is the evaluation one)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for data, label in dl:
            total += loss_fn(model(data.to(device)), label.to(device)).item()
    return total


def nested_dict_as_string(d: dict[str, Any], indent: int = 0) -> str:
    """A nested mapping as indented ``key: value`` lines (dtoolAI's README text)."""
    s = ""
    for k, v in d.items():
        s += f"{' ' * indent}{k}:"
        s += "\n" + nested_dict_as_string(v, indent=indent + 2) if isinstance(v, dict) else f" {v}\n"
    return s


def readme_dict_from_source_dataset(source_ds: Any) -> dict[str, Any]:
    """The source dataset's name, URI and UUID."""
    return {
        "source_dataset_name": source_ds.name,
        "source_dataset_uri": source_ds.uri,
        "source_dataset_uuid": source_ds.uuid,
    }
