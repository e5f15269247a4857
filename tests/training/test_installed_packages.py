"""The installed packages a record lists: what is installed, not what a package vendors (issue 22: Ray puts
``ray/thirdparty_files`` on ``sys.path`` when imported, so a re-run in the same process saw colorama and psutil
"installed" and blamed them for a divergence)."""

from __future__ import annotations

import email
import email.feedparser
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import cast

import pytest

from reprodl.training.capture import installed_packages
from reprodl.training.environment import _installed_paths, _metadata_headers, _parse_headers, _redent, _scan_packages


def _dist(where: Path, name: str, version: str) -> None:
    info = where / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n")


def test_a_directory_a_package_vendors_inside_a_site_directory_is_not_installed_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "lib" / "site-packages"
    _dist(site, "reallyinstalled", "1.0")
    vendored = site / "bigframework" / "thirdparty_files"
    _dist(vendored, "vendoredcopy", "0.4.6")
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    before = installed_packages()
    assert before["reallyinstalled"] == "1.0"
    monkeypatch.setattr(sys, "path", [str(vendored), *sys.path])  # as `import bigframework` does
    after = installed_packages()
    assert "vendoredcopy" not in after
    assert after == before


def test_the_package_list_is_what_importlib_metadata_reads_for_every_installed_distribution() -> None:
    """The scan reads Name and Version from the header block itself (the e-mail parser was most of a first
    capture's cost): for every distribution on this path, the same values as ``dist.metadata``/``dist.version``."""
    expected: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=_installed_paths()):
        name = dist.metadata["Name"]
        if name:
            expected[name.lower().replace("_", "-")] = dist.version or ""
    assert len(expected) > 10
    assert _scan_packages() == dict(sorted(expected.items()))


HEADER_BLOCKS = [
    "Metadata-Version: 2.1\r\nName: folded\r\n  -name\r\nVersion: 1.0\r\n\r\nName: body\r\n",
    "Metadata-Version: 2.1\nName: folded\n\t-tab\nVersion:  2.0\n .post1\n\nlong description\n",
    "Metadata-Version: 2.1\rName: cr-only\rVersion: 3\r",
    "From someone\nname: lower\nVERSION: 4\nName: second\nVersion: 5",
    " leading continuation\n: no name\nName:\nVersion: 6\n",
    "Metadata-Version: 2.1\nSummary: x\nnot a header\nName: after-the-end\nVersion: 7\n",
    "Name: a\nFrom x\n continued\nVersion: 8\n",
    "Name: trailing   \r\n\r\n",
]


@pytest.mark.parametrize("text", HEADER_BLOCKS)
def test_name_and_version_are_read_as_importlib_metadata_reads_them(tmp_path: Path, text: str) -> None:
    """Folded headers, CRLF and CR line ends, duplicates, lines that are no header: as the e-mail parser reads
    the text (``dist.read_text`` turns line ends into newlines first, so the parser is also asked directly)."""
    parsed = email.message_from_string(text)
    headers = _parse_headers(text, ("name", "version"))
    assert (headers.get("name"), headers.get("version")) == (parsed.get("Name"), parsed.get("Version"))
    info = tmp_path / "some.dist-info"
    info.mkdir()
    (info / "METADATA").write_bytes(text.encode())
    dist = importlib.metadata.PathDistribution(info)
    headers = _metadata_headers(dist)
    assert _redent(headers.get("name")) == dist.metadata["Name"]
    assert _redent(headers.get("version")) == dist.metadata["Version"]


def test_the_scan_does_not_run_the_e_mail_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its cost: ~25 ms of a process's first capture for 170 packages, where reading the files is ~5 ms."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the e-mail parser ran")

    monkeypatch.setattr(email.feedparser.FeedParser, "feed", refuse)
    assert "torch" in _scan_packages()


def test_a_distribution_without_metadata_text_is_read_through_its_metadata() -> None:
    class Custom(importlib.metadata.Distribution):
        def read_text(self, filename: str) -> str | None:
            return None

        def locate_file(self, path: str | os.PathLike[str]) -> Path:
            return Path(path)

        @property
        def metadata(self) -> importlib.metadata.PackageMetadata:
            return _message()

    assert _metadata_headers(Custom()) == {"name": "custom", "version": "9.1"}


def _message() -> importlib.metadata.PackageMetadata:
    return cast("importlib.metadata.PackageMetadata", email.message_from_string("Name: custom\nVersion: 9.1\n"))
