"""Make docs/images/report.png: a real report of a real model, rendered by headless Chromium.

Trains 3 seeds of the digits CNN (a multi-run summary, so the page has an envelope and
replications), reproduces one (a reproduction and its divergence section), writes the
first model's report and screenshots it. Run from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src python tests/make_report_screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser import find_chromium, screenshot


def main() -> None:
    from train_fixtures import digits_config

    import reprodl
    from reprodl.data.creators import create_digits
    from reprodl.data.ops import split_dataset
    from reprodl.training.config import load_config
    from reprodl.training.multirun import train_many

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium on PATH: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = create_digits(str(base), "digits")
        split_dataset(data, test=0.2, seed=0)
        cfg = load_config(digits_config(data, base, name="digits-cnn", n_epochs=6))
        runs = train_many(cfg, seeds=3)
        reprodl.reproduce(runs.model_uris[0], output=str(base))
        t0 = time.perf_counter()
        result = reprodl.report(runs.model_uris[0], base / "report.html")
        print(f"report: {result.bytes / 1024:.0f} KB in {time.perf_counter() - t0:.2f}s, sections {result.sections}")
        png = base / "report.png"
        screenshot(chromium, base / "report.html", png, size=(1280, 2400))
        from PIL import Image

        with Image.open(png) as image:
            image.convert("RGB").quantize(colors=128).save(REPO / "docs" / "images" / "report.png", optimize=True)
    print(f"wrote {REPO / 'docs' / 'images' / 'report.png'}")


if __name__ == "__main__":
    main()
