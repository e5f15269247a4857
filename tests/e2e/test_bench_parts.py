"""The benchmarks' timed parts name functions that exist where the timed code looks them up.

``bench/bench_reproduce.py``, ``bench/bench_run_api.py`` and ``bench/bench_capture_overhead.py`` time the
parts of a reproduction, a recorded run and a captured training by replacing module attributes
(``_timing.Stopwatches.patched``): a target renamed or moved by a refactoring crashes the benchmark, which
the suite does not run (``make bench`` does).
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture()
def bench_modules(monkeypatch: pytest.MonkeyPatch) -> tuple:
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_capture_overhead
    import bench_reproduce
    import bench_run_api

    return bench_reproduce, bench_run_api, bench_capture_overhead


def test_every_timed_part_names_an_existing_attribute(bench_modules: tuple) -> None:
    bench_reproduce, bench_run_api, bench_capture_overhead = bench_modules
    lists = {
        "bench_reproduce.REPRO_PARTS": bench_reproduce.REPRO_PARTS,
        "bench_run_api.REPRODUCE_PARTS": bench_run_api.REPRODUCE_PARTS,
        "bench_run_api.RUN_PARTS": bench_run_api.RUN_PARTS,
        "bench_capture_overhead.CAPTURE_PARTS": bench_capture_overhead.CAPTURE_PARTS,
    }
    missing = [
        f"{where}: {getattr(obj, '__name__', obj)}.{attr} ({label})"
        for where, parts in lists.items()
        for obj, attr, label in parts
        if not callable(getattr(obj, attr, None))
    ]
    assert not missing, missing
    for where, parts in lists.items():
        targets = [(id(obj), attr) for obj, attr, _ in parts]
        assert len(targets) == len(set(targets)), f"{where} patches a target twice"


def test_a_missing_target_is_refused_naming_the_part(bench_modules: tuple) -> None:
    import _timing as T

    module = types.ModuleType("somewhere")
    with pytest.raises(AttributeError, match=r"'the part'.*somewhere\.gone"):
        with T.Stopwatches().patched([(module, "gone", "the part")]):
            pass


def test_a_context_manager_part_is_timed_on_enter_and_exit(bench_modules: tuple) -> None:
    import _timing as T

    module = types.ModuleType("somewhere")

    @contextlib.contextmanager
    def opened() -> Iterator[int]:
        time.sleep(0.01)
        yield 1
        time.sleep(0.02)

    module.opened = opened
    watches = T.Stopwatches()
    with watches.patched([(module, "opened", T.ContextPart("open", "close"))]):
        with contextlib.ExitStack() as stack:
            assert stack.enter_context(module.opened()) == 1
    took = watches.take()
    assert took["open"] >= 0.01 and took["close"] >= 0.02, took
