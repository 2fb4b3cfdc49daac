"""Sweeps under torchrun (gloo on CPU): ranks share the groups through the store's counter, the records do not
depend on the launch, a cut-short launch is completed by a rerun with another number of ranks, and two "nodes"
on localhost rendezvous like several hosts would."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic.results import ResultsFile

ROOT = Path(__file__).resolve().parent.parent
TINY = ["-m", "synthetic.s4_regression", "--preset", "tiny", "--device", "cpu", "--no-compile",
        "--methods", "Frozen,LoRA (Proj),SDT,Full"]
SKIP = {"wall_s", "group_wall_s", "date", "warmup_s", "config"}  # timing, and config.out (the folder)


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # torchrun's default; the one-process run too, so the arithmetic is the same
    env["PYTHONPATH"] = str(ROOT)
    return env


def _run(args, **kw):
    r = subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300,
                       **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _torchrun(n, args):
    return _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] + args)


def _records(folder: Path):
    runs = ResultsFile(folder / "s4_regression_tiny.jsonl").runs()
    keys = [r["key"] for r in runs]
    assert len(keys) == len(set(keys)), "duplicate run keys"
    return {r["key"]: {k: v for k, v in r.items() if k not in SKIP} for r in runs}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    _run(TINY + ["--out", str(out)])
    return _records(out)


def test_two_ranks_give_the_records_of_one_process(tmp_path, one_process):
    r = _torchrun(2, TINY + ["--out", str(tmp_path)])
    assert "rank 1/2" in r.stdout + r.stderr  # both ranks took work
    assert _records(tmp_path) == one_process  # same keys, bit-identical values
    assert not list(tmp_path.glob("*.shard*"))  # merged into the one results file
    sweeps = [x for x in ResultsFile(tmp_path / "s4_regression_tiny.jsonl").load() if x["kind"] == "sweep"]
    assert sorted(x["rank"] for x in sweeps) == [0, 1] and all(x["world_size"] == 2 for x in sweeps)


def test_a_cut_short_launch_is_completed_by_a_rerun_with_another_world_size(tmp_path, one_process):
    _torchrun(2, TINY + ["--out", str(tmp_path), "--time-budget", "1e-9"])  # each rank stops after one step
    partial = _records(tmp_path)
    assert 0 < len(partial) < len(one_process)
    _run(TINY + ["--out", str(tmp_path)])  # one process finishes it
    assert _records(tmp_path) == one_process


def test_two_nodes_on_localhost(tmp_path, one_process):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test-two-nodes"]
    procs = [subprocess.Popen([sys.executable] + common + ["--node-rank", str(i)] + TINY + ["--out", str(tmp_path)],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert _records(tmp_path) == one_process
