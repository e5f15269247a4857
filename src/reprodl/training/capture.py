"""Capturing what a training needs to be redone: code, environment, determinism, components.

Each has its module: :mod:`reprodl.training.environment` (Python, packages, CPU, BLAS, CUDA),
:mod:`reprodl.training.source` (the repository's state and untracked files),
:mod:`reprodl.training.determinism` (torch's settings and the nondeterministic operations used) and
:mod:`reprodl.training.describe` (optimisers, losses, schedulers and models described). This module
keeps the names callers outside the training package import from it. The seeds are planned, applied
and recorded by :mod:`reprodl.training.seeding`.

Example:
    >>> info = capture_environment()            # doctest: +SKIP
    >>> info.torch                              # doctest: +SKIP
    '2.13.0+cpu'
"""

from __future__ import annotations

from reprodl.training.describe import (
    class_source_sha256,
    describe_callable,
    jsonable,
)
from reprodl.training.determinism import (
    DeterminismSettings,
    DeterminismWarning,
    changed_setting,
    describe_nondeterministic,
    nondeterministic_operation,
)
from reprodl.training.environment import (
    blas_description,
    capture_environment,
    cpu_description,
    installed_packages,
)
from reprodl.training.source import (
    SECRET_FILE_PATTERNS,
    capture_code,
    secret_pattern,
    untracked_summary,
)

__all__ = [
    "SECRET_FILE_PATTERNS",
    "DeterminismSettings",
    "DeterminismWarning",
    "blas_description",
    "capture_code",
    "capture_environment",
    "changed_setting",
    "class_source_sha256",
    "cpu_description",
    "describe_callable",
    "describe_nondeterministic",
    "installed_packages",
    "jsonable",
    "nondeterministic_operation",
    "secret_pattern",
    "untracked_summary",
]
