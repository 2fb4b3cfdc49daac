"""``python -m synthetic.mamba2_regression``: the Mamba-II (SSD) regression (:mod:`synthetic.mamba2.experiment`)."""

import sys

from synthetic.mamba2.experiment import main

if __name__ == "__main__":
    sys.exit(main())
