"""Errors raised by reprodl.

Every error derives from :class:`ReprodlError` and from the builtin it resembles, so
``except ValueError`` keeps working for callers that do not know reprodl. Each message
names the thing, its value and what to do next.
"""

from __future__ import annotations

import enum
import sys

NATIVE_NOTES = sys.version_info >= (3, 11)  # BaseException.add_note (PEP 678) exists from Python 3.11


class ExitCode(enum.IntEnum):
    """Exit codes of the ``reprodl`` command line, in one place."""

    OK = 0
    FAILED = 1  # a check ran and failed (verify, reproduce "differs")
    USAGE = 2  # bad input: the command could not start
    NOT_FOUND = 3
    INTERRUPTED = 130


class ReprodlError(Exception):
    """Base class of every error reprodl raises on purpose."""

    exit_code: ExitCode = ExitCode.USAGE


class InvalidURIError(ReprodlError, ValueError):
    """A URI whose scheme or form reprodl cannot use."""


class DatasetNotFoundError(ReprodlError, FileNotFoundError):
    """No dataset at the URI."""

    exit_code = ExitCode.NOT_FOUND


class DatasetNotFrozenError(ReprodlError, ValueError):
    """The URI holds a proto dataset (an unfinished creation), not a frozen dataset."""


class DatasetExistsError(ReprodlError, FileExistsError):
    """A dataset of that name already exists: reprodl never overwrites one."""


class InvalidNameError(ReprodlError, ValueError):
    """A dataset name dtool does not allow."""


class StorageError(ReprodlError, OSError):
    """Storage could not be reached or written (unreachable server, permissions...)."""


class MetadataError(ReprodlError, ValueError):
    """A README or other metadata that does not validate against its schema."""


class InputDataError(ReprodlError, ValueError):
    """Input data that cannot become a dataset (empty category, corrupt image...)."""


class DatasetFormatError(ReprodlError, ValueError):
    """A dataset whose annotations or items do not describe the expected kind of data."""


class IntegrityError(ReprodlError, ValueError):
    """Content that no longer matches its recorded hashes or digests."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class ParametersError(ReprodlError, ValueError):
    """Training parameters or a configuration that cannot be used."""


class ModelLoadError(ReprodlError, ValueError):
    """A model dataset that cannot be loaded safely."""


class TransformError(ReprodlError, ValueError):
    """A transform that cannot be built from its config, rebuilt from a record, or applied."""


class UnsafeImportError(ReprodlError, PermissionError):
    """Metadata names code that has not been allowed to run."""


class ReproductionError(ReprodlError, RuntimeError):
    """A reproduction that cannot proceed (missing data, code, or record)."""


class DirtyCodeError(ReprodlError, RuntimeError):
    """Training was asked to run only on committed code, and the code has uncommitted changes."""


class SigningError(ReprodlError, ValueError):
    """A signing key, public key or stored signature that cannot be used."""


class MissingDependencyError(ReprodlError, ImportError):
    """An optional package a feature needs is not installed."""


class TrainingDivergedError(ReprodlError, ArithmeticError):
    """The training loss became NaN or infinite; no model was written."""

    exit_code = ExitCode.FAILED


class NondeterministicOperationError(ReprodlError, RuntimeError):
    """With ``deterministic=True``, an operation torch cannot run deterministically; no model was written."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class CatalogError(ReprodlError, ValueError):
    """A catalog that cannot be opened or written, or a catalog query that cannot be read."""


class CatalogEntryNotFoundError(ReprodlError, LookupError):
    """No catalog entry has the UUID, URI or name asked for."""

    exit_code = ExitCode.NOT_FOUND


class ResumeError(ReprodlError, ValueError):
    """A training cannot be resumed: no checkpoint of a killed run, or its config changed since."""


class CheckpointWriteError(StorageError):
    """A training's checkpoint could not be written (a full disk): the training stops, its previous checkpoint kept."""


class ReprodlWarning(UserWarning):
    """reprodl went on differently from what was asked, and says why (a damaged checkpoint passed over)."""


class RankLostError(ReprodlError, RuntimeError):
    """Another process of a multi-process (torchrun) training died: an interruption, so a checkpoint is kept."""


class DamagedMetadataError(DatasetFormatError):
    """A dataset's stored metadata file (annotation, overlay, manifest) that is not valid JSON."""


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` so that its traceback shows it, on every supported Python.

    Python >= 3.11: ``exc.add_note(note)``. Python 3.10 has no notes, so the note goes into
    ``exc.__notes__`` (the same list, for programs) and, when the message is the exception's one
    string argument, onto that message on a line of its own (for people reading the traceback).
    """
    if NATIVE_NOTES and sys.version_info >= (3, 11):
        exc.add_note(note)
        return
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        exc.__notes__ = notes  # type: ignore[attr-defined]  # BaseException has no __notes__ before 3.11
    notes.append(note)
    if len(exc.args) == 1 and isinstance(exc.args[0], str) and str(exc) == exc.args[0]:
        exc.args = (f"{exc.args[0]}\n{note}",)
