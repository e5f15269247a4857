"""The demo behind `make demo`: the whole workflow on scikit-learn's real handwritten digits.

Reports through a ``say`` callback (the CLI prints); nothing here prints by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from reprodl.data.datasets import TensorDataSet
    from reprodl.model import TrainedTorchModel

DEMO_CONFIG: dict[str, Any] = {
    "name": "digits-cnn",
    "output": "models",
    "data": {"train": {"uri": "data/digits", "usetype": "train"}, "valid": {"uri": "data/digits", "usetype": "test"}},
    "model": {"class": "GenNet", "init_params": {"input_channels": 1, "input_dim": 8, "n_outputs": 10}},
    "optimizer": {"class": "SGD", "momentum": 0.9},
    "loss": {"class": "NLLLoss"},
    "params": {"batch_size": 32, "learning_rate": 0.05, "n_epochs": 10, "seed": 0},
}


def run_demo(
    workdir: str | Path,
    *,
    epochs: int = 10,
    say: Callable[[str], None] = lambda _: None,
    show_report: Callable[[Any], None] | None = None,
) -> bool:
    """Run the demo in a fresh subdirectory of ``workdir``; True when the model reproduced."""
    import torch

    from reprodl.data.datasets import TensorDataSet
    from reprodl.reproduction.pipeline import reproduce

    torch.set_num_threads(1)
    run = Path(workdir).resolve() / time.strftime("run-%Y%m%d-%H%M%S")
    (run / "data").mkdir(parents=True)
    (run / "models").mkdir()
    t0 = time.perf_counter()
    data_uri = _make_data(run, say)
    model_uri = _train(run, epochs, say)
    test = TensorDataSet(data_uri, usetype="test")
    model = _evaluate(model_uri, test, say)
    _predict(model, test, run, say)

    say(f"== 6. Reproduce the model from its record (`reprodl reproduce {model_uri}`)")
    report = reproduce(model_uri, output=str(run / "models"))
    if show_report is not None:
        show_report(report)
    else:
        say(f"   verdict: {report.verdict}")
    say(f"Demo finished in {time.perf_counter() - t0:.1f}s; everything is under {run}")
    return report.ok


def _make_data(run: Path, say: Callable[[str], None]) -> str:
    """Step 1: the digits dataset under ``run/data``, split for training and test."""
    from reprodl.data.creators import create_digits
    from reprodl.data.ops import split_dataset

    say(f"== 1. A dataset of real handwritten digits (scikit-learn's 1,797 8x8 images) in {run / 'data'}")
    uri = create_digits(str(run / "data"), "digits")
    counts = split_dataset(uri, test=0.2, seed=0)
    say(f"   created {uri}; stratified split {counts}")
    return uri


def _train(run: Path, epochs: int, say: Callable[[str], None]) -> str:
    """Steps 2 and 3: train from a config file written to ``run``; show the provenance."""
    from reprodl.provenance import summary_lines
    from reprodl.training.config import build_and_train, load_config

    say("== 2. Train a CNN (GenNet) from a config file, capturing provenance")
    config = {**DEMO_CONFIG, "params": {**DEMO_CONFIG["params"], "n_epochs": epochs}}
    config_path = run / "train.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    say(f"   config: {config_path}")

    def on_epoch(m: Any) -> None:
        say(f"   epoch {m.epoch}: train loss {m.train_loss:.4f}, valid accuracy {m.valid_accuracy:.2%}")

    model_uri, record = build_and_train(load_config(config_path), progress=False, on_epoch=on_epoch)
    say(f"   model dataset: {model_uri}")
    say(f"== 3. Provenance (`reprodl provenance {model_uri}`)")
    for line in summary_lines(record):
        say("   " + line)
    return model_uri


def _evaluate(model_uri: str, test: TensorDataSet, say: Callable[[str], None]) -> TrainedTorchModel:
    """Step 4: accuracy on the held-out test split; returns the loaded model."""
    from reprodl.model import TrainedTorchModel

    say("== 4. Evaluate on the held-out test split")
    model = TrainedTorchModel(model_uri)
    result = model.evaluate(test)
    say(
        f"   accuracy {result['accuracy']:.2%} on {result['n_samples']} test digits "
        f"(majority-class baseline {result['majority_baseline_accuracy']:.2%})"
    )
    return model


def _predict(model: TrainedTorchModel, test: TensorDataSet, run: Path, say: Callable[[str], None]) -> None:
    """Step 5: write five test digits as PNG images under ``run/images`` and classify them."""
    import numpy as np
    from PIL import Image

    say("== 5. Predict PNG images of test digits")
    (run / "images").mkdir()
    for k in range(5):
        row = test.data[test.rows[k]].reshape(8, 8).astype(np.uint8)
        label = test.categories[test.labels[k]]
        path = run / "images" / f"digit_{k}_label_{label}.png"
        Image.fromarray(row).save(path)
        predicted = model.convert_and_predict(Image.open(path))
        say(f"   {path.name}: predicted {predicted} ({'right' if predicted == label else 'wrong'})")
