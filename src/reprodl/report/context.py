"""What every part of a report shares: the options, progress and the notes collected."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from reprodl.errors import MissingDependencyError
from reprodl.report.html import note, png_img


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
        """The plot ``draw`` makes, as an image; a note instead when matplotlib is missing."""
        try:
            return png_img(draw(), what)
        except MissingDependencyError as exc:
            return self.missing(what, str(exc))
