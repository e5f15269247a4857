"""Signing commands: keygen, sign (checking is `reprodl verify URI --trusted-key KEY.pub`)."""

from __future__ import annotations

from pathlib import Path

import typer

from reprodl.cli import app
from reprodl.cli.common import JSON_OPT, handle_errors, out, print_json


@app.command("keygen")
@handle_errors
def keygen_cmd(
    key: Path = typer.Argument(
        ..., help="Where to write the private key (PEM, mode 0600); the public key goes to KEY.pub."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Make an Ed25519 key pair for signing models (needs `pip install 'reprodl\\[sign]'`)."""
    from reprodl.modeldataset.signing import PUBLIC_SUFFIX, generate_key

    public = generate_key(key)
    pub_path = f"{key}{PUBLIC_SUFFIX}"
    if as_json:
        print_json({"private_key": str(key), "public_key_file": pub_path, "public_key": public})
        return
    out.print(f"Private key: {key} (keep it secret)", markup=False)
    out.print(f"Public key:  {pub_path}: {public}", markup=False)
    out.print(
        "Give the public key to whoever checks your models: reprodl verify URI --trusted-key KEY.pub", markup=False
    )


@app.command("sign")
@handle_errors
def sign_cmd(
    uri: str = typer.Argument(..., help="Model dataset URI (one you can write annotations to)."),
    key: Path = typer.Option(..., "--key", help="Private key file written by `reprodl keygen`."),
    as_json: bool = JSON_OPT,
) -> None:
    """Sign a model dataset: its record digest, weights, manifest and every item's sha256."""
    from reprodl.modeldataset.signing import sign

    entry = sign(uri, key)
    if as_json:
        print_json(entry)
        return
    out.print(f"Signed {uri} with {entry['public_key']}", markup=False)
    for name, value in entry["payload"].items():
        out.print(f"  {name}: {value}", markup=False)
