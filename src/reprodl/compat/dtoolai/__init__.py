"""dtoolAI 0.2.0's API over reprodl: its code runs with ``dtoolai`` replaced by ``reprodl.compat.dtoolai``.

The modules and names are dtoolAI's (``data``, ``models``, ``parameters``, ``trained``,
``training``, ``utils``, ``imageutils``) and so are their semantics: ``ImageDataSet(uri)`` resizes
to 256x256 RGB, ``TensorDataSet`` divides by 255, ``TrainedTorchModel.predict`` returns the
category name, ``Parameters`` is dtoolAI's key/value holder. Underneath, reprodl does the work:
``train_model_with_metadata_capture`` writes a reprodl model dataset (``model.safetensors`` and a
provenance record) into dtoolcore's ``DerivedDataSetCreator``, and ``TrainedTorchModel`` loads
both reprodl models and dtoolAI-made ones (``model.pt`` read with ``torch.load(weights_only=True)``).
reprodl's own API (``from reprodl import ...``) is unchanged by this package.

Example:
    >>> from reprodl.compat.dtoolai.data import TensorDataSet              # doctest: +SKIP
    >>> from reprodl.compat.dtoolai.training import train_model_with_metadata_capture  # doctest: +SKIP
"""
