"""The provenance record: one typed, schema-versioned object; its digest; its diff.

The record is stored as the item ``provenance.json`` of a model dataset, so dtool's manifest
hashes it; it also carries a sha256 digest of itself (over its canonical JSON without the
``digest`` field), so a copied record that was edited is caught, and a chain of models
(``lineage.parent.record_digest``) can be checked offline. No torch here: ``reprodl
provenance URI`` answers without importing it.

Example:
    >>> record = load_record("/models/digits-model")       # doctest: +SKIP
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


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Architecture(_Part):
    import_path: str = Field(description="module:qualname of the model class")
    module: str
    class_name: str
    init_params: dict[str, Any] = Field(default_factory=dict)
    n_parameters: int = 0
    n_trainable: int = 0
    frozen_parameters: list[str] = Field(default_factory=list, description="names with requires_grad=False")
    source_sha256: str | None = Field(None, description="sha256 of the class's source code")
    initialisation: Literal["constructor", "stored", "parent"] = "constructor"
    initial_weights_sha256: str | None = None


class DataRef(_Part):
    role: Literal["train", "valid", "test"]
    uri: str
    uuid: str
    name: str
    input_type: str | None = None
    manifest_digest: str
    manifest_item: str | None = Field(None, description="item holding a copy of the dataset's manifest")
    readme: str = Field("", description="the dataset's README text (empty when readme_of names an earlier entry)")
    readme_of: int | None = Field(
        None,
        description="index in data of the entry of the same dataset that holds "
        "its README: a README is stored once per record",
    )
    usetype: str | None = None
    split: dict[str, Any] | None = Field(None, description="in-memory stratified split (test, valid, seed)")
    selection_digest: str | None = Field(
        None, description="sha256 of the selected samples' keys, in order (the usetype split)"
    )
    labels_digest: str | None = Field(
        None,
        description="sha256 of the selected samples' stored labels, in order (category overlay values "
        "or label integers); the category_encoding is recorded apart",
    )
    n_items: int = 0
    n_dataset_items: int = 0
    category_encoding: dict[str, int] = Field(default_factory=dict)
    transform: dict[str, Any] | None = None
    input_shape: list[int] = Field(default_factory=list)
    image_dimensions: list[int] | None = Field(None, description="the dataset's image_dimensions annotation as read")
    value_scale: float | None = None
    image_mode: str | None = None
    source: Literal["dtool", "in-memory", "unverified"] = Field(
        "dtool",
        description="what kind of data this is: a dtool dataset (checked against its manifest), an "
        "in-memory tensor or array (hashed: manifest_digest is the sha256 of its content), or any other "
        "dataset, recorded by class only (unverified data: reprodl cannot tell whether it changed)",
    )


class OptimizerInfo(_Part):
    class_name: str
    module: str
    defaults: dict[str, Any] = Field(default_factory=dict)
    param_groups: list[dict[str, Any]] = Field(default_factory=list)


class CallableInfo(_Part):
    class_name: str
    module: str
    args: dict[str, Any] = Field(default_factory=dict)


class Seeds(_Part):
    seed: int
    python: int
    numpy: int
    torch: int
    dataloader_generator: int
    worker_seeds: list[int] = Field(default_factory=list)


class Determinism(_Part):
    mode: Literal["bitwise", "statistical"]
    use_deterministic_algorithms: bool
    cudnn_deterministic: bool | None = None
    cudnn_benchmark: bool | None = None
    cublas_workspace_config: str | None = None
    tf32_matmul: bool | None = None
    tf32_cudnn: bool | None = None
    float32_matmul_precision: str | None = None
    num_threads: int | None = None


class Training(_Part):
    optimizer: OptimizerInfo
    loss: CallableInfo
    scheduler: CallableInfo | None = None
    epochs: int
    batch_size: int
    shuffle: bool = True
    num_workers: int = 0
    params: dict[str, Any] = Field(default_factory=dict)
    seeds: Seeds
    determinism: Determinism
    data_order_digests: list[str] = Field(default_factory=list)
    device: str
    world_size: int = 1
    optimizer_steps: int | None = Field(
        None, description="optimiser updates counted by a step hook (the run API's run.watch); None when not counted"
    )


class GitInfo(_Part):
    commit: str | None = None
    branch: str | None = None
    dirty: bool = False
    remote: str | None = None
    root: str | None = None
    patch_item: str | None = None
    patch_sha256: str | None = None
    untracked: list[str] = Field(default_factory=list)
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
    git: GitInfo | None = None
    entry_script: str | None = None
    entry_script_sha256: str | None = None
    entry_script_item: str | None = Field(None, description="item holding the entry script (outside git)")
    argv: list[str] = Field(default_factory=list)
    working_directory: str | None = None
    config_file: str | None = Field(None, description="the training config file (reprodl train)")
    config: dict[str, Any] | None = Field(None, description="the training config as run, overrides applied")
    run: RunCommand | None = Field(
        None, description="how to run the training again (runs made with reprodl.start_run; reproduced by re-execution)"
    )
    snapshot: SourceSnapshot | None = Field(None, description="the source snapshot stored with the model")


class Environment(_Part):
    python: str
    implementation: str
    platform: str
    machine: str
    processor: str = ""
    cpu_count: int | None = None
    torch: str | None = None
    cuda: str | None = None
    cudnn: int | None = None
    gpus: list[str] = Field(default_factory=list)
    numpy: str | None = None
    reprodl: str | None = None
    packages: dict[str, str] = Field(default_factory=dict)


class EpochMetrics(_Part):
    epoch: int
    train_loss: float
    valid_loss: float | None = None
    valid_accuracy: float | None = None
    learning_rate: float | None = None
    wall_time_s: float = 0.0


class Results(_Part):
    history: list[EpochMetrics] = Field(default_factory=list)
    final: dict[str, Any] = Field(default_factory=dict)
    wall_time_s: float = 0.0
    started_at: str | None = None
    finished_at: str | None = None
    weights_file: str = keys.WEIGHTS_FILE
    weights_sha256: str | None = None
    logged: list[dict[str, Any]] = Field(
        default_factory=list,
        description="metrics logged with run.log, in order; each has an epoch or a step",
    )


class ModelRef(_Part):
    uri: str
    uuid: str
    record_digest: str | None = None
    weights_sha256: str | None = None


class Lineage(_Part):
    parent: ModelRef | None = None
    reproduces: ModelRef | None = None


class ProvenanceRecord(_Part):
    """Everything needed to understand and redo a training (see DESIGN.md)."""

    schema_version: str = keys.PROVENANCE_SCHEMA_VERSION
    kind: Literal["model"] = "model"
    model_name: str
    created_at: str
    reprodl_version: str
    architecture: Architecture
    data: list[DataRef]
    training: Training
    code: CodeInfo = Field(default_factory=CodeInfo)
    environment: Environment
    results: Results = Field(default_factory=Results)
    lineage: Lineage = Field(default_factory=Lineage)
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
