"""Entry point: ``python -m synthetic.s4_theorem1`` (see :mod:`synthetic.s4.theorem1_study`)."""

import sys

from synthetic.s4.theorem1_study import main

if __name__ == "__main__":
    sys.exit(main())
