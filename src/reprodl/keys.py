"""Metadata keys, item names and schema versions: the one place they are spelled.

The ``dtoolAI.*``, ``category``, ``usetype``, ``category_encoding``, ``tensor_file_idn``
and ``image_dimensions`` names are the conventions of the original dtoolAI 0.2.0, so
datasets it made load here and datasets made here load there.
"""

from __future__ import annotations

# --- dataset annotations (dtoolAI conventions) ---------------------------------------
INPUT_TYPE = "dtoolAI.inputtype"
CATEGORY_ENCODING = "category_encoding"
TENSOR_FILE_IDN = "tensor_file_idn"
IMAGE_DIMENSIONS = "image_dimensions"

INPUT_TYPE_IMAGE = "ImageDataSet"
INPUT_TYPE_TENSOR = "TensorDataSet"
INPUT_TYPE_FILES = "FileDataSet"  # reprodl's: any dtool dataset, its items as local files

# --- dataset overlays ---------------------------------------------------------------
CATEGORY_OVERLAY = "category"
USETYPE_OVERLAY = "usetype"

# --- reprodl's own dataset annotations --------------------------------------------------
# Per-row split of a TensorDataSet (its rows are not items, so no overlay can hold it).
TENSOR_USETYPE = "reprodl.usetype"
LABELS_FILE_IDN = "reprodl.labels_idn"
TENSOR_DTYPE = "reprodl.dtype"
TENSOR_SHAPE = "reprodl.shape"
VALUE_SCALE = "reprodl.value_scale"  # divide raw values by this to get [0, 1] floats
IMAGE_MODE = "reprodl.image_mode"  # Pillow mode images are converted to on read
SPLIT_INFO = "reprodl.split"

# --- item names ------------------------------------------------------------------------
TENSOR_DATA_FILE = "data.npy"
TENSOR_LABELS_FILE = "labels.npy"
README_FILE = "README.yml"

# --- model dataset ---------------------------------------------------------------------
WEIGHTS_FILE = "model.safetensors"
PROVENANCE_FILE = "provenance.json"
HISTORY_FILE = "history.json"
INITIAL_WEIGHTS_FILE = "initial.safetensors"
CODE_PATCH_FILE = "code.patch"
MODELS_DIR = "models/"  # models/<name>.safetensors: the weights of each model but the first (default)
TRACE_FILE = "trace.npy"  # the step trace (reprodl.training.trace), a NumPy structured array
OPLOG_DIR = "oplog/"  # oplog/step-<n>.jsonl: the operations of logged steps (reprodl.training.oplog)
# Which optimiser steps get an operation log ("1,5"; "none"): default the first (reprodl.training.oplog).
OPLOG_STEPS_ENV = "REPRODL_OPLOG_STEPS"
# Bounds of the operation logs (reprodl.training.oplog), written and read: operations one log keeps (the
# first ones), logged steps one run keeps (the first and the latest before checkpoints), and their bytes
# together (they also travel in a checkpoint's meta.json, MAX_CHECKPOINT_META_BYTES).
MAX_OPLOG_OPS = 50_000
MAX_OPLOG_STEPS = 8
MAX_OPLOG_BYTES = 8 * 1024 * 1024
# Test-only negative control of a resume: skip one restore (rng, loader or optimizer); named in the record.
SKIP_RESTORE_ENV = "REPRODL_SKIP_RESTORE"
CODE_DIR = "code/"  # untracked files and an entry script outside git, kept with the model
CODE_SNAPSHOT_FILE = "code/snapshot.tar"  # the tracked files at the recorded commit (run API)
# Set by `reprodl reproduce` for the re-executed script: JSON telling start_run where to write.
RUN_REDIRECT_ENV = "REPRODL_REPRODUCE_INTO"
# Progress of a re-executed script (reprodl.reproduction.progress): the file the child writes its step count
# to (set by `reprodl reproduce`), "1"/"0" to show or hide the progress lines (default: when stderr is a
# terminal), and the seconds between progress lines (the child writes at most every min(1, that / 2) s).
PROGRESS_FILE_ENV = "REPRODL_PROGRESS_FILE"
PROGRESS_ENV = "REPRODL_PROGRESS"
PROGRESS_EVERY_ENV = "REPRODL_PROGRESS_EVERY"
PROGRESS_EVERY_S = 3.0
# Models made by the original dtoolAI 0.2.0: a pickled state dict (read with weights_only=True)
# and the architecture named in its model_name annotation.
DTOOLAI_WEIGHTS_FILE = "model.pt"
DTOOLAI_ARCHITECTURES = {
    "dtoolai.simpleScalingCNN": "reprodl.zoo:SimpleScalingCNN",
    "dtoolai.resnet18pretrained": "reprodl.zoo:ResNet18",
}
CONVERTED_FROM = "converted_from"  # the record field of a model converted from a dtoolAI one
MODEL_KIND = "reprodl.kind"
KIND_MODEL = "model"
KIND_SUMMARY = "multirun-summary"
MODEL_NAME = "model_name"
MODEL_PARAMETERS = "model_parameters"
RECORD_DIGEST = "reprodl.record_digest"
SOURCE_DATASET_URI = "source_dataset_uri"
SOURCE_DATASET_UUID = "source_dataset_uuid"
SOURCE_DATASET_NAME = "source_dataset_name"
SUMMARY_FILE = "summary.json"
SUMMARY_URI = "reprodl.summary_uri"
ENVELOPE_PLOT_FILE = "envelope.png"
SUMMARY_MEMBERS = "reprodl.members"  # a multi-run summary's annotation: its models' URIs
KIND_CLAIM = "claim"  # a comparison of two recipes (reprodl compare), written as a dataset
CLAIM_FILE = "claim.json"
CLAIM_PLOT_FILE = "distributions.png"
COMPARE_PLAN_FILE = "compare-plan.json"  # written by compare --write-configs beside the member configs
MANIFESTS_DIR = "manifests"  # model dataset items <MANIFESTS_DIR>/<uuid>.json: data manifests
# Ed25519 signatures of a model dataset (a list; annotations stay writable after freezing).
# No dot in the name: dtool-s3 splits annotation keys on dots.
SIGNATURES = "reprodl_signatures"
SIGNATURE_FORMAT = "reprodl-signature/1"  # names what a signature's payload holds
# `reprodl sign` with an ECDSA key: OpenSSF model-signing bundles of the dataset (a list, one per key).
MODEL_SIGNING = "reprodl_model_signing"

# Written by `reprodl reproduce --output` on the reproduction it keeps: the verdict and what was
# reproduced (an annotation, so not covered by the record digest). No dot: dtool-s3 splits on dots.
REPRODUCTION_RESULT = "reprodl_reproduction"
# `reprodl reproduce --attest KEY`: a signed in-toto statement of the reproduction (a Sigstore
# bundle in the OpenSSF model-signing format), also kept as this annotation on a kept reproduction.
ATTESTATION = "reprodl_attestation"
ATTESTATION_FORMAT = "reprodl-reproduction-attestation/1"  # the predicate's reprodl part
ATTESTATION_PREDICATE_KEY = "reprodl_reproduction"  # where that part sits in the model-signing predicate
ATTESTATION_SUFFIX = ".reproduction.sigstore.json"  # the bundle's default file name: <model name><suffix>
MAX_ATTESTATION_BYTES = 16 * 1024 * 1024  # a bundle read back: refused over this

# --- the catalog (reprodl.catalog) ---------------------------------------------------------
CATALOG_ENV = "REPRODL_CATALOG"  # the catalog file used when --catalog is not given
CATALOG_FILE = "catalog.sqlite"  # its name in the user's data directory
CATALOG_SCHEMA_VERSION = "2"  # 2: the full-text index reads its text from entries
CATALOG_EXPORT_FORMAT = "reprodl-catalog-entry/1"  # each line of `reprodl catalog export`

# --- schema versions -------------------------------------------------------------------
PROVENANCE_SCHEMA_VERSION = "1.3"
# Identifiers the project keeps: under its repository's URL (the domain reprodl.dev, used before,
# is not the project's). A record does not carry them, so records written before read the same.
PROJECT_URL = "https://github.com/reprodl/reprodl"
PROVENANCE_SCHEMA_ID = f"{PROJECT_URL}/blob/main/docs/schemas/provenance-1.3.json"
TERMS_NAMESPACE = f"{PROJECT_URL}/blob/main/docs/terms.md#"  # reprodl's terms in PROV and JSON-LD
README_SCHEMA_VERSION = "1.0"

# --- staging (datasets being created or copied) ----------------------------------------
STAGING_PREFIX = ".reprodl-staging-"  # <base>/<prefix><name>-<random>: a dataset being built
STAGING_MARKER = ".reprodl-staging.json"  # inside a staging dir: who owns it (pid, host)
CHECKPOINT_DIR = "checkpoint"  # inside a staging dir: a training's checkpoints (reprodl.training.checkpoint)
CHECKPOINTS_KEPT = 2  # a training keeps its newest checkpoints, so a damaged newest one is not all it has
CHECKPOINT_FORMAT = 1  # the "format" in a checkpoint's meta.json; another is not resumable
CHECKPOINT_META = "meta.json"  # in each <staging>/checkpoint/ckpt-<step>/: where the run was (JSON)
METADATA_TMP_PREFIX = ".reprodl-tmp-"  # <dataset>/.dtool/<prefix>...: a metadata file being written

# --- bounds on what a downloaded file may make reprodl allocate or parse ------------------
MAX_README_BYTES = 1024 * 1024  # a dataset's README.yml
MAX_RECORD_BYTES = 64 * 1024 * 1024  # provenance.json (its history and packages included)
MAX_METADATA_BYTES = 256 * 1024 * 1024  # any other JSON read over http (manifest, annotations)
MAX_CHECKPOINT_META_BYTES = 16 * 1024 * 1024  # a checkpoint's meta.json (history, trace counters)
MAX_CHECKPOINT_COUNTER = 2**53  # a checkpoint's epoch, step and batch (exact as a float, fits an int64)
MAX_NESTING = 64  # depth of JSON/YAML containers (records nest about 6 deep)
MAX_CATEGORIES = 100_000  # distinct labels of a dataset (ImageNet-21k has 21,841)
MAX_IMAGE_SIDE = 16384  # pixels per side of a transform's or a record's image size
MAX_SAMPLE_ELEMENTS = 1 << 28  # values in one recorded sample shape (1 GiB as float32)
HTTP_TIMEOUT_ENV = "REPRODL_HTTP_TIMEOUT"  # seconds to connect and between bytes (default 10, 60)
# What a recorded integer may make reprodl start or build, relative to this machine
# (reprodl.trust.machine_limits): refused beyond, naming the field, its value and the limit.
WORKERS_PER_CPU = 4  # DataLoader worker processes (num_workers) per CPU of this machine
PROCESSES_PER_CPU = 4  # torchrun processes (world_size) per CPU for gloo; nccl: one per GPU
PROCESS_MEMORY_BYTES = 512 * 1024 * 1024  # memory each torchrun process is counted as needing
PARAMETER_BYTES = 16  # memory per model parameter (weights, gradients, two optimiser states)
MAX_PARAMETERS = 2 * 10**9  # parameters a recorded architecture may build, whatever the memory
MAX_MODULES = 100_000  # modules (layers) a recorded architecture may build (a ResNet-152 has ~500)

# --- exports (reprodl.exports) ---------------------------------------------------------------
# ONNX metadata_props: what an ONNX-only user needs to feed the model and name its outputs.
ONNX_CATEGORIES = "reprodl.categories"  # JSON list: output index i is category i
ONNX_INPUT_SHAPE = "reprodl.input_shape"  # JSON list: one model input (C, H, W), batch axis first
ONNX_PREPROCESSING = "reprodl.preprocessing"  # JSON: value_scale, mean/std, image mode and size
MLFLOW_MODEL_DATASET = "reprodl-model"  # the model dataset, in the MLflow model's artifacts

# --- executors (reprodl.reproduction.executors) -------------------------------------------
EXECUTORS = ("local", "slurm", "ray")  # where compare / ablate / reproduce run their trainings
EXECUTOR_STATE_DIR = ".reprodl-executor"  # under a compare's output: the Slurm jobs it submitted, to attach to
# Set in a Ray task by the executor (Ray has no environment variables of its own for these);
# a Slurm job is read from SLURM_JOB_ID, SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID, SLURMD_NODENAME.
PLACEMENT_SCHEDULER_ENV = "REPRODL_SCHEDULER"
PLACEMENT_JOB_ENV = "REPRODL_JOB_ID"
PLACEMENT_ALLOCATION_ENV = "REPRODL_ALLOCATION"
# A site's defaults for the executor options (--executor, --ray-address, --partition, --time, --cpus,
# --gpus, --mem), read when the option is not given. RAY_ADDRESS is Ray's own variable.
EXECUTOR_ENV = {
    "executor": "REPRODL_EXECUTOR",
    "ray_address": "RAY_ADDRESS",
    "partition": "REPRODL_SLURM_PARTITION",
    "time": "REPRODL_SLURM_TIME",
    "cpus": "REPRODL_EXECUTOR_CPUS",
    "gpus": "REPRODL_EXECUTOR_GPUS",
    "mem": "REPRODL_SLURM_MEM",
}
