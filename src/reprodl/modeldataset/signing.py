"""Ed25519 signatures over a model dataset: what tells the author's record from a resealed one.

The record digest is a self-digest: anyone who edits a record can recompute it. A signature
made with the author's private key cannot be recomputed, so a model checked against the
author's public key is the one the author signed. Needs the optional ``cryptography``
package (``pip install 'reprodl[sign]'``).

What is signed (``signing_payload``, canonical JSON of): the format name, the dataset's UUID
and name, the record digest (the record's own digest, checked against its content), the
sha256 of ``model.safetensors``, the manifest digest, and a sha256 over every item's relpath
and sha256 (so each item, the record included, is covered by sha256, not only dtool's md5).
The signatures are kept as a list in the ``reprodl_signatures`` annotation, one per public
key (signing again with a key replaces its signature); annotations are copied with the
dataset, so a copy verifies too. Verifying recomputes the payload from the dataset as it is
now: a stored payload is shown to explain a mismatch, never trusted.

Keys: :func:`generate_key` writes the private key as unencrypted PKCS#8 PEM (mode 0600) and
the public key beside it (``KEY.pub``: one line, the 32 raw bytes in base64). A trusted key
is given as such a file, a PEM public key file, or the base64 text itself.

Example:
    >>> public = generate_key("author.key")                                # doctest: +SKIP
    >>> sign("/models/digits_model", "author.key")                         # doctest: +SKIP
    >>> verify_signature("/models/digits_model", trusted_keys=["author.key.pub"]).ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reprodl import keys
from reprodl.errors import (
    IntegrityError,
    MissingDependencyError,
    ModelLoadError,
    ReprodlError,
    SigningError,
    StorageError,
)
from reprodl.store import StoredDataSet, canonical_json, file_sha256, open_dataset

ALGORITHM = "ed25519"
PUBLIC_SUFFIX = ".pub"
CHECK_NAME = "signed by a trusted key"
_INSTALL_HINT = "install it with `pip install 'reprodl[sign]'` (the cryptography package)"


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependencyError(
            f"signing and checking signatures needs the cryptography package: {_INSTALL_HINT}"
        ) from None
    return ed25519


def _serialization() -> Any:
    _ed25519()
    from cryptography.hazmat.primitives import serialization

    return serialization


# --- keys -------------------------------------------------------------------------------


def public_key_text(raw: bytes) -> str:
    """The text form of a raw Ed25519 public key (base64 of its 32 bytes), as in ``KEY.pub``."""
    return base64.b64encode(raw).decode("ascii")


def generate_key(path: str | os.PathLike[str]) -> str:
    """Write a new Ed25519 private key to ``path`` (PEM, mode 0600) and its public key to
    ``path.pub``; returns the public key text. Never overwrites a file."""
    ed25519, serialization = _ed25519(), _serialization()
    key_path, pub_path = Path(path), Path(f"{os.fspath(path)}{PUBLIC_SUFFIX}")
    for p in (key_path, pub_path):
        if p.exists():
            raise SigningError(f"{p} already exists: reprodl never overwrites a key; choose another path")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = public_key_text(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        with open(pub_path, "x", encoding="ascii") as fh:
            fh.write(public + "\n")
    except OSError as exc:
        raise StorageError(f"cannot write the key {key_path}: {exc}") from None
    return public


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """The Ed25519 private key in the PEM file at ``path`` (as :func:`generate_key` writes)."""
    ed25519, serialization = _ed25519(), _serialization()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the signing key {os.fspath(path)!r}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(
            f"{os.fspath(path)!r} is not an unencrypted PEM private key ({exc}); make one with `reprodl keygen KEY`"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(
            f"{os.fspath(path)!r} holds a {type(key).__name__}, not an Ed25519 key; make one with `reprodl keygen KEY`"
        )
    return key


def load_public_key(spec: str | os.PathLike[str]) -> str:
    """A trusted public key as text (base64 of 32 bytes), from a ``KEY.pub`` file, a PEM
    public key file, or the base64 text itself."""
    ed25519, serialization = _ed25519(), _serialization()
    text = os.fspath(spec).strip()
    path = Path(os.fspath(spec))
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SigningError(f"cannot read the public key {text!r}: {exc}") from None
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, TypeError) as exc:
                raise SigningError(f"{text!r} is not a PEM public key ({exc})") from None
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise SigningError(f"{text!r} holds a {type(key).__name__}, not an Ed25519 public key")
            return public_key_text(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        text = data.decode("ascii", errors="replace").strip()
    raw = _b64(text)
    if raw is None or len(raw) != 32:
        raise SigningError(
            f"{os.fspath(spec)!r} is neither a public key file nor a base64 Ed25519 public key "
            "(the one line of a KEY.pub file written by `reprodl keygen`)"
        )
    return public_key_text(raw)


def _b64(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


# --- what is signed ---------------------------------------------------------------------


def signing_payload(ds: StoredDataSet) -> dict[str, Any]:
    """What a signature of the model dataset ``ds`` covers, computed from its content now.

    Raises a reprodl error when the dataset is no reprodl model (no record or weights) or
    its record was altered without resealing.
    """
    from reprodl.modeldataset.read import read_record

    record = read_record(ds)  # its digest checked against its content
    items = {ds.relpath(i): "sha256:" + file_sha256(ds.item_path(i)) for i in ds.identifiers}
    if keys.WEIGHTS_FILE not in items:
        raise ModelLoadError(f"{ds.uri} has no {keys.WEIGHTS_FILE} item: it is not a reprodl model")
    return {
        "format": keys.SIGNATURE_FORMAT,
        "uuid": ds.uuid,
        "name": ds.name,
        "record_digest": record.digest,
        "weights_sha256": items[keys.WEIGHTS_FILE],
        "manifest_digest": ds.manifest_digest(),
        "items_sha256": "sha256:" + hashlib.sha256(canonical_json(sorted(items.items()))).hexdigest(),
    }


def signatures(ds: StoredDataSet) -> list[dict[str, Any]]:
    """The signatures stored with ``ds`` (entries that are not JSON objects are dropped)."""
    stored = ds.get_annotation(keys.SIGNATURES, [])
    return [s for s in stored if isinstance(s, dict)] if isinstance(stored, list) else []


def sign(uri: str, key_path: str | os.PathLike[str], *, bundle: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Sign the model dataset at ``uri`` with the private key at ``key_path``; returns the
    signature stored (algorithm, public_key, signature, payload). A signature by the same key
    is replaced; others are kept. With an ECDSA key (PEM) the model-signing library signs the
    dataset's directory instead (:mod:`reprodl.modeldataset.bundle_signing`; ``bundle``: also
    write its bundle to that file)."""
    from reprodl.modeldataset.bundle_signing import is_ecdsa_key, sign_bundle

    if is_ecdsa_key(key_path, private=True):
        return sign_bundle(uri, key_path, out=bundle)
    if bundle is not None:
        raise SigningError(
            f"{os.fspath(key_path)!r} is an Ed25519 key: only an ECDSA key (`reprodl keygen KEY --ecdsa`) "
            "signs in model-signing's format, whose bundle --bundle writes; drop --bundle or sign with an ECDSA key"
        )
    key = load_private_key(key_path)
    serialization = _serialization()
    ds = open_dataset(uri)
    payload = signing_payload(ds)
    public = public_key_text(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    entry = {
        "algorithm": ALGORITHM,
        "public_key": public,
        "signature": base64.b64encode(key.sign(canonical_json(payload))).decode("ascii"),
        "payload": payload,
    }
    kept = [s for s in signatures(ds) if s.get("public_key") != public]
    try:
        ds.put_annotation(keys.SIGNATURES, [*kept, entry])
    except ReprodlError:
        raise
    except Exception as exc:  # noqa: BLE001 - brokers raise untyped errors (http is read-only)
        raise StorageError(
            f"cannot store the signature in {ds.uri} ({type(exc).__name__}: {exc}): "
            "sign a copy you can write to (`reprodl dataset copy`)"
        ) from None
    return entry


# --- checking ---------------------------------------------------------------------------


@dataclasses.dataclass
class SignatureCheck:
    """The outcome of checking a model's signatures against trusted keys."""

    ok: bool
    detail: str
    signer: str | None = None  # the trusted public key whose signature matched


def verify_signature(uri: str | StoredDataSet, *, trusted_keys: Iterable[str | os.PathLike[str]]) -> SignatureCheck:
    """Whether the model dataset at ``uri`` carries a valid signature, over its content as
    it is now, by one of ``trusted_keys`` (``KEY.pub`` files, PEM files or base64 texts). An
    ECDSA public key (PEM) checks the model-signing bundles instead (:func:`_either`)."""
    from reprodl.modeldataset.bundle_signing import is_ecdsa_key

    given = list(trusted_keys)
    ecdsa = [k for k in given if is_ecdsa_key(k, private=False)]
    if ecdsa:
        return _either(uri, [k for k in given if k not in ecdsa], ecdsa)
    trusted = [load_public_key(k) for k in given]
    if not trusted:
        raise SigningError("no trusted key given: pass the author's public key (KEY.pub), CLI: --trusted-key KEY.pub")
    ed25519 = _ed25519()
    ds = uri if isinstance(uri, StoredDataSet) else open_dataset(uri)
    stored = signatures(ds)
    if not stored:
        return SignatureCheck(
            False, f"{ds.uri} is not signed (no {keys.SIGNATURES} annotation): ask its author for a signed copy"
        )
    try:
        payload = signing_payload(ds)
    except ReprodlError as exc:
        return SignatureCheck(False, f"cannot compute what a signature covers: {exc}")
    message = canonical_json(payload)
    mine = [s for s in stored if s.get("public_key") in trusted]
    if not mine:
        others = ", ".join(sorted(str(s.get("public_key"))[:60] for s in stored))
        return SignatureCheck(False, f"signed only by keys that are not trusted: {others}")
    problems = []
    for entry in mine:
        pub, sig = entry["public_key"], _b64(entry.get("signature"))
        if entry.get("algorithm") != ALGORITHM or sig is None:
            problems.append(f"the signature by {pub} is malformed")
            continue
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(_b64(pub)).verify(sig, message)
        except Exception:  # noqa: BLE001 - InvalidSignature, or a key cryptography refuses
            problems.append(f"the signature by {pub} does not match: {_what_changed(entry.get('payload'), payload)}")
            continue
        return SignatureCheck(True, f"signed by {pub}", signer=pub)
    return SignatureCheck(False, "; ".join(problems))


def _either(
    uri: str | StoredDataSet, ed25519_keys: list[str | os.PathLike[str]], ecdsa_keys: list[str | os.PathLike[str]]
) -> SignatureCheck:
    """Signed by one of the Ed25519 keys (reprodl's signature) or one of the ECDSA keys (a
    model-signing bundle): the first check that passes, else why each failed."""
    from reprodl.modeldataset.bundle_signing import verify_bundles

    ds = uri if isinstance(uri, StoredDataSet) else open_dataset(uri)
    failed = []
    if ed25519_keys:
        check = verify_signature(ds, trusted_keys=ed25519_keys)
        if check.ok:
            return check
        failed.append(check.detail)
    check = verify_bundles(ds, ecdsa_keys)
    return check if check.ok else SignatureCheck(False, "; ".join([*failed, check.detail]))


def signers(ds: StoredDataSet) -> list[str]:
    """Who signed ``ds``, unchecked: Ed25519 public keys, and ECDSA key hints of model-signing bundles."""
    from reprodl.modeldataset.bundle_signing import bundle_entries, bundle_hint

    ed25519 = [str(s.get("public_key"))[:60] for s in signatures(ds)]
    return ed25519 + [f"ECDSA key {bundle_hint(e)[:16]} (model-signing)" for e in bundle_entries(ds)]


def _what_changed(signed: Any, now: dict[str, Any]) -> str:
    if not isinstance(signed, dict):
        return "the signature is invalid"
    changed = [f"{k} signed {str(signed.get(k))[:80]}, now {now[k]}" for k in now if signed.get(k) != now[k]]
    return (
        ("the dataset changed since it was signed: " + "; ".join(changed))
        if changed
        else "the signature is invalid (forged or corrupted)"
    )


def signature_note(ds: StoredDataSet, trusted_keys: Iterable[str | os.PathLike[str]]) -> str:
    """Before anything of ``ds`` runs: with ``trusted_keys``, its signature by one of them, checked
    (:class:`IntegrityError` when it fails); without, who signed it (not checked)."""

    trusted = list(trusted_keys)
    if trusted:
        check = verify_signature(ds, trusted_keys=trusted)
        if not check.ok:
            raise IntegrityError(
                f"refusing to reproduce {ds.uri}: {check.detail}; nothing was run", problems=[check.detail]
            )
        return f"{check.detail} (checked against a trusted key)"
    who = signers(ds)
    return f"by {', '.join(who)} (not checked: pass --trusted-key)" if who else "not signed"
