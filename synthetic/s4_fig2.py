"""``python -m synthetic.s4_fig2``: Figure 2 three ways (:mod:`synthetic.s4.fig2`)."""

import sys

from synthetic.s4.fig2 import main

if __name__ == "__main__":
    sys.exit(main())
