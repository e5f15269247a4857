"""Training with capture: the built-in trainer (``loop``), the run API for a loop of your own (``run``),
their seeds (``seeding``), parameters (``params``), configs (``config``), what a training captures
(``capture``: ``environment``, ``source``, ``determinism``, ``describe``) and multi-run envelopes
(``multirun``). Modules named with a leading underscore are the trainer's and the run's own parts.
Importing this package imports no torch."""
