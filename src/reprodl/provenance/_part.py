"""The base of every part of a provenance record: unknown fields kept (a newer reprodl's record reads)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
