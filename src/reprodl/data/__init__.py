"""Training data: torch Datasets over dtool datasets, creators and dataset operations.

``ImageDataSet`` and ``TensorDataSet`` import torch and are loaded on first use; the
creators and operations do not need torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ImageDataSet", "TensorDataSet"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from reprodl.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'reprodl.data' has no attribute {name!r}")
