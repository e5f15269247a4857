"""The provenance record: one typed, schema-versioned object; its digest; its diff.

The record is stored as the item ``provenance.json`` of a model dataset, so dtool's manifest
hashes it; it also carries a sha256 digest of itself (over its canonical JSON without the
``digest`` field), so a copied record that was edited is caught, and a chain of models
(``lineage.parent.record_digest``) can be checked offline. No torch here: ``reprodl
provenance URI`` answers without importing it.

Example:
    >>> record = parse_record(open("provenance.json").read())   # doctest: +SKIP
    >>> record.training.optimizer.class_name               # doctest: +SKIP
    'SGD'
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from reprodl import keys
from reprodl.errors import IntegrityError, ModelLoadError
from reprodl.parsing import check_size, load_json
from reprodl.store import canonical_json

DEFAULT_MODEL_NAME = "model"  # the one model of a record without named components


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Architecture(_Part):
    """The model class, how it was built, and how its initial weights can be had again."""

    import_path: str = Field(description="module:qualname of the model class")
    module: str = Field(description="module of the model class")
    class_name: str = Field(description="qualified name of the model class in its module")
    init_params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments the model was constructed with"
    )
    n_parameters: int = Field(0, description="number of parameter values (elements) in the model")
    n_trainable: int = Field(0, description="number of parameter values with requires_grad=True")
    frozen_parameters: list[str] = Field(default_factory=list, description="names with requires_grad=False")
    source_sha256: str | None = Field(None, description="sha256 of the class's source code")
    initialisation: Literal["constructor", "stored", "parent"] = Field(
        "constructor",
        description="how the initial weights can be had again: the seeded constructor, "
        "the stored initial.safetensors item, or the parent model's weights",
    )
    initial_weights_sha256: str | None = Field(
        None, description="weights digest of the initial weights (tensor names, dtypes, shapes and bytes)"
    )


class DataView(_Part):
    """One step from the data the training was given down to a dataset it is made of."""

    kind: Literal["subset", "concat"] = Field(
        description="a torch Subset (some samples, in the order of its indices) or one part of a ConcatDataset"
    )
    indices_digest: str | None = Field(
        None, description="subset: sha256 of the Subset's indices as little-endian int64, in order"
    )
    n_indices: int | None = Field(None, description="subset: number of indices")
    part: int | None = Field(None, description="concat: which part of the ConcatDataset, from 0")
    parts: int | None = Field(None, description="concat: how many parts the ConcatDataset has")


class DataRef(_Part):
    """One dataset a training read, and how to find and check it again."""

    role: Literal["train", "valid", "test"] = Field(description="what the training used the dataset for")
    uri: str = Field(description="the dataset's URI when it was read")
    uuid: str = Field(description="the dataset's dtool UUID (kept by copies)")
    name: str = Field(description="the dataset's dtool name")
    input_type: str | None = Field(None, description="the dtoolAI.inputtype annotation (ImageDataSet, TensorDataSet)")
    manifest_digest: str = Field(
        description="sha256 over the sorted (relpath, size, md5) triples of the dataset's items: stable across copies"
    )
    manifest_item: str | None = Field(None, description="item holding a copy of the dataset's manifest")
    readme: str = Field("", description="the dataset's README text (empty when readme_of names an earlier entry)")
    readme_of: int | None = Field(
        None,
        description="index in data of the entry of the same dataset that holds "
        "its README: a README is stored once per record",
    )
    usetype: str | None = Field(None, description="the usetype (train, test, valid) selected, if any")
    split: dict[str, Any] | None = Field(None, description="in-memory stratified split (test, valid, seed)")
    bootstrap: int | None = Field(
        None,
        description="seed of a bootstrap resample of the selected samples (as many, drawn with replacement); "
        "None: each selected sample once",
    )
    selection_digest: str | None = Field(
        None, description="sha256 of the selected samples' keys, in order (the usetype split)"
    )
    labels_digest: str | None = Field(
        None,
        description="sha256 of the selected samples' stored labels, in order (category overlay values "
        "or label integers); the category_encoding is recorded apart",
    )
    n_items: int = Field(0, description="number of samples selected (after the usetype or split)")
    n_dataset_items: int = Field(0, description="number of items in the whole dataset")
    category_encoding: dict[str, int] = Field(default_factory=dict, description="category name to class index")
    transform: dict[str, Any] | None = Field(
        None,
        description="the input transform: class and repr, and config for a reprodl.data.transforms one "
        "(reprodl.data.transforms.from_config rebuilds it)",
    )
    input_shape: list[int] = Field(default_factory=list, description="shape of one input sample as fed to the model")
    image_dimensions: list[int] | None = Field(None, description="the dataset's image_dimensions annotation as read")
    value_scale: float | None = Field(None, description="tensor datasets: inputs are raw / value_scale")
    image_mode: str | None = Field(None, description="image datasets: the PIL mode images are converted to (L, RGB)")
    path: str | None = Field(
        None,
        description="a local dataset: its path relative to the training's working directory (reproduce run from "
        "that directory finds it there when the recorded URI is gone)",
    )
    views: list[DataView] = Field(
        default_factory=list,
        description="how the data given to the run reached this dataset, outermost first (a Subset of it, a part "
        "of a ConcatDataset); empty: the dataset itself was given",
    )
    stream: bool = Field(
        False,
        description="an IterableDataset: the run's data_order_digests are over the samples it yielded (their "
        "content, in order), not over indices",
    )
    source: Literal["dtool", "in-memory", "unverified"] = Field(
        "dtool",
        description="what kind of data this is: a dtool dataset (checked against its manifest), an "
        "in-memory tensor or array (hashed: manifest_digest is the sha256 of its content), or any other "
        "dataset, recorded by class only (unverified data: reprodl cannot tell whether it changed)",
    )


class OptimizerInfo(_Part):
    """The optimiser, read back from the optimiser object."""

    class_name: str = Field(description="qualified name of the optimiser class")
    module: str = Field(description="module of the optimiser class")
    defaults: dict[str, Any] = Field(default_factory=dict, description="the optimiser's default hyperparameters")
    param_groups: list[dict[str, Any]] = Field(
        default_factory=list,
        description="every parameter group's hyperparameters, with the names of its parameters (param_names)",
    )


class CallableInfo(_Part):
    """A loss function or learning-rate scheduler: its class and constructor arguments."""

    class_name: str = Field(description="qualified name of the class")
    module: str = Field(description="module of the class")
    args: dict[str, Any] = Field(default_factory=dict, description="constructor arguments, read back from the object")


class StepChange(_Part):
    """A value that changed at an optimiser step, as observed when the step ran (changes only)."""

    step: int = Field(
        description="the global optimiser step (from 1, as training.optimizer_steps counts) it applied at"
    )
    group: int | None = Field(None, description="the parameter group (from 0), for an optimiser's hyperparameters")
    values: dict[str, Any] = Field(
        default_factory=dict, description="what was in force at that step and differs from the previous entry"
    )


class OptimizerComponent(OptimizerInfo):
    """One optimiser a training watched, by name, with what it applied step by step."""

    name: str = Field(description="the optimiser's name in the record (the model's name, then _1, _2... for more)")
    model: str = Field(description="name of the model component it updates (models[].name)")
    scheduler: CallableInfo | None = Field(None, description="the learning-rate scheduler given with it, if any")
    steps: int = Field(0, description="times its step() ran")
    closure: bool = Field(False, description="whether step() was given a closure (LBFGS and friends)")
    applied: list[StepChange] = Field(
        default_factory=list,
        description="per parameter group, lr (and momentum, betas, weight_decay...) as they were when each step "
        "ran: the first step's values, then only changes",
    )


class ModelComponent(_Part):
    """One model a training watched, by name: its class, its saved weights and how it was updated."""

    name: str = Field(description="the model's name (run.watch(name=...), else the attribute or class name)")
    architecture: Architecture = Field(description="the model class (the original class of a compiled model)")
    compiled: bool = Field(False, description="whether it was watched as a torch.compile'd module")
    optimizers: list[str] = Field(
        default_factory=list,
        description="names of the optimisers updating it (training.optimizers[].name); empty: updated by hand, "
        "a step counted per backward pass",
    )
    loss: CallableInfo | None = Field(None, description="the loss given with it, if any")
    weights_file: str | None = Field(None, description="item holding its saved weights; None: not saved")
    weights_sha256: str | None = Field(None, description="digest of its saved weights")
    steps: int = Field(0, description="optimiser steps of its optimisers, or backward passes when updated by hand")
    accumulation: list[StepChange] = Field(
        default_factory=list,
        description="backward passes that reached the model since its gradients were last cleared, at each step "
        "(values.backward_passes): the first step's count, then changes",
    )
    autocast: list[StepChange] = Field(
        default_factory=list,
        description="autocast in force at the model's last forward before each step (values.enabled, device_type, "
        "dtype): the first step's, then changes",
    )
    clipping: list[StepChange] = Field(
        default_factory=list,
        description="gradient clipping called on its parameters before each step (values.function, max_norm, "
        "norm_type or clip_value; function null: none): the first step's, then changes",
    )


class Seeds(_Part):
    """The seeds a training applied, all derived from ``seed`` (reprodl.training.seeding)."""

    seed: int = Field(description="the base seed (params.seed) every other seed is derived from")
    python: int = Field(description="seed of Python's random in the training process")
    numpy: int = Field(description="seed of NumPy's global generator in the training process")
    torch: int = Field(description="seed of torch's global generator in the training process")
    dataloader_generator: int = Field(description="seed of the DataLoader's generator (its workers' base seed)")
    sampler: int | None = Field(
        None,
        description="seed of the batch order: epoch e is torch.randperm from a generator seeded "
        "sampler * 1000003 + e (absent in older records, where it is seed + 1)",
    )
    worker_seeds: list[int] = Field(
        default_factory=list,
        description="seed of Python's, NumPy's and torch's generators in each DataLoader worker, in worker order "
        "(older records wrote seed + 1000 + i here; seed + 1001 + i was applied)",
    )


class NondeterministicUse(_Part):
    """An operation without a deterministic implementation that ran in warn-only mode: how often, and from where."""

    operation: str = Field(description="the operation, as torch named it")
    count: int = Field(description="how many times it ran (each call torch warned about)")
    first_frame: str = Field("", description="the first frame outside torch at its first run: file.py:line in function")


class Determinism(_Part):
    """The determinism settings in force during training."""

    mode: Literal["bitwise", "statistical"] = Field(
        description="bitwise: deterministic settings, a rerun must match exactly; statistical: within tolerance"
    )
    use_deterministic_algorithms: bool = Field(description="torch.are_deterministic_algorithms_enabled()")
    cudnn_deterministic: bool | None = Field(None, description="torch.backends.cudnn.deterministic")
    cudnn_benchmark: bool | None = Field(None, description="torch.backends.cudnn.benchmark")
    cublas_workspace_config: str | None = Field(None, description="the CUBLAS_WORKSPACE_CONFIG environment variable")
    tf32_matmul: bool | None = Field(None, description="torch.backends.cuda.matmul.allow_tf32")
    tf32_cudnn: bool | None = Field(None, description="torch.backends.cudnn.allow_tf32")
    float32_matmul_precision: str | None = Field(None, description="torch.get_float32_matmul_precision()")
    num_threads: int | None = Field(None, description="torch.get_num_threads()")
    warn_only: bool | None = Field(
        None,
        description="torch.is_deterministic_algorithms_warn_only_enabled(): true when trained with "
        "deterministic='warn', where operations without a deterministic implementation ran and were listed",
    )
    nondeterministic_ops: list[str] = Field(
        default_factory=list,
        description="operations without a deterministic implementation that ran in warn-only mode "
        "(deterministic='warn'), as torch named them, in order of first use",
    )
    nondeterministic_usage: list[NondeterministicUse] | None = Field(
        None,
        description="optional: per operation of nondeterministic_ops, how many times it ran and the first stack "
        "frame outside torch that ran it; None: not counted (older records) or none ran",
    )
    script_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="the settings the script (or its framework) had made that bitwise determinism needed changed, "
        "as the script made them (field name to value; the fields above hold the value applied)",
    )


class Resumed(_Part):
    """How a training killed part-way was continued from its checkpoints (reprodl.training.checkpoint)."""

    count: int = Field(description="how many times the training was resumed")
    from_epoch: list[int] = Field(
        description="per resume, the epochs completed at its checkpoint (the built-in trainer), or the pass "
        "of the training loader it was in (a start_run run)"
    )
    from_step: list[int] = Field(description="per resume, the optimiser steps taken at its checkpoint")
    at: list[str] = Field(description="per resume, when it started (UTC, ISO 8601)")
    skipped_restore: list[str] | None = Field(
        None,
        description="optional: restores a resume left out on purpose (REPRODL_SKIP_RESTORE=rng|loader|optimizer, "
        "a negative control showing the resume check can fail); None: every state was restored",
    )


class DistributedInfo(_Part):
    """A DistributedDataParallel run (torchrun): its processes, their seeds and data shards."""

    backend: str = Field(description="torch.distributed backend (gloo, nccl)")
    world_size: int = Field(description="number of processes (ranks) trained together")
    rank_seeds: list[int] = Field(description="seed of Python's, NumPy's and torch's generators on each rank")
    sampler: dict[str, Any] = Field(
        default_factory=dict,
        description="the DistributedSampler of the training loader: shuffle, seed, drop_last (epoch = pass)",
    )
    rank_order_digests: list[list[str]] = Field(
        default_factory=list, description="per rank, the sha256 of its shard's sample order, one per pass"
    )
    validation: str | None = Field(
        None,
        description="how the validation metrics were computed over the ranks (the built-in trainer); None: "
        "no validation data, or the run's own code computed them",
    )


class Training(_Part):
    """How the model was trained."""

    optimizer: OptimizerInfo = Field(description="the optimiser (the first of optimizers, when there are several)")
    optimizers: list[OptimizerComponent] = Field(
        default_factory=list,
        description="every optimiser watched, by name (records before schema 1.2: only optimizer)",
    )
    loss: CallableInfo = Field(description="the loss function")
    scheduler: CallableInfo | None = Field(None, description="the learning-rate scheduler, if any")
    epochs: int = Field(description="number of epochs")
    batch_size: int = Field(description="samples per batch")
    shuffle: bool = Field(True, description="whether the sample order was shuffled each epoch")
    num_workers: int = Field(0, description="DataLoader worker processes")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the training Parameters as given (with allow_nonfinite_loss, and a config's "
        "user values under user)",
    )
    seeds: Seeds = Field(description="every seed of the run")
    determinism: Determinism = Field(description="the determinism settings in force")
    data_order_digests: list[str] = Field(
        default_factory=list, description="sha256 of each epoch's sample order (int64 indices), one per epoch"
    )
    data_order_not_recorded: str | None = Field(
        None,
        description="why the sample order was not recorded for every epoch (a training loader whose sampler "
        "reprodl cannot read, such as a custom sampler); None otherwise",
    )
    device: str = Field(description="the torch device trained on (cpu, cuda:0...)")
    world_size: int = Field(1, description="number of processes trained together")
    optimizer_steps: int | None = Field(
        None,
        description="optimiser updates (counted by the built-in loop, or by a step hook of the run API's "
        "run.watch); None when not counted",
    )
    checkpoint_every: int | None = Field(
        None,
        description="checkpoints were written every N epochs (built-in trainer) or N optimiser steps "
        "(start_run) into the unfinished model's staging area; None: none were",
    )
    resumed: Resumed | None = Field(
        None, description="set when the training was killed and resumed from a checkpoint: from where, how often"
    )
    distributed: DistributedInfo | None = Field(
        None, description="set for a multi-process (DistributedDataParallel) run: backend, seeds and shards per rank"
    )


class GitInfo(_Part):
    """The git state of the training code."""

    commit: str | None = Field(None, description="HEAD commit")
    branch: str | None = Field(None, description="checked-out branch")
    dirty: bool = Field(False, description="whether tracked files had changed or untracked files existed")
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
        "symbolic link, outside the repository, or opted out (store_untracked=False)",
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


class EpochMetrics(_Part):
    """The metrics of one epoch."""

    epoch: int = Field(description="epoch number, from 1")
    train_loss: float = Field(description="mean training loss over the epoch's samples")
    valid_loss: float | None = Field(None, description="loss on the validation data after the epoch")
    valid_accuracy: float | None = Field(None, description="accuracy on the validation data after the epoch")
    learning_rate: float | None = Field(None, description="learning rate of the first parameter group")
    wall_time_s: float = Field(0.0, description="seconds the epoch took")


class OpLogItem(_Part):
    """One optimiser step's operation log (reprodl.training.oplog): an item of JSON lines, one operation a line."""

    step: int = Field(description="the optimiser step logged (from 1)")
    item: str = Field(description="the item holding it: oplog/step-<n>.jsonl")
    sha256: str = Field(description="sha256 of the item's bytes (so the record digest covers it)")
    n_ops: int = Field(0, description="operations logged (a step's first 50,000 at most)")
    bytes: int = Field(0, description="size of the item")
    seconds: float = Field(0.0, description="wall time of the logged step, logging included")


class StepTrace(_Part):
    """The step trace: a digest of the training state after each optimiser step (item ``trace.npy``)."""

    item: str = Field(keys.TRACE_FILE, description="item holding the trace: a NumPy structured array, no pickle")
    sha256: str | None = Field(None, description="sha256 of the trace item's bytes (so the record digest covers it)")
    kind: Literal["exact", "sampled"] = Field(
        "sampled",
        description="exact (format 1.2 on): per tensor and for the optimiser state, torch.hash_tensor of every "
        "element; sampled (older records, the default when absent): per parameter tensor, the float64 sum of a "
        "fixed sample of its elements",
    )
    n_steps: int = Field(0, description="optimiser steps traced")
    n_rows: int = Field(0, description="steps kept in the item (all of them up to every_step_up_to)")
    bytes_per_step: int = Field(
        0,
        description="bytes per kept step: exact, 48 (step, epoch, batch, loss, indices, inputs and optimiser "
        "digests) + 8 per tensor; sampled, 40 + 8 per parameter tensor",
    )
    tensors: list[str] = Field(
        default_factory=list, description="the tensors digested (parameters, then buffers), in column order"
    )
    optimizers: list[str] = Field(
        default_factory=list, description="exact: the classes of the optimisers whose state is digested"
    )
    sample: int = Field(
        64, description="sampled: elements per tensor summed (float64) into its fingerprint (0: exact kind)"
    )
    sample_seed: int = Field(0, description="sampled: seed of the generator choosing each tensor's sampled elements")
    every_step_up_to: int = Field(0, description="steps kept one by one; after that only every stride-th")
    stride: int = Field(1, description="the stride of the steps kept after every_step_up_to (1: every step kept)")
    oplog: list[OpLogItem] | None = Field(
        None,
        description="format 1.2, optional: the operation logs of some steps (by default the first and the step before "
        "each checkpoint; at most 8): per dispatched operation its name, module, forward/backward and output "
        "digests; None: none recorded",
    )


class Results(_Part):
    """What the training produced."""

    history: list[EpochMetrics] = Field(default_factory=list, description="metrics per epoch")
    final: dict[str, Any] = Field(default_factory=dict, description="the last epoch's metrics")
    wall_time_s: float = Field(0.0, description="seconds the training took")
    started_at: str | None = Field(None, description="start time (UTC, ISO 8601)")
    finished_at: str | None = Field(None, description="end time (UTC, ISO 8601)")
    weights_file: str = Field(keys.WEIGHTS_FILE, description="item holding the trained weights")
    weights_sha256: str | None = Field(
        None, description="weights digest: sha256 over tensor names, dtypes, shapes and bytes"
    )
    logged: list[dict[str, Any]] = Field(
        default_factory=list,
        description="metrics logged with run.log, in order; each has an epoch or a step",
    )
    saved_at_step: int | None = Field(
        None,
        description="the optimiser steps taken when the saved weights were taken (run.save may keep them before "
        "the end); None: not known (older records)",
    )
    trace: StepTrace | None = Field(
        None, description="the step trace: digests of the training state, loss and batch after each optimiser step"
    )


class ModelRef(_Part):
    """Another model dataset, pinned by its record and weights digests."""

    uri: str = Field(description="the model dataset's URI")
    uuid: str = Field(description="the model dataset's dtool UUID")
    record_digest: str | None = Field(None, description="digest of its provenance record")
    weights_sha256: str | None = Field(None, description="digest of its weights")


class Lineage(_Part):
    """The models this one derives from."""

    parent: ModelRef | None = Field(None, description="the model fine-tuned from, if any")
    reproduces: ModelRef | None = Field(None, description="the model this training reproduces, if it is a reproduction")
    replicates: ModelRef | None = Field(
        None,
        description="the model whose recorded recipe this training replicates on other data, if it is a replication",
    )


class ProvenanceRecord(_Part):
    """Everything needed to understand and redo a training (see DESIGN.md)."""

    schema_version: str = Field(
        keys.PROVENANCE_SCHEMA_VERSION, description="record format version; another major version is refused"
    )
    kind: Literal["model"] = Field("model", description="what the record describes")
    model_name: str = Field(description="name of the model (the model dataset's name by default)")
    created_at: str = Field(description="when the training started (UTC, ISO 8601)")
    reprodl_version: str = Field(description="version of reprodl that wrote the record")
    architecture: Architecture = Field(
        description="the model class and its initialisation (the first model, when there are several)"
    )
    models: list[ModelComponent] = Field(
        default_factory=list,
        description="every model watched, by name, the first the default (records before schema 1.2: only "
        "architecture; model_components() gives one for them)",
    )
    data: list[DataRef] = Field(description="every dataset read, with its role")
    training: Training = Field(description="how the model was trained")
    code: CodeInfo = Field(default_factory=CodeInfo, description="the code that ran the training")
    environment: Environment = Field(description="the software and hardware")
    results: Results = Field(default_factory=Results, description="metrics, times and the weights digest")
    lineage: Lineage = Field(default_factory=Lineage, description="parent model, and reproduced or replicated model")
    digest: str | None = Field(None, description="sha256 of this record's canonical JSON without this field")
    _raw: dict[str, Any] | None = PrivateAttr(default=None)

    # --- digest ---------------------------------------------------------------------
    def body(self) -> dict[str, Any]:
        """The JSON the digest covers: as read from disk when read (so fields a later
        reprodl adds do not change an old record's digest), else as dumped."""
        data = dict(self._raw) if self._raw is not None else self.model_dump(mode="json")
        data.pop("digest", None)
        return data

    def compute_digest(self) -> str:
        """sha256 of :meth:`body` as canonical JSON."""
        return "sha256:" + hashlib.sha256(canonical_json(self.body())).hexdigest()

    def sealed(self) -> ProvenanceRecord:
        """A copy with its digest filled in (over its current content)."""
        fresh = self.model_copy()
        fresh._raw = None
        return fresh.model_copy(update={"digest": fresh.compute_digest()})

    def check_digest(self) -> None:
        """Raise :class:`IntegrityError` unless the stored digest matches the content."""
        if self.digest is None:
            raise IntegrityError("the provenance record has no digest: it was not written by reprodl")
        actual = self.compute_digest()
        if actual != self.digest:
            raise IntegrityError(
                f"the provenance record was altered: its digest is {self.digest} but its content hashes to {actual}",
                problems=["record digest mismatch"],
            )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"

    def readme_for(self, ref: DataRef) -> str:
        """The README text of a data entry, stored in it or in the entry its ``readme_of`` names."""
        i = ref.readme_of
        if i is None or not 0 <= i < len(self.data):
            return ref.readme
        return self.data[i].readme

    def model_components(self) -> list[ModelComponent]:
        """Every model of the record, the default first; one named ``model`` for a record before schema 1.2.

        The default model's architecture and weights digest are the record's ``architecture`` and
        ``results.weights_sha256`` (what every reader of a single-model record trusts), whatever
        ``models[0]`` repeats of them.
        """
        if self.models:
            first = self.models[0].model_copy(
                update={"architecture": self.architecture, "weights_sha256": self.results.weights_sha256}
            )
            return [first, *self.models[1:]]
        return [
            ModelComponent(
                name=DEFAULT_MODEL_NAME,
                architecture=self.architecture,
                optimizers=[DEFAULT_MODEL_NAME],
                loss=self.training.loss,
                weights_file=self.results.weights_file,
                weights_sha256=self.results.weights_sha256,
                steps=self.training.optimizer_steps or 0,
            )
        ]

    def model_component(self, name: str | None = None) -> ModelComponent:
        """The model named ``name`` (None: the default, first); else :class:`ModelLoadError` naming those there are."""
        components = self.model_components()
        if name is None:
            return components[0]
        for component in components:
            if component.name == name:
                return component
        raise ModelLoadError(
            f"the record of {self.model_name!r} has no model named {name!r}: it has "
            f"{', '.join(repr(c.name) for c in components)}; pass one of those"
        )

    def data_by_role(self, role: str) -> list[DataRef]:
        """The datasets used in ``role`` (train, valid or test)."""
        return [d for d in self.data if d.role == role]


def store_readmes_once(refs: list[DataRef]) -> list[DataRef]:
    """``refs`` with each dataset's README kept in its first entry only (train and test
    from one dataset share one README): later entries of the same UUID and README point
    at it with ``readme_of``."""
    first: dict[tuple[str, str], int] = {}
    out = []
    for i, ref in enumerate(refs):
        key = (ref.uuid, ref.readme)
        if ref.readme and key in first:
            ref = ref.model_copy(update={"readme": "", "readme_of": first[key]})
        else:
            first.setdefault(key, i)
        out.append(ref)
    return out


def mirror_annotations(record: ProvenanceRecord) -> dict[str, Any]:
    """The annotations a model dataset carries as convenient mirrors of its record.

    They stay writable after freezing, so they are never trusted: ``verify`` compares them
    with what this function derives from the (hashed, digested) record.
    """
    first = record.data_by_role("train")[0]
    return {
        keys.MODEL_KIND: keys.KIND_MODEL,
        keys.MODEL_NAME: record.architecture.import_path,
        keys.MODEL_PARAMETERS: {**record.training.params, "init_params": record.architecture.init_params},
        keys.SOURCE_DATASET_URI: first.uri,
        keys.SOURCE_DATASET_UUID: first.uuid,
        keys.SOURCE_DATASET_NAME: first.name,
        keys.CATEGORY_ENCODING: first.category_encoding,
        keys.RECORD_DIGEST: record.digest,
    }


def record_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the provenance record, with its ``$id``."""
    schema = ProvenanceRecord.model_json_schema()
    schema["$id"] = keys.PROVENANCE_SCHEMA_ID
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


_JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null"}
FIELDS_START = "<!-- record-fields:start -->"
FIELDS_END = "<!-- record-fields:end -->"


def _def_name(node: dict[str, Any]) -> str | None:
    """The model a schema node refers to (directly, as list items or as an option), if any."""
    options = [node, *node.get("anyOf", [])]
    for part in options + [option.get("items", {}) for option in options]:
        if "$ref" in part:
            return str(part["$ref"]).rsplit("/", 1)[-1]
    return None


def _type_name(node: dict[str, Any]) -> str:
    """A short, readable type for a JSON Schema node (``list[int] or null``)."""
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in node:
        return " or ".join(_type_name(part) for part in node["anyOf"])
    if "enum" in node or "const" in node:
        return " or ".join(json.dumps(v) for v in node.get("enum", [node.get("const")]))
    kind = node.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(node.get('items', {}))}]"
    if kind == "object":
        extra = node.get("additionalProperties")
        return f"dict[str, {_type_name(extra)}]" if isinstance(extra, dict) and extra else "object"
    return _JSON_TYPES.get(str(kind), str(kind))


def _field_rows(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> list[tuple[str, str, str]]:
    """(path, type, description) of every property of ``node`` and, depth first, of the models in it."""
    rows = []
    for name, prop in node.get("properties", {}).items():
        path = prefix + name
        rows.append((path, _type_name(prop), str(prop.get("description", ""))))
        ref = _def_name(prop)
        if ref is not None:
            is_list = prop.get("type") == "array" or any(p.get("type") == "array" for p in prop.get("anyOf", []))
            rows += _field_rows(schema, schema["$defs"][ref], path + ("[]." if is_list else "."))
    return rows


def fields_table(schema: dict[str, Any] | None = None) -> str:
    """The record's fields as a Markdown table (path, type, description), from its JSON Schema.

    ``docs/formats.md`` holds this table between ``FIELDS_START`` and ``FIELDS_END``; a test
    checks it is current, and ``reprodl schema provenance --markdown`` prints it.
    """
    schema = schema if schema is not None else record_json_schema()
    lines = ["| field | type | description |", "|---|---|---|"]
    for path, kind, text in _field_rows(schema, schema, ""):
        cells = (f"`{path}`", kind, text)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def parse_record(text: str | bytes, *, source: str = "record") -> ProvenanceRecord:
    """A record from ``provenance.json`` text.

    Raises :class:`ModelLoadError` for bad JSON, another major schema version or a record
    that does not match the schema.
    """
    what = f"{source}: {keys.PROVENANCE_FILE}"
    check_size(text, keys.MAX_RECORD_BYTES, what=what, error=ModelLoadError)
    raw = load_json(text, what=what, error=ModelLoadError)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{what} holds a JSON {type(raw).__name__}, not a record (a JSON object)")
    version = str(raw.get("schema_version", ""))
    if version.split(".")[0] != keys.PROVENANCE_SCHEMA_VERSION.split(".")[0]:
        raise ModelLoadError(
            f"{source}: provenance schema version {version!r} is not supported by this reprodl "
            f"(reads {keys.PROVENANCE_SCHEMA_VERSION}); upgrade reprodl"
        )
    try:
        record = ProvenanceRecord.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError
        raise ModelLoadError(f"{source}: provenance.json does not match the schema: {exc}") from None
    record._raw = raw
    return record
