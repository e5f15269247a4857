"""What a pip user gets: the sdist's files and metadata, README links that work on the package
index, and every optional extra named where it is needed, by the name pyproject gives it."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOME = "https://github.com/reprodl/reprodl"
DOCS_URL = f"{HOME}/blob/main/"
LINK = re.compile(r"\]\(([^)\s]+)\)")
EXTRA_NAMED = re.compile(r"reprodl\\?\[([a-z0-9_,-]+)\]")  # pip install 'reprodl[digits]' (rich escapes the [)


def pyproject_extras() -> list[str]:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib on Python 3.10
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return sorted(re.findall(r"^([a-z0-9_-]+) = \[", section, re.MULTILINE))


def test_every_readme_link_is_absolute_and_each_docs_link_names_an_existing_file():
    links = LINK.findall((REPO / "README.md").read_text(encoding="utf-8"))
    relative = [u for u in links if not u.startswith(("https://", "http://", "#"))]
    assert relative == [], "a relative link is dead on the package index: link to the repository"
    to_repo = [u for u in links if u.startswith(HOME)]
    assert len([u for u in to_repo if "/docs/" in u]) >= 10  # the documentation list is there
    for url in to_repo:
        if url.rstrip("/") == HOME:
            continue
        assert url.startswith(DOCS_URL), f"{url}: link to files as {DOCS_URL}PATH (works on GitHub)"
        path = url[len(DOCS_URL) :].split("#", 1)[0]
        assert (REPO / path).is_file(), f"README links {url}, but {path} is not in the repository"


def test_every_extra_is_in_the_readme_and_every_extra_named_exists():
    extras = pyproject_extras()
    assert {"digits", "s3", "report", "sign", "export", "mlflow", "tensorboard", "lightning"} <= set(extras)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = {m for m in re.findall(r"^\| `([a-z0-9_-]+)` \|", readme, re.MULTILINE)}
    assert table == set(extras), "the README's table of extras names each extra of pyproject.toml once"
    named: dict[str, set[str]] = {}
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "src").rglob("*.py")]
    for path in files:
        for group in EXTRA_NAMED.findall(path.read_text(encoding="utf-8")):
            for extra in group.split(","):
                named.setdefault(extra, set()).add(str(path.relative_to(REPO)))
    unknown = {extra: sorted(where) for extra, where in named.items() if extra not in extras}
    assert unknown == {}, "these name an extra that pyproject.toml does not define"


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("sklearn", ["dataset", "create-digits", ".", "digits"], "digits"),
        ("sklearn", ["demo", "--workdir", "demo-output", "--epochs", "1"], "digits"),
        ("cryptography", ["keygen", "key"], "sign"),
    ],
)
def test_a_command_whose_optional_package_is_missing_names_its_extra(blocked, argv, extra, tmp_path):
    code = f"import sys; sys.modules[{blocked!r}] = None; from reprodl.cli import main; main()"  # as if not installed
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"pip install 'reprodl[{extra}]'" in proc.stderr


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout without its venvs, caches and build outputs."""
    tree = tmp_path_factory.mktemp("checkout") / "reprodl"
    junk = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", ".*_cache", "demo-output", "dist")
    shutil.copytree(REPO, tree, ignore=junk)
    return tree


def build(checkout: Path, kind: str, out: Path) -> Path:
    """The sdist or wheel (kind), built by the build backend pyproject names."""
    code = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sdist(checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(checkout, "sdist", tmp_path_factory.mktemp("dist"))


def test_the_wheel_holds_the_package_only(checkout: Path, tmp_path: Path):
    with zipfile.ZipFile(build(checkout, "wheel", tmp_path)) as whl:
        tops = {n.split("/", 1)[0] for n in whl.namelist()}
        names = set(whl.namelist())
    assert {"reprodl/__init__.py", "reprodl/py.typed", "reprodl/compat/dtoolai/__init__.py"} <= names
    assert tops == {"reprodl", *(t for t in tops if t.endswith(".dist-info"))}, "no tests/, docs/ or examples/"


def test_the_sdist_ships_the_package_and_no_part_of_the_tests(sdist: Path):
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    assert {"pyproject.toml", "README.md", "LICENSE", "src/reprodl/__init__.py", "src/reprodl/py.typed"} <= set(names)
    assert "src/reprodl/compat/dtoolai/__init__.py" in names
    shipped_tests = [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert shipped_tests == [], "ship all of tests/ or none: the tests run from a clone"


def test_the_package_metadata_names_authors_urls_keywords_and_classifiers(sdist: Path):
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
        fh = tar.extractfile(member)
        assert fh is not None
        meta = email.parser.Parser().parsestr(fh.read().decode("utf-8"))
    assert meta["Author"] == "reprodl developers"
    assert "reproducibility" in meta["Keywords"] and "pytorch" in meta["Keywords"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Source"] == HOME and urls["Issues"] == f"{HOME}/issues"
    assert all(u.startswith(HOME) for u in urls.values())
    classifiers = meta.get_all("Classifier")
    assert meta["Requires-Python"] == ">=3.10"
    versions = sorted(
        c.rsplit(" ", 1)[1] for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert versions[0] == "3.10", "the oldest version classified is the oldest Requires-Python admits"
    assert sorted(meta.get_all("Provides-Extra")) == pyproject_extras()
    assert meta["License-Expression"] == "MIT"


def pins(name: str) -> dict[str, str]:
    lines = (REPO / name).read_text(encoding="utf-8").splitlines()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", "\n".join(lines), re.MULTILINE))


def test_the_python_3_10_constraints_pin_the_same_packages_each_no_newer():
    from packaging.version import Version

    newest, py310 = pins("constraints.txt"), pins("constraints-py310.txt")
    assert sorted(py310) == sorted(newest)
    older = {name: (py310[name], newest[name]) for name in newest if py310[name] != newest[name]}
    assert all(Version(a) < Version(b) for a, b in older.values()), older
    assert {"numpy", "pillow", "scipy", "pandas"} <= set(older)  # their pinned releases need Python >= 3.11


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize(
    ("version", "constraints"),
    [("3.10", "constraints-py310.txt"), ("3.11", "constraints.txt"), ("3.13", "constraints.txt")],
)
def test_the_makefile_picks_the_constraints_by_the_python_of_the_venv(version, constraints, tmp_path):
    python = tmp_path / f"python{version}"  # answers the Makefile's version question as that Python would
    python.write_text(f"#!/bin/sh\necho {version}\n")
    python.chmod(0o755)
    argv = ["make", "-n", "--no-print-directory", f"VENV={tmp_path / 'venv'}", f"PYTHON={python}", "env"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f" -c {constraints} -e '.[test]'" in proc.stdout
