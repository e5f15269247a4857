"""Reproduction by re-executing the recorded code (runs made with :func:`reprodl.start_run`).

The code stored with the model (its source snapshot, patch and untracked files) is rebuilt in
a temporary directory, never the user's working tree, and the recorded command runs there with
the recorded seed; the run's ``start_run`` writes into the reproduction's output base (through
:data:`reprodl.keys.RUN_REDIRECT_ENV`), its record naming the original in
``lineage.reproduces``. Weights, logged metrics and optimiser step counts are then compared.

Re-executing recorded code is running code, and a record from a URI may be someone else's: it
runs only with ``trust_code=True`` (``reprodl reproduce URI --trust-code``); without it
:class:`UnsafeImportError` says what would run, and nothing is run or written. Before the plan is
shown, every code item is checked against the model's manifest and its record, and read once: the
digest shown covers those bytes, and the tree is rebuilt from them
(:func:`reprodl.training.snapshot.load_code`). With ``trusted_keys`` the model's signature is
checked first.

Example:
    >>> print(reexecution_plan("/models/mnist").describe())        # doctest: +SKIP
    >>> reproduce("/models/mnist", trust_code=True).verdict         # doctest: +SKIP
    'identical'
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reprodl import keys, trust
from reprodl.errors import IntegrityError, ReproductionError, UnsafeImportError
from reprodl.modeldataset.read import load_trace, read_record
from reprodl.modeldataset.signing import signature_note
from reprodl.modeldataset.verify import DataCheck, check_data
from reprodl.provenance import ModelRef, ProvenanceRecord
from reprodl.reproduction.code import CodeCheck
from reprodl.reproduction.compare import Tolerance, compare_models, saved_weights
from reprodl.reproduction.datamap import relocated
from reprodl.reproduction.divergence import Divergence, TraceComparer, load_oplogs
from reprodl.reproduction.environment import EnvDifference, rerun_environment
from reprodl.reproduction.progress import reporting_progress
from reprodl.reproduction.rerun import (
    STATISTICAL_SEED_OFFSET,
    ReproductionReport,
    _reproduction_name,
    divergence_of,
    trace_comparer,
)
from reprodl.reproduction.verdict import Comparison, judge
from reprodl.store import StoredDataSet, local_path, open_dataset
from reprodl.training.snapshot import StoredCode, load_code, materialise


@dataclasses.dataclass
class ReexecutionPlan:
    """What reproducing a run-API model would run: the command, where, and the code's digest."""

    uri: str
    command: list[str]
    working_directory: str
    code_digest: str
    seed: int
    code: str
    signature: str = "not signed"
    stored: StoredCode | None = dataclasses.field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """A few lines for a person deciding whether to trust the code."""
        return (
            f"Reproducing {self.uri} runs the code recorded with it:\n"
            f"  command: {' '.join(self.command)}\n"
            f"  in:      <stored code>/{self.working_directory} (a temporary copy)\n"
            f"  code:    {self.code} ({self.code_digest}: the bytes of every file that runs)\n"
            f"  seed:    {self.seed}\n"
            f"  signed:  {self.signature}"
        )


def reexecution_plan(
    uri: str | StoredDataSet, *, trusted_keys: Iterable[str | os.PathLike[str]] = ()
) -> ReexecutionPlan | None:
    """The plan for the model at ``uri``, or None when it is rebuilt in process (built-in trainer).

    With ``trusted_keys`` the model must be signed by one of them (else :class:`IntegrityError`).
    """
    model_ds = uri if isinstance(uri, StoredDataSet) else open_dataset(uri)
    record = read_record(model_ds)
    return _plan(model_ds, record, trusted_keys=trusted_keys) if record.code.run is not None else None


def _inside(rel: str) -> bool:
    """Whether the relative path ``rel`` stays inside the directory it is relative to."""
    norm = os.path.normpath(rel)
    return not os.path.isabs(rel) and "\\" not in rel and norm != ".." and not norm.startswith("../")


def _launcher(model_ds: StoredDataSet, record: ProvenanceRecord) -> list[str]:
    """``-m torch.distributed.run ...`` for a multi-process run (its recorded world size); refused
    when this machine cannot start that many processes of its backend."""
    dist = record.training.distributed
    if dist is None or dist.world_size < 2:
        return []
    import torch

    if not torch.distributed.is_available():
        raise ReproductionError(
            f"{model_ds.uri} was trained by {dist.world_size} processes ({dist.backend}), but this torch has no "
            "torch.distributed: install a torch build with distributed support to reproduce it"
        )
    if dist.backend == "nccl" and torch.cuda.device_count() < dist.world_size:
        raise ReproductionError(
            f"{model_ds.uri} was trained by {dist.world_size} processes on nccl (one GPU each), but this machine "
            f"has {torch.cuda.device_count()} GPU(s): reproduce it where {dist.world_size} GPUs are available"
        )
    trust.check_processes(dist.world_size, backend=dist.backend, what=f"the record of {model_ds.uri}")
    return ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(dist.world_size)]


def _plan(
    model_ds: StoredDataSet,
    record: ProvenanceRecord,
    seed: int | None = None,
    *,
    trusted_keys: Iterable[str | os.PathLike[str]] = (),
) -> ReexecutionPlan:
    run = record.code.run
    assert run is not None
    signature = signature_note(model_ds, trusted_keys)
    for what, rel in (("working directory", run.working_directory), ("entry script", run.entry_script or ".")):
        if not _inside(rel):
            raise IntegrityError(
                f"the recorded {what} {rel!r} of {model_ds.uri} leaves the temporary copy of its code: refused"
            )
    stored = load_code(record, model_ds)
    launcher = _launcher(model_ds, record)
    if run.module:
        command = ["python", *launcher, "-m", run.module, *run.argv]
    elif run.entry_script:
        command = ["python", *launcher, run.entry_script, *run.argv]
    else:
        raise ReproductionError(
            f"{model_ds.uri} was trained from an interactive session (no entry script): there is no command to "
            "re-run; train it from a script to make it reproducible by re-execution"
        )
    git, snap = record.code.git, record.code.snapshot
    if snap is not None and snap.item:
        code = f"snapshot of commit {(snap.commit or '')[:12]}, {snap.n_files} files"
    elif git is not None and git.commit:
        code = f"commit {git.commit[:12]} from {git.root} (no snapshot stored)"
    else:
        code = "the stored entry script"
    if git is not None and git.patch_item:
        code += " + uncommitted patch"
    if git is not None and git.untracked_items:
        code += f" + {len(git.untracked_items)} untracked file(s)"
    return ReexecutionPlan(
        uri=model_ds.uri,
        command=command,
        working_directory=run.working_directory,
        code_digest=stored.digest,
        seed=run.seed if seed is None else seed,
        code=code,
        signature=signature,
        stored=stored,
    )


def reproduce_by_reexecution(
    model_ds: StoredDataSet,
    record: ProvenanceRecord,
    *,
    trust_code: bool = False,
    output: str | None = None,
    tolerance: Tolerance,
    tolerance_given: bool = False,
    seed: int | None = None,
    on_output: Callable[[str], None] | None = None,
    trusted_keys: Iterable[str | os.PathLike[str]] = (),
    data: dict[str, str] | None = None,
) -> ReproductionReport:
    """Re-run the recorded command in a temporary copy of the stored code, then compare.

    ``on_output`` receives the script's output line by line (stdout and stderr merged); by
    default the script writes to this process's stdout and stderr. ``data``: recorded dataset
    URI -> the copy to check and read instead (:mod:`.datamap`).
    """
    t0 = time.perf_counter()
    mode = record.training.determinism.mode
    if mode == "statistical" and seed is None and record.code.run is not None:
        seed = record.code.run.seed + STATISTICAL_SEED_OFFSET
    plan = _plan(model_ds, record, seed, trusted_keys=trusted_keys)
    if not trust_code:
        raise UnsafeImportError(
            f"{plan.describe()}\nNothing was run or written. Re-executing recorded code is running code: pass "
            "--trust-code (Python: trust_code=True) if you trust it"
        )
    data = dict(data or {})
    data_checks = _check_recorded_data(relocated(record, data), model_ds)
    new_uri, new_record, weights, training_s, comparer = _run_and_compare(
        model_ds, record, plan, output=output, tolerance=tolerance, on_output=on_output, data=data
    )
    report = _judged(model_ds, record, new_record, weights, comparer, tolerance, tolerance_given)
    timings = {"training_s": training_s, "original_training_s": record.results.wall_time_s}
    return dataclasses.replace(
        report,
        reproduction_uri=new_uri if output is not None else None,
        data_checks=data_checks,
        code=_code_check(plan),
        timings={**timings, "total_s": time.perf_counter() - t0},
    )


def _judged(
    model_ds: StoredDataSet,
    record: ProvenanceRecord,
    new_record: ProvenanceRecord,
    weights: Any,
    comparer: Any,
    tolerance: Tolerance,
    tolerance_given: bool,
) -> ReproductionReport:
    """The report of a re-executed run: its own record against the original's, and the one verdict."""
    environment, expectation = rerun_environment(record, new_record)
    metrics = compare_logged(record, new_record)
    order_matches = _order_matches(record, new_record)
    divergence = _divergence(record, new_record, comparer, environment)
    comparison = Comparison(weights, metrics, {}, order_matches, divergence)
    # The one verdict; the stored code ran, so the code is not a cause.
    judgement = judge(record, new_record, comparison, code=None, environment=environment, expectation=expectation,
                      tol=tolerance, tolerance_given=tolerance_given)  # fmt: skip
    verdict = judgement.verdict
    return ReproductionReport(
        original_uri=model_ds.uri,
        verdict=verdict,
        mode=record.training.determinism.mode,
        reasons=judgement.reasons,
        why=judgement.why,
        environment_differences=environment,
        weights=weights,
        metrics=metrics,
        data_order_matches=order_matches,
        tolerance=dataclasses.asdict(tolerance),
        expectation=expectation.settle(verdict),
        divergence=divergence,
    )


def _code_check(plan: ReexecutionPlan) -> CodeCheck:
    """The code section of the report: the stored code was re-executed."""
    return CodeCheck(
        status="re-executed",
        message=f"re-ran `{' '.join(plan.command)}` from the stored code ({plan.code}, {plan.code_digest})",
        command=list(plan.command),
        working_directory=plan.working_directory,
        code_digest=plan.code_digest,
    )


def _divergence(
    record: ProvenanceRecord, new: ProvenanceRecord, comparer: TraceComparer | None, environment: list[EnvDifference]
) -> Divergence:
    """The divergence section of a re-executed run (its code is the stored code: not a cause)."""
    was, now = record.training.device, new.training.device
    settings = [] if was == now else [f"device {was} -> {now}"]
    mode = record.training.determinism.mode
    return divergence_of(
        comparer, code=None, environment=environment, settings=settings, mode=mode, record=record, new=new
    )


def _run_and_compare(
    model_ds: StoredDataSet,
    record: ProvenanceRecord,
    plan: ReexecutionPlan,
    *,
    output: str | None,
    tolerance: Tolerance,
    on_output: Callable[[str], None] | None,
    data: dict[str, str],
) -> tuple[str, ProvenanceRecord, dict[str, Any], float, TraceComparer | None]:
    """Run the plan in temporary directories; (new model URI, its record, weights comparison, seconds,
    the new step trace compared with the recorded one: None when either has none)."""
    with contextlib.ExitStack() as stack:
        base = output or stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-reproduce-"))
        if "://" not in base:
            base = os.path.abspath(base)  # the script runs elsewhere (in the stored code)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-code-")))
        t_run = time.perf_counter()
        new_uri = _execute(model_ds, record, plan, base=base, work=work, on_output=on_output, data=data)
        seconds = time.perf_counter() - t_run
        new_ds = open_dataset(new_uri)
        new_record = read_record(new_ds)
        weights = compare_models(saved_weights(model_ds, record), saved_weights(new_ds, new_record), tolerance)
        comparer = trace_comparer(model_ds, record)
        new_trace = load_trace(new_ds, new_record)
        if comparer is not None and new_trace is not None:
            comparer.oplogs = load_oplogs(new_ds, new_record)
            comparer.compare_all(new_trace)
    return new_uri, new_record, weights, seconds, comparer if new_trace is not None else None


def _check_recorded_data(record: ProvenanceRecord, model_ds: StoredDataSet) -> list[DataCheck]:
    """Every recorded dtool dataset re-hashed before anything runs; in-memory data is re-hashed by the run."""
    dtool_only = record.model_copy(update={"data": [r for r in record.data if r.source == "dtool"]})
    checks = check_data(dtool_only, model_ds)
    problems = [p for c in checks for p in c.problems]
    if problems:
        raise IntegrityError(
            "refusing to reproduce: the training data changed since training:\n  " + "\n  ".join(problems),
            problems=problems,
        )
    return checks


def _execute(
    model_ds: StoredDataSet,
    record: ProvenanceRecord,
    plan: ReexecutionPlan,
    *,
    base: str,
    work: Path,
    on_output: Callable[[str], None] | None,
    data: dict[str, str],
) -> str:
    """Materialise the code in ``work``, run the command there; returns the new model's URI."""
    assert plan.stored is not None
    code_dir = materialise(plan.stored, work / "code")
    cwd = code_dir / plan.working_directory
    cwd.mkdir(parents=True, exist_ok=True)
    if not Path(os.path.realpath(cwd)).is_relative_to(os.path.realpath(code_dir)):
        raise IntegrityError(f"the recorded working directory {plan.working_directory!r} leads out of the stored code")
    _link_recorded_data(record, cwd, work, data)
    report_file = work / "runs.jsonl"
    name = _reproduction_name(record.model_name)
    redirect = {
        "base_uri": base,
        "name": name,
        "original_name": record.model_name,
        "seed": plan.seed,
        "report_file": str(report_file),
        "trace_kind": record.results.trace.kind if record.results.trace is not None else None,
        "data": data,  # recorded dataset URI -> the copy run.use reads instead
        "reproduces": ModelRef(
            uri=model_ds.uri,
            uuid=model_ds.uuid,
            record_digest=record.digest,
            weights_sha256=record.results.weights_sha256,
        ).model_dump(mode="json"),
    }
    env = {**os.environ, keys.RUN_REDIRECT_ENV: json.dumps(redirect)}
    # The same reprodl as this process's, wherever it was imported from (after the user's paths).
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), here) if p)
    command = [sys.executable, *plan.command[1:]]
    with reporting_progress(record.training.optimizer_steps, on_output) as progress_env:  # a silent script too
        rc = _run(command, cwd, {**env, **progress_env}, on_output)
    if rc != 0:
        raise ReproductionError(
            f"the recorded command `{' '.join(plan.command)}` exited with status {rc} in the stored code; "
            "nothing was compared (its output above says why)"
        )
    runs = [json.loads(line) for line in report_file.read_text().splitlines()] if report_file.is_file() else []
    uri = next((r["uri"] for r in runs if r["name"] == name), None)
    if uri is None:
        raise ReproductionError(
            f"the recorded command ran but wrote no run named {record.model_name!r}: the script's "
            "start_run(base_uri, name) must use the same name as when the model was trained"
        )
    return str(uri)


def _link_recorded_data(record: ProvenanceRecord, cwd: Path, work: Path, data: dict[str, str]) -> None:
    """Link each recorded local dataset where the script's relative paths expect it in the copy.

    A script names its data relative to its working directory (``--data data/digits``), and
    datasets inside the repository are data, not code, so they are not in the stored code. Each
    recorded dataset found on this machine is linked at the same place relative to the copy's
    working directory (its recorded ``path``, else where it lay from the original working
    directory), when that place lies inside the temporary directory and is free; a dataset that
    ``data`` maps to a copy is linked to the copy. The data were checked against their manifests
    before anything runs; absolute paths and URIs need nothing.
    """
    run = record.code.run
    if run is None:
        return
    original_cwd = os.path.realpath(os.path.join(run.root, run.working_directory))
    for ref in record.data:
        path = local_path(data.get(ref.uri, ref.uri)) if ref.source == "dtool" else None
        if path is None or not path.is_dir():
            continue
        try:
            was = ref.path or os.path.relpath(os.path.realpath(local_path(ref.uri) or path), original_cwd)
            target = Path(os.path.normpath(cwd / was))
            if target.is_relative_to(work) and not os.path.lexists(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path, target_is_directory=True)
        except (OSError, ValueError):  # another drive, a file in the way: the script's own error says so
            continue


def _run(command: list[str], cwd: Path, env: dict[str, str], on_output: Callable[[str], None] | None) -> int:
    if on_output is None:
        return subprocess.run(command, cwd=cwd, env=env, check=False).returncode
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_output(line.rstrip("\n"))
    return proc.returncode


def compare_logged(a: ProvenanceRecord, b: ProvenanceRecord) -> list[dict[str, Any]]:
    """Per logged entry (epoch or step) and numeric metric: original, reproduced value, difference."""
    rows = []
    for ea, eb in zip(a.results.logged, b.results.logged):
        when = ea.get("epoch", ea.get("step"))
        for key, x in ea.items():
            y = eb.get(key)
            if key in ("epoch", "step") or not _numeric(x) or not _numeric(y):
                continue
            rows.append({"epoch": when, "metric": key, "original": x, "reproduction": y, "abs_diff": abs(x - y)})
    return rows


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _order_matches(record: ProvenanceRecord, new: ProvenanceRecord) -> bool | None:
    """Whether both runs saw the samples in the same order; None when neither recorded an order."""
    old_digests, new_digests = record.training.data_order_digests, new.training.data_order_digests
    if not old_digests and not new_digests:
        return None
    return old_digests == new_digests
