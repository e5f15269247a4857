"""Reproduction: rebuild a training from its record (``rebuild``), re-run it (``rerun``:
:func:`reproduce`) and compare the result with the original (``compare``). Importing this
package imports no torch."""
