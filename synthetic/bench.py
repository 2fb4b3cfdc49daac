"""``python -m synthetic.bench [--mamba] [ARGS...]``: the deep-S4 training benchmark (:mod:`synthetic.s4.bench`),
or with ``--mamba`` the Mamba one (:mod:`synthetic.mamba.bench`, which takes ARGS)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--mamba"]:
        from synthetic.mamba.bench import main as mamba_main
        return mamba_main(argv[1:])
    from synthetic.s4.bench import main as s4_main
    return s4_main(argv)


if __name__ == "__main__":
    sys.exit(main())
