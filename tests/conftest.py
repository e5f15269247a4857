"""Shared fixtures: tiny real datasets built on ``tmp_path``.

Every dataset here is a real frozen dtool dataset made through reprodl's own creators (or,
for the compatibility tests, through plain dtoolcore in the original dtoolAI 0.2.0
conventions). Nothing is mocked below the storage layer.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported: tiny tensors, no thread pools
os.environ["MKL_NUM_THREADS"] = "1"

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

# Tests live in a folder per package (tests/store/, tests/training/, ...; tests/e2e/ for the end-to-end
# ones), as plain rootdir modules (no __init__.py). A few import helpers from a test module of another
# folder by its basename (``from test_resume import run_killed``): every test folder is on sys.path, which
# basenames unique across folders make unambiguous (tests/test_layout.py checks both).
TESTS = Path(__file__).resolve().parent
for _folder in sorted(p for p in TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py"))):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

STAGING_PREFIX = ".reprodl-staging-"

# The small image tree: 3 categories of 6x5 (W x H) grayscale PNGs, unequal counts so that
# counts and labels cannot line up by accident.
TREE_COUNTS = {"ant": 3, "bee": 2, "cat": 4}
TREE_SIZE = (6, 5)  # (width, height)


def gray_pixels(seed: int, size: tuple[int, int] = TREE_SIZE) -> np.ndarray:
    """Deterministic uint8 (H, W) pixels, different for every seed."""
    w, h = size
    return ((np.arange(h * w, dtype=np.int64).reshape(h, w) * 7 + seed * 31) % 256).astype(np.uint8)


def write_tree(root: Path, spec: dict[str, dict[str, Image.Image | bytes]]) -> Path:
    """Write ``{category: {filename: image or raw bytes}}`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for category, files in spec.items():
        (root / category).mkdir(parents=True, exist_ok=True)
        for filename, content in files.items():
            path = root / category / filename
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                content.save(path)
    return root


def tree_spec() -> dict[str, dict[str, Image.Image]]:
    spec: dict[str, dict[str, Image.Image]] = {}
    seed = 0
    for category, n in TREE_COUNTS.items():
        spec[category] = {}
        for i in range(n):
            spec[category][f"{i}.png"] = Image.fromarray(gray_pixels(seed))
            seed += 1
    return spec


def snapshot(root: Path) -> list[str]:
    """Every path under ``root`` (relative), to check that a failed call created nothing."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def staging_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{STAGING_PREFIX}*")]


@pytest.fixture(autouse=True)
def _no_staging_left_behind(tmp_path: Path) -> Iterator[None]:
    """Fail any test that leaves a half-built dataset (staging directory) behind."""
    yield
    left = staging_dirs(tmp_path)
    assert not left, f"staging directories left behind: {left}"


@pytest.fixture(scope="session")
def _digits_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reprodl.data.creators import create_digits
    from reprodl.store import local_path

    base = tmp_path_factory.mktemp("digits-master")
    uri = create_digits(str(base), "digits")
    path = local_path(uri)
    assert path is not None
    return path


@pytest.fixture
def digits_uri(_digits_master: Path, tmp_path: Path) -> str:
    """A private copy of the digits TensorDataSet (1,797 8x8 uint8 images), safe to mutate."""
    dest = tmp_path / "datasets" / "digits"
    shutil.copytree(_digits_master, dest)  # copy2 keeps mtimes, so quick verify still passes
    return str(dest)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """``tree/<ant|bee|cat>/<i>.png``: 3 + 2 + 4 grayscale 6x5 PNGs."""
    return write_tree(tmp_path / "tree", tree_spec())


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    """An empty directory to create datasets in."""
    path = tmp_path / "datasets"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def image_uri(image_tree: Path, base_dir: Path) -> str:
    """An ImageDataSet made by reprodl from ``image_tree``."""
    from reprodl.data.creators import create_from_dirtree

    return create_from_dirtree(image_tree, str(base_dir), "images")


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_tree(spec, name="tree")`` writes an image dirtree and returns its root."""

    def make(spec: dict[str, dict[str, Image.Image | bytes]], name: str = "tree") -> Path:
        return write_tree(tmp_path / name, spec)

    return make


@pytest.fixture
def cli():
    """Invoke ``reprodl ...`` in-process; returns the click Result (stdout, stderr apart)."""
    from typer.testing import CliRunner

    import reprodl.cli

    reprodl.cli._register()
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(reprodl.cli.app, [str(a) for a in args])

    return invoke
