"""``reprodl sign URI --key KEY`` with an ECDSA key: an OpenSSF model-signing bundle of the model.

With an ECDSA key (``reprodl keygen KEY --ecdsa``) ``reprodl sign`` does not write reprodl's own
Ed25519 signature: it has the ``model_signing`` library (``pip install 'reprodl[attest]'``) sign
the model dataset's directory, as ``model_signing sign key`` would, with the hashing of
:mod:`reprodl.modeldataset.attestation` (sha256 per file; ``.dtool/annotations``, ``tags`` and
``overlays`` left out, since they stay writable on a frozen dataset). The result is a Sigstore
bundle holding an in-toto statement whose ``predicate.resources`` list every other file of the
dataset (the weights, the record, the manifest, the README, ``.dtool/dtool`` with the UUID) with
its sha256.

Where it is kept: in the annotation ``reprodl_model_signing`` (a list, one entry per key: the
key's hint, its public key PEM, the bundle), so it travels with ``reprodl dataset copy`` and is
readable wherever the dataset is, http and s3 included; ``reprodl sign --bundle FILE`` also
writes the bundle to a file, for ``model_signing verify key DIR --signature FILE``.

Checking (``reprodl verify URI --trusted-key KEY.pub``, ``reproduce --trusted-key``, with the PEM
public key): the entry whose bundle names the key's hint is checked by model-signing's own
verifier against the dataset's directory as it is now (signature, statement, every file hashed
again; a file added, missing or changed is refused). That verifier hashes a local directory, so
for a remote URI the check fails saying so: copy the model here (``reprodl dataset copy``) and
verify the copy.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import ReprodlError, StorageError
from reprodl.files import share_as_umask
from reprodl.modeldataset.attestation import (
    _hashing_config,
    _load_ec_key,
    _model_dir,
    _model_signing,
    _public_pem,
    key_fingerprint,
)
from reprodl.modeldataset.signing import SignatureCheck
from reprodl.store import StoredDataSet, open_dataset
from reprodl.store.uris import local_path

ALGORITHM = "ecdsa-model-signing"


def is_ecdsa_key(spec: str | os.PathLike[str], *, private: bool) -> bool:
    """Whether ``spec`` is a PEM file holding an ECDSA key (private or public): what is signed,
    and checked, in model-signing's format. Anything else is left to the Ed25519 code."""
    path = Path(os.fspath(spec))
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError:
        return False
    if not data.lstrip().startswith(b"-----BEGIN"):
        return False
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = serialization.load_pem_private_key(data, None) if private else serialization.load_pem_public_key(data)
    except (ImportError, ValueError, TypeError):
        return False
    return isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))


def bundle_entries(ds: StoredDataSet) -> list[dict[str, Any]]:
    """The model-signing entries stored with ``ds`` (entries without a bundle are dropped)."""
    stored = ds.get_annotation(keys.MODEL_SIGNING, [])
    entries = stored if isinstance(stored, list) else []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("bundle"), dict)]


def bundle_hint(entry: dict[str, Any]) -> str:
    """The key hint a stored bundle names (the sha256 of its signer's public key PEM); '' if none."""
    hint = ((entry.get("bundle") or {}).get("verificationMaterial") or {}).get("publicKey", {}).get("hint")
    return hint if isinstance(hint, str) else ""


def sign_bundle(
    uri: str | StoredDataSet, key_path: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Sign the model dataset at ``uri`` (local) with the ECDSA key at ``key_path`` by
    model-signing; keep the bundle in the ``reprodl_model_signing`` annotation (replacing this
    key's earlier one) and, with ``out``, in that file too. Returns the entry stored."""
    hashing, _, _, _, _ = _model_signing()
    from model_signing import signing

    private = _load_ec_key(key_path, private=True)
    ds, model_dir = _model_dir(uri)
    from reprodl.modeldataset.read import read_record

    read_record(ds)  # a record altered without resealing is refused, not signed
    with tempfile.TemporaryDirectory(prefix="reprodl-sign-") as tmp:
        config = signing.Config().use_elliptic_key_signer(private_key=Path(key_path))
        config.set_hashing_config(_hashing_config(hashing)).sign(model_dir, Path(tmp) / "bundle.json")
        bundle = json.loads((Path(tmp) / "bundle.json").read_text(encoding="utf-8"))
    pem = _public_pem(private.public_key())
    entry = {"algorithm": ALGORITHM, "key_hint": key_fingerprint(pem), "public_key_pem": pem, "bundle": bundle}
    kept = [e for e in bundle_entries(ds) if bundle_hint(e) != entry["key_hint"]]
    try:
        ds.put_annotation(keys.MODEL_SIGNING, [*kept, entry])
        if out is not None:
            Path(out).write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
            share_as_umask(Path(out))
    except OSError as exc:
        raise StorageError(f"cannot write the model-signing bundle ({exc}): choose a path you can write to") from None
    return entry


def verify_bundles(uri: str | StoredDataSet, public_keys: list[str | os.PathLike[str]]) -> SignatureCheck:
    """Whether the model dataset at ``uri`` carries a model-signing bundle by one of the ECDSA
    ``public_keys`` (PEM files) that model-signing's verifier accepts for its directory as it is now."""
    _, verifying, _, _, _ = _model_signing()
    ds = uri if isinstance(uri, StoredDataSet) else open_dataset(uri)
    hints = {key_fingerprint(_public_pem(_load_ec_key(k, private=False))): k for k in public_keys}
    entries = bundle_entries(ds)
    if not entries:
        return SignatureCheck(
            False,
            f"{ds.uri} has no model-signing bundle (no {keys.MODEL_SIGNING} annotation): "
            "ask its author for a copy signed with `reprodl sign URI --key KEY` (an ECDSA key)",
        )
    mine = [e for e in entries if bundle_hint(e) in hints]
    if not mine:
        others = ", ".join(sorted(bundle_hint(e)[:16] or "(no hint)" for e in entries))
        return SignatureCheck(False, f"model-signing bundles only by keys that are not trusted: {others}")
    model_dir = local_path(ds.uri)
    if model_dir is None or not model_dir.is_dir():
        return SignatureCheck(
            False,
            f"{ds.uri} is not a local dataset: model-signing's verifier hashes a directory, so the bundle "
            "is checked against a local copy only; copy it here (`reprodl dataset copy`) and verify the copy",
        )
    problems = []
    for entry in mine:
        hint = bundle_hint(entry)
        try:
            with tempfile.TemporaryDirectory(prefix="reprodl-sign-") as tmp:
                (Path(tmp) / "bundle.json").write_text(json.dumps(entry["bundle"]), encoding="utf-8")
                config = verifying.Config().use_elliptic_key_verifier(public_key=Path(hints[hint]))
                config.verify(model_dir, Path(tmp) / "bundle.json")
        except ReprodlError:
            raise
        except Exception as exc:  # noqa: BLE001 - the library raises ValueError naming the files that differ
            problems.append(f"the model-signing bundle by key {hint[:16]} does not verify: {exc}")
            continue
        return SignatureCheck(True, f"signed by ECDSA key {hint[:16]} (model-signing bundle, verified)", signer=hint)
    return SignatureCheck(False, "; ".join(problems))
