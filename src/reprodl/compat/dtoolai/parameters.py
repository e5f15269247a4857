"""dtoolAI's ``Parameters``: key/value training parameters from keywords, JSON or ``a=1,b=2`` strings.

Example:
    >>> p = Parameters(batch_size=128, learning_rate=0.01, n_epochs=1)
    >>> p.update_from_comma_separated_string("n_epochs=3")
    >>> p.n_epochs, p["learning_rate"]
    (3, 0.01)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from reprodl.errors import ParametersError


class Parameters:
    """Key/value parameter data, read by attribute or item; values from strings keep the type given first.

    ``parameter_dict`` holds every value; ``param_types`` the type of each keyword given to the
    constructor (a string update of ``n_epochs=3`` becomes the int 3).
    """

    def __init__(self, **kwargs: Any) -> None:
        self.parameter_dict: dict[str, Any] = dict(kwargs)
        self.param_types: dict[str, type] = {k: type(v) for k, v in kwargs.items()}

    @classmethod
    def from_dict(cls, input_dict: dict[str, Any]) -> Parameters:
        parameters = cls()
        parameters.parameter_dict = input_dict
        return parameters

    @classmethod
    def from_json_string(cls, json_string: str) -> Parameters:
        parameters = cls()
        parameters.parameter_dict.update(json.loads(json_string))
        return parameters

    @classmethod
    def from_comma_separated_string(cls, raw_string: str | None) -> Parameters:
        parameters = cls()
        if raw_string is not None:
            parameters.parameter_dict.update(_pairs(raw_string))
        return parameters

    def update_from_comma_separated_string(self, raw_string: str, strict: bool = True) -> None:
        """Set ``k=v,k2=v2``; each value converted to the type of that key's first value (str if new).

        Raises:
            NameError: with ``strict``, for a key not already known (dtoolAI's behaviour).
        """
        for k, v in _pairs(raw_string).items():
            if k not in self.parameter_dict and strict:
                raise NameError(f"Parameter name {k} not known and strict=True")
            param_type = self.param_types.get(k, str)
            try:
                self.parameter_dict[k] = _convert(param_type, v)
            except ValueError:
                raise ParametersError(
                    f"parameter {k}={v!r} is not a {param_type.__name__} like its default: give e.g. {k}="
                    f"{self.parameter_dict.get(k)!r}"
                ) from None

    def set_defaults(self, **kwargs: Any) -> None:
        defaults = dict(kwargs)
        defaults.update(self.parameter_dict)
        self.parameter_dict = defaults

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("parameter_dict", "param_types"):
            raise AttributeError(name)
        try:
            return self.parameter_dict[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}; known: {sorted(self.parameter_dict)}") from None

    def __setitem__(self, key: str, value: Any) -> None:
        self.parameter_dict[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.parameter_dict[key]

    def __contains__(self, key: object) -> bool:
        return key in self.parameter_dict

    def __iter__(self) -> Iterator[str]:
        return iter(self.parameter_dict)

    def keys(self) -> list[str]:
        return list(self.parameter_dict)

    def __repr__(self) -> str:
        return str(self.parameter_dict)


def _pairs(raw_string: str) -> dict[str, str]:
    pairs = {}
    for part in raw_string.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ParametersError(f"parameters {raw_string!r} should look like name=value,name2=value2")
        pairs[key] = value
    return pairs


def _convert(param_type: type, value: str) -> Any:
    if param_type is bool:
        lowered = value.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(value)
        return lowered in ("true", "1", "yes")
    return param_type(value)
