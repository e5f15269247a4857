"""What every part of a report shares: the options, progress and the notes collected."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from reprodl.errors import MissingDependencyError
from reprodl.reports.html import note, png_img


@dataclasses.dataclass
class Context:
    """Options of one report, where progress goes, and what could not be shown (``notes``)."""

    allow: tuple[str, ...] = ()
    evaluate: bool = True
    say: Callable[[str], None] = lambda message: None
    notes: list[str] = dataclasses.field(default_factory=list)

    def missing(self, what: str, why: str) -> str:
        """A note in the page, and in ``notes``, that ``what`` is not shown and why."""
        self.notes.append(f"{what}: {why}")
        return note(f"{what}: {why}")

    def plot(self, what: str, draw: Callable[[], bytes]) -> str:
        """The plot ``draw`` makes, as an image; a note instead when matplotlib is missing or
        the recorded values (read from a URI) are not numbers in the expected shape."""
        try:
            return png_img(draw(), what)
        except MissingDependencyError as exc:
            return self.missing(what, str(exc))
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RecursionError) as exc:
            return self.missing(what, f"the recorded values cannot be plotted ({type(exc).__name__}: {exc})")


def mapping(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object (read from a URI: anything else is treated as empty)."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def mappings(value: Any) -> list[dict[str, Any]]:
    """The JSON objects in ``value`` if it is a list (anything else left out)."""
    return [mapping(v) for v in value if isinstance(v, dict)] if isinstance(value, list) else []
