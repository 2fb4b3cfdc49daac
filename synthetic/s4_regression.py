"""``python -m synthetic.s4_regression``: ``python -m synthetic s4``, the deep-S4 regression of Figure 2.

``--preset cpu|paper|tiny`` runs :mod:`synthetic.s4.experiment` (the paper's conventions);
``--preset official|official-tiny`` runs :mod:`synthetic.s4.official_experiment` (the official code's).
``--help`` with a preset lists that experiment's options.
"""

import sys

from synthetic.s4.experiment import main

if __name__ == "__main__":
    sys.exit(main())
