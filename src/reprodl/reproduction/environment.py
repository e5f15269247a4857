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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

from reprodl.provenance import ComputeProfile, Environment, ProvenanceRecord
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
    from reprodl.training.capture import capture_environment

    now = capture_environment()
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
Expected = Literal["bitwise", "statistical"]

# Environment differences that change bits, how the expectation names them, in order.
BIT_CHANGING: tuple[tuple[str, tuple[EnvKind, ...]], ...] = (
    ("machine", ("machine",)),
    ("instruction sets", ("isa",)),
    ("BLAS", ("blas",)),
    ("thread count", ("threads", "thread_env")),
    ("torch", ("torch",)),
    ("CUDA stack", ("cuda", "cudnn", "cuda_driver", "nccl")),
    ("GPU", ("gpus",)),
    ("float32 matmul precision", ("matmul_precision",)),
)


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a re-run should give, predicted from the two environments before re-running.

    ``expected`` is "bitwise" (the same bits) or "statistical" (other bits, within tolerance);
    ``because`` gives the evidence, one line each. ``held`` is None until :meth:`settle`: then
    True when a bitwise expectation met an ``identical`` verdict, or a statistical one met
    ``within tolerance`` or ``identical`` (the same bits are within any tolerance); False otherwise
    (bitwise expected but bits differed: a cause outside the compared environment; statistical
    expected but ``differs``: more than the environment changed the result).
    """

    expected: Expected
    because: list[str]
    held: bool | None = None

    def settle(self, verdict: str) -> Expectation:
        """This expectation with ``held`` decided by the re-run's ``verdict``."""
        wanted = ("identical",) if self.expected == "bitwise" else ("identical", "within tolerance")
        return dataclasses.replace(self, held=verdict in wanted)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"expected", "because", "held"}``."""
        return {"expected": self.expected, "because": list(self.because), "held": self.held}


def expect(record: ProvenanceRecord, now: Environment, differences: list[EnvDifference]) -> Expectation:
    """The expectation for re-running ``record`` in ``now``, whose differences from the record are given."""
    determinism = record.training.determinism
    if determinism.mode == "statistical":
        return Expectation("statistical", ["statistical mode: re-run with another seed, so other bits"])
    because = []
    if determinism.nondeterministic_ops:
        ops = describe_nondeterministic(determinism)
        because.append(f"the training ran operations without a deterministic implementation (warn-only): {ops}")
    kinds = {d.kind for d in differences}
    for label, group in BIT_CHANGING:
        found = [d for d in differences if d.kind in group]
        if found:
            change = "; ".join(_change(d) for d in found)
            because.append(f"different {label} ({change}): statistical expected")
    if because:
        return Expectation("statistical", because)
    if "cpu" in kinds:
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


def _change(d: EnvDifference) -> str:
    """How one difference reads in the expectation: lists (instruction sets) by what was added and lost."""
    if isinstance(d.recorded, list) and isinstance(d.now, list):
        gained = [f"+{v}" for v in d.now if v not in d.recorded]
        lost = [f"-{v}" for v in d.recorded if v not in d.now]
        return f"{d.name} {' '.join(gained + lost)}"
    return f"{d.name} {_short(d.recorded)} -> {_short(d.now)}"


def _short(value: Any) -> str:
    """A value for a line of the expectation: lists as sets, long text cut."""
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
