"""Issue 7.7: a downloaded dataset, record or config must not exhaust the machine.

Labels never size allocations, transform sizes are bounded, YAML aliases are refused,
READMEs have a size limit and are stored once in a record, every http request has a
timeout and a size limit, deep JSON is a clear error (never a RecursionError).
"""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from remote_servers import *  # noqa: F403 - the dtool_cache fixture

from reprodl import keys, store
from reprodl.data.creators import create_from_arrays
from reprodl.data.datasets import ImageDataSet, TensorDataSet
from reprodl.data.ops import dataset_info, dataset_stats
from reprodl.data.readme import validate_readme
from reprodl.data.transforms import (
    CenterCrop,
    RandomCrop,
    Resize,
    from_config,
    from_description,
)
from reprodl.errors import (
    DatasetFormatError,
    InputDataError,
    MetadataError,
    ModelLoadError,
    ParametersError,
    StorageError,
    TransformError,
)
from reprodl.parsing import load_json, load_yaml
from reprodl.provenance import (
    DataRef,
    ProvenanceRecord,
    parse_record,
    store_readmes_once,
)
from reprodl.training.config import load_config

BILLION_LAUGHS = (
    "\n".join(
        ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    )
    + "\nname: x\ndescription: x\nauthors: [x]\norigin: x\n"
)
DEEP_JSON = "[" * 100_000


def _tensor_dataset(base: Path, name: str, labels: np.ndarray, *, encoding: dict[str, int] | None = None) -> str:
    """A frozen TensorDataSet written item by item, so its labels may be anything."""
    with store.create_dataset(str(base), name, readme="name: x\n") as writer:
        for arr, rel in (
            (np.zeros((len(labels), 4), np.uint8), keys.TENSOR_DATA_FILE),
            (labels, keys.TENSOR_LABELS_FILE),
        ):
            with writer.item_file(rel) as path:
                np.save(path, arr, allow_pickle=False)
        writer.put_annotation(keys.INPUT_TYPE, keys.INPUT_TYPE_TENSOR)
        if encoding is not None:
            writer.put_annotation(keys.CATEGORY_ENCODING, encoding)
    assert writer.uri is not None
    return writer.uri


# --- labels do not size allocations -------------------------------------------------------
def test_a_label_of_ten_to_the_twelve_is_refused_not_allocated(base_dir):
    uri = _tensor_dataset(base_dir, "huge", np.array([0, 10**12], np.int64))
    start = time.monotonic()
    with pytest.raises(DatasetFormatError, match=r"label 1,?000,?000,?000,?000, outside 0\.\.99,999"):
        TensorDataSet(uri)
    with pytest.raises(DatasetFormatError, match="outside"):
        dataset_info(uri)
    with pytest.raises(DatasetFormatError, match="outside"):
        dataset_stats(uri)
    assert time.monotonic() - start < 5


def test_labels_outside_the_category_encoding_are_refused(base_dir):
    uri = _tensor_dataset(base_dir, "enc", np.array([0, 1, 7], np.int64), encoding={"a": 0, "b": 1})
    with pytest.raises(DatasetFormatError, match=r"labels \[7\] that are not in its category encoding"):
        TensorDataSet(uri)
    with pytest.raises(DatasetFormatError, match=r"labels \[7\]"):
        dataset_info(uri)


def test_negative_labels_are_refused_when_read(base_dir):
    uri = _tensor_dataset(base_dir, "neg", np.array([0, -3], np.int64))
    with pytest.raises(DatasetFormatError, match="label -3, outside"):
        TensorDataSet(uri)


@pytest.mark.parametrize(
    "encoding, match",
    [
        ({"a": 10**12}, r"label 1000000000000; labels are integers from 0"),
        ({"a": 0, "b": 0}, "the same label"),
        ({"a": "zero"}, "label 'zero'"),
        ([0, 1], "not a mapping"),
    ],
)
def test_a_hostile_category_encoding_is_refused(image_uri, encoding, match):
    store.open_dataset(image_uri).put_annotation(keys.CATEGORY_ENCODING, encoding)
    with pytest.raises(DatasetFormatError, match=match):
        ImageDataSet(image_uri)


def test_creating_from_labels_of_ten_to_the_twelve_is_refused(base_dir):
    with pytest.raises(InputDataError, match="labels go up to 1,000,000,000,000"):
        create_from_arrays(np.zeros((2, 4), np.uint8), np.array([0, 10**12]), str(base_dir), "huge")


def test_tampered_labels_are_reported_as_tampering(digits_uri):
    ds = store.open_dataset(digits_uri)
    path = Path(ds.item_path(ds.identifier_of(keys.TENSOR_LABELS_FILE)))
    labels = np.load(path)
    labels[0] = 10**12
    np.save(path, labels)
    with pytest.raises(Exception, match=r"content altered: labels\.npy") as info:
        TensorDataSet(digits_uri)
    assert type(info.value).__name__ == "IntegrityError"


# --- transform and image sizes ----------------------------------------------------------
@pytest.mark.parametrize(
    "build",
    [
        lambda: Resize(10**9),
        lambda: Resize([16385, 4]),
        lambda: CenterCrop(100_000),
        lambda: RandomCrop(8, padding=10**9),
        lambda: Resize(0),
        lambda: Resize(-5),
        lambda: Resize(float("inf")),
        lambda: from_config({"name": "Resize", "size": [10**12, 10**12]}),
    ],
)
def test_transform_sizes_are_bounded(build):
    with pytest.raises(TransformError, match="should be"):
        build()


def test_a_record_with_a_huge_resize_is_refused():
    desc = {"class": "reprodl.transforms.Resize", "config": {"name": "Resize", "size": [10**6, 10**6]}}
    with pytest.raises(TransformError, match="at most 16384 pixels per side"):
        from_description(desc)


def test_a_huge_image_size_is_refused_before_resizing(image_uri):
    ds = ImageDataSet(image_uri, size=(10**6, 10**6))
    with pytest.raises(InputDataError, match="each side should be from 1 to 16384"):
        ds[0]


# --- YAML -------------------------------------------------------------------------------
def test_billion_laughs_readme_is_refused_quickly(image_uri):
    start = time.monotonic()
    with pytest.raises(MetadataError, match=r"YAML anchors \(&a\) are not allowed \(line 1, column 4\)"):
        validate_readme(BILLION_LAUGHS)
    readme = Path(store.local_path(image_uri)) / "README.yml"
    readme.write_text(BILLION_LAUGHS)
    with pytest.raises(MetadataError, match="README.yml of dataset 'images'.*YAML anchors"):
        store.open_dataset(image_uri).readme()
    assert time.monotonic() - start < 2


def test_billion_laughs_config_is_refused(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("name: x\noutput: out\ndata: {train: {uri: a}}\nparams: &p {seed: 1}\nreadme: *p\n")
    with pytest.raises(ParametersError, match=r"the config .*train\.yaml is not valid YAML: YAML anchors"):
        load_config(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("a: *undefined", "aliases"),
        ("[" * 100_000, "nests deeper than 64"),
        ("a:\n" + "".join(" " * i + "- \n" for i in range(1, 200)), "nests deeper than 64"),
        ("? [1, 2]\n: x", "unhashable"),
        ("a: !!python/object:os.system x", "could not determine a constructor"),
    ],
)
def test_hostile_yaml_is_a_metadata_error(text, match):
    with pytest.raises(MetadataError, match=match):
        load_yaml(text, what="the README")


# --- README size and duplication ----------------------------------------------------------
def test_readme_over_one_mib_is_refused_when_created_and_when_read(image_uri):
    big = "name: x\ndescription: x\nauthors: [x]\norigin: x\nnotes: " + "x" * keys.MAX_README_BYTES + "\n"
    with pytest.raises(MetadataError, match="the README is 1,048,6.. bytes, over reprodl's limit of 1,048,576"):
        validate_readme(big)
    (Path(store.local_path(image_uri)) / "README.yml").write_text(big)
    with pytest.raises(DatasetFormatError, match="the README of file://.* over reprodl's limit"):
        store.open_dataset(image_uri).get_readme_content()


def _ref(role: str, uuid: str, readme: str) -> DataRef:
    return DataRef(role=role, uri=f"u/{uuid}", uuid=uuid, name="d", manifest_digest="sha256:0", readme=readme)


def test_a_readme_is_stored_once_per_record_and_old_records_still_read():
    refs = store_readmes_once(
        [_ref("train", "A", "r-a"), _ref("valid", "A", "r-a"), _ref("test", "B", "r-b"), _ref("test", "A", "r-a")]
    )
    assert [(r.readme, r.readme_of) for r in refs] == [("r-a", None), ("", 0), ("r-b", None), ("", 0)]
    record = ProvenanceRecord.model_construct(data=refs)
    assert [record.readme_for(r) for r in refs] == ["r-a", "r-a", "r-b", "r-a"]
    old = ProvenanceRecord.model_construct(data=[_ref("train", "A", "r-a"), _ref("valid", "A", "r-a")])
    assert [old.readme_for(r) for r in old.data] == ["r-a", "r-a"]  # written before readme_of: both kept


# --- JSON nesting ---------------------------------------------------------------------------
def test_deeply_nested_record_is_a_model_load_error():
    for text in (DEEP_JSON, '{"a":' * 100 + "1" + "}" * 100):
        with pytest.raises(ModelLoadError, match="nests deeper than 64 levels"):
            parse_record(text, source="model")
    with pytest.raises(ModelLoadError, match="record size"):
        parse_record(b" " * (keys.MAX_RECORD_BYTES + 1), source="record size")


def test_deeply_nested_annotation_and_manifest_are_format_errors(image_uri):
    root = Path(store.local_path(image_uri)) / ".dtool"
    (root / "annotations" / "deep.json").write_text(DEEP_JSON)
    ds = store.open_dataset(image_uri)
    with pytest.raises(DatasetFormatError, match="the annotation 'deep' of .* is not JSON reprodl reads"):
        ds.get_annotation("deep")
    (root / "manifest.json").write_text(DEEP_JSON)
    with pytest.raises(DatasetFormatError, match="metadata that is not JSON reprodl reads .*RecursionError"):
        store.open_dataset(image_uri)


def test_load_json_names_what_it_read():
    with pytest.raises(MetadataError, match=r"the summary is not UTF-8 text"):
        load_json(b'"\xff"', what="the summary")


# --- http: timeouts and size limits ----------------------------------------------------------
@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose server accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_server_that_never_answers_is_a_quick_storage_error(silent_server, monkeypatch, dtool_cache):
    monkeypatch.setenv(keys.HTTP_TIMEOUT_ENV, "0.5")
    start = time.monotonic()
    with pytest.raises(
        StorageError, match=r"could not reach the dataset at http://127\.0\.0\.1:\d+/d.*(?i:timeout|timed out)"
    ):
        store.open_dataset(f"http://127.0.0.1:{silent_server}/d")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1,2,3"])
def test_a_bad_http_timeout_setting_is_refused(monkeypatch, value):
    from reprodl.store.http import http_timeout

    monkeypatch.setenv(keys.HTTP_TIMEOUT_ENV, value)
    with pytest.raises(ParametersError, match="REPRODL_HTTP_TIMEOUT="):
        http_timeout()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A dtool-http server in this process serving ``tmp_path / 'served'``."""
    pytest.importorskip("dtool_http")
    import socketserver

    from dtool_http.server import DtoolHTTPRequestHandler, DtoolHTTPServer

    class Server(socketserver.ThreadingMixIn, DtoolHTTPServer):
        daemon_threads = True

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(DtoolHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    with Server(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()


def test_an_item_larger_than_its_manifest_says_is_not_downloaded(served, dtool_cache):
    root, url = served
    create_from_arrays(np.zeros((4, 4), np.uint8), np.array([0, 1, 0, 1]), str(root), "d")
    ds = store.open_dataset(root / "d")
    path = Path(ds.item_path(ds.identifier_of(keys.TENSOR_DATA_FILE)))
    path.write_bytes(path.read_bytes() + b"\0" * 100_000)
    remote = store.open_dataset(f"{url}/d")
    with pytest.raises(StorageError, match=r"item 'data\.npy' .* sent more than the 144 bytes the manifest records"):
        remote.item_path(remote.identifier_of(keys.TENSOR_DATA_FILE))
    assert remote.verify().resized == ["data.npy"]


def test_an_http_readme_over_the_limit_is_refused(served, dtool_cache):
    root, url = served
    create_from_arrays(np.zeros((4, 4), np.uint8), np.array([0, 1, 0, 1]), str(root), "d")
    (root / "d" / "README.yml").write_text("x" * (keys.MAX_README_BYTES + 10))
    with pytest.raises(DatasetFormatError, match=r"README\.yml is 1,048,586 bytes, over reprodl's limit"):
        store.open_dataset(f"{url}/d").get_readme_content()


def test_a_deep_http_annotation_is_a_format_error(served, dtool_cache):
    root, url = served
    create_from_arrays(np.zeros((4, 4), np.uint8), np.array([0, 1, 0, 1]), str(root), "d")
    (root / "d" / ".dtool" / "annotations" / "deep.json").write_text(DEEP_JSON)
    with pytest.raises(DatasetFormatError, match="nests deeper than 64 levels"):
        store.open_dataset(f"{url}/d").get_annotation("deep")


def test_http_datasets_still_open_and_read(served, dtool_cache):
    root, url = served
    create_from_arrays(np.zeros((4, 4), np.uint8), np.array([0, 1, 0, 1]), str(root), "d")
    data = TensorDataSet(f"{url}/d")
    assert len(data) == 4 and data.n_classes == 2 and json.loads(json.dumps(data.label_counts())) == {"0": 2, "1": 2}
