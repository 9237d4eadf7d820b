import sys

from mrdib_pyg.train.cli import main

sys.exit(main())
