"""A real headless Chromium for the report tests: screenshots, and the page's network requests.

Chromium writes a NetLog (``--log-net-log``) of every URL request it makes. The browser makes
requests of its own (component updates, time sync), so a request counts as the page's when
its network isolation key is the page's ``file://`` origin. Host names resolve nowhere
(``--host-resolver-rules``), so nothing here reaches a network either way.

Where Chromium is missing, the tests skip with the reason, unless ``REPRODL_REQUIRE_SERVERS=1``
(CI, whose ``.ci/run`` installs it), where they fail; ``.ci/run`` sets
``REPRODL_NO_BROWSER_REASON`` when it tried to install Chromium and could not (a transient apt
error), and the tests then skip with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT = 120  # seconds for one page


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def missing_reason() -> str:
    told = os.environ.get("REPRODL_NO_BROWSER_REASON")
    return told or f"no Chromium on PATH (looked for {', '.join(NAMES)}): apt-get install chromium"


def screenshot(
    chromium: str, page: Path, png: Path, *, size: tuple[int, int] = (1280, 1800), net_log: Path | None = None
) -> None:
    """Render ``page`` headless and save a ``size`` screenshot to ``png`` (and the NetLog)."""
    args = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers often have a small /dev/shm
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={png.parent / '.chromium-profile'}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={png}",
        *([f"--log-net-log={net_log}"] if net_log else []),
        page.resolve().as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if not png.exists():
        raise AssertionError(f"chromium made no screenshot (exit {done.returncode}):\n{done.stderr[-3000:]}")


def page_requests(net_log: Path) -> list[str]:
    """The URLs the page itself asked for (requests whose isolation key is its file:// origin)."""
    text = net_log.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short when the browser exits: close its event list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) == "URL_REQUEST_START_JOB" and "file://" in str(
            params.get("network_isolation_key")
        ):
            urls.append(str(params.get("url")))
    return urls


def pixel_spread(png: Path) -> tuple[float, int]:
    """(standard deviation of the grey levels, number of distinct colours) of a screenshot."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB"))
    return float(rgb.mean(axis=2).std()), len(np.unique(rgb.reshape(-1, 3), axis=0))
