"""`reprodl sign URI --key KEY` with an ECDSA key writes an OpenSSF model-signing bundle of the model
dataset (the format of `reproduce --attest`), checked by `reprodl verify --trusted-key`, by
`reproduce --trusted-key`, and by the model_signing library's own verifier (issue 21, item 9)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("train_fixtures")
pytest.importorskip("model_signing", reason="the attest extra (model-signing) is not installed")

from model_signing import verifying
from remote_servers import *  # noqa: F403 - the http server fixtures

from reprodl import keys
from reprodl.cli.common import ExitCode
from reprodl.store import open_dataset

pytest_plugins = ["train_fixtures"]
CHECK = "signed by a trusted key"


def _flip_one_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _check(result) -> dict:
    (check,) = [c for c in json.loads(result.stdout)["checks"] if c["name"] == CHECK]
    return check


@pytest.fixture
def ecdsa_key(cli, tmp_path: Path) -> Path:
    key = tmp_path / "keys" / "carol.key"
    key.parent.mkdir(exist_ok=True)
    made = cli("keygen", key, "--ecdsa")
    assert made.exit_code == 0, made.stderr
    return key


@pytest.fixture
def signed(cli, model_copy: Path, ecdsa_key: Path, tmp_path: Path) -> dict:
    """The model copy signed with the ECDSA key; the bundle also written to a file."""
    bundle = tmp_path / "model.sigstore.json"
    result = cli("sign", model_copy, "--key", ecdsa_key, "--bundle", bundle)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "OpenSSF model-signing bundle" in result.stdout and keys.MODEL_SIGNING in result.stdout
    return {"model": model_copy, "pub": Path(f"{ecdsa_key}.pub"), "bundle": bundle, "key": ecdsa_key}


def _library_verify(model: Path, pub: Path, bundle: Path) -> None:
    verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model, bundle)


def test_an_ecdsa_signed_model_verifies_by_reprodl_and_by_model_signing_and_both_refuse_one_changed_byte(
    signed, cli, tmp_path
):
    model, pub, bundle_file = signed["model"], signed["pub"], signed["bundle"]
    # The bundle is kept with the dataset (an annotation), the same one as in the file.
    (entry,) = open_dataset(str(model)).get_annotation(keys.MODEL_SIGNING)
    assert entry["bundle"] == json.loads(bundle_file.read_text())
    assert entry["bundle"]["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    from_annotation = tmp_path / "from-annotation.json"
    from_annotation.write_text(json.dumps(entry["bundle"]))
    # model-signing's own verifier accepts it, from the file and from the annotation ...
    _library_verify(model, pub, bundle_file)
    _library_verify(model, pub, from_annotation)
    # ... and so does reprodl verify with the PEM public key.
    ok = cli("verify", model, "--trusted-key", pub, "--json")
    assert ok.exit_code == 0, ok.stdout
    check = _check(ok)
    assert check["ok"] and "model-signing bundle, verified" in check["detail"]
    assert "(model-signing)" in cli("verify", model).stdout  # unchecked without the key: a note
    # One byte of the record changed: both refuse, naming the file.
    _flip_one_byte(model / "data" / keys.PROVENANCE_FILE)
    with pytest.raises(ValueError, match="data/provenance.json"):
        _library_verify(model, pub, bundle_file)
    refused = cli("verify", model, "--trusted-key", pub, "--json")
    assert refused.exit_code == ExitCode.FAILED
    check = _check(refused)
    assert not check["ok"] and "does not verify" in check["detail"] and "data/provenance.json" in check["detail"]


def test_another_ecdsa_key_or_an_unsigned_model_is_refused(signed, cli, model_copy, tmp_path):
    other = tmp_path / "keys" / "mallory.key"
    assert cli("keygen", other, "--ecdsa").exit_code == 0
    wrong = cli("verify", signed["model"], "--trusted-key", f"{other}.pub", "--json")
    assert wrong.exit_code == ExitCode.FAILED and "not trusted" in _check(wrong)["detail"]
    unsigned = tmp_path / "unsigned" / "digits-model"
    shutil.copytree(model_copy, unsigned, ignore=shutil.ignore_patterns(f"{keys.MODEL_SIGNING}.json"))
    bare = cli("verify", unsigned, "--trusted-key", signed["pub"], "--json")
    assert bare.exit_code == ExitCode.FAILED and "has no model-signing bundle" in _check(bare)["detail"]


def test_reproduce_with_a_trusted_ecdsa_key_runs_a_signed_model_and_refuses_a_changed_one(signed, cli):
    ran = cli("reproduce", signed["model"], "--trusted-key", signed["pub"], "--json", "--quiet")
    assert ran.exit_code == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["verdict"] == "identical"
    _flip_one_byte(signed["model"] / "data" / keys.WEIGHTS_FILE)
    result = cli("reproduce", signed["model"], "--trusted-key", signed["pub"], "--quiet")
    assert result.exit_code != 0
    assert "data/model.safetensors" in result.stdout + result.stderr
    assert "nothing was run" in result.stdout + result.stderr


def test_ed25519_and_ecdsa_signatures_side_by_side(signed, cli, tmp_path):
    ed = tmp_path / "keys" / "alice.key"
    assert cli("keygen", ed).exit_code == 0
    result = cli("sign", signed["model"], "--key", ed, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["algorithm"] == "ed25519"  # today's signature
    public = Path(f"{ed}.pub").read_text().strip()
    by_ed = cli("verify", signed["model"], "--trusted-key", f"{ed}.pub", "--json")
    assert by_ed.exit_code == 0 and _check(by_ed)["detail"] == f"signed by {public}"
    by_both = cli("verify", signed["model"], "--trusted-key", signed["pub"], "--trusted-key", f"{ed}.pub", "--json")
    assert by_both.exit_code == 0, by_both.stdout
    # An Ed25519 key cannot write a model-signing bundle: said, nothing written.
    refused = cli("sign", signed["model"], "--key", ed, "--bundle", tmp_path / "x.json")
    assert refused.exit_code == ExitCode.USAGE and "ECDSA key" in refused.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


def test_over_http_the_bundle_is_read_and_the_check_says_it_needs_a_local_copy(signed, cli, http_server, dtool_cache):
    shutil.copytree(signed["model"], http_server.root / "signed-model")
    uri = http_server.uri("signed-model")
    assert open_dataset(uri).get_annotation(keys.MODEL_SIGNING)  # the bundle travels with the dataset
    result = cli("verify", uri, "--trusted-key", signed["pub"], "--json")
    assert result.exit_code == ExitCode.FAILED
    assert "not a local dataset" in _check(result)["detail"] and "reprodl dataset copy" in _check(result)["detail"]


def test_without_model_signing_an_ecdsa_sign_names_the_extra_to_install(model_copy, ecdsa_key, tmp_path):
    code = "import sys; sys.modules['model_signing'] = None; from reprodl.cli import main; main()"  # not installed
    argv = ["sign", str(model_copy), "--key", str(ecdsa_key)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == ExitCode.USAGE, proc.stdout + proc.stderr
    assert "pip install 'reprodl[attest]'" in proc.stderr
    assert open_dataset(str(model_copy)).get_annotation(keys.MODEL_SIGNING) is None  # nothing written
