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

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"needs a CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none here "
    "(torch.cuda.is_available() is False); run tests/training/test_cuda.py on a machine with an NVIDIA GPU",
)


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


def test_cuda_gpu_facts_are_recorded(digits_split_master, tmp_path):
    """The GPU stack that decides the bits is in the record, as this process sees it; written to
    ``$REPRODL_GPU_FACTS`` (a JSON file) when set, for a note of the machine the test ran on."""
    import json
    import os

    _, record = train_digits(tmp_path, "facts", digits_split_master, n_epochs=1, device="cuda", valid=False)
    env, compute = record.environment, record.environment.compute
    assert env.gpus == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert env.cuda == torch.version.cuda and env.cudnn == torch.backends.cudnn.version()
    assert compute is not None and compute.cuda_driver and compute.nccl
    props = torch.cuda.get_device_properties(0)
    facts = {
        "gpus": env.gpus,
        "cuda": env.cuda,
        "cudnn": env.cudnn,
        "cuda_driver": compute.cuda_driver,
        "nccl": compute.nccl,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "recorded_compute": compute.model_dump(mode="json"),
    }
    if os.environ.get("REPRODL_GPU_FACTS"):
        with open(os.environ["REPRODL_GPU_FACTS"], "w") as f:
            json.dump(facts, f, indent=2)


def test_two_cuda_trainings_under_deterministic_settings_give_identical_bits(digits_split_master, tmp_path):
    """Same code, data, seed and GPU under the deterministic settings: the same weights, step trace and
    operation log of the first step (every operation's output, bit for bit)."""
    runs = [
        train_digits(tmp_path, f"twin-{i}", digits_split_master, n_epochs=1, device="cuda", valid=False)[1]
        for i in range(2)
    ]
    a, b = (r.results for r in runs)
    assert runs[0].training.determinism.use_deterministic_algorithms and runs[0].training.determinism.mode == "bitwise"
    assert a.weights_sha256 == b.weights_sha256
    assert a.trace.sha256 == b.trace.sha256
    assert a.trace.oplog and [o.sha256 for o in a.trace.oplog] == [o.sha256 for o in b.trace.oplog]
