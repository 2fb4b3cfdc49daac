"""``python -m synthetic.s4_regression``: the deep-S4 regression of Figure 2.

``--preset default|paper|tiny`` runs :mod:`synthetic.s4.experiment` (the paper's conventions);
``--preset official|official-tiny`` runs :mod:`synthetic.s4.official_experiment` (the official code's).
``--help`` with a preset lists that experiment's options.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from synthetic.s4.official import PRESETS as OFFICIAL_PRESETS

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default="default")
    if pre.parse_known_args(argv)[0].preset in OFFICIAL_PRESETS:
        from synthetic.s4.official_experiment import main as official_main
        return official_main(argv)
    from synthetic.s4.experiment import main as paper_main
    return paper_main(argv)


if __name__ == "__main__":
    sys.exit(main())
