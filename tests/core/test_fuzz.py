"""Issue 7.11: property-based tests: every parser of downloaded or user input raises only
``reprodl.errors.*`` on any input (never a KeyError, RecursionError, struct.error ...).

Each property runs a modest number of examples (FUZZ_EXAMPLES) so the file takes a few
seconds; raise it locally (``REPRODL_FUZZ_EXAMPLES=5000``) to search harder.
"""

from __future__ import annotations

import copy
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprodl.errors import ReprodlError

FUZZ_EXAMPLES = int(os.environ.get("REPRODL_FUZZ_EXAMPLES", "200"))
fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# JSON-like values: what a hostile provenance.json, annotation or config can hold.
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20,
)

VALID_RECORD: dict[str, Any] = {
    "schema_version": "1.0",
    "kind": "model",
    "model_name": "m",
    "created_at": "2024-01-01T00:00:00Z",
    "reprodl_version": "0",
    "digest": None,
    "architecture": {
        "import_path": "reprodl.zoo:GenNet",
        "module": "reprodl.zoo",
        "class_name": "GenNet",
        "init_params": {"input_channels": 1},
    },
    "data": [
        {
            "role": "train",
            "uri": "file:///d",
            "uuid": "u",
            "name": "d",
            "manifest_digest": "sha256:0",
            "readme": "name: d",
            "category_encoding": {"0": 0, "1": 1},
            "input_shape": [1, 8, 8],
            "transform": {"class": "reprodl.transforms.Resize", "config": {"name": "Resize", "size": [8, 8]}},
        }
    ],
    "training": {
        "optimizer": {"class_name": "SGD", "module": "torch.optim"},
        "loss": {"class_name": "NLLLoss", "module": "torch.nn"},
        "epochs": 1,
        "batch_size": 2,
        "seeds": {"seed": 0, "python": 0, "numpy": 0, "torch": 0, "dataloader_generator": 0},
        "determinism": {"mode": "bitwise", "use_deterministic_algorithms": True},
        "device": "cpu",
    },
    "environment": {"python": "3", "implementation": "CPython", "platform": "x", "machine": "x"},
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON value (to pick a field to replace)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


RECORD_PATHS = _paths(VALID_RECORD)[1:]


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    out = copy.deepcopy(value)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = new
    return out


def _only_reprodl_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; any exception that is not a ReprodlError fails the property."""
    try:
        return fn(*args, **kwargs)
    except ReprodlError:
        return None


# --- the record parser ---------------------------------------------------------------------
@fuzz
@given(st.binary(max_size=300))
def test_record_parser_on_any_bytes(data):
    from reprodl.provenance import parse_record

    _only_reprodl_errors(parse_record, data, source="fuzz")


@fuzz
@given(st.sampled_from(RECORD_PATHS), json_values)
def test_record_parser_on_a_record_with_one_field_replaced(path, value):
    from reprodl.provenance import parse_record

    text = json.dumps(_replace(VALID_RECORD, path, value))
    record = _only_reprodl_errors(parse_record, text, source="fuzz")
    if record is not None:  # what reads a parsed record must not crash either
        from reprodl.provenance import summary_lines

        _only_reprodl_errors(record.check_digest)
        _only_reprodl_errors(summary_lines, record)
        for ref in record.data:
            if ref.transform is not None:
                from reprodl.data.transforms import from_description

                _only_reprodl_errors(from_description, ref.transform)


@fuzz
@given(json_values)
def test_transform_configs_from_a_record(config):
    from reprodl.data.transforms import from_config, from_description

    _only_reprodl_errors(from_config, config)
    _only_reprodl_errors(from_description, {"class": "reprodl.transforms.Compose", "config": config})


@fuzz
@given(
    st.sampled_from(
        [
            "Resize",
            "CenterCrop",
            "RandomCrop",
            "Normalize",
            "ToTensor",
            "GaussianNoise",
            "RandomHorizontalFlip",
            "Compose",
        ]
    ),
    st.dictionaries(
        st.sampled_from(["size", "padding", "mean", "std", "mode", "p", "transforms"]), json_values, max_size=3
    ),
)
def test_named_transform_configs_with_any_arguments(name, args):
    from reprodl.data.transforms import from_config

    _only_reprodl_errors(from_config, {"name": name, **args})


# --- README validation ----------------------------------------------------------------------
@fuzz
@given(st.text(max_size=300))
def test_readme_validation_on_any_text(text):
    from reprodl.data.readme import validate_readme

    _only_reprodl_errors(validate_readme, text)


@fuzz
@given(
    st.dictionaries(
        st.sampled_from(["name", "description", "authors", "origin", "license", "usetype", "x"]),
        json_values,
        max_size=6,
    )
)
def test_readme_validation_on_any_mapping(data):
    import yaml

    from reprodl.data.readme import validate_readme

    _only_reprodl_errors(validate_readme, yaml.safe_dump(data))


YAML_PIECES = st.sampled_from(
    [
        "a",
        ":",
        " ",
        "\n",
        "- ",
        "&x",
        "*x",
        "!!",
        "!!binary",
        "!!timestamp",
        "{",
        "}",
        "[",
        "]",
        "?",
        "'",
        '"',
        "|",
        ">",
        "#",
        "%YAML 1.1\n",
        "---",
        "...",
        "2001-12-14",
        "0x1F",
        ".nan",
        "!!python/object:os.system",
        "<<: ",
        "\t",
        "1e400",
    ]
)


@fuzz
@given(st.lists(YAML_PIECES, max_size=30).map("".join))
def test_yaml_loader_on_yaml_like_text(text):
    from reprodl.data.readme import validate_readme
    from reprodl.parsing import load_yaml

    _only_reprodl_errors(load_yaml, text, what="fuzz")
    _only_reprodl_errors(validate_readme, text)


# --- config loading ---------------------------------------------------------------------------
CONFIG = {
    "name": "c",
    "output": "out",
    "data": {"train": {"uri": "data", "usetype": "train"}},
    "model": {"class": "GenNet"},
    "params": {"seed": 0},
}


@fuzz
@given(st.sampled_from(_paths(CONFIG)[1:]), json_values)
def test_config_with_one_field_replaced(path, value):
    from reprodl.training.config import load_config

    _only_reprodl_errors(load_config, _replace(CONFIG, path, value))


@fuzz
@given(json_values, st.lists(st.text(max_size=20), max_size=3))
def test_config_from_any_value_and_overrides(raw, overrides):
    from reprodl.training.config import load_config

    _only_reprodl_errors(load_config, raw if isinstance(raw, dict) else {"x": raw}, overrides)
    _only_reprodl_errors(load_config, copy.deepcopy(CONFIG), overrides)


@fuzz
@given(st.lists(YAML_PIECES, max_size=30).map("".join) | st.text(max_size=200))
def test_config_file_with_any_text(tmp_path_factory, text):
    from reprodl.training.config import load_config

    path = tmp_path_factory.mktemp("cfg") / "train.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _only_reprodl_errors(load_config, path)


# --- URI parsing -------------------------------------------------------------------------------
uri_like = st.text(max_size=60) | st.builds(
    lambda s, rest: f"{s}{rest}",
    st.sampled_from(["file://", "http://", "https://", "s3://", "ftp://", "c:", "file:", "//", "s3:///"]),
    st.text(max_size=40),
)


@fuzz
@given(uri_like, st.text(max_size=30))
def test_uri_functions_on_any_text(uri, name):
    from reprodl.store import uris

    for fn in (
        uris.normalise_uri,
        uris.scheme_of,
        uris.local_path,
        uris.check_name,
        uris.check_relpath,
        uris.relpath_problem,
        uris.file_name_problem,
        uris.name_is_valid,
    ):
        _only_reprodl_errors(fn, uri)
    _only_reprodl_errors(uris.dataset_uri, uri, name)


@fuzz
@given(json_values)
def test_uri_checks_on_any_value(value):
    from reprodl.store import uris

    for fn in (uris.relpath_problem, uris.file_name_problem):
        _only_reprodl_errors(fn, value)


# --- IDX and npy readers ---------------------------------------------------------------------------
idx_headers = st.builds(
    lambda code, ndim, dims, body: bytes([0, 0, code, ndim]) + struct.pack(f">{len(dims)}I", *dims) + body,
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
    st.integers(0, 255) | st.integers(0, 4),
    st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 4), max_size=5),
    st.binary(max_size=64),
)
magic_prefixed = st.builds(
    lambda magic, rest: magic + rest,
    st.sampled_from([b"\x00\x00\x08\x03", b"\x00\x00\x0d\x01", b"\x1f\x8b", b"\x1f\x8b\x08\x00", b"\x00\x00"]),
    st.binary(max_size=40),
)


@fuzz
@given(st.binary(max_size=200) | idx_headers | magic_prefixed)
def test_idx_reader_on_any_bytes(tmp_path_factory, data):
    import gzip

    from reprodl.data.creators import read_idx

    folder = tmp_path_factory.mktemp("idx")
    for name, content in (("a.idx", data), ("b.idx.gz", gzip.compress(data))):
        (folder / name).write_bytes(content)
        _only_reprodl_errors(read_idx, folder / name)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


NPY = _npy_bytes(np.arange(12, dtype=np.int64).reshape(3, 4))


@fuzz
@given(st.integers(0, len(NPY) - 1), st.binary(min_size=1, max_size=8), st.booleans())
def test_npy_readers_on_a_mutated_file(tmp_path_factory, at, patch, truncate):
    from reprodl.data.creators import load_array_file
    from reprodl.data.datasets import _load_npy

    data = NPY[:at] if truncate else NPY[:at] + patch + NPY[at + len(patch) :]
    path = tmp_path_factory.mktemp("npy") / "a.npy"
    path.write_bytes(data)
    _only_reprodl_errors(load_array_file, path)
    _only_reprodl_errors(_load_npy, str(path), "fuzz://d")


@fuzz
@given(st.text(max_size=120))
def test_npy_readers_on_any_header(tmp_path_factory, header):
    from reprodl.data.creators import load_array_file
    from reprodl.data.datasets import _load_npy

    raw = header.encode("utf-8", "surrogatepass")
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + b"\0" * 32
    path = tmp_path_factory.mktemp("npy") / "a.npy"
    path.write_bytes(data)
    _only_reprodl_errors(load_array_file, path)
    _only_reprodl_errors(_load_npy, str(path), "fuzz://d")


# --- the weights sniffer ---------------------------------------------------------------------------
class _OneItemDataset:
    """What load_weights needs of a StoredDataSet: one item, model.safetensors, at ``path``."""

    def __init__(self, path: Path, relpath: str = "model.safetensors") -> None:
        self.uri = "fuzz://model"
        self._path = str(path)
        self._relpath = relpath
        self.identifiers = ["id"]

    def relpath(self, identifier: str) -> str:
        return self._relpath

    def identifier_of(self, relpath: str) -> str:
        if relpath != self._relpath:
            raise KeyError(relpath)
        return "id"

    def item_path(self, identifier: str) -> str:
        return self._path


def _safetensors_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2)})


SAFETENSORS = _safetensors_bytes()
weight_files = (
    st.binary(max_size=200)
    | st.builds(
        lambda n, header, body: struct.pack("<Q", n) + header + body,
        st.integers(0, 2**64 - 1) | st.integers(0, 300),
        st.binary(max_size=100),
        st.binary(max_size=64),
    )
    | st.builds(
        lambda at, patch: SAFETENSORS[:at] + patch + SAFETENSORS[at + len(patch) :],
        st.integers(0, len(SAFETENSORS)),
        st.binary(min_size=1, max_size=8),
    )
    | st.builds(
        lambda header: struct.pack("<Q", len(header)) + header + b"\0" * 64,
        json_values.map(lambda v: json.dumps(v).encode()),
    )
)


@fuzz
@given(weight_files)
def test_weights_sniffer_on_any_file(tmp_path_factory, data):
    from reprodl.modeldataset.read import load_weights

    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    path.write_bytes(data)
    _only_reprodl_errors(load_weights, _OneItemDataset(path))


def test_the_fuzzed_valid_inputs_are_valid(tmp_path):
    """The seeds the fuzzers mutate are accepted as they are (so mutations test real parsing)."""
    from reprodl.modeldataset.read import load_weights
    from reprodl.provenance import parse_record
    from reprodl.training.config import load_config

    assert parse_record(json.dumps(VALID_RECORD)).model_name == "m"
    assert load_config(copy.deepcopy(CONFIG)).name == "c"
    path = tmp_path / "model.safetensors"
    path.write_bytes(SAFETENSORS)
    assert sorted(load_weights(_OneItemDataset(path))) == ["b", "w"]
