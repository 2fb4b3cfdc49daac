"""Running one sweep in parts: shard files (``--shard i/n`` writes ``<results>.shard<i>of<n>.jsonl``, ``--merge``
folds them into the results file) and the process group of a ``torchrun`` launch (:class:`Dist`). Used by
:mod:`synthetic.runner`; every name is importable from there too."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from synthetic.results import LockHeld, ResultsFile, ResultsFileError, exit_error

__all__ = ["parse_shard", "shard_path", "shard_main", "shard_files", "merge_shards", "done_keys", "Dist", "distributed",
           "is_main_process"]


def parse_shard(s: str) -> Optional[Tuple[int, int]]:
    """'i/n' -> (i, n) with 0 <= i < n; '' -> None; ValueError naming --shard otherwise."""
    if not s:
        return None
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected 'i/n' (e.g. 0/4), got {s!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard: need 0 <= i < n, got {s!r}")
    return i, n


def shard_path(main: Path, i: int, n: int) -> Path:
    main = Path(main)
    return main.with_name(f"{main.stem}.shard{i}of{n}{main.suffix}")


_SHARD = re.compile(r"^(.*)\.shard\d+of\d+(\.[^.]+)$")


def shard_main(path) -> Optional[Path]:
    """The results file a shard file (:func:`shard_path`'s name) belongs to, or None for any other file."""
    path = Path(path)
    m = _SHARD.match(path.name)
    return path.with_name(m.group(1) + m.group(2)) if m else None


def shard_files(main: Path) -> List[Path]:
    main = Path(main)
    return sorted(main.parent.glob(f"{main.stem}.shard*of*{main.suffix}"))


def merge_shards(main: Path, log: Callable[[str], None] = print, lock_shards: bool = True) -> int:
    """Fold every shard file of ``main`` into it (appended; records already there are kept, duplicate keys
    skipped), then delete the shard files. Holds ``main``'s lock and (``lock_shards``) every shard's: a shard still
    being written is neither merged nor deleted (one-line error, exit 2). Returns the number of records added."""
    rf = ResultsFile(main)
    held = []
    try:
        with rf.lock():
            files = shard_files(main)
            if lock_shards:
                held = [ResultsFile(f).lock(wait=False).acquire() for f in files]
            recs = [r for f in files for r in ResultsFile(f).load()]
            added = rf.extend(recs)
            for f in files:
                f.unlink()
    except (LockHeld, ResultsFileError) as e:
        exit_error(str(e))
    finally:
        for lk in reversed(held):
            lk.release()
    log(f"merged {len(files)} shard files ({len(recs)} records, {added} new) into {main}")
    return added


def done_keys(main: Path, records: Optional[Sequence[Dict[str, Any]]] = None) -> set:
    """Keys of the runs already recorded: in the results file (``records``, if already loaded) and in every shard
    file beside it (a shard's or a torchrun rank's)."""
    done = {r.get("key") for r in (ResultsFile(main).load() if records is None else records)}
    for f in shard_files(main):
        done |= ResultsFile(f).completed_keys()
    return done


# --------------------------------------------------------------------------------- torchrun
@dataclass
class Dist:
    """The process group of a ``torchrun`` launch: this process's rank, the world size and the group's store
    (a shared counter hands out the work)."""

    rank: int
    world: int
    store: Any

    def next_index(self, name: str) -> int:
        """The next index of the counter ``name``, shared by every rank: each index goes to exactly one rank."""
        return int(self.store.add(name, 1)) - 1

    def barrier(self) -> None:
        import torch.distributed as td

        td.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, name: str, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on some rank (call on all ranks, then a barrier, then read)."""
        if flag:
            self.store.add(name, 1)
        self.barrier()
        return int(self.store.add(name, 0)) > 0


def distributed() -> Optional[Dist]:
    """The process group when launched by ``torchrun`` (WORLD_SIZE > 1), initialised once: NCCL with one GPU per
    rank (``LOCAL_RANK``) where CUDA is available, gloo on CPU; None for a plain one-process run."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as td
    from torch.distributed.distributed_c10d import _get_default_store

    if not td.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(td.get_rank(), td.get_world_size(), _get_default_store())


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch (they leave summaries and figures to rank 0)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0
