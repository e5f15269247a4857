"""The record's code and environment: the git state, the command, the source snapshot, the compute and placement."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from reprodl.provenance._part import _Part

# The reason a skipped untracked file names when it lay in a directory the run writes to (its models'
# base directory, a Trainer's logs and checkpoints): an output, not code, and no cause of a dirty tree.
RUN_OUTPUT = "run output"


class GitInfo(_Part):
    """The git state of the training code."""

    commit: str | None = Field(None, description="HEAD commit")
    branch: str | None = Field(None, description="checked-out branch")
    dirty: bool = Field(
        False,
        description="whether tracked files had changed or untracked files existed (the run's outputs aside)",
    )
    remote: str | None = Field(None, description="URL of the origin remote (git config remote.origin.url)")
    root: str | None = Field(None, description="the repository's root directory")
    patch_item: str | None = Field(None, description="item holding git diff HEAD, when tracked files had changed")
    patch_sha256: str | None = Field(None, description="sha256 of the patch")
    untracked: list[str] = Field(default_factory=list, description="untracked files (up to 200 names)")
    untracked_items: list[str] = Field(default_factory=list, description="items holding untracked files")
    untracked_skipped: list[str] = Field(default_factory=list, description="untracked files not stored (names only)")
    untracked_skipped_reasons: dict[str, str] = Field(
        default_factory=dict,
        description="why each skipped untracked file was not stored: secret, too large, "
        "symbolic link, outside the repository, opted out (store_untracked=False), or run output (in a "
        "directory the run writes to: its models' base directory, a Lightning Trainer's log or checkpoint "
        "directory; not code, and no cause of dirty)",
    )
    store_untracked: bool = Field(True, description="whether untracked files were stored with the model")
    patch_skipped: list[str] = Field(
        default_factory=list, description="changed tracked files named like secrets, left out of the patch (names only)"
    )


class RunCommand(_Part):
    """How a run made with the run API (``reprodl.start_run``) is run again."""

    entry_script: str | None = Field(
        None, description="the entry script, relative to the code root ('/'-separated); None when run as -m module"
    )
    module: str | None = Field(None, description="the module run with python -m, when it was")
    argv: list[str] = Field(default_factory=list, description="the script's arguments, sys.argv[1:] as given")
    working_directory: str = Field(".", description="the working directory, relative to the code root")
    python: str = Field(description="the interpreter version that ran it (platform.python_version())")
    seed: int = Field(description="the seed passed to start_run")
    root: str = Field(description="the code root: the git repository's root, else the entry script's directory")


class SourceSnapshot(_Part):
    """The code that trained the model, stored with it (tracked files at the recorded commit)."""

    item: str | None = Field(
        None, description="item holding a tar of the tracked files at the commit; None when over the cap or outside git"
    )
    sha256: str | None = Field(None, description="sha256 of the snapshot item's bytes")
    size: int = Field(0, description="bytes of the snapshot item")
    n_files: int = Field(0, description="files in the snapshot")
    commit: str | None = Field(None, description="the commit the snapshot holds")
    excluded: list[str] = Field(
        default_factory=list, description="tracked files left out because they are named like secrets (names only)"
    )
    note: str | None = Field(None, description="why no snapshot was stored, and what to use instead")


class CodeInfo(_Part):
    """The code that ran the training."""

    git: GitInfo | None = Field(None, description="git state, when the entry script is in a git repository")
    entry_script: str | None = Field(None, description="path of the script that ran the training")
    entry_script_sha256: str | None = Field(None, description="sha256 of the entry script")
    entry_script_item: str | None = Field(None, description="item holding the entry script (outside git)")
    argv: list[str] = Field(default_factory=list, description="the command line (sys.argv)")
    working_directory: str | None = Field(None, description="the working directory of the training process")
    config_file: str | None = Field(None, description="the training config file (reprodl train)")
    config: dict[str, Any] | None = Field(None, description="the training config as run, overrides applied")
    run: RunCommand | None = Field(
        None, description="how to run the training again (runs made with reprodl.start_run; reproduced by re-execution)"
    )
    snapshot: SourceSnapshot | None = Field(None, description="the source snapshot stored with the model")


class ComputeProfile(_Part):
    """What decides whether the same computation gives the same bits: CPU, BLAS, threads, GPU stack.

    Captured when the training starts, before reprodl's determinism settings (those in force
    are in ``training.determinism``).
    """

    cpu_model: str | None = Field(None, description="CPU model (/proc/cpuinfo 'model name', else platform.processor())")
    cpu_flags: list[str] = Field(
        default_factory=list,
        description="the CPU's instruction-set extensions that change which kernels run (avx2, avx512f, fma, "
        "sse4_2, asimd, sve...), from /proc/cpuinfo; empty where unknown",
    )
    cpu_capability: str | None = Field(
        None, description="the CPU capability torch's kernels dispatch to (torch.backends.cpu.get_cpu_capability())"
    )
    blas: str | None = Field(None, description="the BLAS torch uses (BLAS_INFO of torch.__config__.show(): mkl...)")
    blas_version: str | None = Field(None, description="the BLAS library's version line from torch.__config__.show()")
    lapack: str | None = Field(None, description="the LAPACK torch uses (LAPACK_INFO of torch.__config__.show())")
    onednn: str | None = Field(None, description="the oneDNN (MKL-DNN) version torch uses, if any")
    parallel_backend: str | None = Field(None, description="ATen's parallel backend (OpenMP, native thread pool)")
    num_threads: int | None = Field(None, description="intra-op threads (torch.get_num_threads())")
    num_interop_threads: int | None = Field(None, description="inter-op threads (torch.get_num_interop_threads())")
    thread_env: dict[str, str] = Field(
        default_factory=dict,
        description="the environment variables set that change threads or kernels (OMP_NUM_THREADS, "
        "MKL_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_CBWR...): name to value",
    )
    cuda_driver: str | None = Field(None, description="the CUDA driver version, on a machine with a GPU")
    nccl: str | None = Field(None, description="the NCCL version torch uses, on a machine with a GPU")
    tf32_matmul: bool | None = Field(None, description="torch.backends.cuda.matmul.allow_tf32 as set in the process")
    tf32_cudnn: bool | None = Field(None, description="torch.backends.cudnn.allow_tf32 as set in the process")
    float32_matmul_precision: str | None = Field(None, description="torch.get_float32_matmul_precision()")
    cublas: str | None = Field(
        None, description="the cuBLAS version (its pip package nvidia-cublas-*, else the loaded library's), on CUDA"
    )
    gpu_compute_capability: list[str] = Field(
        default_factory=list, description="each visible GPU's compute capability (8.0, 9.0...), in device order"
    )
    gpu_sm_count: list[int] = Field(
        default_factory=list,
        description="each visible GPU's number of streaming multiprocessors: cuBLAS promises the same bits only on "
        "the same architecture and SM count",
    )
    gpu_mig: list[bool] = Field(
        default_factory=list, description="whether each visible GPU is a MIG slice (Multi-Instance GPU), in order"
    )
    sdpa_backends: dict[str, bool] = Field(
        default_factory=dict,
        description="the scaled-dot-product-attention backends enabled (flash, mem_efficient, math, cudnn), on CUDA",
    )


class Placement(_Part):
    """Where the training ran: the scheduler, its job, the node and the allocation (schema 1.2 on)."""

    scheduler: str = Field(description="what started the training: local (this machine's process), slurm or ray")
    job_id: str | None = Field(
        None, description="the scheduler's job: a Slurm job id (ARRAYJOB_TASK for an array task), a Ray task id"
    )
    node: str = Field(description="the host name of the machine the training ran on")
    allocation: str | None = Field(
        None,
        description="the resources it ran in: CLUSTER/JOBID of a Slurm allocation, ray/NODEID of a Ray node; "
        "None for a local run",
    )


class Environment(_Part):
    """The software and hardware the training ran on."""

    python: str = Field(description="Python version")
    implementation: str = Field(description="Python implementation (CPython...)")
    platform: str = Field(description="platform.platform(): operating system and version")
    machine: str = Field(description="machine type (x86_64, arm64...)")
    processor: str = Field("", description="platform.processor()")
    cpu_count: int | None = Field(None, description="number of CPUs (os.cpu_count())")
    torch: str | None = Field(None, description="torch version")
    cuda: str | None = Field(None, description="CUDA version torch was built with")
    cudnn: int | None = Field(None, description="cuDNN version")
    gpus: list[str] = Field(default_factory=list, description="name of each visible GPU")
    numpy: str | None = Field(None, description="NumPy version")
    reprodl: str | None = Field(None, description="reprodl version")
    packages: dict[str, str] = Field(default_factory=dict, description="every installed distribution: name to version")
    compute: ComputeProfile | None = Field(
        None, description="CPU, instruction sets, BLAS, threads and GPU stack: what bitwise results depend on"
    )
    placement: Placement | None = Field(
        None, description="where it ran: scheduler, job id, node, allocation (None in records before it was kept)"
    )
