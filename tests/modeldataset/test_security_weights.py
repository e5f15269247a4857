"""Weights sniffing: a valid safetensors file is never taken for a pickle, a pickle never loads.

A safetensors file starts with its 8-byte little-endian header length. A header of
128 + 256k bytes makes the first byte 0x80 (pickle's PROTO opcode); one of 19,280 bytes
makes the first two ``PK`` (zip, torch.save's format). The files here are written by
safetensors itself, their metadata padded until the header has the wanted length.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import struct

import pytest
import torch
from safetensors.torch import load_file, save, save_file

from reprodl import keys
from reprodl.errors import ModelLoadError, ReprodlError
from reprodl.modeldataset.weights import safetensors_problem, sniff_weights

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import rewrite_model

pytest_plugins = ["train_fixtures"]

PK_LENGTH = 0x4B50  # 19,280: little-endian b"PK\x00..." as a header length


def _header_length(blob: bytes) -> int:
    return struct.unpack("<Q", blob[:8])[0]


def padded_safetensors(state: dict[str, torch.Tensor], accept) -> bytes:
    """safetensors bytes of ``state`` whose header length satisfies ``accept`` (padding the metadata)."""
    n0 = _header_length(save(state, metadata={"pad": ""}))
    target = next(n for n in range(n0, n0 + 70_000) if accept(n))
    for pad in range(max(0, target - n0 - 16), target - n0 + 16):  # each character adds one byte
        blob = save(state, metadata={"pad": "x" * pad})
        if accept(_header_length(blob)):
            return blob
    raise AssertionError("no padding gives the wanted header length")


def starts_0x80(n: int) -> bool:
    return n % 256 == 0x80


def starts_pk(n: int) -> bool:
    return n % 65536 == PK_LENGTH


def _model_state(uri: str) -> dict[str, torch.Tensor]:
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    return load_file(ds.item_path(ds.identifier_of(keys.WEIGHTS_FILE)))


# --- the sniffer on real files ------------------------------------------------------------


@pytest.mark.parametrize("length", [128, 384])
def test_safetensors_with_a_header_length_starting_0x80_is_safetensors(tmp_path, length):
    blob = padded_safetensors({"w": torch.arange(6, dtype=torch.float32)}, lambda n: n == length)
    assert blob[0] == 0x80 and _header_length(blob) == length
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    assert sniff_weights(path) == "safetensors"
    assert safetensors_problem(path) is None
    assert torch.equal(load_file(path)["w"], torch.arange(6, dtype=torch.float32))


def test_safetensors_with_a_header_length_starting_pk_is_safetensors(tmp_path):
    blob = padded_safetensors({"w": torch.ones(3)}, lambda n: n == PK_LENGTH)
    assert blob[:2] == b"PK"
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    assert sniff_weights(path) == "safetensors"


@pytest.mark.parametrize("use_zip", [True, False], ids=["torch.save", "legacy-pickle"])
def test_torch_save_is_sniffed_as_zip_or_pickle(tmp_path, use_zip):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=use_zip)
    assert sniff_weights(path) == ("zip" if use_zip else "pickle")
    path.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    assert sniff_weights(path) == "pickle"


def _hostile_inputs() -> list[bytes]:
    rng = random.Random(7)
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    crafted = [
        b"",
        b"\x80",
        b"PK",
        b"PK\x03\x04",
        b"\x00" * 7,
        b"\x00" * 8,
        b"\xff" * 8,
        struct.pack("<Q", 2**64 - 1) + b"{}",
        struct.pack("<Q", 2) + b"{}",
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 4) + b"\xff\xfe{}",
        struct.pack("<Q", 100) + b"{}",  # longer than the file
        struct.pack("<Q", len(header)) + header,  # offsets past the (empty) data
        struct.pack("<Q", len(header)) + header + b"\0" * 4,  # valid
        struct.pack("<Q", 200_001) + b"[" * 100_000 + b"]" * 100_001,  # deep nesting
        struct.pack("<Q", 30) + b'{"w":{"dtype":"F32","shape":1}}',
        struct.pack("<Q", 40) + b'{"w":{"dtype":1,"shape":[],"data_offsets":[0,0]}}'[:40],
        struct.pack("<Q", 17) + b'{"__metadata__":1}',
        struct.pack("<Q", 44) + b'{"w":{"dtype":"F32","shape":[-1],"data_offsets":[true,0]}}'[:44],
    ]
    randoms = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64))) for _ in range(300)]
    # Random bodies behind a plausible length, and prefixes of real files.
    framed = [struct.pack("<Q", len(b)) + b for b in randoms[:100]]
    real = save({"w": torch.ones(2)}, metadata={"k": "v"})
    return crafted + randoms + framed + [real[:i] for i in range(len(real))]


def test_the_sniffer_raises_nothing_on_hostile_bytes(tmp_path):
    """Every input gets a kind (and a problem when invalid); nothing raises."""
    path = tmp_path / "w"
    kinds: dict[str, int] = {}
    for blob in _hostile_inputs():
        path.write_bytes(blob)
        kind = sniff_weights(path)
        kinds[kind] = kinds.get(kind, 0) + 1
        problem = safetensors_problem(path)
        assert (problem is None) == (kind == "safetensors"), blob[:40]
    assert kinds["safetensors"] == 2  # the valid crafted file and the whole real one
    assert set(kinds) >= {"pickle", "zip", "unknown"}


def test_an_unreadable_weights_file_is_a_reprodl_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read the weights file"):
        sniff_weights(tmp_path / "missing.safetensors")
    with pytest.raises(ReprodlError):
        safetensors_problem(tmp_path)  # a directory


# --- through every loader: load_weights, TrainedTorchModel, verify ----------------------


@pytest.mark.parametrize("accept", [starts_0x80, starts_pk], ids=["0x80", "PK"])
def test_a_model_whose_weights_header_starts_like_a_pickle_loads_and_verifies(trained_model, tmp_path, accept):
    from reprodl import TrainedTorchModel
    from reprodl.modeldataset.read import load_weights, read_record
    from reprodl.modeldataset.verify import verify_model
    from reprodl.store import open_dataset

    state = _model_state(trained_model.uri)
    blob = padded_safetensors(state, accept)
    assert blob[:1] == b"\x80" or blob[:2] == b"PK"
    uri = rewrite_model(trained_model.uri, tmp_path, "padded", replace={keys.WEIGHTS_FILE: blob})

    ds = open_dataset(uri)
    loaded = load_weights(ds, read_record(ds))  # what verify, reproduce and fine-tuning call
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    model = TrainedTorchModel(uri)
    assert all(torch.equal(model.model.state_dict()[k], state[k]) for k in state)
    result = verify_model(uri)
    assert result.ok, result.to_dict()


def test_a_model_with_padded_weights_passes_cli_verify(cli, trained_model, tmp_path):
    blob = padded_safetensors(_model_state(trained_model.uri), starts_0x80)
    uri = rewrite_model(trained_model.uri, tmp_path, "padded", replace={keys.WEIGHTS_FILE: blob})
    result = cli("verify", uri, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is True


@pytest.mark.parametrize("use_zip", [True, False], ids=["torch.save", "legacy-pickle"])
def test_torch_save_named_safetensors_is_still_refused_as_a_pickle(trained_model, tmp_path, monkeypatch, use_zip):
    from reprodl import TrainedTorchModel

    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("something unpickled the weights"))
    buf = io.BytesIO()
    torch.save(_model_state(trained_model.uri), buf, _use_new_zipfile_serialization=use_zip)
    uri = rewrite_model(trained_model.uri, tmp_path, "pickled", replace={keys.WEIGHTS_FILE: buf.getvalue()})
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is a pickle/zip \(torch\.save\) file"):
        TrainedTorchModel(uri)


def test_garbage_weights_are_not_called_a_pickle(trained_model, tmp_path):
    from reprodl import TrainedTorchModel

    blob = struct.pack("<Q", 10**12) + b"{}"
    uri = rewrite_model(trained_model.uri, tmp_path, "garbage", replace={keys.WEIGHTS_FILE: blob})
    with pytest.raises(ModelLoadError, match=r"is not a valid safetensors file \(its header length 1000000000000"):
        TrainedTorchModel(uri)


def test_weights_written_by_save_file_are_accepted_whatever_their_header_length(tmp_path):
    """Every header length from 8 to 1,024 bytes (which includes 128, 384, 640, 896)."""
    path = tmp_path / "w.safetensors"
    seen = set()
    for pad in range(0, 1000, 3):
        save_file({"w": torch.zeros(1)}, path, metadata={"p": "x" * pad})
        seen.add(path.read_bytes()[0])
        assert sniff_weights(path) == "safetensors"
    assert 0x80 in seen
