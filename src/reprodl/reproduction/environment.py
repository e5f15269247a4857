"""Comparing the recorded environment with this one: each difference a typed :class:`EnvDifference`.

Example:
    >>> environment_differences(record)                    # doctest: +SKIP
    [EnvDifference(kind='torch', name='torch', recorded='1.13.1', now='2.4.0')]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from reprodl.provenance import Environment, ProvenanceRecord

EnvKind = Literal[
    "python", "implementation", "platform", "machine", "torch", "cuda", "cudnn", "numpy", "reprodl", "gpus", "package"
]
# The recorded environment fields compared, in the order they are reported (packages come after).
COMPARED_FIELDS: tuple[EnvKind, ...] = (
    "python",
    "implementation",
    "platform",
    "machine",
    "torch",
    "cuda",
    "cudnn",
    "numpy",
    "reprodl",
    "gpus",
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
    """Each compared field, then each installed package (sorted by name), whose value differs."""
    out = [
        EnvDifference(field, field, getattr(was, field), getattr(now, field))
        for field in COMPARED_FIELDS
        if getattr(was, field) != getattr(now, field)
    ]
    for name in sorted(set(was.packages) | set(now.packages)):
        a, b = was.packages.get(name), now.packages.get(name)
        if a != b:
            out.append(EnvDifference("package", name, a, b))
    return out


def environment_differences(record: ProvenanceRecord) -> list[EnvDifference]:
    """How the environment here differs from the one ``record`` was trained in."""
    from reprodl.training.capture import capture_environment

    return compare_environments(record.environment, capture_environment())
