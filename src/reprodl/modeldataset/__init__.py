"""The model-dataset format in one home: its weights (``weights``), verification and lineage
(``verify``) and signatures (``signing``). Importing this package imports no torch."""
