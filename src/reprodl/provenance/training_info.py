"""The record's training: the model's architecture and components, optimisers, seeds,
determinism, resumption and distribution."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from reprodl.provenance._part import _Part


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
