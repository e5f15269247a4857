"""The report in a real headless Chromium: it renders (a non-blank screenshot) and requests nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.register_assert_rewrite("train_fixtures", "browser")

from browser import find_chromium, missing_reason, page_requests, pixel_spread, screenshot
from remote_servers import unavailable
from train_fixtures import TrainedModel

pytest_plugins = ["train_fixtures"]

HEADER_BLUE = (0x1F, 0x3A, 0x5F)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("REPRODL_NO_BROWSER_REASON"):
            pytest.skip(missing_reason())
        unavailable(missing_reason())
    assert path is not None
    return path


def _pixel(png: Path, xy: tuple[int, int]) -> tuple[int, ...]:
    from PIL import Image

    with Image.open(png) as image:
        return tuple(image.convert("RGB").getpixel(xy))


@pytest.mark.slow  # trains the session's model (~6 s) and renders a tall page (~3 s)
def test_model_report_renders_in_chromium_and_requests_nothing(
    chromium: str, trained_model: TrainedModel, tmp_path: Path
) -> None:
    import reprodl

    reprodl.report(trained_model.uri, tmp_path / "report.html")
    png, log = tmp_path / "report.png", tmp_path / "net.json"
    screenshot(chromium, tmp_path / "report.html", png, size=(1280, 1800), net_log=log)
    spread, colours = pixel_spread(png)
    assert spread > 20 and colours > 200, (spread, colours)  # plots, tables and text, not a blank page
    assert _pixel(png, (5, 5)) == HEADER_BLUE  # the inline style applied under the page's CSP
    assert page_requests(log) == []


def test_dataset_report_renders_in_chromium(chromium: str, image_uri: str, tmp_path: Path) -> None:
    import reprodl

    reprodl.report(image_uri, tmp_path / "images.html")
    png, log = tmp_path / "images.png", tmp_path / "net.json"
    screenshot(chromium, tmp_path / "images.html", png, size=(1000, 1000), net_log=log)
    spread, colours = pixel_spread(png)
    assert spread > 10 and colours > 20, (spread, colours)
    assert page_requests(log) == []


def test_the_request_check_sees_a_load_and_the_csp_blocks_it(chromium: str, tmp_path: Path) -> None:
    from reprodl.reports.html import page

    load = '<img src="http://127.0.0.1:9/tracker.png">'
    (tmp_path / "plain.html").write_text(f"<html><body><h1>plain</h1>{load}</body></html>")
    (tmp_path / "ours.html").write_text(page("ours", "", [load]))  # markup not escaped: only the CSP stands
    for name, expected in (("plain", ["http://127.0.0.1:9/tracker.png"]), ("ours", [])):
        log = tmp_path / f"{name}.json"
        screenshot(chromium, tmp_path / f"{name}.html", tmp_path / f"{name}.png", size=(400, 300), net_log=log)
        assert page_requests(log) == expected, name
