"""dtoolAI's ``train_model_with_metadata_capture``, writing a reprodl model dataset.

The call is dtoolAI's (``ds_valid`` the optional seventh argument) and so is what it does to
``params`` (it sets ``input_dim``, ``input_channels``, ``optimiser_name`` and ``loss_func``);
the training, and what is written into ``output_ds`` (a dtoolcore ``DerivedDataSetCreator`` or a
reprodl ``DerivedDataSet``), are reprodl's: ``model.safetensors``, the provenance record, history,
README and annotations. Parameters reprodl's trainer does not use are recorded under ``user``.

Example:
    >>> with DerivedDataSetCreator("mnist_model", "models", tds_train) as output_ds:   # doctest: +SKIP
    ...     train_model_with_metadata_capture(model, tds_train, optimiser, loss_fn, params, output_ds)
"""

from __future__ import annotations

from typing import Any

from reprodl.provenance import ProvenanceRecord
from reprodl.training import loop
from reprodl.training.params import Parameters as _ReprodlParameters

__all__ = ["train_model_with_metadata_capture"]


def train_model_with_metadata_capture(
    model: Any,
    ds_train: Any,
    optimiser: Any,
    loss_fn: Any,
    params: Any,
    output_ds: Any,
    ds_valid: Any = None,
    **kwargs: Any,
) -> ProvenanceRecord:
    """Train ``model`` on ``ds_train`` and write it with its provenance into ``output_ds``.

    ``params`` is a :class:`reprodl.compat.dtoolai.parameters.Parameters` (or a mapping); keyword
    arguments go to :func:`reprodl.training.loop.train_model_with_metadata_capture`.
    """
    params["input_dim"] = ds_train.dim
    params["input_channels"] = ds_train.input_channels
    params["optimiser_name"] = optimiser.__class__.__name__
    params["loss_func"] = loss_fn.__class__.__name__
    return loop.train_model_with_metadata_capture(
        model, ds_train, optimiser, loss_fn, reprodl_parameters(params), output_ds, valid_ds=ds_valid, **kwargs
    )


def reprodl_parameters(params: Any) -> _ReprodlParameters:
    """dtoolAI parameters as reprodl's: the trainer's own keys as they are, every other one under ``user``."""
    values = dict(getattr(params, "parameter_dict", params))
    user = dict(values.pop("user", None) or {})
    known = set(_ReprodlParameters.model_fields)
    user.update({k: v for k, v in values.items() if k not in known})
    return _ReprodlParameters(**{k: v for k, v in values.items() if k in known}, user=user)
