"""``python -m synthetic.mamba_regression``: the Mamba (S6) regression (:mod:`synthetic.mamba.experiment`)."""

import sys

from synthetic.mamba.experiment import main

if __name__ == "__main__":
    sys.exit(main())
