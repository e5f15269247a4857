"""Reproduction: re-run a training from its record (``rerun``: :func:`reproduce`) in steps:
check the recorded code (``code``) and environment (``environment``), rebuild the training
(``rebuild``), compare the result with the original (``compare``) and judge it (``verdict``).
Each step returns a typed result (:class:`CodeCheck`, :class:`EnvDifference`, the data's
``DataCheck``, :class:`Judgement`). Importing this package imports no torch."""
