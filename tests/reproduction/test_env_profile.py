"""The compute profile (CPU, instruction sets, BLAS, threads, GPU stack) and the expectation from it.

The CUDA part of the profile is exercised with torch's CUDA queries monkeypatched: the test
machine has no GPU.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from train_fixtures import train_digits

from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.environment import Expectation, compare_environments, expect

pytest_plugins = ["train_fixtures"]

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl aes

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl aes
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimddp sve i8mm bf16
CPU implementer\t: 0x41
"""

MKL_CONFIG = """\
PyTorch built with:
  - GCC 13.3
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, USE_MKL=ON,
"""

OPENBLAS_CONFIG = """\
PyTorch built with:
  - GCC 11.2
  - OpenBLAS 0.3.27
  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release, LAPACK_INFO=open, USE_MKL=OFF,
"""


def test_cpu_model_and_instruction_sets_are_read_from_cpuinfo() -> None:
    from reprodl.training.capture import cpu_description

    model, flags = cpu_description(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    assert flags == ["sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl"]
    assert cpu_description(ARM_CPUINFO)[1] == ["asimd", "asimdhp", "asimddp", "sve", "bf16", "i8mm"]


def test_without_cpuinfo_the_model_is_the_platforms_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    from reprodl.training import environment

    monkeypatch.setattr(environment.platform, "processor", lambda: "arm")
    assert environment.cpu_description("") == ("arm", [])


def test_blas_and_its_version_are_read_from_torchs_build_configuration() -> None:
    from reprodl.training.capture import blas_description

    mkl = blas_description(MKL_CONFIG)
    assert (mkl["blas"], mkl["lapack"]) == ("mkl", "mkl")
    assert mkl["blas_version"] is not None and "Math Kernel Library Version 2024.2" in mkl["blas_version"]
    assert mkl["onednn"] is not None and mkl["onednn"].startswith("Intel(R) MKL-DNN v3.12.0")
    openblas = blas_description(OPENBLAS_CONFIG)
    assert openblas == {"blas": "open", "blas_version": "OpenBLAS 0.3.27", "lapack": "open", "onednn": None}


def test_the_environment_has_the_compute_profile_of_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from reprodl.training.capture import capture_environment

    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    compute = capture_environment().compute
    assert compute is not None
    assert (compute.num_threads, compute.num_interop_threads) == (
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
    )
    assert compute.thread_env["MKL_CBWR"] == "COMPATIBLE"
    assert compute.thread_env.get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    assert compute.blas == ("mkl" if torch.backends.mkl.is_available() else compute.blas)
    assert compute.float32_matmul_precision == torch.get_float32_matmul_precision()
    assert compute.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert compute.cuda_driver is None and compute.nccl is None  # no GPU here


def test_on_cuda_the_driver_and_nccl_versions_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    from reprodl.training.capture import capture_environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H200")
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 12040, raising=False)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 21, 5))
    props = SimpleNamespace(name="NVIDIA H200", major=9, minor=0, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    env = capture_environment()
    assert env.gpus == ["NVIDIA H200"]
    assert env.compute is not None
    assert (env.compute.cuda_driver, env.compute.nccl) == ("12.4", "2.21.5")
    # cuBLAS promises the same bits only on the same architecture and number of SMs: both recorded.
    assert (env.compute.gpu_compute_capability, env.compute.gpu_sm_count) == (["9.0"], [132])
    assert env.compute.gpu_mig == [False]
    assert set(env.compute.sdpa_backends) >= {"flash", "mem_efficient", "math"}


def test_a_mig_slice_is_recorded_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from reprodl.training.environment import _gpu_facts

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    props = SimpleNamespace(name="NVIDIA A100-SXM4-40GB MIG 1g.5gb", major=8, minor=0, multi_processor_count=14)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    assert _gpu_facts()["gpu_mig"] == [True]


# --- comparing profiles and the expectation ---------------------------------------------------
@pytest.fixture(scope="module")
def model(digits_split_master: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ProvenanceRecord]:
    """(URI, record) of a one-epoch bitwise-mode model (read-only)."""
    return train_digits(tmp_path_factory.mktemp("models"), "m", digits_split_master, valid=False)


@pytest.fixture
def record(model: tuple[str, ProvenanceRecord]) -> ProvenanceRecord:
    return model[1]


def _with_compute(record: ProvenanceRecord, **changes: Any) -> ProvenanceRecord:
    """A copy of ``record`` whose compute profile has ``changes``."""
    assert record.environment.compute is not None
    compute = record.environment.compute.model_copy(update=changes)
    environment = record.environment.model_copy(update={"compute": compute})
    return record.model_copy(update={"environment": environment})


def _expect(was: ProvenanceRecord, now: ProvenanceRecord) -> Expectation:
    return expect(was, now.environment, compare_environments(was.environment, now.environment))


def test_the_same_isa_blas_and_threads_expect_bitwise(record: ProvenanceRecord) -> None:
    expectation = _expect(record, record)
    assert expectation.expected == "bitwise" and expectation.held is None
    (line,) = expectation.because
    assert line.startswith("same ISA (") and line.endswith("inter-op): bitwise expected")


def test_a_different_blas_expects_run_to_run_and_cannot_be_restored(record: ProvenanceRecord) -> None:
    other = _with_compute(record, blas="open", blas_version="OpenBLAS 0.3.27", lapack="open")
    assert {d.kind for d in compare_environments(record.environment, other.environment)} == {"blas"}
    expectation = _expect(record, other)
    assert expectation.expected == "run_to_run" and not expectation.restorable
    assert expectation.because[0].startswith("BLAS mkl -> open: cannot be restored (the machine or the installed")
    assert any("-> OpenBLAS 0.3.27" in line for line in expectation.because)


def test_a_different_thread_count_or_isa_expects_run_to_run(record: ProvenanceRecord) -> None:
    assert record.environment.compute is not None
    n = record.environment.compute.num_threads
    assert n is not None
    threads = _with_compute(record, num_threads=n + 3)
    expectation = _expect(record, threads)
    assert (expectation.expected, expectation.restorable) == ("run_to_run", True)
    assert expectation.because[0] == (
        f"intra-op threads {n} -> {n + 3}: can be restored here (OMP_NUM_THREADS={n} MKL_NUM_THREADS={n})"
    )
    flags = ["sse4_2", "avx", "avx2", "fma"]
    fewer = _with_compute(threads, cpu_flags=flags, cpu_capability="AVX2")
    # Trained on a CPU with fewer instruction sets, re-run here: ATen's AVX2 kernels can be asked for.
    (capability,) = [f for f in _expect(fewer, record).factors if f.name == "ATen CPU capability"]
    want_avx512 = record.environment.compute.cpu_capability == "AVX512"
    assert capability.restore == ({"ATEN_CPU_CAPABILITY": "avx2"} if want_avx512 else capability.restore)
    # Trained on AVX-512 and re-run on a CPU without it: that cannot be put back there.
    (lost,) = [f for f in _expect(record, fewer).factors if f.name == "ATen CPU capability"]
    assert not lost.restorable or not want_avx512


def test_another_cpu_model_with_the_same_isa_still_expects_bitwise(record: ProvenanceRecord) -> None:
    other = _with_compute(record, cpu_model="Another CPU")
    expectation = _expect(record, other)
    assert expectation.expected == "bitwise"
    assert expectation.because[0] == "another CPU model, with the same instruction sets"


def test_warn_only_operations_and_statistical_mode_expect_not_guaranteed(record: ProvenanceRecord) -> None:
    determinism = record.training.determinism.model_copy(update={"nondeterministic_ops": ["index_add_cuda_"]})
    warned = record.model_copy(update={"training": record.training.model_copy(update={"determinism": determinism})})
    assert _expect(warned, record).because == [
        "the training ran operations without a deterministic implementation (warn-only): index_add_cuda_"
    ]
    statistical = determinism.model_copy(update={"mode": "statistical", "nondeterministic_ops": []})
    stat = record.model_copy(update={"training": record.training.model_copy(update={"determinism": statistical})})
    assert _expect(stat, record).expected == "not_guaranteed"
    assert _expect(warned, record).expected == "not_guaranteed"


def test_a_record_without_a_profile_compares_no_compute_fields(record: ProvenanceRecord) -> None:
    old = record.model_copy(update={"environment": record.environment.model_copy(update={"compute": None})})
    assert compare_environments(old.environment, record.environment) == []
    expectation = _expect(old, record)
    assert expectation.expected == "bitwise" and "no compute profile in the record" in expectation.because[0]


def test_the_prediction_held_is_decided_by_the_verdict() -> None:
    from reprodl.reproduction.factors import Factor

    bitwise, statistical = Expectation("bitwise", ["x"]), Expectation("not_guaranteed", ["y"])
    assert [bitwise.settle(v).held for v in ("identical", "within tolerance", "differs")] == [True, False, False]
    # The same bits are within any tolerance: a not_guaranteed expectation is held by an identical result.
    assert [statistical.settle(v).held for v in ("identical", "within tolerance", "differs")] == [True, True, False]
    assert statistical.settle("within tolerance").to_dict() == {
        "expected": "not_guaranteed",
        "because": ["y"],
        "held": True,
        "factors": [],
    }
    # run_to_run: held when a replay with the recorded factors put back brought the bits back.
    threads = Factor("intra-op threads", 2, 1, restore={"OMP_NUM_THREADS": "2"})
    run_to_run = Expectation("run_to_run", ["z"], factors=[threads])
    assert run_to_run.settle("differs", confirmed=True).held is True
    assert run_to_run.settle("differs", confirmed=False).held is False
    assert run_to_run.settle("differs").held is None  # no replay ran: nothing tested it


# --- in the reproduction report ---------------------------------------------------------------
def test_reproduce_predicts_bitwise_and_says_it_held(model: tuple[str, ProvenanceRecord], cli: Any) -> None:
    uri = model[0]
    result = cli("reproduce", uri)
    assert result.exit_code == 0, result.output
    assert "expected before re-running: bitwise" in result.output
    assert "prediction (bitwise expected): held" in result.output
    as_json = json.loads(cli("reproduce", uri, "--json").stdout)
    assert as_json["verdict"] == "identical"
    assert as_json["expectation"]["expected"] == "bitwise" and as_json["expectation"]["held"] is True
    assert {"verdict", "environment_differences", "weights", "ok"} <= set(as_json)


def test_reproduce_with_other_interop_threads_predicts_run_to_run(
    model: tuple[str, ProvenanceRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reprodl.reproduction import rerun
    from reprodl.training import capture

    real = capture.capture_environment

    def other_threads() -> Any:
        env = real()
        assert env.compute is not None
        return env.model_copy(update={"compute": env.compute.model_copy(update={"num_interop_threads": 64})})

    monkeypatch.setattr(capture, "capture_environment", other_threads)
    report = rerun.reproduce(model[0])
    assert report.expectation is not None
    assert report.expectation.expected == "run_to_run"
    assert report.expectation.because[0].startswith("inter-op threads ")
    assert "cannot be restored (set by the training's own code" in report.expectation.because[0]
    # The interop pool size did not touch this model's bits: identical holds a run_to_run expectation.
    assert report.verdict == "identical" and report.expectation.held is True
    assert [d.kind for d in report.environment_differences] == ["threads"]
