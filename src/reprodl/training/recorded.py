"""``@reprodl.recorded``: record a script's training function without re-indenting it.

    >>> @reprodl.recorded("models", "mnist", seed=1)             # doctest: +SKIP
    ... def main(args, run):
    ...     train_ds = run.use(TensorDataSet(args.data, usetype="train"))
    ...     ...                                     # the user's own loop, unchanged
    ...     run.save(model)
    >>> if __name__ == "__main__":                               # doctest: +SKIP
    ...     main(parser.parse_args())

Calling the decorated function starts the run (:func:`reprodl.start_run` with the decorator's
arguments), calls the function and finishes the run when it returns, as a ``with`` block ends
(on an exception nothing is written and the exception goes on). The function gets the run as its
parameter ``run`` when it declares one, else from :func:`reprodl.current_run`. The finished run
(its ``uri``, its ``record``) is ``main.last_run``; the call returns what the function returns.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from reprodl.errors import ParametersError
from reprodl.training.run import Run, start_run

R = TypeVar("R")


def recorded(
    base_uri: str, name: str | None = None, **options: Any
) -> Callable[[Callable[..., R]], RecordedFunction[R]]:
    """A decorator recording each call of the function as one run (module docstring).

    Args:
        base_uri: where to create the model dataset (a missing local directory is created).
        name: the model dataset's name (default: the script's name, the time and a random suffix).
        options: the other keywords of :func:`reprodl.start_run` (``seed``, ``params``, ...).

    Raises:
        ParametersError: a keyword :func:`reprodl.start_run` does not take (when decorating).
    """
    try:
        inspect.signature(start_run).bind(base_uri, name, **options)
    except TypeError as exc:
        raise ParametersError(
            f"@reprodl.recorded got {sorted(options)}: {exc}; it takes the keywords of reprodl.start_run "
            "(seed, params, deterministic, require_clean_code, tensorboard, checkpoint_every, resume)"
        ) from exc

    def decorate(fn: Callable[..., R]) -> RecordedFunction[R]:
        return RecordedFunction(fn, base_uri, name, options)

    return decorate


class RecordedFunction(Generic[R]):
    """A training function under :func:`recorded`: each call is one run; ``last_run`` the latest."""

    def __init__(self, fn: Callable[..., R], base_uri: str, name: str | None, options: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.base_uri, self.name, self.options = fn, base_uri, name, options
        self.signature = inspect.signature(fn)
        self.takes_run = "run" in self.signature.parameters
        self.last_run: Run | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        if self.takes_run:
            try:
                given = self.signature.bind_partial(*args, **kwargs).arguments
            except TypeError:
                given = {}  # the call itself says what is wrong
            if "run" in given:
                raise ParametersError(
                    f"{self.fn.__qualname__}() was given run={given['run']!r}, but @reprodl.recorded passes "
                    "the run it starts: leave the run argument out of the call"
                )
        run = self.last_run = start_run(self.base_uri, self.name, **self.options)
        if self.takes_run:
            kwargs["run"] = run
        with run:  # finished on return, discarded on an exception (which goes on)
            result = self.fn(*args, **kwargs)
        return result
