"""Training with capture: the built-in trainer (``loop``), its seeds (``seeding``), its
parameters (``params``), configs (``config``), what a training captures (``capture``) and
multi-run envelopes (``multirun``). Importing this package imports no torch."""
