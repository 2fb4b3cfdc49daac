"""``python -m synthetic.hybrid_regression``: the Jamba-style hybrid regression (:mod:`synthetic.hybrid.experiment`)."""

import sys

from synthetic.hybrid.experiment import main

if __name__ == "__main__":
    sys.exit(main())
