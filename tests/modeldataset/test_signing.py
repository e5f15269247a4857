"""Ed25519 signatures: a signed model verifies against its author's key, and nothing else does.

The attacks are made as an attacker would make them: on a byte copy of a real model (same
UUID), an item is edited, the record resealed (its self-digest recomputed) and the dtool
manifest entry updated, so that every check but the signature passes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from reprodl import keys
from reprodl.errors import ExitCode, MissingDependencyError, SigningError

pytest.importorskip("cryptography")
pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import rewrite_model

pytest_plugins = ["train_fixtures"]

PAYLOAD_KEYS = {"format", "uuid", "name", "record_digest", "weights_sha256", "manifest_digest", "items_sha256"}


@pytest.fixture
def key(tmp_path: Path) -> Path:
    from reprodl.modeldataset.signing import generate_key

    path = tmp_path / "keys" / "author.key"
    path.parent.mkdir()
    generate_key(path)
    return path


@pytest.fixture
def other_key(tmp_path: Path) -> Path:
    from reprodl.modeldataset.signing import generate_key

    path = tmp_path / "keys" / "other.key"
    path.parent.mkdir(exist_ok=True)
    generate_key(path)
    return path


def pub(key: Path) -> Path:
    return Path(f"{key}.pub")


@pytest.fixture
def signed(model_copy: Path, key: Path) -> str:
    """A byte copy of the trained model, signed with ``key``."""
    from reprodl.modeldataset.signing import sign

    sign(str(model_copy), key)
    return str(model_copy)


def rewrite_item(dataset: Path, relpath: str, data: bytes) -> None:
    """Replace an item's content and its manifest entry, as an attacker with write access would."""
    (dataset / "data" / relpath).write_bytes(data)
    manifest_path = dataset / ".dtool" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["items"].values():
        if entry["relpath"] == relpath:
            entry.update(
                hash=hashlib.md5(data).hexdigest(),
                size_in_bytes=len(data),
                utc_timestamp=os.stat(dataset / "data" / relpath).st_mtime,
            )
    manifest_path.write_text(json.dumps(manifest))


def reseal_record(dataset: Path, edit) -> None:
    """Edit the record, recompute its self-digest, and put it back with a matching manifest."""
    from reprodl.provenance import parse_record

    raw = json.loads((dataset / "data" / keys.PROVENANCE_FILE).read_text())
    edit(raw)
    record = parse_record(json.dumps(raw)).sealed()
    rewrite_item(dataset, keys.PROVENANCE_FILE, record.to_json().encode())
    for name, value in {keys.RECORD_DIGEST: record.digest}.items():  # keep the mirror consistent
        (dataset / ".dtool" / "annotations" / f"{name}.json").write_text(json.dumps(value))


def verify(uri: str, *trusted: Path | str):
    from reprodl.modeldataset.verify import verify_model

    return verify_model(uri, trusted_keys=list(trusted))


def signature_check(result):
    from reprodl.modeldataset.signing import CHECK_NAME

    (check,) = [c for c in result.checks if c.name == CHECK_NAME]
    return check


def others_pass(result) -> bool:
    from reprodl.modeldataset.signing import CHECK_NAME

    return all(c.ok for c in result.checks if c.name != CHECK_NAME)


# --- keys -------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads_and_a_one_line_public_key(key):
    from reprodl.modeldataset.signing import load_public_key

    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    line = pub(key).read_text()
    assert line.endswith("\n") and len(base64.b64decode(line.strip(), validate=True)) == 32
    assert load_public_key(pub(key)) == load_public_key(line.strip()) == line.strip()


def test_keygen_never_overwrites_a_key(key):
    from reprodl.modeldataset.signing import generate_key

    before = key.read_bytes()
    with pytest.raises(SigningError, match="already exists: reprodl never overwrites a key"):
        generate_key(key)
    assert key.read_bytes() == before


def test_a_pem_public_key_is_accepted_too(key, tmp_path):
    from cryptography.hazmat.primitives import serialization

    from reprodl.modeldataset.signing import load_private_key, load_public_key

    pem = (
        load_private_key(key)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "author.pem").write_bytes(pem)
    assert load_public_key(tmp_path / "author.pem") == pub(key).read_text().strip()


@pytest.mark.parametrize("text", ["not a key", "AAAA", base64.b64encode(b"x" * 31).decode()])
def test_a_trusted_key_that_is_no_key_is_refused(signed, text):
    with pytest.raises(SigningError, match="neither a public key file nor a base64 Ed25519 public key"):
        verify(signed, text)


def test_a_signing_key_that_is_no_private_key_is_refused(model_copy, key):
    from reprodl.modeldataset.signing import sign

    with pytest.raises(SigningError, match="is not an unencrypted PEM private key"):
        sign(str(model_copy), pub(key))


# --- sign and verify --------------------------------------------------------------------


def test_a_signed_model_verifies_against_its_authors_key(signed, key):
    from reprodl.modeldataset.signing import verify_signature

    result = verify(signed, pub(key))
    assert result.ok, result.to_dict()
    assert signature_check(result).detail == f"signed by {pub(key).read_text().strip()}"
    assert verify_signature(signed, trusted_keys=[pub(key).read_text()]).ok


def test_the_signature_covers_record_weights_manifest_and_every_item(signed, trained_model):
    from reprodl.store import file_sha256, open_dataset

    ds = open_dataset(signed)
    (entry,) = ds.get_annotation(keys.SIGNATURES)
    assert set(entry) == {"algorithm", "public_key", "signature", "payload"}
    payload = entry["payload"]
    assert set(payload) == PAYLOAD_KEYS
    assert payload["format"] == keys.SIGNATURE_FORMAT == "reprodl-signature/1"
    assert payload["uuid"] == ds.uuid and payload["record_digest"] == trained_model.record.digest
    assert payload["manifest_digest"] == ds.manifest_digest()
    assert payload["weights_sha256"] == "sha256:" + file_sha256(ds.item_path(ds.identifier_of(keys.WEIGHTS_FILE)))


def test_an_unsigned_model_fails_when_a_key_is_required(model_copy, key):
    result = verify(str(model_copy), pub(key))
    assert not result.ok and others_pass(result)
    assert "is not signed" in signature_check(result).detail


def test_a_model_signed_by_another_key_fails(signed, other_key):
    result = verify(signed, pub(other_key))
    assert not result.ok and others_pass(result)
    assert "signed only by keys that are not trusted" in signature_check(result).detail


def test_either_of_two_signatures_verifies_and_resigning_replaces_ones_own(signed, key, other_key):
    from reprodl.modeldataset.signing import sign
    from reprodl.store import open_dataset

    sign(signed, other_key)
    sign(signed, other_key)
    assert len(open_dataset(signed).get_annotation(keys.SIGNATURES)) == 2
    assert verify(signed, pub(key)).ok and verify(signed, pub(other_key)).ok
    assert verify(signed, pub(other_key), pub(key)).ok


def test_without_trusted_keys_verify_notes_the_signature_and_checks_nothing_more(signed, model_copy):
    from reprodl.modeldataset.signing import CHECK_NAME

    result = verify(signed)
    assert result.ok and CHECK_NAME not in [c.name for c in result.checks]
    assert len(result.notes) == 1 and "pass --trusted-key to check" in result.notes[0]


# --- attacks ----------------------------------------------------------------------------


def test_a_resealed_record_fails_only_the_signature(signed, key, model_copy):
    reseal_record(model_copy, lambda raw: raw["results"]["final"].update(valid_accuracy=0.999))
    result = verify(signed, pub(key))
    assert others_pass(result), result.to_dict()  # the attack beats every other check
    detail = signature_check(result).detail
    assert not result.ok and "the dataset changed since it was signed: record_digest signed sha256:" in detail


def test_a_resealed_copy_under_a_new_uuid_carrying_the_signature_fails(signed, key, tmp_path):
    (tmp_path / "evil").mkdir()
    uri = rewrite_model(
        signed, tmp_path / "evil", "digits-model", edit=lambda raw: raw["results"]["final"].update(valid_accuracy=0.999)
    )
    from reprodl.store import open_dataset

    assert open_dataset(uri).get_annotation(keys.SIGNATURES)  # carried over by the attacker
    result = verify(uri, pub(key))
    assert not result.ok
    assert "uuid signed" in signature_check(result).detail


def test_swapped_weights_with_the_same_tensors_fail_the_signature(signed, key, model_copy):
    """Same tensors, other bytes (metadata): the record's weights digest still matches."""
    path = model_copy / "data" / keys.WEIGHTS_FILE
    rewrite_item(model_copy, keys.WEIGHTS_FILE, save(load_file(path), metadata={"by": "someone else"}))
    result = verify(signed, pub(key))
    assert others_pass(result) and not result.ok
    assert "weights_sha256 signed" in signature_check(result).detail


def test_swapped_weights_and_a_resealed_record_fail_the_signature(signed, key, model_copy):
    from reprodl.modeldataset.weights import state_dict_sha256

    state = {k: torch.zeros_like(v) for k, v in load_file(model_copy / "data" / keys.WEIGHTS_FILE).items()}
    rewrite_item(model_copy, keys.WEIGHTS_FILE, save(state))
    reseal_record(model_copy, lambda raw: raw["results"].update(weights_sha256=state_dict_sha256(state)))
    result = verify(signed, pub(key))
    assert others_pass(result) and not result.ok
    assert "weights_sha256 signed" in signature_check(result).detail


def test_an_edited_item_in_the_manifest_fails_the_signature(signed, key, model_copy):
    rewrite_item(model_copy, keys.HISTORY_FILE, b"[]")
    result = verify(signed, pub(key))
    assert others_pass(result) and not result.ok
    assert "manifest_digest signed" in signature_check(result).detail


def test_an_edited_record_that_was_not_resealed_fails_the_signature(signed, key, model_copy):
    path = model_copy / "data" / keys.PROVENANCE_FILE
    rewrite_item(model_copy, keys.PROVENANCE_FILE, path.read_bytes().replace(b'"digits-model"', b'"evil-model"'))
    assert "cannot compute what a signature covers" in signature_check(verify(signed, pub(key))).detail


def test_a_signature_moved_to_another_payload_is_invalid(signed, key, model_copy):
    """The stored payload is edited to match the new content: the signature itself fails."""
    from reprodl.modeldataset.signing import signing_payload
    from reprodl.store import open_dataset

    rewrite_item(model_copy, keys.HISTORY_FILE, b"[]")
    ann = model_copy / ".dtool" / "annotations" / f"{keys.SIGNATURES}.json"
    entries = json.loads(ann.read_text())
    entries[0]["payload"] = signing_payload(open_dataset(signed))
    ann.write_text(json.dumps(entries))
    assert "the signature is invalid (forged or corrupted)" in signature_check(verify(signed, pub(key))).detail


@pytest.mark.parametrize(
    "value",
    [
        "a string",
        7,
        None,
        [],
        [1, "x", None],
        [{"public_key": None}],
        [{"public_key": ["a"]}],
        "TRUSTED:sig",
        "TRUSTED:alg",
        "TRUSTED:payload",
    ],
)
def test_hostile_signature_annotations_fail_cleanly(signed, key, model_copy, value):
    ann = model_copy / ".dtool" / "annotations" / f"{keys.SIGNATURES}.json"
    if isinstance(value, str) and value.startswith("TRUSTED:"):
        (entry,) = json.loads(ann.read_text())
        entry.update(
            {
                "sig": {"signature": "%%%"},
                "alg": {"algorithm": "rsa"},
                "payload": {"payload": "x", "signature": base64.b64encode(b"\0" * 64).decode()},
            }[value.split(":")[1]]
        )
        value = [entry]
    ann.write_text(json.dumps(value))
    result = verify(signed, pub(key))
    assert not result.ok and others_pass(result)


def test_the_signature_survives_copy(signed, key, tmp_path):
    from reprodl.store import copy_dataset

    (tmp_path / "elsewhere").mkdir()
    copied = copy_dataset(signed, str(tmp_path / "elsewhere"))
    result = verify(copied, pub(key))
    assert result.ok, result.to_dict()


def test_without_cryptography_signing_says_what_to_install(signed, key, monkeypatch):
    from reprodl.modeldataset.signing import sign

    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'reprodl\[sign\]'"):
        sign(signed, key)
    with pytest.raises(MissingDependencyError, match=r"pip install 'reprodl\[sign\]'"):
        verify(signed, pub(key))
    assert verify(signed).ok  # without --trusted-key nothing needs the package


# --- CLI --------------------------------------------------------------------------------


def test_cli_keygen_sign_verify(cli, model_copy, tmp_path):
    key = tmp_path / "cli.key"
    made = cli("keygen", key, "--json")
    assert made.exit_code == 0, made.stderr
    assert json.loads(made.stdout)["public_key"] == pub(key).read_text().strip()
    again = cli("keygen", key)
    assert again.exit_code == ExitCode.USAGE and "already exists" in again.stderr

    unsigned = cli("verify", model_copy, "--trusted-key", pub(key), "--json")
    assert unsigned.exit_code == ExitCode.FAILED
    check = [c for c in json.loads(unsigned.stdout)["checks"] if c["name"] == "signed by a trusted key"]
    assert check and check[0]["ok"] is False and "is not signed" in check[0]["detail"]

    signed = cli("sign", model_copy, "--key", key)
    assert signed.exit_code == 0 and "Signed" in signed.stdout and "record_digest: sha256:" in signed.stdout

    ok = cli("verify", model_copy, "--trusted-key", pub(key), "--json")
    assert ok.exit_code == 0, ok.stdout
    body = json.loads(ok.stdout)
    assert (
        body["ok"]
        and {"name": "signed by a trusted key", "ok": True, "detail": f"signed by {pub(key).read_text().strip()}"}
        in body["checks"]
    )
    plain = cli("verify", model_copy)
    assert plain.exit_code == 0 and "note  signed by" in plain.stdout

    time.sleep(0.01)
    rewrite_item(model_copy, keys.HISTORY_FILE, b"[]")
    bad = cli("verify", model_copy, "--trusted-key", pub(key))
    assert bad.exit_code == ExitCode.FAILED
    assert "FAILED  signed by a trusted key" in bad.stdout and "Verification FAILED." in bad.stdout


def test_cli_sign_with_a_missing_key_is_a_usage_error(cli, model_copy, tmp_path):
    result = cli("sign", model_copy, "--key", tmp_path / "nope.key")
    assert result.exit_code == ExitCode.USAGE and "cannot read the signing key" in result.stderr


def test_keygen_help_names_the_extra_to_install(cli):
    result = cli("keygen", "--help")
    assert result.exit_code == 0
    assert "reprodl[sign]" in " ".join(result.stdout.split())
