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

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError

from reprodl.errors import ParametersError
from reprodl.parsing import load_yaml

ALIASES = {"lr": "learning_rate", "epochs": "n_epochs", "bs": "batch_size"}


class Parameters(BaseModel):
    """Hyperparameters and run settings of a training; unknown keywords are kept as given.

    Known fields are validated (``batch_size=0`` is refused, ``"False"`` is False); any
    other keyword (``momentum=0.9``) is recorded too and read by attribute. A config file is
    stricter (:func:`check_config_keys`): there, values for your own code go under ``user``.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, frozen=False)

    batch_size: PositiveInt = Field(128, description="Samples per optimisation step")
    learning_rate: PositiveFloat = Field(0.01, allow_inf_nan=False, description="Learning rate given to the optimiser")
    n_epochs: PositiveInt = Field(1, description="Passes over the training data")
    init_params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the model class")
    seed: int = Field(0, description="Seed of Python, NumPy, torch and the data order")
    deterministic: bool = Field(True, description="Bitwise-reproducible mode (deterministic algorithms)")
    shuffle: bool = Field(True, description="Shuffle the training data each epoch")
    num_workers: NonNegativeInt = Field(0, description="DataLoader worker processes")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    verify_data: Literal["quick", "deep", "none"] = Field(
        "quick", description="Integrity check of the data before training"
    )
    allow_nonfinite_loss: bool = Field(
        False, description="Keep training (and write the model) when the loss becomes NaN or infinite"
    )
    user: dict[str, Any] = Field(
        default_factory=dict, description="Values for your own code (a config's params.user), recorded as given"
    )

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


def known_keys() -> list[str]:
    """Every key a config's ``params`` may hold: the fields and their aliases."""
    return sorted({*Parameters.model_fields, *ALIASES})


def check_config_keys(params: dict[str, Any]) -> None:
    """Refuse keys of a config's ``params`` that are not parameters (a typo trains with the default).

    Raises:
        ParametersError: naming each unknown key, the closest known one, and ``params.user``.
    """
    import difflib

    known = known_keys()
    unknown = [k for k in params if k not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ParametersError(
        f"unknown training parameter(s) in the config's params: {', '.join(hints)}. Known: {', '.join(known)}. "
        "Values for your own code go under params.user (e.g. params: {user: {dropout: 0.1}})"
    )


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"])
        parts.append(f"{name} {err['msg'].lower()}, but got {name}={err.get('input')!r}")
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
    import copy

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
