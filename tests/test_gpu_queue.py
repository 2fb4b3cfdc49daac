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
    # Mamba-I (prebuilt CUDA kernels, nothing compiles): pair 2's 8-run round (longest run 88 s recorded, margin 56 s)
    # was skipped with 288 s left under the Triton start-up; the next call ran it in 49 s (2026-12-07)
    pair2 = gq.select("mamba-model-seed2")[0]
    assert pair2.startup_s == gq.MAMBA_START_S < gq.MAMBA_COLD_START_S
    ext = gq.Plan(98, 98, 0, 8, 8 * 28.0, longest_s=88.0)
    assert ext.needs_s(150, pair2.startup_s) <= 288 < ext.needs_s(150, gq.MAMBA_COLD_START_S)
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
    job = gq.Job("toy", "synthetic.s4_regression",
                 ("--preset", "tiny", "--methods", "SDT", "--seeds", "0", "--out", str(out)), shards=2)
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


# ------------------------------------------------------------------------------------- landing (--land)
def _rec(k, mse=1.0):
    return {"key": k, "kind": "run", "method": "SDT", "budget": {}, "lr": 0.01, "seed": 0, "status": "ok",
            "best_mse": mse}


def _device_call(tmp_path, name, home, keys, extra=None):
    """What a device call returns: the archive :func:`ga.pack` writes from a copy of ``home`` to which the runs
    ``keys`` were added (plus ``extra``: {path: bytes} files it wrote)."""
    import shutil

    from synthetic.results import ResultsFile

    tree = tmp_path / name
    shutil.copytree(home, tree)
    logs = tree / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "gpu_queue.log").write_text(f"{name}\n")
    before = ga.snapshot(tree / "figures", tree)
    ResultsFile(tree / "figures" / "x.jsonl").extend([_rec(k) for k in keys])
    for rel, data in (extra or {}).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    return ga.pack(tmp_path / f"{name}_out", before, logs, folder=tree / "figures", base=tree, quiet=True)


def _home(tmp_path, keys):
    from synthetic.results import ResultsFile

    home = tmp_path / "home"
    ResultsFile(home / "figures" / "x.jsonl").extend([_rec(k) for k in keys])
    (home / "figures" / "x.png").write_bytes(b"old figure")
    return home


def test_land_takes_an_archive_that_extends_the_file_byte_for_byte(tmp_path):
    """The usual case: the device started from this commit; two calls landed in order give the last call's bytes,
    the figure is replaced and each call's log arrives under notes/gpu_logs/."""
    home = _home(tmp_path, ["a"])
    one = _device_call(tmp_path, "call1", home, ["b"], {"figures/x.png": b"new figure"})
    device1 = (tmp_path / "call1" / "figures" / "x.jsonl").read_bytes()
    two = _device_call(tmp_path, "call2", tmp_path / "call1", ["c"])
    logged = []
    done = ga.land([one, two], home, log=logged.append)
    assert (home / "figures" / "x.jsonl").read_bytes() == (tmp_path / "call2" / "figures" / "x.jsonl").read_bytes()
    assert device1 != (home / "figures" / "x.jsonl").read_bytes()
    assert (home / "figures" / "x.png").read_bytes() == b"new figure"
    first, second = done["figures/x.jsonl"]
    assert first.startswith("+1 records (1 -> 2") and second.startswith("+1 records (2 -> 3")
    assert [line for line in logged if line.startswith("  figures/x.jsonl")][-1].endswith("(archive 2)")
    assert len(list((home / "notes" / "gpu_logs").rglob("gpu_queue.log"))) >= 1


def test_land_never_drops_a_record_the_archive_lacks(tmp_path):
    """The file here gained runs after the device's copy was taken (another call landed first, or a local run):
    the archive's new runs are appended by key, every run here stays, a run both hold differently keeps the copy
    here."""
    from synthetic.results import ResultsFile

    home = _home(tmp_path, ["a"])
    arch = _device_call(tmp_path, "call", home, ["b"])
    here = ResultsFile(home / "figures" / "x.jsonl")
    here.extend([_rec("local", 7.0)])
    # the device's copy of run "a" differs (e.g. rerun there): the one here is kept
    dev = ResultsFile(tmp_path / "call" / "figures" / "x.jsonl")
    dev.write_all([_rec("a", 3.0), *[r for r in dev.load() if r["key"] != "a"]])
    ga.pack(tmp_path / "call_out", {}, tmp_path / "call" / "logs", folder=tmp_path / "call" / "figures",
            base=tmp_path / "call", quiet=True)
    done = ga.land([arch], home, log=lambda s: None)
    recs = {r["key"]: r["best_mse"] for r in here.load()}
    assert recs == {"a": 1.0, "local": 7.0, "b": 1.0}
    [what] = done["figures/x.jsonl"]
    assert "+1 records merged by run key" in what and "1 records here are not in it" in what and \
        "1 it holds differently" in what


@pytest.mark.parametrize("member, data, rule", [
    ("README.md", b"x", "outside figures/ and notes/gpu_logs/"),
    ("figures/../README.md", b"x", "outside"),
    ("/etc/x", b"x", "outside"),
    ("figures/x.jsonl.lock", b"", "lock file"),
    ("figures/y.jsonl", b'{"format": "synthetic-results", "version": 1}\n{"key": "k", "kind": "run"}\n{}\n',
     "figures/y.jsonl, line 2: run record without method"),
])
def test_land_refuses_a_bad_archive_before_writing_anything(tmp_path, member, data, rule):
    import io

    home = _home(tmp_path, ["a"])
    arch = _device_call(tmp_path, "call", home, ["b"], {"figures/x.png": b"new figure"})
    with tarfile.open(arch, "r:gz") as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(arch, "w:gz") as t:
        for m, d in members:
            t.addfile(m, io.BytesIO(d))
        info = tarfile.TarInfo(member)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    before = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
    with pytest.raises(ga.LandError, match=rule.replace("(", r"\(").replace(".", r"\.")):
        ga.land([arch], home, log=lambda s: None)
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == before


def test_land_refuses_links_and_non_archives(tmp_path):
    arch = tmp_path / "a.tgz"
    with tarfile.open(arch, "w:gz") as t:
        info = tarfile.TarInfo("figures/x.jsonl")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(ga.LandError, match="not a regular file"):
        ga.land([arch], tmp_path, log=lambda s: None)
    (tmp_path / "b.tgz").write_text("not gzip")
    with pytest.raises(ga.LandError, match="not a readable .tgz archive"):
        ga.land([tmp_path / "b.tgz"], tmp_path, log=lambda s: None)
    with pytest.raises(ga.LandError, match="no such file"):
        ga.land([tmp_path / "none.tgz"], tmp_path, log=lambda s: None)
    with pytest.raises(ga.LandError, match="a folder, not an archive"):
        ga.land([tmp_path], tmp_path, log=lambda s: None)


def test_land_dry_run_writes_nothing_and_says_what_it_would_do(tmp_path):
    home = _home(tmp_path, ["a"])
    arch = _device_call(tmp_path, "call", home, ["b", "c"], {"figures/x.png": b"new figure"})
    before = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
    done = ga.land([arch], home, log=lambda s: None, dry_run=True)
    assert done["figures/x.jsonl"][0].startswith("+2 records") and done["figures/x.png"] == ["replaced"]
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == before


def test_land_merges_shard_files_an_archive_brings(tmp_path):
    from synthetic.results import ResultsFile

    home = _home(tmp_path, ["a"])
    shard = ResultsFile(tmp_path / "s" / "figures" / "x.shard1of2.jsonl")
    shard.extend([_rec("s1")])
    arch = _device_call(tmp_path, "call", home, ["b"],
                        {"figures/x.shard1of2.jsonl": shard.path.read_bytes()})
    ga.land([arch], home, log=lambda s: None)
    assert [r["key"] for r in ResultsFile(home / "figures" / "x.jsonl").load()] == ["a", "b", "s1"]
    assert not (home / "figures" / "x.shard1of2.jsonl").exists()


def test_land_option_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "b.tgz").write_text("not gzip")
    with pytest.raises(SystemExit) as e:
        gq.main(["--land", str(tmp_path / "b.tgz")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --land:") and "\n" not in err


def test_next_calls_put_the_causal_conv1d_jobs_in_a_second_call_shortest_first():
    """One wheel travels per call: jobs that need causal-conv1d go in call 2 (after call 1 installed mamba-ssm);
    within a call the shortest estimate first; finished jobs and jobs whose plan failed are left out."""
    conv = ("mamba_ssm", "causal_conv1d")
    rows = [(gq.Job("s4", "m", (), shards=4), gq.Plan(0, 10, 10, 0, 400.0)),        # ~100 s
            (gq.Job("thm", "m", ()), gq.Plan(0, 10, 10, None, 50.0)),               # ~50 s, extension later
            (gq.Job("done", "m", ()), gq.Plan(10, 10, 0, 0, None)),
            (gq.Job("broken", "m", ()), gq.Plan(0, 0, 0, 0, None, error="no plan")),
            (gq.Job("mamba", "m", (), shards=2, needs=conv), gq.Plan(0, 10, 10, 0, None)),  # no estimate: last
            (gq.Job("hybrid", "m", (), needs=conv), gq.Plan(0, 10, 10, 0, 30.0))]
    lines = gq.next_calls(rows)
    assert len(lines) == 3
    assert "mamba-ssm wheel (.whl); the second call needs it installed: --jobs thm,s4 (~150 s of runs + the lr " \
           "extensions" in lines[1]
    assert "causal-conv1d wheel (.whl2)" in lines[2] and "--jobs hybrid,mamba (~30 s of runs)" in lines[2]
    only_conv = gq.next_calls(rows[2:])
    assert "--budget 60 and no --jobs: it installs mamba-ssm" in only_conv[1] and "--jobs hybrid,mamba" in only_conv[2]
    assert "carry no wheel: --jobs thm,s4" in gq.next_calls(rows[:4])[1]
    assert gq.next_calls(rows[2:4]) == []


def test_a_shard_file_merged_since_is_not_kept_for_the_next_call(tmp_path):
    """2026-12-07: a checkpoint kept a phase's shard files; the merge then folded them in and deleted them, but the
    kept copies came back in the next call (records already in the results file, 32 files in its archive)."""
    from synthetic.results import ResultsFile

    tree, state = tmp_path / "t", tmp_path / "state"
    main = ResultsFile(tree / "figures" / "x.jsonl")
    main.extend([_rec("a")])
    before = ga.snapshot(tree / "figures", tree)
    shard = ResultsFile(tree / "figures" / "x.shard0of2.jsonl")
    shard.extend([_rec("b")])
    assert ga.save_state(before, tree / "figures", tree, state) == ["figures/x.shard0of2.jsonl"]
    main.extend(shard.load())  # the merge
    shard.path.unlink()
    assert ga.save_state(before, tree / "figures", tree, state) == ["figures/x.jsonl"]
    assert sorted(str(p.relative_to(state)) for p in state.rglob("*.jsonl")) == ["figures/x.jsonl"]
    tree2 = tmp_path / "t2"
    assert ga.restore_state(lambda s: None, tree2, state) == 2
    assert sorted(p.name for p in (tree2 / "figures").iterdir()) == ["x.jsonl"]


def test_extension_rounds_go_on_while_they_add_runs_though_as_many_are_planned_next(tmp_path, monkeypatch):
    """A round that grows the grid of the same groups one lr further plans as many runs next; the job stops only
    when a round leaves its results files as they were (2026-12-07: stopped after 1 round with 439 s left)."""
    job = gq.Job("thm", "m", (), shards=4)
    rounds, states = [], iter([{"f": 1}, {"f": 2}, {"f": 2}, {"f": 3}, {"f": 3}, {"f": 3}])
    monkeypatch.setattr(gq, "results_snapshot", lambda: next(states))
    monkeypatch.setattr(gq.Queue, "_sharded", lambda self, job, tag, p: rounds.append(tag) or True)
    monkeypatch.setattr(gq.Queue, "_replan", lambda self, job: gq.Plan(36, 36, 0, 6, 60.0))
    q = gq.Queue(budget=600, margin=20, logs=tmp_path, env=None)
    q.run(job, gq.Plan(36, 36, 0, 6, 60.0))
    assert rounds == ["lr-extension round 1", "lr-extension round 2", "lr-extension round 3"]
    log = (tmp_path / "gpu_queue.log").read_text()
    assert log.count("the round added nothing") == 1 and "lr-extension round 2: 6 runs planned, 6 next" in log


def test_land_refuses_the_options_of_a_device_call(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gq.main(["--land", str(tmp_path / "a.tgz"), "--budget", "100", "--jobs", "s4-official"])
    assert e.value.code == 2
    assert "--land: brings archives home and runs nothing; --budget, --jobs belong to a device call" in \
        capsys.readouterr().err


def test_shard_main_inverts_shard_path():
    from pathlib import Path

    from synthetic.parallel import shard_main, shard_path

    main = Path("figures/mamba_model_seed2/mamba_regression_paper.jsonl")
    assert shard_main(shard_path(main, 3, 12)) == main
    assert shard_main("figures/x.shard0of4.jsonl") == Path("figures/x.jsonl")
    assert shard_main(main) is None and shard_main("figures/x.shardy.jsonl") is None
