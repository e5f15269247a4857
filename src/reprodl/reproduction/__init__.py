"""Reproduction: re-run a training from its record (:func:`reprodl.reproduction.pipeline.reproduce`) in six
stages, each a module of ``pipeline``: plan, check (``code``, ``environment``, the data), run (the runners:
``retrain`` in process, ``ddp`` under torchrun, ``reexec`` re-executing recorded code), compare
(``compare``, ``divergence``), judge (``verdict``) and explain (``replay``). Each stage returns a typed
result (``pipeline.state``). Importing this package imports no torch."""
