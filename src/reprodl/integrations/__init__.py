"""Integrations with training frameworks, each an optional extra (``reprodl[lightning]``).

Importing this package imports no framework (and no torch): import the integration's module,
``reprodl.integrations.lightning``, to use it.
"""
