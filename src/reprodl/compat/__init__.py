"""Compatibility layers: other tools' APIs over reprodl (``compat.dtoolai``: the original dtoolAI 0.2.0)."""
