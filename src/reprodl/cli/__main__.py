"""``python -m reprodl.cli``: the ``reprodl`` command, e.g. under torchrun
(``torchrun --nproc-per-node 2 -m reprodl.cli train train.yaml``)."""

from reprodl.cli import main

main()
