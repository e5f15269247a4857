"""A signed statement that a reproduction happened: ``reprodl reproduce --attest KEY``.

The statement is an in-toto Statement v1 in a DSSE envelope inside a Sigstore bundle (media type
``application/vnd.dev.sigstore.bundle.v0.3+json``), made by the OpenSSF ``model_signing`` library
(PyPI ``model-signing``, ``pip install 'reprodl[attest]'``) with a local ECDSA key, offline (no
certificate, no transparency log). It is the library's own format, so its verifier accepts it:

- ``predicateType`` is ``https://model_signing/signature/v1.0``; the one ``subject`` is the model
  dataset (its name, and the sha256 over its files' digests); ``predicate.serialization`` and
  ``predicate.resources`` list every file of the model dataset directory with its sha256, the
  weights (``data/model.safetensors``) and the record (``data/provenance.json``) among them. The
  dataset's annotations, tags and overlays are left out: they stay writable after a dataset is
  frozen (a signature or a reproduction's verdict is written there).
- ``predicate.reprodl_reproduction`` (a field the v1.0 predicate lets verifiers ignore, covered by
  the signature all the same) holds what was reproduced: the model's UUID, record digest and the
  weights' and record's sha256; the verdict, the expectation, the evidence (weights, metrics,
  predictions, data and code checks, environment differences, divergence, timings) and the
  reproducer's environment; and the signer's public key (PEM), so a catalog can check the
  signature without being given the key (it then proves integrity, not who signed: pass the key).

``model_signing``'s verifier (``model_signing.verifying.Config().use_elliptic_key_verifier(
public_key=KEY.pub).verify(MODEL_DIR, BUNDLE)``, or its CLI ``model_signing verify key``) checks:
the bundle's media type; that the key hint is the sha256 of the given public key; the ECDSA
signature over the DSSE pre-authentication encoding of the payload; the payload type and in-toto
statement type; the predicate type, one subject, and the subject digest against the resources;
then it hashes the model directory (same serialization and ignored paths) and refuses any file
added, missing or changed. It does not read ``reprodl_reproduction``; :func:`verify_attestation`
runs it and then also checks that part (format, the record's digest and the UUID against the
dataset as it is now).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from reprodl import __version__, keys
from reprodl.errors import MissingDependencyError, ReprodlError, SigningError, StorageError
from reprodl.files import read_regular, share_as_umask
from reprodl.parsing import load_json
from reprodl.store import StoredDataSet, file_sha256, open_dataset
from reprodl.store.uris import local_path

PUBLIC_SUFFIX = ".pub"
#: Left out of what is hashed: what stays writable on a frozen dtool dataset.
MUTABLE_PATHS = (".dtool/annotations", ".dtool/tags", ".dtool/overlays")
MAX_LISTED = 50  # differing weight tensors listed in an attestation's evidence
_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # the curves model_signing's key verifier takes
_INSTALL_HINT = "install it with `pip install 'reprodl[attest]'` (the model-signing package)"
#: What of a reproduction report goes in the statement's evidence.
EVIDENCE_KEYS = (
    "reproduction_uri",
    "tolerance",
    "weights",
    "metrics",
    "predictions",
    "envelope",
    "data_order_matches",
    "data_checks",
    "code",
    "environment_differences",
    "divergence",
    "timings",
    "reasons",
)


def _model_signing() -> Any:
    try:
        import model_signing.hashing
        import model_signing.verifying
        from model_signing._signing import sign_ec_key, sign_sigstore_pb, signing
    except ImportError:
        raise MissingDependencyError(
            f"attesting a reproduction needs the model-signing package: {_INSTALL_HINT}"
        ) from None
    return model_signing.hashing, model_signing.verifying, sign_ec_key, sign_sigstore_pb, signing


# --- keys -------------------------------------------------------------------------------


def generate_ecdsa_key(path: str | os.PathLike[str]) -> str:
    """Write a new ECDSA P-256 private key to ``path`` (PKCS#8 PEM, mode 0600) and its public key
    to ``path.pub`` (PEM, what ``model_signing verify key --public_key`` reads); returns the
    public key's PEM text. Never overwrites a file."""
    _model_signing()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key_path, pub_path = Path(path), Path(f"{os.fspath(path)}{PUBLIC_SUFFIX}")
    for p in (key_path, pub_path):
        if p.exists():
            raise SigningError(f"{p} already exists: reprodl never overwrites a key; choose another path")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = _public_pem(key.public_key())
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        with open(pub_path, "x", encoding="ascii") as fh:
            fh.write(public)
    except OSError as exc:
        raise StorageError(f"cannot write the key {key_path}: {exc}") from None
    return public


def _public_pem(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return str(raw.decode("ascii"))


def key_fingerprint(public_pem: str) -> str:
    """The sha256 of a public key's PEM: what model-signing stores in a bundle as the key hint."""
    return hashlib.sha256(public_pem.encode("ascii")).hexdigest()


def _load_ec_key(path: str | os.PathLike[str], *, private: bool) -> Any:
    """The ECDSA key in the PEM file at ``path``, refused unless on a curve model-signing takes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    what, name = ("signing key" if private else "public key"), os.fspath(path)
    fix = "make a pair with `reprodl keygen KEY --ecdsa`"
    key: Any
    try:
        data = Path(path).read_bytes()
        key = serialization.load_pem_private_key(data, None) if private else serialization.load_pem_public_key(data)
    except OSError as exc:
        raise SigningError(f"cannot read the {what} {name!r}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{name!r} is not an unencrypted PEM {what} ({exc}); {fix}") from None
    public = key.public_key() if private else key
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in _CURVES:
        raise SigningError(
            f"{name!r} holds a {type(key).__name__}: an attestation is signed with an ECDSA key on "
            f"{', '.join(_CURVES)} (what model-signing's key verifier takes); {fix}"
        )
    return key


# --- the statement ------------------------------------------------------------------------


def check_can_attest(uri: str, key_path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a key model-signing cannot sign with or a model it cannot hash."""
    _model_signing()
    _load_ec_key(key_path, private=True)
    _model_dir(uri)


def _model_dir(uri: str | StoredDataSet) -> tuple[StoredDataSet, Path]:
    ds = uri if isinstance(uri, StoredDataSet) else open_dataset(uri)
    path = local_path(ds.uri)
    if path is None or not path.is_dir():
        raise SigningError(
            f"{ds.uri} is not a local dataset: model-signing hashes a directory; "
            "copy it here first (`reprodl dataset copy`) and reproduce or verify the copy"
        )
    return ds, path


def _hashing_config(hashing: Any) -> Any:
    config = hashing.Config().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
    return config.set_ignored_paths(paths=list(MUTABLE_PATHS), ignore_git_paths=True)


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON (a protobuf Struct holds no NaN): non-finite numbers as text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def reproduction_predicate(
    ds: StoredDataSet, report: dict[str, Any], environment: dict[str, Any], public_pem: str
) -> dict[str, Any]:
    """The ``reprodl_reproduction`` part of the predicate (see the module docstring)."""
    from reprodl.modeldataset.read import read_record

    record = read_record(ds)  # its digest checked against its content
    items = {ds.relpath(i): i for i in ds.identifiers}
    sha = {name: file_sha256(ds.item_path(items[name])) for name in (keys.WEIGHTS_FILE, keys.PROVENANCE_FILE)}
    return _jsonable(
        {
            "format": keys.ATTESTATION_FORMAT,
            "model": {
                "uri": ds.uri,
                "uuid": ds.uuid,
                "name": ds.name,
                "record_digest": record.digest,
                "weights": {"name": f"data/{keys.WEIGHTS_FILE}", "sha256": sha[keys.WEIGHTS_FILE]},
                "record": {"name": f"data/{keys.PROVENANCE_FILE}", "sha256": sha[keys.PROVENANCE_FILE]},
            },
            "verdict": report.get("verdict"),
            "mode": report.get("mode"),
            "expectation": report.get("expectation"),
            "evidence": _evidence(report),
            "reproducer": {
                "environment": _environment(environment),
                "reprodl_version": __version__,
                "reproduced_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
            "signer": {"public_key_pem": public_pem, "key_hint": key_fingerprint(public_pem)},
        }
    )


def _evidence(report: dict[str, Any]) -> dict[str, Any]:
    """The report's evidence, kept small: of the weights, the totals and the tensors that differ."""
    evidence = {k: report[k] for k in EVIDENCE_KEYS if k in report}
    weights = evidence.get("weights")
    if isinstance(weights, dict) and isinstance(weights.get("tensors"), list):
        tensors = weights["tensors"]
        differing = [t for t in tensors if not (isinstance(t, dict) and t.get("identical"))]
        kept = {k: v for k, v in weights.items() if k != "tensors"}
        evidence["weights"] = kept | {"n_tensors": len(tensors), "tensors_differing": differing[:MAX_LISTED]}
    return evidence


def _environment(environment: dict[str, Any]) -> dict[str, Any]:
    """The reproducer's environment; its installed packages as their count and one sha256."""
    packages = environment.get("packages")
    if not isinstance(packages, (dict, list)):
        return environment
    digest = hashlib.sha256(json.dumps(packages, sort_keys=True).encode()).hexdigest()
    return {k: v for k, v in environment.items() if k != "packages"} | {
        "packages": {"count": len(packages), "sha256": digest}
    }


@dataclasses.dataclass(frozen=True)
class _Payload:
    """What model-signing's signers take: an object with the in-toto ``statement``."""

    statement: Any


def attest(
    uri: str | StoredDataSet,
    key_path: str | os.PathLike[str],
    *,
    report: dict[str, Any],
    environment: dict[str, Any],
    out: str | os.PathLike[str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Sign a statement that the model dataset at ``uri`` (local) was reproduced, as ``report``
    (``ReproductionReport.to_dict()``) says, in ``environment``; write the bundle to ``out``
    (default ``<model name>.reproduction.sigstore.json`` here). Returns (its path, the bundle)."""
    hashing, _, sign_ec_key, _, signing = _model_signing()
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement

    private = _load_ec_key(key_path, private=True)
    ds, model_dir = _model_dir(uri)
    library = signing.Payload(_hashing_config(hashing).hash(model_dir))  # subject, serialization, resources
    predicate = json_format.MessageToDict(library.statement.pb)["predicate"]
    predicate[keys.ATTESTATION_PREDICATE_KEY] = reproduction_predicate(
        ds, report, environment, _public_pem(private.public_key())
    )
    subject = library.statement.pb.subject[0]
    payload = _Payload(
        statement.Statement(subjects=[subject], predicate_type=signing._PREDICATE_TYPE, predicate=predicate)
    )
    bundle = json.loads(sign_ec_key.Signer(Path(key_path)).sign(payload).bundle.to_json())
    path = Path(out) if out is not None else Path(f"{ds.name}{keys.ATTESTATION_SUFFIX}")
    try:
        path.write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
        share_as_umask(path)
    except OSError as exc:
        raise StorageError(f"cannot write the attestation {path}: {exc}") from None
    return path, bundle


# --- checking -----------------------------------------------------------------------------


@dataclasses.dataclass
class AttestationCheck:
    """The outcome of checking an attestation: ``ok``, why not, and what it states."""

    ok: bool
    detail: str
    statement: dict[str, Any] | None = None
    signer: str | None = None  # the signer's key hint (sha256 of its public key's PEM)
    trusted: bool = False  # checked against a public key the caller gave

    @property
    def reproduction(self) -> dict[str, Any]:
        """The statement's ``reprodl_reproduction`` part ({} when there is none)."""
        part = ((self.statement or {}).get("predicate") or {}).get(keys.ATTESTATION_PREDICATE_KEY)
        return part if isinstance(part, dict) else {}


def read_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The Sigstore bundle at ``path`` as JSON (size bounded; a pipe or a device is refused unread)."""
    what = f"the attestation {os.fspath(path)!r}"
    data = read_regular(path, keys.MAX_ATTESTATION_BYTES, what=what, error=SigningError)
    bundle = load_json(data, what=os.fspath(path), error=SigningError)
    if not isinstance(bundle, dict):
        raise SigningError(f"{os.fspath(path)} holds a JSON {type(bundle).__name__}, not a Sigstore bundle")
    return bundle


def unverified_statement(bundle: dict[str, Any]) -> dict[str, Any]:
    """The in-toto statement a bundle carries, decoded but NOT checked (to find the signer's key)."""
    try:
        raw = base64.b64decode(bundle["dsseEnvelope"]["payload"], validate=True)
        statement = load_json(raw, what="the attestation's payload", error=SigningError)
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(f"not a Sigstore bundle with a DSSE envelope ({type(exc).__name__}: {exc})") from None
    if not isinstance(statement, dict):
        raise SigningError("the attestation's payload is not an in-toto statement (a JSON object)")
    return statement


def _key_file(public_key: str | os.PathLike[str] | None, statement: dict[str, Any], tmp: Path) -> tuple[Path, bool]:
    """The public key to check with (a file), and whether the caller gave it (trusted)."""
    if public_key is not None:
        _load_ec_key(public_key, private=False)
        return Path(public_key), True
    part = (statement.get("predicate") or {}).get(keys.ATTESTATION_PREDICATE_KEY) or {}
    pem = (part.get("signer") or {}).get("public_key_pem") if isinstance(part, dict) else None
    if not isinstance(pem, str):
        raise SigningError("the attestation names no signer's public key: pass the signer's KEY.pub")
    path = tmp / "signer.pub"
    path.write_text(pem, encoding="ascii")
    _load_ec_key(path, private=False)
    return path, False


def check_signature(bundle: dict[str, Any], *, public_key: str | os.PathLike[str] | None = None) -> AttestationCheck:
    """The bundle's signature and statement, checked with model-signing's key verifier (not the
    model's files: :func:`verify_attestation` does that); the key carried in it when none is given."""
    _, _, sign_ec_key, sign_sigstore_pb, _ = _model_signing()
    try:
        statement = unverified_statement(bundle)
        with tempfile.TemporaryDirectory(prefix="reprodl-attest-") as tmp:
            key, trusted = _key_file(public_key, statement, Path(tmp))
            (Path(tmp) / "bundle.json").write_text(json.dumps(bundle), encoding="utf-8")
            signature = sign_sigstore_pb.Signature.read(Path(tmp) / "bundle.json")
            sign_ec_key.Verifier(key).verify(signature)  # signature, DSSE, statement, subject vs resources
            hint = key_fingerprint(_public_pem(_load_ec_key(key, private=False)))
    except ReprodlError as exc:
        return AttestationCheck(False, str(exc))
    except Exception as exc:  # noqa: BLE001 - the library raises ValueError, InvalidSignature, KeyError...
        return AttestationCheck(False, f"the signature does not verify ({type(exc).__name__}: {exc})")
    return AttestationCheck(True, f"signed by key {hint[:16]}", statement, hint, trusted)


def verify_attestation(
    bundle: str | os.PathLike[str] | dict[str, Any],
    uri: str | StoredDataSet,
    *,
    public_key: str | os.PathLike[str] | None = None,
) -> AttestationCheck:
    """Whether the attestation ``bundle`` (a path, or the bundle) holds for the model dataset at
    ``uri`` (local) as it is now: model-signing's own verifier (signature, statement, every file
    hashed again), then reprodl's part (its format, the record's digest and the dataset's UUID).
    Without ``public_key`` the key carried in the statement is used (integrity, not identity)."""
    _, verifying, _, _, _ = _model_signing()
    data = bundle if isinstance(bundle, dict) else read_bundle(bundle)
    check = check_signature(data, public_key=public_key)
    if not check.ok:
        return check
    try:
        ds, model_dir = _model_dir(uri)
        with tempfile.TemporaryDirectory(prefix="reprodl-attest-") as tmp:
            key, _ = _key_file(public_key, check.statement or {}, Path(tmp))
            (Path(tmp) / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
            verifying.Config().use_elliptic_key_verifier(public_key=key).verify(model_dir, Path(tmp) / "bundle.json")
    except ReprodlError as exc:
        return dataclasses.replace(check, ok=False, detail=str(exc))
    except Exception as exc:  # noqa: BLE001 - the library raises ValueError naming the files that differ
        return dataclasses.replace(check, ok=False, detail=f"model-signing refuses it: {exc}")
    problem = _reproduction_problem(check.reproduction, ds)
    if problem:
        return dataclasses.replace(check, ok=False, detail=problem)
    who = "a trusted key" if check.trusted else "the key it carries (not checked against a trusted key)"
    verdict = check.reproduction.get("verdict")
    return dataclasses.replace(check, detail=f"reproduction attested ({verdict}), signed by {who}: {check.signer}")


def _reproduction_problem(part: dict[str, Any], ds: StoredDataSet) -> str | None:
    """What in the statement's reprodl part does not fit the dataset as it is now; None if nothing."""
    from reprodl.modeldataset.read import read_record

    if part.get("format") != keys.ATTESTATION_FORMAT:
        return f"the statement is not a reprodl reproduction ({keys.ATTESTATION_FORMAT}): format {part.get('format')!r}"
    model = part.get("model")
    model = model if isinstance(model, dict) else {}
    try:
        digest = read_record(ds).digest
    except ReprodlError as exc:
        return f"the record does not check: {exc}"
    if model.get("uuid") != ds.uuid:
        return f"the attestation is about the dataset {model.get('uuid')}, not {ds.uuid}"
    if model.get("record_digest") != digest:
        return f"the attestation names the record digest {model.get('record_digest')}, the record's is {digest}"
    return None
