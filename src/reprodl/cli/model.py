"""Model commands: provenance, train, predict, evaluate, reproduce, diff, verify, lineage."""
from __future__ import annotations

from reprodl.cli import app  # noqa: F401
