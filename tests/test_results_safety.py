"""Results files under faults and concurrency: append-only JSON Lines,
a torn last line dropped and never an earlier record, one writer per file (a second is refused or waits), every
record validated on load (file and line), old .json lists still load, the committed files migrate round trip, and
bad results files are one line and exit 2 with nothing written."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from synthetic.atomic import FileLock, LockHeld, lock_path
from synthetic.results import ResultsFile, ResultsFileError, best_of_grid, run_key, run_records

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "figures"
COMMITTED = sorted(FIGURES.glob("*.jsonl"))


def _rec(i, **kw):
    return {"key": run_key({"i": i}), "kind": "run", "experiment": "toy", "preset": "test", "method": "A",
            "budget": {"r": 1}, "lr": 0.01, "seed": i, "status": "ok", "best_mse": 1.0 + i,
            "config": {"batch": 8, "iters": 5, "name": "a config long enough to be stored once"},
            "loss_curve": [[j, 0.5 ** j] for j in range(6)], "lr_source": "grid", "date": None, "model_seed": i,
            **kw}


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ format
def test_records_round_trip_and_the_config_is_stored_once(tmp_path):
    rf = ResultsFile(tmp_path / "r.jsonl")
    recs = [_rec(i) for i in range(3)]
    for r in recs:
        rf.append(r)
    assert rf.load() == recs
    assert json.dumps(rf.load(), sort_keys=True) == json.dumps(recs, sort_keys=True)  # 1 and 1.0 kept apart
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 1 + 3  # header, the shared config, three records
    assert all(json.loads(line) for line in lines) and sum("a config long" in line for line in lines) == 1


def test_torn_last_line_is_dropped_with_a_note_and_no_earlier_record_is_lost(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    rf = ResultsFile(path)
    rf.extend([_rec(0), _rec(1)])
    whole = path.read_bytes()
    line = ResultsFile.encode([_rec(2)], {l for l in rf.read().shared_ids}).encode()
    path.write_bytes(whole + line[: len(line) // 2])  # a kill in the middle of writing record 2
    assert ResultsFile(path).load() == [_rec(0), _rec(1)]
    err = capsys.readouterr().err
    assert "dropped a torn last line" in err and "r.jsonl, line 5" in err and "Traceback" not in err
    ResultsFile(path).append(_rec(3))  # the next writer removes the torn tail and appends after it
    assert ResultsFile(path).load() == [_rec(0), _rec(1), _rec(3)]
    assert path.read_bytes().startswith(whole) and "removed the torn last line" in capsys.readouterr().err


def test_a_broken_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultsFile(path).extend([_rec(0), _rec(1)])
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"  # record 0 corrupted, record 1 after it intact
    path.write_text("".join(lines))
    before = path.read_bytes()
    with pytest.raises(ResultsFileError, match=r"r\.jsonl, line 3: not valid JSON"):
        ResultsFile(path).load()
    with pytest.raises(ResultsFileError):
        ResultsFile(path).append(_rec(2))
    assert path.read_bytes() == before


@pytest.mark.parametrize("drop,needle", [("method", "without method"), ("seed", "without seed"),
                                         ("status", "without status"), ("key", "without a run key"),
                                         ("best_mse", "status 'ok' but best_mse is None")])
def test_record_validation_names_the_file_and_line(tmp_path, drop, needle):
    path = tmp_path / "r.jsonl"
    ResultsFile(path).extend([_rec(0), _rec(1)])
    lines = path.read_text().splitlines(keepends=True)
    bad = json.loads(lines[3])
    del bad[drop]
    lines[3] = json.dumps(bad) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(ResultsFileError) as e:
        ResultsFile(path).load()
    assert f"{path}, line 4" in str(e.value) and needle in str(e.value)
    old = tmp_path / "old.json"  # the same in an old-format list: its place in the list
    old.write_text(json.dumps([_rec(0), {k: v for k, v in _rec(1).items() if k != drop}]))
    with pytest.raises(ResultsFileError, match="record 2 of the list"):
        ResultsFile(old).load()


def test_old_json_list_still_loads_and_is_adopted_by_the_first_append(tmp_path, capsys):
    old = tmp_path / "s4_regression_tiny.json"
    recs = [_rec(0), _rec(1)]
    old.write_text(json.dumps(recs, indent=1))
    assert ResultsFile(old).load() == recs
    new = ResultsFile(tmp_path / "s4_regression_tiny.jsonl")
    assert new.load() == recs  # x.jsonl missing: its old x.json is read
    with pytest.raises(ResultsFileError, match="migrate it first"):
        ResultsFile(old).append(_rec(2))  # an old list is never appended to
    new.append(_rec(2))
    assert ResultsFile(new.path).load() == recs + [_rec(2)] and old.exists()
    assert "copied to" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- lock
_HOLD = textwrap.dedent("""
    import sys, time
    from synthetic.atomic import FileLock
    with FileLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _hold(path, seconds):
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder_or_waits(tmp_path):
    path = tmp_path / "r.jsonl"
    p = _hold(path, 3)
    try:
        with pytest.raises(LockHeld, match=rf"pid {p.pid} on .* since 20"):
            FileLock(path).acquire()
        t0 = time.monotonic()
        with FileLock(path, wait=True, log=lambda s: None):
            assert time.monotonic() - t0 > 1.0  # got it once the holder was done
    finally:
        p.wait()
    assert not lock_path(path).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "r.jsonl"
    lock_path(path).write_text(json.dumps({"pid": 999999999, "host": "somewhere", "start": "2026-01-01T00:00:00Z"}))
    said = []
    with FileLock(path, log=said.append):
        assert json.loads(lock_path(path).read_text())["pid"] == os.getpid()
    assert "took over the stale lock of pid 999999999 on somewhere" in said[0]


_SWEEP = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from synthetic import runner
    from synthetic.results import LrPolicy, run_key

    class Slow:
        name, preset, seeds, base_lrs = "toy", "test", (0, 1, 2), (1e-2, 4e-2)
        lr_policy, max_runs_per_call, pad_calls = LrPolicy(4.0, 1e-6, 1.0), None, False
        results_path = Path(sys.argv[1])
        def describe(self): return "slow toy"
        def groups(self): return [runner.Group(s, "A", {"r": r}, self.base_lrs) for s in self.seeds for r in (1, 2)]
        def key(self, seed, method, budget, lr): return run_key({"m": method, "b": budget, "lr": lr, "seed": seed})
        def train(self, runs):
            time.sleep(0.3)
            return [{"method": r.method, "budget": dict(r.budget), "lr": r.lr, "seed": r.seed, "status": "ok",
                     "best_mse": abs(r.lr - 1e-3) + r.seed, "trainable_pct": 1.0, "wall_s": 0.3} for r in runs]

    st = runner.run_sweep(Slow(), log=lambda s: print(s, flush=True))
    print("runs", st.runs, flush=True)
""")


@pytest.mark.parametrize("mode", ["fail", "wait"])
def test_two_processes_on_one_results_file_never_lose_or_duplicate_a_record(tmp_path, mode):
    path = tmp_path / "r.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SYNTHETIC_LOCK": mode}
    start = lambda: subprocess.Popen([sys.executable, "-c", _SWEEP, str(path)], cwd=ROOT, env=env,  # noqa: E731
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    a = start()
    for _ in range(200):  # until the first process holds the lock
        if lock_path(path).exists() and lock_path(path).read_text().strip():
            break
        time.sleep(0.05)
    b = start()
    out_b, err_b = b.communicate(timeout=120)
    out_a, err_a = a.communicate(timeout=120)
    assert a.returncode == 0, err_a
    keys = [r["key"] for r in ResultsFile(path).runs()]
    assert len(keys) == len(set(keys)) and len(keys) == int(out_a.split("runs ")[-1])  # none lost, none twice
    assert "Traceback" not in err_b
    if mode == "fail":
        assert b.returncode == 2 and len(err_b.strip().splitlines()) == 1, err_b
        assert f"pid {a.pid}" in err_b and "SYNTHETIC_LOCK=wait" in err_b
    else:
        assert b.returncode == 0 and "waiting for it" in err_b and "runs 0" in out_b


# -------------------------------------------------------------------------------------- migration
def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("migrate_results", ROOT / "scripts" / "migrate_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tables(recs):
    runs = run_records(recs)
    return json.dumps([best_of_grid(runs), best_of_grid(runs, group_keys=("arm", "budget_label"))], sort_keys=True)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_migration_round_trip_of_every_committed_file(tmp_path, path, capsys):
    """Each committed .jsonl written back as an old .json list migrates to the same bytes: the same records and
    best-of-grid tables; a rerun has nothing to do; a later old-format copy with one more record adds just it."""
    mig = _load_script()
    recs = ResultsFile(path).load()
    old = tmp_path / path.with_suffix(".json").name
    old.write_text(json.dumps(recs, indent=1))
    assert mig.main([str(old)]) == 0 and not old.exists()
    new = tmp_path / path.name
    assert new.read_bytes() == path.read_bytes()
    back = ResultsFile(new).load()
    assert json.dumps(back, sort_keys=True) == json.dumps(recs, sort_keys=True) and _tables(back) == _tables(recs)
    assert mig.main([str(new)]) == 0 and new.read_bytes() == path.read_bytes()  # idempotent: nothing to do
    extra = dict(recs[-1], key=recs[-1]["key"] + "#campaign")
    old.write_text(json.dumps(recs + [extra], indent=1))
    assert mig.main([str(old)]) == 0
    assert ResultsFile(new).load() == recs + [extra] and "1 new records appended" in capsys.readouterr().out


def test_migration_refuses_a_clash_and_writes_nothing(tmp_path, capsys):
    mig = _load_script()
    ResultsFile(tmp_path / "r.jsonl").extend([_rec(0)])
    (tmp_path / "r.json").write_text(json.dumps([dict(_rec(0), best_mse=9.0)]))
    before = _digest(tmp_path)
    assert mig.main([str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "the key of a different record" in err and len(err.strip().splitlines()) == 1
    assert _digest(tmp_path) == before


# ------------------------------------------------------------------------ bad results files: exit 2
def _copy(src: str, dst: Path, edit=None) -> None:
    text = (FIGURES / src).read_text()
    dst.write_text(edit(text) if edit else text)


def _drop_field(field, line_no=3):
    def edit(text):
        lines = text.splitlines(keepends=True)
        r = json.loads(lines[line_no - 1])
        del r[field]
        lines[line_no - 1] = json.dumps(r, separators=(",", ":")) + "\n"
        return "".join(lines)
    return edit


def _cut_middle(text):
    lines = text.splitlines(keepends=True)
    lines[5] = lines[5][:30] + "\n"
    return "".join(lines)


S4_TINY = ["synthetic.s4_regression", "--preset", "tiny", "--device", "cpu", "--no-compile"]
# (what is in the folder, command, text the one-line error must contain)
BAD = [
    ({"s4_regression_tiny.jsonl": ("mamba_regression_cpu.jsonl", None)}, S4_TINY + ["--dry-run"],
     "experiment 'mamba', preset 'cpu', not experiment 's4', preset 'tiny'"),
    ({"s4_regression_tiny.jsonl": ("mamba_regression_cpu.jsonl", None)}, S4_TINY + ["--iters", "2"],
     "belongs to another experiment"),
    ({"mamba_regression_cpu.jsonl": ("mamba_regression_cpu.jsonl", _drop_field("method"))},
     ["synthetic.mamba_regression", "--preset", "cpu", "--dry-run"], "line 3: run record without method"),
    ({"mamba_regression_cpu.jsonl": ("mamba_regression_cpu.jsonl", _drop_field("best_mse"))},
     ["synthetic.mamba_regression", "--preset", "cpu", "--plot-only"], "status 'ok' but best_mse is None"),
    ({"mamba2_regression_cpu.jsonl": ("mamba2_regression_cpu.jsonl", None)},
     ["synthetic.mamba2_regression", "--preset", "cpu", "--iters", "7", "--plot-only"],
     "no records of the configuration asked for"),
    ({"hybrid_regression_cpu.jsonl": ("hybrid_regression_cpu.jsonl", None)},
     ["synthetic.hybrid_regression", "--preset", "cpu", "--iters", "7", "--plot-only"],
     "no records of the configuration asked for"),
    ({"theorem1_training_cpu_linear.jsonl": ("theorem1_training_cpu_relu.jsonl", None)},
     ["synthetic.s4_theorem1", "--preset", "cpu", "--plot-only"], "activation 'relu', preset 'cpu' in the file of "
                                                                   "variant 'linear'"),
    ({"theorem1_training_cpu_linear.jsonl": ("theorem1_training_cpu_relu.jsonl", None)},
     ["synthetic.s4_theorem1", "--preset", "cpu", "--activation", "identity", "--dry-run"],
     "activation 'relu', not activation 'identity'"),
    ({"theorem1_training_cpu_relu.jsonl": ("theorem1_training_cpu_relu.jsonl", _cut_middle)},
     ["synthetic.s4_theorem1", "--preset", "cpu", "--activation", "relu", "--dry-run"], "line 6: not valid JSON"),
    ({"theorem1_training_cpu_relu.jsonl": ("theorem1_training_cpu_relu.jsonl", _cut_middle)},
     ["synthetic.s4_theorem1", "--preset", "cpu", "--plot-only"], "line 6: not valid JSON"),
    ({"s4_regression_tiny.shard0of2.jsonl": ("s4_regression_paper.jsonl", _cut_middle)},
     S4_TINY + ["--dry-run"], "s4_regression_tiny.shard0of2.jsonl, line 6: not valid JSON"),
]


def _main(argv):
    """The exit status of the entry point's ``main(argv)``, run in this process."""
    import importlib

    mod = importlib.import_module(argv[0])
    try:
        return mod.main(argv[1:])
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("files,argv,needle", BAD, ids=[f"{a[0].split('.')[-1]}:{' '.join(a[-2:])}:{i}"
                                                         for i, (_, a, _) in enumerate(BAD)])
def test_bad_results_files_exit_2_with_one_line_and_nothing_written(tmp_path, capsys, files, argv, needle):
    for name, (src, edit) in files.items():
        _copy(src, tmp_path / name, edit)
    before = _digest(tmp_path)
    code = _main(argv + ["--out", str(tmp_path)])
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if not line.startswith("note:") and "it/s" not in line]
    assert code == 2, cap.err
    assert "Traceback" not in cap.err and len(err) == 1 and needle in err[0], cap.err
    assert _digest(tmp_path) == before


def test_a_results_file_in_use_is_one_line_exit_2_naming_the_holder(tmp_path, capsys):
    p = _hold(tmp_path / "s4_regression_tiny.jsonl", 60)
    try:
        before = _digest(tmp_path)
        code = _main(S4_TINY + ["--iters", "2", "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and f"pid {p.pid}" in err
        assert _digest(tmp_path) == before
    finally:
        p.kill()
        p.wait()
