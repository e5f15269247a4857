"""The installed packages a record lists: what is installed, not what a package vendors (issue 22: Ray puts
``ray/thirdparty_files`` on ``sys.path`` when imported, so a re-run in the same process saw colorama and psutil
"installed" and blamed them for a divergence)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from reprodl.training.capture import installed_packages


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
