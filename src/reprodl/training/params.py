"""Training parameters: built from keywords, read by attribute, typed.

Example:
    >>> params = Parameters(batch_size=128, learning_rate=0.01, n_epochs=1,
    ...                     init_params={"input_channels": 1, "input_dim": 28})
    >>> params.learning_rate
    0.01
    >>> Parameters(shuffle="False").shuffle   # no bool("False") == True trap
    False
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from reprodl.errors import ParametersError
from reprodl.parsing import load_yaml

ALIASES = {"lr": "learning_rate", "epochs": "n_epochs", "bs": "batch_size"}
MAX_SEED = 2**63 - 1  # torch seeds its generators with 64-bit integers (and the catalog stores int64)
MAX_LEARNING_RATE = 3.4028234663852886e38  # the largest float32: a larger step overflows float32 weights


class Parameters(BaseModel):
    """Hyperparameters and run settings of a training, typed.

    Known fields are validated (``batch_size=0`` is refused, ``"False"`` is False). Another
    keyword (``momentum=0.9``) is held and read by attribute, but the built-in trainer refuses
    it (:func:`check_trainer_keys`) and a config file refuses it (:func:`check_config_keys`):
    values for your own code go under ``user`` (``user={"momentum": 0.9}``).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, frozen=False)

    batch_size: PositiveInt = Field(128, description="Samples per optimisation step")
    learning_rate: PositiveFloat = Field(0.01, allow_inf_nan=False, description="Learning rate given to the optimiser")
    n_epochs: PositiveInt = Field(1, description="Passes over the training data")
    init_params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the model class")
    seed: int = Field(0, description="Seed of Python, NumPy, torch and the data order")
    deterministic: bool | Literal["warn"] = Field(
        True,
        description="Bitwise-reproducible mode (deterministic algorithms); 'warn' runs operations without a "
        "deterministic implementation and lists them in the record",
    )
    shuffle: bool = Field(True, description="Shuffle the training data each epoch")
    num_workers: NonNegativeInt = Field(0, description="DataLoader worker processes")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    verify_data: Literal["quick", "deep", "none"] = Field(
        "quick", description="Integrity check of the data before training"
    )
    allow_nonfinite_loss: bool = Field(
        False, description="Keep training (and write the model) when the loss becomes NaN or infinite"
    )
    grad_clip_norm: PositiveFloat | None = Field(
        None, allow_inf_nan=False, description="Clip the gradients' total 2-norm to this before each optimiser step"
    )
    grad_clip_value: PositiveFloat | None = Field(
        None, allow_inf_nan=False, description="Clip each gradient element to [-value, value] before each step"
    )
    accumulation_steps: PositiveInt = Field(
        1, description="Batches whose gradients are summed (each loss divided by this) into one optimiser step"
    )
    scheduler_interval: Literal["epoch", "step"] = Field(
        "epoch", description="Step the learning-rate scheduler after every epoch, or after every optimiser step"
    )
    user: dict[str, Any] = Field(
        default_factory=dict, description="Values for your own code (a config's params.user), recorded as given"
    )

    @field_validator("seed")
    @classmethod
    def _seed_fits(cls, value: int) -> int:
        if not 0 <= value <= MAX_SEED:
            raise ValueError("should be a whole number from 0 to 2**63 - 1, as torch's 64-bit generators need")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate_fits(cls, value: float) -> float:
        if value > MAX_LEARNING_RATE:
            raise ValueError(f"should be at most {MAX_LEARNING_RATE:.4g} (the largest float32): a larger one overflows")
        return value

    def __init__(self, **kwargs: Any) -> None:
        kwargs = {ALIASES.get(k, k): v for k, v in kwargs.items()}
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            raise ParametersError(_explain(exc)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(ALIASES.get(name, name), value)
        except ValidationError as exc:
            raise ParametersError(_explain(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """Every parameter, known and extra, as plain JSON-able values."""
        return self.model_dump(mode="json")

    def updated(self, **changes: Any) -> Parameters:
        """A copy with some values changed (the original is never mutated)."""
        return Parameters(**{**self.to_dict(), **changes})

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()

    def unknown_keys(self) -> list[str]:
        """The keywords given that are not parameters of the built-in trainer (kept as extras)."""
        return sorted(self.model_extra or {})


def known_keys() -> list[str]:
    """Every key a config's ``params`` may hold: the fields and their aliases."""
    return sorted({*Parameters.model_fields, *ALIASES})


def check_config_keys(params: dict[str, Any]) -> None:
    """Refuse keys of a config's ``params`` that are not parameters (a typo trains with the default).

    Raises:
        ParametersError: naming each unknown key, the closest known one, and ``params.user``.
    """
    unknown = [str(k) for k in params if k not in known_keys()]
    if unknown:
        raise ParametersError(
            f"unknown training parameter(s) in the config's params: {_hints(unknown)}. "
            f"Known: {', '.join(known_keys())}. "
            "Values for your own code go under params.user (e.g. params: {user: {dropout: 0.1}})"
        )


def check_trainer_keys(params: Parameters) -> None:
    """Refuse keywords the built-in trainer would not use (``dry_run=True`` would train a full epoch).

    Raises:
        ParametersError: naming each unknown keyword, the closest parameter, and ``user=``.
    """
    unknown = params.unknown_keys()
    if unknown:
        example = ", ".join(f"{k!r}: ..." for k in unknown[:2])
        raise ParametersError(
            f"the built-in trainer does not use the parameter(s) {_hints(unknown)}, so they would be recorded "
            f"without effect. Known: {', '.join(known_keys())}. Values for your own code go under user "
            f"(Parameters(..., user={{{example}}}); in a config, params: {{user: {{...}}}})"
        )


def _hints(unknown: list[str]) -> str:
    """Each unknown key with the closest known one: ``'lr_rate' (did you mean 'learning_rate'?)``."""
    import difflib

    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known_keys(), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(hints)


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"])
        msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"].lower()
        parts.append(f"{name} {msg}, but got {name}={err.get('input')!r}")
    return "invalid training parameters: " + "; ".join(parts)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value read as YAML: 0.05, true, [1, 2]); dotted keys nest."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParametersError(f"override {text!r} should look like key=value (e.g. lr=0.05)")
    try:
        value = load_yaml(raw, what=f"override {text!r}", error=ParametersError) if raw.strip() else ""
    except ParametersError:
        value = raw
    return ALIASES.get(key, key), value


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``config`` with ``key=value`` overrides applied (dotted keys nest)."""

    out = copy.deepcopy(config)
    for text in overrides:
        key, value = parse_override(text)
        node = out
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParametersError(f"override {text!r}: {part!r} is not a mapping")
        node[last] = value
    return out
