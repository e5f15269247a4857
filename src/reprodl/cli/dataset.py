"""`reprodl dataset ...`: create, split, inspect and verify training datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from reprodl import keys
from reprodl.cli.common import JSON_OPT, QUIET_OPT, err, handle_errors, out, print_json, progress_bar
from reprodl.errors import ExitCode, InputDataError, InvalidURIError, StorageError

app = typer.Typer(help="Create, split, inspect and verify training datasets.", no_args_is_help=True)

_DESC = typer.Option(None, "--description", help="README: what the data are.")
_AUTHOR = typer.Option(None, "--author", help="README: an author (repeat for several).")
_ORIGIN = typer.Option(None, "--origin", help="README: where the data came from.")
_LICENSE = typer.Option(None, "--license", help="README: terms of use.")
_README = typer.Option(None, "--readme", exists=False, help="README YAML file to start from.")
_SCHEMA = typer.Option(None, "--schema", help="Extra JSON Schema (JSON or YAML file) the README must satisfy.")


def _readme_fields(
    description: Optional[str],
    author: Optional[list[str]],
    origin: Optional[str],
    license: Optional[str],
    readme: Optional[Path],
    schema: Optional[Path],
) -> dict[str, Any]:
    return {
        "description": description,
        "authors": author or None,
        "origin": origin,
        "license": license,
        "readme_file": readme,
        "schema": schema,
    }


def _created(uri: str, as_json: bool, kind: str) -> None:
    if as_json:
        print_json({"uri": uri})
    else:
        out.print(f"Created {kind} dataset at {uri}", markup=False)


@app.command("create-from-dirtree")
@handle_errors
def create_from_dirtree_cmd(
    dirtree: Path = typer.Argument(..., help="Directory with one subdirectory of images per category."),
    base_uri: str = typer.Argument(..., help="Where to create the dataset (path, file://, s3://)."),
    name: str = typer.Argument(..., help="Dataset name (letters, digits, '-', '_', '.')."),
    description: Optional[str] = _DESC,
    author: Optional[list[str]] = _AUTHOR,
    origin: Optional[str] = _ORIGIN,
    license: Optional[str] = _LICENSE,
    readme: Optional[Path] = _README,
    schema: Optional[Path] = _SCHEMA,
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Create an image dataset from DIRTREE/<category>/<image> (the paper's create-image-dataset-from-dirtree)."""
    from reprodl.data.creators import create_from_dirtree, scan_dirtree

    n = sum(len(v) for v in scan_dirtree(dirtree).values())
    with progress_bar("Checking and storing images", 2 * n, quiet=quiet or as_json) as advance:
        uri = create_from_dirtree(
            dirtree,
            base_uri,
            name,
            progress=advance,
            readme=_readme_fields(description, author, origin, license, readme, schema),
        )
    _created(uri, as_json, "image")


@app.command("create-from-files")
@handle_errors
def create_from_files_cmd(
    directory: Path = typer.Argument(..., help="Directory whose files (at any depth) become the items."),
    base_uri: str = typer.Argument(..., help="Where to create the dataset (path, file://, s3://)."),
    name: str = typer.Argument(..., help="Dataset name (letters, digits, '-', '_', '.')."),
    description: Optional[str] = _DESC,
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Create a dataset of every file under DIRECTORY, each at its path relative to it (read with FileDataSet)."""
    from reprodl.data.files import create_from_files, scan_files

    n = len(scan_files(directory))
    with progress_bar("Storing files", n, quiet=quiet or as_json) as advance:
        uri = create_from_files(directory, base_uri, name, description=description, progress=advance)
    _created(uri, as_json, "file")


@app.command("create-from-arrays")
@handle_errors
def create_from_arrays_cmd(
    data: str = typer.Argument(..., help="Samples: FILE.npy, or FILE.npz[:KEY]."),
    labels: str = typer.Argument(..., help="Integer labels: FILE.npy, or FILE.npz[:KEY]."),
    base_uri: str = typer.Argument(..., help="Where to create the dataset."),
    name: str = typer.Argument(..., help="Dataset name."),
    image_dimensions: Optional[str] = typer.Option(None, "--image-dimensions", help="C,H,W each row reshapes to."),
    categories: Optional[str] = typer.Option(None, "--categories", help="Comma-separated names of labels 0..K-1."),
    value_scale: Optional[float] = typer.Option(
        None, "--value-scale", help="Divide raw values by this (default 255 for uint8, else 1)."
    ),
    description: Optional[str] = _DESC,
    author: Optional[list[str]] = _AUTHOR,
    origin: Optional[str] = _ORIGIN,
    license: Optional[str] = _LICENSE,
    readme: Optional[Path] = _README,
    schema: Optional[Path] = _SCHEMA,
    as_json: bool = JSON_OPT,
) -> None:
    """Create a tensor dataset from .npy/.npz arrays."""
    from reprodl.data.creators import create_from_arrays, load_array_file

    def load(spec: str):
        path, _, key = spec.partition(":") if spec.count(":") == 1 and not Path(spec).exists() else (spec, "", "")
        return load_array_file(path, key or None)

    dims = None
    if image_dimensions:
        try:
            dims = [int(x) for x in image_dimensions.split(",")]
        except ValueError:
            raise InputDataError(f"--image-dimensions should be C,H,W integers, got {image_dimensions!r}") from None
    uri = create_from_arrays(
        load(data),
        load(labels),
        base_uri,
        name,
        image_dimensions=dims,
        categories=categories.split(",") if categories else None,
        value_scale=value_scale,
        readme=_readme_fields(description, author, origin or str(Path(data).resolve()), license, readme, schema),
    )
    _created(uri, as_json, "tensor")


@app.command("create-from-idx")
@handle_errors
def create_from_idx_cmd(
    images: Path = typer.Argument(..., help="IDX images file (e.g. train-images-idx3-ubyte[.gz])."),
    labels: Path = typer.Argument(..., help="IDX labels file."),
    base_uri: str = typer.Argument(...),
    name: str = typer.Argument(...),
    description: Optional[str] = _DESC,
    author: Optional[list[str]] = _AUTHOR,
    origin: Optional[str] = _ORIGIN,
    license: Optional[str] = _LICENSE,
    readme: Optional[Path] = _README,
    schema: Optional[Path] = _SCHEMA,
    as_json: bool = JSON_OPT,
) -> None:
    """Create a tensor dataset from MNIST-style IDX files."""
    from reprodl.data.creators import create_from_idx

    uri = create_from_idx(
        images, labels, base_uri, name, readme=_readme_fields(description, author, origin, license, readme, schema)
    )
    _created(uri, as_json, "tensor")


@app.command("create-digits")
@handle_errors
def create_digits_cmd(
    base_uri: str = typer.Argument(..., help="Where to create the dataset."),
    name: str = typer.Argument("digits", help="Dataset name."),
    as_images: bool = typer.Option(False, "--as-images", help="Store 8x8 PNGs (an image dataset) instead of arrays."),
    as_json: bool = JSON_OPT,
) -> None:
    """Create a dataset of scikit-learn's 1,797 real handwritten digits (the embedded default)."""
    from reprodl.data.creators import create_digits

    uri = create_digits(base_uri, name, as_images=as_images)
    _created(uri, as_json, "image" if as_images else "tensor")


@app.command("split")
@handle_errors
def split_cmd(
    uri: str = typer.Argument(..., help="Dataset URI."),
    test: float = typer.Option(0.2, "--test", help="Fraction of each class for test."),
    valid: float = typer.Option(0.0, "--valid", help="Fraction of each class for validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split (the same seed gives the same split)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing split."),
    as_json: bool = JSON_OPT,
) -> None:
    """Write a stratified train/test split (the `usetype` overlay) into a dataset."""
    from reprodl.data.ops import split_dataset

    counts = split_dataset(uri, test=test, valid=valid, seed=seed, force=force)
    if as_json:
        print_json(counts)
    else:
        out.print("Split " + ", ".join(f"{k}: {v}" for k, v in counts.items()), markup=False)


@app.command("info")
@handle_errors
def info_cmd(uri: str = typer.Argument(..., help="Dataset URI."), as_json: bool = JSON_OPT) -> None:
    """Name, UUID, URI, README, item count, classes and per-class counts."""
    import yaml

    from reprodl.data.ops import dataset_info

    info = dataset_info(uri)
    if as_json:
        print_json(info)
        return
    for key in ("name", "uuid", "uri", "input_type", "n_items", "size_in_bytes", "manifest_digest"):
        out.print(f"{key + ':':17} {info.get(key)}", markup=False)
    if "classes" in info:
        out.print(f"{'samples:':17} {info['n_samples']}", markup=False)
        out.print(f"{'classes:':17} {len(info['classes'])}", markup=False)
        out.print("per-class counts: " + ", ".join(f"{k}: {v}" for k, v in info["class_counts"].items()), markup=False)
    if "split_counts" in info:
        out.print("split:            " + ", ".join(f"{k}: {v}" for k, v in info["split_counts"].items()), markup=False)
    out.print("README:", markup=False)
    out.print("  " + yaml.safe_dump(info["readme"], sort_keys=False).rstrip().replace("\n", "\n  "), markup=False)


@app.command("stats")
@handle_errors
def stats_cmd(
    uri: str = typer.Argument(..., help="Dataset URI."), quiet: bool = QUIET_OPT, as_json: bool = JSON_OPT
) -> None:
    """Per-channel mean and std (streaming, bounded memory) and class balance."""
    from reprodl.data.ops import dataset_stats

    with progress_bar("Computing statistics", None, quiet=quiet or as_json) as advance:
        stats = dataset_stats(uri, progress=advance)
    if as_json:
        print_json(stats)
        return
    out.print(f"samples: {stats['n_samples']}", markup=False)
    out.print("mean:    " + ", ".join(f"{m:.4f}" for m in stats["mean"]), markup=False)
    out.print("std:     " + ", ".join(f"{s:.4f}" for s in stats["std"]), markup=False)
    out.print(
        "classes: "
        + ", ".join(f"{k}: {v} ({stats['class_fractions'][k]:.1%})" for k, v in stats["class_counts"].items()),
        markup=False,
    )
    out.print(f"majority-class fraction: {stats['majority_class_fraction']:.1%}", markup=False)


@app.command("verify")
@handle_errors
def verify_cmd(
    uri: str = typer.Argument(..., help="Dataset URI."),
    deep: bool = typer.Option(False, "--deep", help="Re-hash every item (default: item set and sizes)."),
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Check a dataset's items against its manifest; exit 1 naming each missing, added or altered item."""
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    with progress_bar("Verifying" + (" (deep)" if deep else ""), ds.total_size(), quiet=quiet or as_json) as advance:
        report = ds.verify(deep=deep, progress=advance)
    if as_json:
        print_json(report.to_dict())
    elif report.ok:
        out.print(
            f"OK: {report.n_items} items match the manifest of {ds.uri}" + (" (every hash checked)" if deep else ""),
            markup=False,
        )
    else:
        for line in report.problems():
            err.print(line, markup=False)
        err.print(f"FAILED: {len(report.problems())} problem(s) in {ds.uri}", markup=False)
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("fetch")
@handle_errors
def fetch_cmd(
    uri: str = typer.Argument(..., help="Dataset URI (s3:// or http(s)://; a local dataset needs nothing)."),
    workers: int = typer.Option(8, "--workers", min=1, max=64, help="Concurrent downloads."),
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Fetch a remote dataset's items into dtool's cache (DTOOL_CACHE_DIRECTORY), in parallel.

    Each item is checked against the manifest (size and md5) as it arrives; items already
    cached are kept, so an interrupted fetch resumes; a damaged cached item is fetched again.
    """
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    with progress_bar("Fetching", ds.total_size(), quiet=quiet or as_json) as advance:
        report = ds.prefetch(workers=workers, progress=advance)
    if as_json:
        print_json(report.to_dict())
        return
    where = f" into {report.cache_dir}" if report.cache_dir else " (local: nothing to fetch)"
    out.print(
        f"{report.n_items} items of {ds.uri}{where}: {report.fetched} fetched "
        f"({report.bytes_fetched:,} bytes in {report.seconds:.1f} s), {report.cached} already cached",
        markup=False,
    )


@app.command("ls")
@handle_errors
def ls_cmd(
    base_uri: str = typer.Argument(..., help="Base URI: a directory or s3://bucket."), as_json: bool = JSON_OPT
) -> None:
    """List the datasets (and models) under a base URI."""
    from reprodl.store import list_datasets, open_dataset

    rows = []
    for uri in list_datasets(base_uri):
        ds = open_dataset(uri)
        rows.append(
            {
                "name": ds.name,
                "uuid": ds.uuid,
                "uri": uri,
                "n_items": len(ds),
                "kind": ds.get_annotation(keys.MODEL_KIND) or ds.get_annotation(keys.INPUT_TYPE) or "dataset",
            }
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(f"No datasets under {base_uri}", markup=False)
    for r in rows:
        out.print(f"{r['name']:30} {r['kind']:18} {r['n_items']:>7} items  {r['uri']}", markup=False)


@app.command("copy")
@handle_errors
def copy_cmd(
    uri: str = typer.Argument(..., help="Dataset (or model) URI to copy."),
    dest_base_uri: str = typer.Argument(..., help="Where to copy it: a directory or s3://bucket."),
    quiet: bool = QUIET_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Copy a dataset to another base URI, keeping its UUID and manifest (publish it, e.g. to s3://)."""
    from reprodl.store import copy_dataset, open_dataset

    n = len(open_dataset(uri))
    with progress_bar("Copying items", n, quiet=quiet or as_json) as advance:
        new_uri = copy_dataset(uri, dest_base_uri, progress=advance)
    if as_json:
        print_json({"uri": new_uri})
    else:
        out.print(f"Copied to {new_uri}", markup=False)


@app.command("clean")
@handle_errors
def clean_cmd(
    base_uri: str = typer.Argument(..., help="Base directory whose leftovers to remove."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; remove nothing."),
    checkpoints: bool = typer.Option(
        False, "--checkpoints", help="Also remove killed trainings' checkpoints (kept by default for --resume)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Remove staging directories left by killed creations and copies (their process is gone).

    Only directories marked as reprodl staging directories of a process on this host that
    no longer runs are removed; those of running processes, other hosts or with no marker
    are listed and kept, and so are those holding a killed training's checkpoint (resumable)
    unless --checkpoints is given.
    """
    from reprodl.store import clean_staging, local_path, normalise_uri

    base = local_path(normalise_uri(base_uri))
    if base is None:
        raise InvalidURIError(f"dataset clean works on a local directory, not {base_uri}")
    if not base.is_dir():
        raise StorageError(f"{base} is not an existing directory: give the base directory of your datasets")
    found = clean_staging(base, dry_run=dry_run, checkpoints=checkpoints)
    if as_json:
        print_json([s.to_dict() for s in found])
        return
    if not found:
        out.print(f"No staging directories under {base}", markup=False)
    why = {
        "running": "kept: its process is still running",
        "other-host": "kept: made on another host",
        "unmarked": "kept: no reprodl staging marker",
        "stale": "would remove: its process is gone",
        "resumable": "would remove: a killed training's checkpoint" if checkpoints else "kept: {resumable}",
    }
    for s in found:
        owner = f" (pid {s.pid} on {s.hostname})" if s.pid is not None else ""
        ck = s.checkpoint or {}
        resumable = (
            f"a killed training's checkpoint (epoch {ck.get('epoch')}, step {ck.get('step')}); continue it with "
            "`reprodl train CONFIG --resume` (start_run(..., resume=True)), or remove it with --checkpoints"
        )
        if s.state in ("stale", "resumable") and not dry_run and not s.removed and (checkpoints or s.state == "stale"):
            err.print(f"{s.path}{owner}: stale, but could not be removed (check permissions)", markup=False)
            continue
        out.print(
            f"{s.path}{owner}: " + ("removed" if s.removed else why[s.state].format(resumable=resumable)), markup=False
        )


def register(root: typer.Typer) -> None:
    """Add the ``dataset`` group to ``root``, the ``reprodl`` app (:func:`reprodl.cli.build`)."""
    root.add_typer(app, name="dataset")
