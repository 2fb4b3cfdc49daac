"""The GPU queue on the CPU: its plan parser on real dry-run output, its refusals, and a rehearsal that runs a
tiny deep-S4 job sharded over two processes, merges it, runs its lr-extension round over the shards, finds nothing
left and packs what changed."""

import os
import tarfile

import pytest

from synthetic import gpu_archive as ga, gpu_queue as gq

DRY_RUN = """dry run: mamba2 preset paper -> figures/mamba2_regression_paper.jsonl
| method | groups done / all | runs done / all | next lr-extension runs | est. time |
| --- | --- | --- | --- | --- |
| Frozen | 3 / 3 | 3 / 3 | after the grid | 0 s |
| SDT | 31 / 45 | 31 / 45 | after the grid | 1771 s |
52 base-grid runs to do, ? lr-extension runs next; estimated ~6229 s (from the wall time per run recorded)
"""


def test_parse_plan_reads_the_table_and_the_total():
    p = gq.parse_plan(DRY_RUN)
    assert (p.done, p.total, p.todo, p.extension, p.est_s) == (34, 48, 52, None, 6229.0)
    assert not p.finished
    done = gq.parse_plan("| A | 1 / 1 | 3 / 3 | 0 | 0 s |\n0 base-grid runs to do, 0 lr-extension runs next; "
                         "estimated ~0 s (...)")
    assert done.finished and (done.done, done.total) == (3, 3)
    assert "no plan" in gq.parse_plan("Traceback ...\nValueError: boom").error


def test_a_job_without_records_is_estimated_from_its_proxy_file(tmp_path):
    """A job with no records of its own (another frozen/target pair) takes its estimate and longest run from a results
    file of the same preset: each method's mean recorded cost x its runs to do; a method the proxy lacks, a missing
    file or an estimate of its own leave the plan as it was."""
    from synthetic.results import ResultsFile

    unknown = gq.parse_plan(DRY_RUN.replace("1771 s", "-").replace("estimated ~6229 s", "estimated unknown"))
    assert unknown.est_s is None and unknown.todo_by_method == {"Frozen": 0, "SDT": 14}
    proxy = tmp_path / "pair0.jsonl"
    run = {"kind": "run", "budget": {}, "lr": 0.01, "status": "ok", "best_mse": 1.0}
    ResultsFile(proxy).extend([{**run, "key": f"k{i}", "seed": i, "method": "SDT", "wall_s": w}
                               for i, w in enumerate((10.0, 30.0))])
    p = gq.proxy_estimate(unknown, proxy)
    assert p.est_s == 14 * 20.0 and p.longest_s == 30.0 and p.est_from.endswith("pair0.jsonl")
    assert gq.proxy_estimate(unknown, tmp_path / "missing.jsonl").est_s is None
    other = tmp_path / "other.jsonl"
    ResultsFile(other).extend([{**run, "key": "k", "seed": 0, "method": "LoRA", "wall_s": 5.0}])
    assert gq.proxy_estimate(unknown, other).est_s is None  # SDT has runs to do and no record there
    own = gq.parse_plan(DRY_RUN)
    assert gq.proxy_estimate(own, proxy) is own


def test_margin_is_twice_the_recorded_run_time_between_the_floor_and_the_cap():
    short = gq.Plan(done=280, total=280, todo=0, extension=13, est_s=56.0)  # deep S4's extension runs: ~4.3 s each
    assert short.margin(150) == gq.MIN_MARGIN  # 2 x 4.3 s is below the floor
    assert gq.Plan(10, 20, 10, None, 400.0).margin(150) == 80.0  # 2 x 40 s
    assert gq.parse_plan(DRY_RUN).margin(150) == 150  # Mamba-II: 2 x ~120 s, capped by --margin
    assert gq.Plan(0, 98, 98, None, None).margin(150) == 150  # no record yet: the cap
    assert gq.Plan(10, 20, 10, None, 400.0).margin(0) == 0  # --margin 0 keeps nothing back
    long = gq.Plan(165, 192, 27, None, 27 * 224.0)  # Mamba-II under 16-way load: 224 s per run
    assert long.margin(150) == 150 and long.needs_s(150) == 224 + 30  # one run must fit before the kill deadline
    assert short.needs_s(150) == gq.MIN_MARGIN + 30 and gq.Plan(0, 98, 98, None, None).needs_s(150) == 180


def _queue_with(plans, budget, tmp_path, monkeypatch):
    """Run the queue's main loop over ``plans`` (job name -> Plan) with nothing trained: the jobs it would run,
    and its log."""
    ran = []
    monkeypatch.setattr(gq, "plan", lambda job, env=None: plans[job.name])
    monkeypatch.setattr(gq, "importable", lambda m: True)
    monkeypatch.setattr(gq.Queue, "run", lambda self, job, p: ran.append(job.name))
    monkeypatch.setattr(gq, "save_state", lambda before: [])
    assert gq.main(["--budget", str(budget), "--jobs", ",".join(plans), "--no-restore", "--out", str(tmp_path)]) == 0
    return ran, (tmp_path / "gpu_queue.log").read_text()


def test_a_job_whose_margin_does_not_fit_is_skipped_and_a_shorter_one_runs(tmp_path, monkeypatch):
    plans = {"mamba2-paper": gq.parse_plan(DRY_RUN),  # margin 150 s: does not fit 100 s
             "s4-official": gq.Plan(280, 280, 0, 13, 56.0)}  # margin 20 s: fits
    ran, log = _queue_with(plans, 100, tmp_path, monkeypatch)
    assert ran == ["s4-official"]
    assert "job mamba2-paper: skipped, " in log and "margin 150s" in log


def test_a_phase_needs_a_start_up_and_the_longest_run_to_fit(tmp_path, monkeypatch):
    """2026-12-07: Mamba-II's 14 last runs (recorded mean 128 s, longest 158 s) were started with 253 s left and all
    14 shards were killed before one run ended (kernel compiles on a fresh machine). With the start-up and the
    longest run counted the job is skipped and the deep-S4 extension, whose runs fit, gets the time."""
    p = gq.parse_plan(DRY_RUN.replace("(from the wall time per run recorded)\n",
                                      "(from the wall time per run recorded)\nlongest recorded run of what is left: "
                                      "~158 s\n"))
    assert p.longest_s == 158.0 and p.run_s(150) == 158.0 and gq.parse_plan(DRY_RUN).longest_s is None
    assert gq.Plan(0, 98, 98, None, None).needs_s(150, 180) == 180 + 150 + 30  # no record: a run as long as --margin
    mamba2 = gq.select("mamba2-paper")[0]
    assert mamba2.startup_s == gq.MAMBA_COLD_START_S and gq.select("s4-official")[0].startup_s == gq.STARTUP_S
    assert p.needs_s(150) == 158 + 30 < 253  # without the start-up the job would still be started
    assert p.needs_s(150, mamba2.startup_s) == mamba2.startup_s + 158 + 30 > 253
    plans = {"mamba2-paper": gq.Plan(178, 192, 14, None, 14 * 128.0, longest_s=158.0),
             "s4-official": gq.Plan(280, 280, 0, 13, 56.0)}
    ran, log = _queue_with(plans, 253, tmp_path, monkeypatch)
    assert ran == ["s4-official"] and "start-up 180s + run 158s" in log


def test_a_phase_that_does_not_fit_is_not_started(tmp_path, monkeypatch):
    """The check holds for every sharded phase (an lr-extension round after the base grid too), not only the first."""
    spawned = []
    monkeypatch.setattr(gq.Queue, "_spawn", lambda self, job, tag, extra: spawned.append(tag))
    q = gq.Queue(budget=300, margin=150, logs=tmp_path, env=None)
    job = gq.select("mamba2-paper")[0]
    assert not q._sharded(job, "lr-extension round 2", gq.Plan(192, 192, 0, 6, 6 * 60.0, longest_s=140.0))
    assert spawned == []
    assert "no time for the sharded lr-extension round 2: " in (tmp_path / "gpu_queue.log").read_text()


def test_lock_files_are_not_packed(tmp_path):
    folder = tmp_path / "figures"
    folder.mkdir()
    before = ga.snapshot(folder, tmp_path)
    (folder / "x.jsonl").write_text("{}\n")
    (folder / "x.shard3of16.jsonl.lock").write_text("")
    assert ga.changed_since(before, folder, tmp_path) == ["figures/x.jsonl"]


def test_unknown_job_is_refused_naming_the_jobs():
    with pytest.raises(ValueError, match="--jobs: unknown job.*mamba2-paper"):
        gq.select("mamba2-paper,nope")
    assert [j.name for j in gq.select("hybrid-paper,mamba2-paper")] == ["hybrid-paper", "mamba2-paper"]  # as given
    assert [j.name for j in gq.select("s4-paper-all, hybrid-paper,s4-paper-all")] == ["s4-paper-all", "hybrid-paper"]
    assert [j.name for j in gq.select("")] == list(gq.JOB_NAMES)  # the queue's order


def test_bad_budget_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        gq.main(["--budget", "nan", "--dry-run"])
    assert e.value.code == 2 and "--budget" in capsys.readouterr().err


@pytest.mark.slow
def test_rehearsal_runs_shards_merges_and_packs(tmp_path, monkeypatch):
    out = tmp_path / "results"
    job = gq.Job("toy", "synthetic.s4_regression", ("--preset", "tiny", "--methods", "SDT", "--seeds", "0", "--out", str(out)),
                 shards=2)
    before = gq.plan(job)
    assert before.todo > 0 and not before.error
    logs = tmp_path / "logs"
    logs.mkdir()
    q = gq.Queue(budget=240, margin=0, logs=logs, env=None)
    snap = ga.snapshot(out, tmp_path)
    q.run(job, before)
    after = gq.plan(job)
    assert after.finished and after.done == after.total == before.total
    assert "lr-extension round 1: " in (logs / "gpu_queue.log").read_text()  # the round ran split over the shards
    archive = ga.pack(tmp_path / "out", snap, logs, folder=out, base=tmp_path)
    names = tarfile.open(archive).getnames()
    assert "results/s4_regression_tiny.jsonl" in names
    assert not any("shard" in n for n in names if n.startswith("results/"))  # merged and removed
    assert any(n.endswith("/gpu_queue.log") for n in names) and any(n.endswith("toy.shard1.log") for n in names)


def test_a_warm_machines_next_call_folds_in_what_the_last_one_wrote(tmp_path):
    """Call 1 wrote runs a, b into its copy of the tree; call 2 starts from the caller's tree (run a only, as if
    the caller had not unpacked call 1's archive): it gets b back from the state folder, a is not duplicated."""
    from synthetic.results import ResultsFile

    def rec(k):
        return {"key": k, "kind": "run", "method": "SDT", "budget": {}, "lr": 0.01, "seed": 0, "status": "ok",
                "best_mse": 1.0}

    tree1, tree2, state = tmp_path / "t1", tmp_path / "t2", tmp_path / "state"
    res1 = ResultsFile(tree1 / "figures" / "x.jsonl")
    res1.extend([rec("a")])
    before = ga.snapshot(tree1 / "figures", tree1)
    res1.extend([rec("b")])
    assert ga.save_state(before, tree1 / "figures", tree1, state) == ["figures/x.jsonl"]
    res2 = ResultsFile(tree2 / "figures" / "x.jsonl")
    res2.extend([rec("a")])
    msgs = []
    assert ga.restore_state(msgs.append, tree2, state) == 1
    assert [r["key"] for r in res2.load()] == ["a", "b"] and "restored 1 records" in msgs[0]
    assert ga.restore_state(msgs.append, tree2, state) == 0  # a second restore adds nothing
    assert ga.restore_state(msgs.append, tmp_path / "t3", tmp_path / "none") == 0  # no state: nothing


def test_a_phase_that_overruns_is_killed_and_the_queue_ends_within_its_budget(tmp_path, monkeypatch):
    """2026-12-07 17:04: the last phase of a call ran past --budget (kill at budget + 30 s, then the merge and a dry
    run) and the device's 600 s limit killed the call before it packed. Now the shards are killed FINISH_S before the
    end, the merge PACK_S before it, and what came back is checkpointed after each: a phase whose processes never
    stop still ends within the budget with two checkpoints (after the shards, after the merge)."""
    (tmp_path / "sleepy_job.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(120)\n")
    monkeypatch.setattr(gq, "FINISH_S", 3.0)
    monkeypatch.setattr(gq, "PACK_S", 1.5)
    monkeypatch.setattr(gq.Plan, "needs_s", lambda self, cap, startup=0.0: 0.0)
    logs = tmp_path / "logs"
    logs.mkdir()
    checkpoints = []
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    q = gq.Queue(budget=6.0, margin=0, logs=logs, env=env, checkpoint=lambda: checkpoints.append(q.left()))
    job = gq.Job("sleepy", "sleepy_job", (), shards=2)
    assert q._sharded(job, "base grid", gq.Plan(0, 2, 2, None, 2.0))
    assert q.left() > 0 and len(checkpoints) == 2
    assert checkpoints[0] == pytest.approx(gq.FINISH_S, abs=1.0)  # shards killed FINISH_S before the end
    assert checkpoints[1] == pytest.approx(gq.PACK_S, abs=1.0)  # the merge PACK_S before it
    log = (logs / "gpu_queue.log").read_text()
    assert log.count("killed at the deadline") == 3  # two shards and the merge
    assert "started" in (logs / "sleepy.shard1.log").read_text()


def test_pack_replaces_the_archive_whole(tmp_path):
    """The archive is written under a temporary name and renamed: a checkpoint's archive stays readable until the
    next one is complete, and no partial file is left beside it."""
    folder, logs = tmp_path / "figures", tmp_path / "logs"
    folder.mkdir()
    logs.mkdir()
    (logs / "gpu_queue.log").write_text("x\n")
    before = ga.snapshot(folder, tmp_path)
    (folder / "a.jsonl").write_text("{}\n")
    first = ga.pack(tmp_path / "out", before, logs, folder=folder, base=tmp_path, quiet=True)
    (folder / "b.jsonl").write_text("{}\n")
    second = ga.pack(tmp_path / "out", before, logs, folder=folder, base=tmp_path, quiet=True)
    assert first == second
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_queue.log", "gpu_queue.tgz"]
    assert {"figures/a.jsonl", "figures/b.jsonl"} <= set(tarfile.open(second).getnames())
