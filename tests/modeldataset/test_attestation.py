"""`reprodl reproduce --attest KEY`: a signed in-toto statement of a reproduction, in the OpenSSF
model-signing format, checked by the model-signing library's own verifier, by `reprodl verify`,
and shown by the catalog (issue 21, item 9)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

pytest.register_assert_rewrite("train_fixtures")
pytest.importorskip("model_signing", reason="the attest extra (model-signing) is not installed")

from model_signing import verifying

from reprodl import keys
from reprodl.modeldataset import attestation
from reprodl.store import open_dataset

pytest_plugins = ["train_fixtures"]


def _statement(bundle: dict) -> dict:
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def _flip_one_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.fixture
def attested(cli, model_copy: Path, tmp_path: Path) -> dict:
    """The model copy reproduced with --attest: the key pair, the bundle, the JSON report."""
    key = tmp_path / "attester.key"
    made = cli("keygen", key, "--ecdsa")
    assert made.exit_code == 0, made.stderr
    bundle = tmp_path / "repro.sigstore.json"
    result = cli("reproduce", model_copy, "--attest", key, "--attestation", bundle, "--json", "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    return {"key": key, "pub": Path(f"{key}.pub"), "bundle": bundle, "report": report, "model": model_copy}


def test_the_library_verifies_the_attestation_and_refuses_it_after_one_byte_of_the_record_changes(attested, cli):
    model, pub, bundle_path = attested["model"], attested["pub"], attested["bundle"]
    assert attested["report"]["attestation"]["path"] == str(bundle_path)
    bundle = json.loads(bundle_path.read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    statement = _statement(bundle)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    # The weights and the record are resources with their sha256; the reprodl part states the rest.
    digests = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    for name in ("data/model.safetensors", "data/provenance.json"):
        assert digests[name] == hashlib.sha256((model / name).read_bytes()).hexdigest()
    part = statement["predicate"][keys.ATTESTATION_PREDICATE_KEY]
    assert part["verdict"] == attested["report"]["verdict"] == "identical"
    assert part["expectation"] == attested["report"]["expectation"]  # expected, because, held
    assert part["model"]["record_digest"] == open_dataset(str(model)).get_annotation(keys.RECORD_DIGEST)
    assert part["reproducer"]["environment"]["torch"] and part["evidence"]["weights"]["n_tensors"] > 0
    # model-signing's own verifier (signature, statement, every file hashed again) accepts it ...
    verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model, bundle_path)
    ok = cli("verify", model, "--attestation", bundle_path, "--attestation-key", pub, "--json")
    assert ok.exit_code == 0, ok.stdout
    assert {"name": "reproduction attested", "ok": True}.items() <= next(
        c for c in json.loads(ok.stdout)["checks"] if c["name"] == "reproduction attested"
    ).items()
    # ... and refuses it once one byte of the record changes, naming the file; so does reprodl verify.
    _flip_one_byte(model / "data" / "provenance.json")
    with pytest.raises(ValueError, match="data/provenance.json"):
        verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model, bundle_path)
    refused = cli("verify", model, "--attestation", bundle_path, "--attestation-key", pub)
    assert refused.exit_code != 0
    assert "FAILED  reproduction attested: model-signing refuses it" in refused.stdout


def test_a_changed_statement_or_another_key_is_refused(attested, tmp_path):
    bundle = json.loads(attested["bundle"].read_text())
    assert attestation.check_signature(bundle, public_key=attested["pub"]).ok
    # The verdict edited in the signed payload: the signature no longer holds.
    statement = _statement(bundle)
    statement["predicate"][keys.ATTESTATION_PREDICATE_KEY]["verdict"] = "differs"
    forged = {**bundle, "dsseEnvelope": {**bundle["dsseEnvelope"]}}
    forged["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    check = attestation.check_signature(forged, public_key=attested["pub"])
    assert not check.ok and "does not verify" in check.detail
    # Another key than the signer's.
    other = tmp_path / "other.key"
    attestation.generate_ecdsa_key(other)
    wrong = attestation.verify_attestation(attested["bundle"], str(attested["model"]), public_key=f"{other}.pub")
    assert not wrong.ok and "Key mismatch" in wrong.detail


def test_an_ed25519_key_is_refused_before_anything_runs(cli, model_copy, tmp_path):
    key = tmp_path / "ed.key"
    assert cli("keygen", key).exit_code == 0
    result = cli("reproduce", model_copy, "--attest", key)
    assert result.exit_code != 0
    assert "Ed25519" in result.stderr and "reprodl keygen KEY --ecdsa" in result.stderr
    assert "Reproducing" not in result.stderr  # refused before re-training


def test_the_catalog_shows_an_attested_reproduction_as_verified(cli, model_copy, tmp_path):
    key = tmp_path / "attester.key"
    assert cli("keygen", key, "--ecdsa").exit_code == 0
    kept = tmp_path / "kept"
    kept.mkdir()
    bundle = tmp_path / "b.sigstore.json"
    result = cli(
        "reproduce", model_copy, "--output", kept, "--attest", key, "--attestation", bundle, "--quiet", "--json"
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    reproduction = json.loads(result.stdout)["reproduction_uri"]
    db = str(tmp_path / "cat.sqlite")
    for base in (model_copy.parent, kept):
        assert cli("catalog", "add", base, "--catalog", db, "-q").exit_code == 0
    listed = cli("catalog", "reproductions", str(model_copy), "--json", "--catalog", db)
    (row,) = json.loads(listed.stdout)["reproductions"]
    assert row["verified"] is True and row["attested"] is True and len(row["attested_by"]) == 64
    text = cli("catalog", "reproductions", str(model_copy), "--catalog", db).stdout
    assert "identical (verified, attested by key" in text
    # A forged attestation (its verdict edited) makes the reproduction unverified.
    ds = open_dataset(reproduction)
    bundle = ds.get_annotation(keys.ATTESTATION)
    statement = _statement(bundle)
    statement["predicate"][keys.ATTESTATION_PREDICATE_KEY]["model"]["record_digest"] = "sha256:" + "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    ds.put_annotation(keys.ATTESTATION, bundle)
    assert cli("catalog", "add", kept, "--catalog", db, "-q").exit_code == 0
    (row,) = json.loads(cli("catalog", "reproductions", str(model_copy), "--json", "--catalog", db).stdout)[
        "reproductions"
    ]
    assert row["verified"] is False and row["attested"] is False
