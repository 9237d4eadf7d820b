r"""``python -m mrdib_pyg.train ...`` (and ``torchrun --nproc_per_node N -m mrdib_pyg.train
...``) runs the ``mrdib-train`` command line."""
import sys

from mrdib_pyg.train.cli import main

if __name__ == '__main__':
    sys.exit(main())
