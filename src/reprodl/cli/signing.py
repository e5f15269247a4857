"""Signing commands: keygen, sign (checking is `reprodl verify URI --trusted-key KEY.pub`); the
attestation of a reproduction (`reprodl reproduce --attest KEY`, `reprodl verify --attestation`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from reprodl import keys
from reprodl.cli.common import JSON_OPT, handle_errors, out, print_json

if TYPE_CHECKING:
    from reprodl.modeldataset.attestation import AttestationCheck
    from reprodl.reproduction.pipeline import ReproductionReport


app = typer.Typer()  # this module's top-level commands: register() adds them to the reprodl app


@app.command("keygen")
@handle_errors
def keygen_cmd(
    key: Path = typer.Argument(
        ..., help="Where to write the private key (PEM, mode 0600); the public key goes to KEY.pub."
    ),
    ecdsa: bool = typer.Option(
        False, "--ecdsa", help="An ECDSA P-256 pair (PEM): `reproduce --attest`, and `sign` in model-signing's format."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Make an Ed25519 key pair for signing models (needs `pip install 'reprodl\\[sign]'`), or with
    --ecdsa one for attesting reproductions and signing in model-signing's format (needs
    `pip install 'reprodl\\[attest]'`)."""
    from reprodl.modeldataset.signing import PUBLIC_SUFFIX, generate_key

    if ecdsa:
        from reprodl.modeldataset.attestation import generate_ecdsa_key

        public = generate_ecdsa_key(key)
    else:
        public = generate_key(key)
    pub_path = f"{key}{PUBLIC_SUFFIX}"
    if as_json:
        print_json({"private_key": str(key), "public_key_file": pub_path, "public_key": public})
        return
    out.print(f"Private key: {key} (keep it secret)", markup=False)
    if ecdsa:
        out.print(f"Public key:  {pub_path} (PEM)", markup=False)
        out.print("Attest a reproduction: reprodl reproduce URI --attest KEY", markup=False)
        out.print("Sign a model (model-signing format): reprodl sign URI --key KEY", markup=False)
        return
    out.print(f"Public key:  {pub_path}: {public}", markup=False)
    out.print(
        "Give the public key to whoever checks your models: reprodl verify URI --trusted-key KEY.pub", markup=False
    )


@app.command("sign")
@handle_errors
def sign_cmd(
    uri: str = typer.Argument(..., help="Model dataset URI (one you can write annotations to)."),
    key: Path = typer.Option(..., "--key", help="Private key file written by `reprodl keygen` (Ed25519 or --ecdsa)."),
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help="With an ECDSA key: also write its model-signing bundle here (`model_signing verify`)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Sign a model dataset: its record digest, weights, manifest and every item's sha256 (Ed25519
    key); with an ECDSA key (`keygen --ecdsa`), an OpenSSF model-signing bundle of its directory."""
    from reprodl.modeldataset.signing import sign

    entry = sign(uri, key, bundle=bundle)
    if as_json:
        print_json(entry if bundle is None else entry | {"bundle_path": str(bundle)})
        return
    if "bundle" in entry:
        _print_bundle(uri, entry, bundle)
        return
    out.print(f"Signed {uri} with {entry['public_key']}", markup=False)
    for name, value in entry["payload"].items():
        out.print(f"  {name}: {value}", markup=False)


def _print_bundle(uri: str, entry: dict[str, Any], path: Optional[Path]) -> None:
    from reprodl.modeldataset.attestation import unverified_statement

    resources = unverified_statement(entry["bundle"]).get("predicate", {}).get("resources", [])
    out.print(f"Signed {uri} with ECDSA key {entry['key_hint'][:16]} (OpenSSF model-signing bundle)", markup=False)
    out.print(f"  files covered: {len(resources)} (sha256 each)", markup=False)
    out.print(f"  kept in the annotation {keys.MODEL_SIGNING}" + (f" and in {path}" if path else ""), markup=False)
    out.print("Check it: reprodl verify URI --trusted-key KEY.pub", markup=False)


# --- attestations of reproductions ----------------------------------------------------------
ATTEST_OPT = typer.Option(
    None,
    "--attest",
    help="Sign a statement of this reproduction with this ECDSA key (`reprodl keygen KEY --ecdsa`): an in-toto "
    "statement in a Sigstore bundle, OpenSSF model-signing format; the model must be a local dataset.",
)
ATTESTATION_OUT_OPT = typer.Option(
    None, "--attestation", help="Where --attest writes the bundle (default: <model name>.reproduction.sigstore.json)."
)


def check_can_attest(uri: str, key: Optional[Path]) -> None:
    """Before re-training: refuse a key model-signing cannot use, or a model it cannot hash."""
    if key is not None:
        from reprodl.modeldataset.attestation import check_can_attest as check

        check(uri, key)


def attest_report(report: ReproductionReport, key: Path, path: Optional[Path]) -> dict[str, Any]:
    """Sign the statement of ``report``; keep it on the kept reproduction too. What was written."""
    from reprodl.modeldataset.attestation import attest
    from reprodl.store import open_dataset
    from reprodl.training.capture import capture_environment

    environment = capture_environment().model_dump(mode="json")
    written, bundle = attest(report.original_uri, key, report=report.to_dict(), environment=environment, out=path)
    if report.reproduction_uri is not None:
        open_dataset(report.reproduction_uri).put_annotation(keys.ATTESTATION, bundle)
    hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint")
    return {"path": str(written), "key_hint": hint}


def attestation_check(uri: str, bundle: Path, key: Optional[Path]) -> AttestationCheck:
    """``reprodl verify --attestation``: the bundle against the model as it is now."""
    from reprodl.modeldataset.attestation import verify_attestation

    return verify_attestation(bundle, uri, public_key=key)


def register(root: typer.Typer) -> None:
    """Add this module's commands to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.registered_commands.extend(app.registered_commands)
