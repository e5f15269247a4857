"""The model-dataset format in one home: writing it (``write``), reading its record and
weights (``read``), the weights file and digest (``weights``), verification and lineage
(``verify``) and signatures (``signing``). Importing this package imports no torch."""
