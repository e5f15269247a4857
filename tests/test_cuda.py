"""CUDA: training on the GPU is recorded, adds no host/device synchronisation per batch, and
reproduces bit for bit under the deterministic settings. Skipped where no GPU is present
(this project's CI has none; run these on a machine that has one)."""

from __future__ import annotations

import pytest
import torch

from reprodl.reproduction.rerun import reproduce

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import train_digits

pytest_plugins = ["train_fixtures"]

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_training_is_recorded_and_reproduces_identical(digits_split_master, tmp_path):
    uri, record = train_digits(tmp_path, "gpu", digits_split_master, n_epochs=2, device="cuda")
    t = record.training
    assert t.device.startswith("cuda")
    assert t.determinism.use_deterministic_algorithms and t.determinism.cublas_workspace_config
    assert t.determinism.tf32_matmul is False and t.determinism.cudnn_benchmark is False
    assert record.environment.gpus and record.environment.cuda
    report = reproduce(uri, device="cuda")
    assert report.verdict == "identical", report.reasons


def test_cuda_training_loop_never_synchronises_per_batch(digits_split_master, tmp_path):
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_digits(tmp_path, "gpu-sync", digits_split_master, n_epochs=1, device="cuda", valid=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    # A few synchronisations at epoch and run boundaries are expected; none per batch
    # (the digits split has 45 batches of 32 per epoch).
    assert len(syncs) < 10, [str(w.message) for w in syncs[:5]]
