"""Comparing the recorded environment with this one: each difference a typed :class:`EnvDifference`.

From the two compute profiles (CPU and instruction sets, BLAS, threads, GPU stack) and the
recorded determinism settings, :func:`expect` predicts, before re-running, whether the re-run
should match bit for bit (:class:`Expectation`); :meth:`Expectation.settle` says afterwards
whether the prediction held.

Example:
    >>> environment_differences(record)                    # doctest: +SKIP
    [EnvDifference(kind='torch', name='torch', recorded='1.13.1', now='2.4.0')]
    >>> check_environment(record)[1].expected              # doctest: +SKIP
    'bitwise'

The factors that change numerics and differ come from :mod:`.factors`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

from reprodl.provenance import ComputeProfile, Environment, ProvenanceRecord
from reprodl.reproduction.factors import Factor, factors
from reprodl.training import capture
from reprodl.training.capture import describe_nondeterministic

# The recorded environment fields compared, in the order they are reported (packages come after).
RecordedKind = Literal[
    "python", "implementation", "platform", "machine", "torch", "cuda", "cudnn", "numpy", "reprodl", "gpus"
]
ComputeKind = Literal["cpu", "isa", "blas", "threads", "thread_env", "cuda_driver", "nccl", "tf32", "matmul_precision"]
EnvKind = Literal[RecordedKind, "package", ComputeKind]
COMPARED_FIELDS: tuple[RecordedKind, ...] = get_args(RecordedKind)

# The compute profile's fields compared (environment.compute), each with its kind, in report order.
COMPUTE_FIELDS: tuple[tuple[str, EnvKind], ...] = (
    ("cpu_model", "cpu"),
    ("cpu_flags", "isa"),
    ("cpu_capability", "isa"),
    ("blas", "blas"),
    ("blas_version", "blas"),
    ("lapack", "blas"),
    ("onednn", "blas"),
    ("parallel_backend", "threads"),
    ("num_threads", "threads"),
    ("num_interop_threads", "threads"),
    ("thread_env", "thread_env"),
    ("cuda_driver", "cuda_driver"),
    ("nccl", "nccl"),
    ("tf32_matmul", "tf32"),
    ("tf32_cudnn", "tf32"),
    ("float32_matmul_precision", "matmul_precision"),
)


@dataclasses.dataclass(frozen=True)
class EnvDifference:
    """One way this environment differs from the recorded one.

    ``kind`` is an environment field ("python", "torch", "cuda", ...) or "package"; ``name`` is
    the field's name, or for a package the package's name. ``None`` on one side: absent there.
    """

    kind: EnvKind
    name: str
    recorded: Any
    now: Any

    @property
    def is_package(self) -> bool:
        """True for an installed package's version, False for a field of the environment."""
        return self.kind == "package"

    @property
    def what(self) -> str:
        """How the report names it: the field ("torch") or "package NAME"."""
        return f"package {self.name}" if self.is_package else self.name

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"what", "recorded", "now"}``."""
        return {"what": self.what, "recorded": self.recorded, "now": self.now}


def compare_environments(was: Environment, now: Environment) -> list[EnvDifference]:
    """Each compared field, then the compute profile's, then each installed package (sorted by name), that differs."""
    out = [
        EnvDifference(field, field, getattr(was, field), getattr(now, field))
        for field in COMPARED_FIELDS
        if getattr(was, field) != getattr(now, field)
    ]
    out += compare_compute(was.compute, now.compute)
    for name in sorted(set(was.packages) | set(now.packages)):
        a, b = was.packages.get(name), now.packages.get(name)
        if a != b:
            out.append(EnvDifference("package", name, a, b))
    return out


def compare_compute(was: ComputeProfile | None, now: ComputeProfile | None) -> list[EnvDifference]:
    """The compute profile's fields that differ; none when either side has no profile (an older record)."""
    if was is None or now is None:
        return []
    return [
        EnvDifference(kind, field, getattr(was, field), getattr(now, field))
        for field, kind in COMPUTE_FIELDS
        if getattr(was, field) != getattr(now, field)
    ]


def environment_differences(record: ProvenanceRecord) -> list[EnvDifference]:
    """How the environment here differs from the one ``record`` was trained in."""
    return check_environment(record)[0]


def check_environment(record: ProvenanceRecord) -> tuple[list[EnvDifference], Expectation]:
    """How this environment differs from the recorded one, and what a re-run here should give."""

    now = capture.capture_environment()  # looked up per call: a test may replace it
    differences = compare_environments(record.environment, now)
    return differences, expect(record, now, differences)


def rerun_environment(record: ProvenanceRecord, new: ProvenanceRecord) -> tuple[list[EnvDifference], Expectation]:
    """How a re-run's own record's environment differs from the original's, and what it should have given.

    Both environments were captured the same way, in the training process: never compare with
    the process that launched the re-run, whose settings (TF32, threads...) are not the script's.
    """
    differences = compare_environments(record.environment, new.environment)
    return differences, expect(record, new.environment, differences)


# --- the expectation -------------------------------------------------------------------------
# After NVIDIA CCCL's determinism levels: the same bits here (bitwise), the same bits only under the
# recorded factors (run_to_run), no promise of bits (not_guaranteed).
Expected = Literal["bitwise", "run_to_run", "not_guaranteed"]


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a re-run should give, predicted from the two environments before re-running.

    ``expected``:

    * ``bitwise``: deterministic settings and every factor that changes numerics the same: the
      same bits here;
    * ``run_to_run``: deterministic settings, but factors that change numerics differ here
      (``factors``): the same bits only under the recorded factors, so other bits here unless they
      are put back. When every one of them can be put back on this machine (``restorable``), a
      re-run that differs is ``differs``, as for ``bitwise``: the record can be reproduced here;
    * ``not_guaranteed``: statistical mode, or operations without a deterministic implementation
      ran: no promise of bits; judged on metrics.

    ``because`` gives the facts it rests on, one line each. ``held`` is None until :meth:`settle`:
    bitwise holds with an ``identical`` verdict; run_to_run with ``identical`` or a replay that
    brought the bits back under the recorded factors (None when nothing could test it);
    not_guaranteed with ``identical`` or ``within tolerance``.
    """

    expected: Expected
    because: list[str]
    held: bool | None = None
    factors: list[Factor] = dataclasses.field(default_factory=list)

    @property
    def restorable(self) -> bool:
        """run_to_run, and every differing factor can be put back on this machine."""
        return self.expected == "run_to_run" and bool(self.factors) and all(f.restorable for f in self.factors)

    def settle(self, verdict: str, *, confirmed: bool | None = None, bits_back: bool = False) -> Expectation:
        """This expectation with ``held`` decided by the re-run's ``verdict`` (and, for run_to_run, by the
        replays: ``confirmed`` True when one brought the bits back, False when none did, None when none ran);
        ``bits_back``: the weights and every traced step came back bit for bit (a bitwise expectation held,
        whatever else differed, such as a metric the run logged)."""
        if self.expected == "bitwise":
            held: bool | None = verdict == "identical" or bits_back
        elif self.expected == "run_to_run":
            held = True if verdict == "identical" else confirmed
            if held is None and not self.restorable:
                held = verdict == "within tolerance"  # other bits, within tolerance: what it said
        else:
            held = verdict in ("identical", "within tolerance")
        return dataclasses.replace(self, held=held)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"expected", "because", "held", "factors"}``."""
        return {
            "expected": self.expected,
            "because": list(self.because),
            "held": self.held,
            "factors": [f.to_dict() for f in self.factors],
        }


def expect(record: ProvenanceRecord, now: Environment, differences: list[EnvDifference]) -> Expectation:
    """The expectation for re-running ``record`` in ``now``, whose differences from the record are given."""
    determinism = record.training.determinism
    if determinism.mode == "statistical":
        return Expectation("not_guaranteed", ["statistical mode: re-run with another seed, so other bits"])
    if determinism.nondeterministic_ops:
        ops = describe_nondeterministic(determinism)
        because = [f"the training ran operations without a deterministic implementation (warn-only): {ops}"]
        return Expectation("not_guaranteed", because)
    differing = factors(record.environment, now)
    if differing:
        because = [
            f"{f.label}: "
            + (f"can be restored here ({restore_text(f)})" if f.restorable else f"cannot be restored ({f.why_not})")
            for f in differing
        ]
        because.append("deterministic settings: the same bits under the recorded factors; other bits expected here")
        return Expectation("run_to_run", because, factors=differing)
    because = []
    if "cpu" in {d.kind for d in differences}:
        because.append("another CPU model, with the same instruction sets")
    was = record.environment.compute
    if was is None or now.compute is None:
        because.append(
            "no compute profile in the record (written by an older reprodl): instruction sets, BLAS and "
            "threads unknown; bitwise expected from the determinism settings alone"
        )
    else:
        because.append(
            f"same ISA ({was.cpu_capability or ', '.join(was.cpu_flags) or 'unknown'}), BLAS "
            f"({was.blas or 'unknown'}) and threads ({was.num_threads} intra-op, {was.num_interop_threads} "
            "inter-op): bitwise expected"
        )
    return Expectation("bitwise", because)


def restore_text(f: Factor) -> str:
    """How a factor is put back: ``ATEN_CPU_CAPABILITY=avx2``, ``unset X``."""
    return " ".join(f"{k}={v}" if v is not None else f"unset {k}" for k, v in (f.restore or {}).items())
