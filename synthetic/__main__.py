"""``python -m synthetic <experiment> [options]`` and ``python -m synthetic --list``
(:mod:`synthetic.experiments`)."""

import sys

from synthetic.experiments import main

if __name__ == "__main__":
    sys.exit(main())
