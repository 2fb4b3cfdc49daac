"""synthetic.runner: the one sweep loop, driven by a toy experiment whose 'training' is a formula.

The toy's best_mse is (log10(lr) - log10(best_lr))^2 + seed/100, so the lr grid must grow towards best_lr;
every property of the loop (resume by key, time budget, shards and merge, lr-extension rounds, padding,
the dry-run plan) is checked on it without any model.
"""

import math
from pathlib import Path

import pytest

from synthetic import dry_run, runner
from synthetic.results import LrPolicy, ResultsFile, best_of_grid, run_key, run_records


class Toy:
    name = "toy"
    preset = "test"

    def __init__(self, path: Path, best_lr: float = 1e-3, lrs=(1e-2, 4e-2), seeds=(0, 1), size=None, pad=False):
        self.results_path = Path(path)
        self.best_lr, self.base_lrs, self.seeds = best_lr, tuple(lrs), tuple(seeds)
        self.lr_policy = LrPolicy(4.0, 1e-6, 1.0)
        self.max_runs_per_call, self.pad_calls = size, pad
        self.calls = []

    def describe(self):
        return "toy"

    def groups(self):
        return [runner.Group(s, m, b, (None,) if m == "Frozen" else self.base_lrs, grows=m != "Frozen")
                for s in self.seeds for m, b in (("Frozen", {}), ("A", {"r": 1}), ("A", {"r": 2}))]

    def key(self, seed, method, budget, lr):
        return run_key({"method": method, "budget": budget, "lr": lr, "seed": seed, "best": self.best_lr})

    def train(self, runs):
        self.calls.append([(r.method, r.lr, r.source) for r in runs])
        out = []
        for r in runs:
            v = 3.0 if r.lr is None else (math.log10(r.lr) - math.log10(self.best_lr)) ** 2 + r.seed / 100
            out.append({"method": r.method, "budget": dict(r.budget), "lr": r.lr, "seed": r.seed, "status": "ok",
                        "best_mse": v, "trainable_pct": 1.0, "wall_s": 0.5})
        return out


def test_grid_grows_until_the_best_lr_is_interior_and_resumes(tmp_path):
    exp = Toy(tmp_path / "r.json")
    st = runner.run_sweep(exp, log=lambda s: None)
    runs = ResultsFile(exp.results_path).runs()
    assert len({r["key"] for r in runs}) == len(runs)  # no duplicate keys
    lrs = sorted({r["lr"] for r in runs if r["method"] == "A"})
    assert lrs[0] < exp.best_lr < lrs[-1] or math.isclose(lrs[1], exp.best_lr, rel_tol=0.5)
    assert st.extension_rounds >= 2 and st.extension_runs == len([r for r in runs if r["lr_source"] == "extension"])
    assert all(r["experiment"] == "toy" and r["preset"] == "test" and r["kind"] == "run" for r in runs)
    sweeps = [r for r in ResultsFile(exp.results_path).load() if r["kind"] == "sweep"]
    assert len(sweeps) == 1 and sweeps[0]["runs"] == len(runs)
    before = exp.results_path.read_bytes()
    again = Toy(exp.results_path)
    assert runner.run_sweep(again, log=lambda s: None).runs == 0 and again.calls == []
    assert exp.results_path.read_bytes() == before  # nothing appended on a resume with nothing to do
    p = dry_run.plan(again)
    assert p["base_runs_to_do"] == 0 and p["extension_runs_next"] == 0 and p["est_s"] == 0.0


def test_time_budget_stops_after_one_call_and_the_rerun_completes_it(tmp_path):
    cut = Toy(tmp_path / "r.json")
    st = runner.run_sweep(cut, time_budget=1e-9, log=lambda s: None)
    assert st.stopped and st.calls == 1
    full = Toy(tmp_path / "f.json")
    runner.run_sweep(full, log=lambda s: None)
    runner.run_sweep(Toy(tmp_path / "r.json"), log=lambda s: None)
    key = lambda p: {r["key"]: r["best_mse"] for r in ResultsFile(p).runs()}  # noqa: E731
    assert key(tmp_path / "r.json") == key(tmp_path / "f.json")


def test_time_budget_starts_no_call_that_would_end_past_it(tmp_path, monkeypatch):
    """Each call of the toy (one run group) takes 10 s on a fake clock: with a 25 s budget the third (20 s spent +
    10 s) would end past it, so two run, where "stop once past the budget" would have started a third (ending at
    30 s)."""
    clock = [0.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])

    class Slow(Toy):
        def train(self, runs):
            clock[0] += 10.0
            return super().train(runs)

    exp = Slow(tmp_path / "r.json", lrs=(1e-2,))
    st = runner.run_sweep(exp, time_budget=25.0, log=lambda s: None)
    assert st.stopped and st.calls == 2 and clock[0] == 20.0
    exp = Slow(tmp_path / "r.json", lrs=(1e-2,))
    assert runner.run_sweep(exp, time_budget=35.0, log=lambda s: None).calls == 3  # the resume goes on


def test_shards_are_disjoint_and_merge_to_the_one_process_result(tmp_path):
    one = Toy(tmp_path / "one" / "r.json")
    runner.run_sweep(one, log=lambda s: None)
    main = tmp_path / "two" / "r.json"
    for i in range(3):
        runner.run_sweep(Toy(main), shard=(i, 3), log=lambda s: None)
    files = runner.shard_files(main)
    keys = [set(r["key"] for r in ResultsFile(f).runs()) for f in files]
    assert len(files) == 3 and sum(map(len, keys)) == len(set().union(*keys))  # disjoint
    assert dry_run.plan(Toy(main))["base_runs_to_do"] == 0  # shard files count as done
    runner.merge_shards(main, log=lambda s: None)
    assert runner.shard_files(main) == []
    # one sweep record per shard, although the toy's shards end within the same second (their keys name the shard;
    # keyed by time alone, the merge kept one of them: 4 of 16 hybrid shards' records were lost so on 2026-12-06)
    sweeps = [r for r in ResultsFile(main).load() if r["kind"] == "sweep"]
    assert sorted(r["shard"] for r in sweeps) == ["0/3", "1/3", "2/3"]
    runner.run_sweep(Toy(main), log=lambda s: None)  # the lr-extension rounds, in one process
    a = {r["key"]: r["best_mse"] for r in ResultsFile(one.results_path).runs()}
    b = {r["key"]: r["best_mse"] for r in ResultsFile(main).runs()}
    assert a == b


def test_calls_are_split_and_padded(tmp_path):
    exp = Toy(tmp_path / "r.json", lrs=(1e-2, 4e-2, 1.6e-1), size=2, pad=True)
    runner.run_sweep(exp, log=lambda s: None)
    assert all(len(c) == 2 for c in exp.calls if c[0][0] != "Frozen")
    runs = ResultsFile(exp.results_path).runs()
    assert len({r["key"] for r in runs}) == len(runs)  # the padding runs are not recorded


def test_dry_run_counts_what_is_left(tmp_path):
    exp = Toy(tmp_path / "r.json")
    p = dry_run.plan(exp)
    assert p["base_runs_to_do"] == 2 * (1 + 2 + 2) and p["est_s"] is None and not exp.calls
    runner.run_sweep(exp, time_budget=1e-9, log=lambda s: None)
    p = dry_run.plan(Toy(exp.results_path))
    assert p["methods"]["Frozen"]["runs_done"] == 1 and p["base_runs_to_do"] == 9
    assert "| Frozen | 1 / 2 | 1 / 2 |" in dry_run.format_plan(p)
    walls = [r["wall_s"] for r in ResultsFile(exp.results_path).runs()]
    assert p["longest_s"] == max(walls)  # only Frozen has a record (and one run left); A has none: not counted
    assert f"longest recorded run of what is left: ~{max(walls):.0f} s" in dry_run.format_plan(p)
    p["longest_s"] = None
    assert "longest" not in dry_run.format_plan(p)


def test_records_of_another_configuration_are_not_current(tmp_path):
    runner.run_sweep(Toy(tmp_path / "r.json", best_lr=1e-3), log=lambda s: None)
    other = Toy(tmp_path / "r.json", best_lr=1e-1)
    assert runner.current_runs(other, ResultsFile(other.results_path).load()) == []
    runner.run_sweep(other, log=lambda s: None)
    recs = run_records(ResultsFile(other.results_path).load())
    assert len(runner.current_runs(other, recs)) > 0 and len(runner.current_runs(other, recs)) < len(recs)


def test_shards_deal_the_groups_left_not_the_whole_grid(tmp_path):
    """A relaunch after a partial base grid gives every shard a share of what is left (sizes differ by at most
    one), disjoint and covering exactly the open groups; dealt over the whole grid, shard 0 would get nothing here
    and the others twice as much (the Mamba-II tail of 2026-12-07: 14 runs, 0-2 per shard of 16)."""
    main = tmp_path / "r.json"
    seeds = tuple(range(6))  # 18 groups
    runner.run_sweep(Toy(main, seeds=seeds), shard=(0, 3), log=lambda s: None)  # shard 0/3's share, then merged
    runner.merge_shards(main, log=lambda s: None)
    exp = Toy(main, seeds=seeds)
    recs = ResultsFile(main).load()
    in_main = {r["key"] for r in recs}
    is_open = lambda g: not all(exp.key(g.seed, g.method, g.budget, lr) in in_main for lr in g.lrs)  # noqa: E731
    left = [g for g in exp.groups() if is_open(g)]
    assert len(left) == 12  # of 18: dealt over the whole grid again, shard 0/3 would get none of them
    for n in (3, 5):
        shares = [runner.shard_groups(exp, exp.groups(), (i, n), recs) for i in range(n)]
        sizes = [len(s) for s in shares]
        assert sum(sizes) == len(left) and max(sizes) - min(sizes) <= 1
        assert sorted(repr(g) for s in shares for g in s) == sorted(map(repr, left))  # disjoint, cover what is left
        assert [len(dry_run.plan(exp, (i, n))["methods"]) > 0 for i in range(n)] == [s != [] for s in shares]
    assert runner.shard_groups(exp, exp.groups(), None, recs) == exp.groups()  # no shard: the whole grid
    for i in range(3):
        runner.run_sweep(Toy(main, seeds=seeds), shard=(i, 3), log=lambda s: None)
    runner.merge_shards(main, log=lambda s: None)
    assert dry_run.plan(Toy(main, seeds=seeds))["base_runs_to_do"] == 0


def test_bad_shard_is_refused():
    for s in ("1/1", "x", "3/2", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            runner.parse_shard(s)
    assert runner.parse_shard("") is None and runner.parse_shard("1/3") == (1, 3)


def test_sharded_extension_rounds_equal_one_process(tmp_path):
    """After the merged base grid, each relaunch of the shards runs one lr-extension round split among them (the
    same plan in every shard); merge, relaunch, until nothing is left: the same runs and results as one process."""
    one = Toy(tmp_path / "one" / "r.json")
    runner.run_sweep(one, log=lambda s: None)
    main = tmp_path / "two" / "r.json"
    rounds = 0
    for _ in range(20):
        for i in range(3):
            runner.run_sweep(Toy(main), shard=(i, 3), log=lambda s: None)
        runner.merge_shards(main, log=lambda s: None)
        p = dry_run.plan(Toy(main))
        if p["base_runs_to_do"] == 0 and p["extension_runs_next"] == 0:
            break
        rounds += 1
    assert rounds >= 2  # the toy's grid grows over several rounds, each one split over the shards
    a = {r["key"]: r["best_mse"] for r in ResultsFile(one.results_path).runs()}
    b = {r["key"]: r["best_mse"] for r in ResultsFile(main).runs()}
    assert a == b
    shard_sweeps = [r for r in ResultsFile(main).load() if r["kind"] == "sweep" and r["extension_runs"]]
    assert len({r["shard"] for r in shard_sweeps}) > 1  # the extension runs were spread over shards
    assert runner.run_sweep(Toy(main), shard=(0, 3), log=lambda s: None).runs == 0  # nothing left: no work


def test_run_costs_charge_a_padded_call_to_the_runs_it_recorded():
    """A deep-S4 call's records share its wall time (group_wall_s): three packed runs cost a third each; a call padded
    to three for one compiled graph that recorded one run (records before 2026-12-07 say wall_s = a third) cost it
    all; records without group_wall_s cost their wall_s, and non-numbers are skipped."""
    runs = [dict(method="A", group_wall_s=30.0, wall_s=10.0) for _ in range(3)]
    runs += [dict(method="P", group_wall_s=40.0, wall_s=40.0 / 3), dict(method="M", wall_s=7.0),
             dict(method="M", wall_s=float("nan")), dict(method="M", wall_s=True)]
    assert dry_run.run_costs(runs) == [("A", 10.0, False)] * 3 + [("P", 40.0, True), ("M", 7.0, False)]


def test_dry_run_estimates_a_padded_run_at_its_call_time(tmp_path):
    """The plan's estimate and longest run read the call's time for a run that was trained alone in a padded call."""
    exp = Toy(tmp_path / "r.json", lrs=(1e-2,), seeds=(0,))
    ResultsFile(exp.results_path).extend([
        {"key": exp.key(0, "A", {"r": 1}, 1e-2), "kind": "run", "experiment": "toy", "preset": "test", "method": "A",
         "budget": {"r": 1}, "lr": 1e-2, "seed": 0, "status": "ok", "best_mse": 1.0, "wall_s": 40.0 / 3,
         "group_wall_s": 40.0, "runs_in_group": 3}])
    p = dry_run.plan(Toy(exp.results_path, lrs=(1e-2,), seeds=(0,)))
    assert p["methods"]["A"]["est_s"] == 40.0 and p["longest_s"] == 40.0  # A r=2: one run to do at 40 s


def test_extension_round_puts_the_seeds_of_a_lone_group_back_to_back(tmp_path):
    """In an lr-extension round the runs that share steps come seed-major (one seed's runs pack together); the runs
    that train alone (no pack key) come by (method, budget) with their seeds consecutive, so one compiled graph per
    (method, budget) serves all its seeds in one process."""

    def first_round(pack):
        class Packed(Toy):
            def pack_key(self, run):
                return pack(run)

        exp = Packed(tmp_path / f"{id(pack)}.json", seeds=(0, 1, 2))
        runner.run_sweep(exp, log=lambda s: None)
        base = [r for r in ResultsFile(exp.results_path).load() if r.get("lr_source") != "extension"]
        sw = runner._Sweep(exp, 0.0, None, lambda s: None, None)
        try:
            return [(seed, dict(b)["r"]) for seed, m, b, _ in sw.round_plan(base, exp.groups())]
        finally:
            sw.release()

    seed_major = [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert first_round(lambda run: run.seed) == seed_major  # every run packs with its seed's
    assert first_round(lambda run: None) == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]  # every run alone
    mixed = first_round(lambda run: run.seed if run.budget.get("r") == 1 else None)
    assert mixed == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]  # r=1 packed seed-major first, then r=2 by seed


def test_a_sharded_extension_round_keeps_a_compiled_lone_group_in_one_shard(tmp_path):
    """deal_round where the experiment compiles a graph per (method, budget) (pad_calls): the seeds of a lone group go
    to one shard (one compile serves them), units costliest first to the least-loaded shard; items that share steps
    are dealt one by one; every item exactly once, in the round's order within a shard. Dealt j % n, each seed of a
    lone group went to another shard."""

    class Lone(Toy):
        def pack_key(self, run):
            return run.seed if run.method == "P" else None

    exp = Lone(tmp_path / "r.json", seeds=(0, 1, 2), pad=True)
    todo = ([(s, "A", {"r": r}, [0.1]) for r in (1, 2, 3, 4) for s in (0, 1, 2)]
            + [(0, "A", {"r": 5}, [0.1, 0.4])] + [(s, "P", {"r": 1}, [0.1]) for s in (0, 1, 2)])
    shares = runner.deal_round(exp, todo, 4)
    assert sorted(t for sh in shares for t in map(repr, sh)) == sorted(map(repr, todo))  # each item once
    for sh in shares:
        assert sh == [t for t in todo if t in sh]  # the round's order
        for r in (1, 2, 3, 4, 5):
            lone = [t for t in todo if t[1] == "A" and t[2]["r"] == r]
            assert all(t in sh for t in lone) or not any(t in sh for t in lone)  # a lone group is not split
    assert sorted(len(sh) for sh in shares) == [4, 4, 4, 4]  # 16 items (calls): groups of 3, 3, 3, 3, 1, then 1 + 1 + 1
    assert all(sum(t[1] == "P" for t in sh) <= 1 for sh in shares)  # the packed items were spread
    assert runner.deal_round(exp, todo, 1) == [todo] and runner.deal_round(exp, [], 3) == [[], [], []]


def test_a_sharded_extension_round_is_balanced_by_recorded_call_cost(tmp_path):
    """Without compiles (pad_calls False) every item is a unit, weighed by its method's recorded call time: three costly
    items (the Theorem 1 ReLU round's 5,000-iteration runs, ~130 s where the others take ~12 s) go to three shards,
    where j % 4 put all three in one; a method with no record costs the mean of the others."""
    exp = Toy(tmp_path / "r.json", seeds=(0, 1, 2))
    todo = [(s, m, {"r": 1}, [0.1]) for m in ("A", "A", "A", "L") for s in (0, 1, 2)]  # L: the long arm
    recs = ([{"method": "A", "group_wall_s": 12.0, "wall_s": 4.0}] * 3 + [{"method": "L", "group_wall_s": 130.0}]
            + [{"method": "N", "wall_s": float("nan")}])
    shares = runner.deal_round(exp, todo, 4, recs)
    assert sorted(sum(t[1] == "L" for t in sh) for sh in shares) == [0, 1, 1, 1]
    assert sorted(len(sh) for sh in shares) == [1, 1, 1, 9]  # 130 s each; the nine 12 s calls, 108 s, on the fourth
    assert runner.call_costs(recs) == {"A": 12.0, "L": 130.0}  # a call's time, not the run's share; NaN skipped
    unknown = runner.deal_round(exp, [(0, "Z", {"r": 1}, [0.1])] + todo[:1], 2, recs)  # Z: costs (12 + 130) / 2
    assert [len(sh) for sh in unknown] == [1, 1]


def test_dry_run_estimates_an_extension_item_at_a_whole_call(tmp_path):
    """An lr-extension item (one seed's new lr of a group) is a call of its own: the plan charges it the method's
    recorded call time, not a run's share of a packed base-grid call (the Theorem 1 ReLU round of 2026-12-07: ~300 s
    estimated from packed calls, ~890 s of shard time)."""

    class Timed(Toy):
        def train(self, runs):
            return [dict(r, group_wall_s=30.0, wall_s=30.0 / len(runs)) for r in super().train(runs)]

    main = tmp_path / "r.json"
    runner.run_sweep(Timed(main), shard=(0, 1), log=lambda s: None)  # the base grid only, into the shard file
    runner.merge_shards(main, log=lambda s: None)
    p = dry_run.plan(Timed(main))
    assert p["base_runs_to_do"] == 0 and p["methods"]["A"]["extension_runs_next"] == 4  # 2 budgets x 2 seeds, 1 lr
    assert p["methods"]["A"]["est_s"] == 4 * 30.0 and p["longest_s"] == 30.0  # a run's share would say 4 x 15 s


def test_fill_ahead_puts_a_compiled_calls_padding_to_the_next_lrs(tmp_path):
    """fill_ahead: an item of a lone group growing past the lrs every seed has takes, in the slots its call would pad,
    the next lrs further out (up to lr_max / down to lr_min, none the seed has run); missing lrs inside the grid, a
    full call, or an experiment that does not pad are left alone."""
    exp = Toy(tmp_path / "r.json", seeds=(0, 1), size=3, pad=True)
    recs = [{"key": exp.key(s, "A", {"r": 1}, lr), "kind": "run", "method": "A", "budget": {"r": 1}, "lr": lr,
             "seed": s} for s in (0, 1) for lr in (1e-2, 4e-2)]
    recs.append({"key": exp.key(1, "A", {"r": 1}, 0.64), "kind": "run", "method": "A", "budget": {"r": 1}, "lr": 0.64,
                 "seed": 1})  # seed 1 ran 0.64 before (e.g. ahead in an earlier round)
    todo = [(0, "A", {"r": 1}, [0.16]), (1, "A", {"r": 1}, [0.16]), (0, "A", {"r": 1}, [2.5e-3]),
            (0, "A", {"r": 2}, [0.16]), (0, "A", {"r": 1}, [0.16, 0.64, 1.0])]
    out = runner.fill_ahead(exp, todo, recs)
    assert out[0] == (0, "A", {"r": 1}, [0.16, 0.64, 1.0])  # 0.64 x 4 clamps to lr_max; nothing past it
    assert out[1] == (1, "A", {"r": 1}, [0.16, 1.0])  # seed 1 has 0.64 already
    assert out[2] == (0, "A", {"r": 1}, [2.5e-3, 6.25e-4, 1.5625e-4])  # growing down
    assert out[3] == todo[3] and out[4] == todo[4]  # no records for r=2 (a base-grid lr missing); a full call
    inside = [(1, "A", {"r": 1}, [4e-2])]
    assert runner.fill_ahead(exp, inside, recs[:2]) == inside  # seed 1 lacks a grid lr: not an edge
    assert runner.fill_ahead(Toy(tmp_path / "r.json", seeds=(0, 1), size=3), todo, recs) == todo  # no padding


def test_a_padded_sweep_with_fill_ahead_reaches_the_same_best_lrs_in_fewer_rounds(tmp_path):
    """One process, a toy whose best lr is far below the base grid: with its calls padded to 3 the round's padding
    runs the next lrs down, so the grid reaches the same best lr per group in fewer rounds and fewer calls, and no
    extension call repeats a run as padding until the grid meets its bound."""

    def sweep(name, pad):
        exp = Toy(tmp_path / name, best_lr=1e-5, seeds=(0, 1), size=3, pad=pad)
        st = runner.run_sweep(exp, log=lambda s: None)
        runs = [dict(x, budget_label=str(x["budget"])) for x in ResultsFile(exp.results_path).runs()]
        rows = {(r["method"], r["budget_label"]): r["lr"] for r in best_of_grid(runs, lr_policy=exp.lr_policy)}
        return st, rows, exp.calls

    ahead, best_a, calls_a = sweep("a.json", True)
    plain, best_p, _ = sweep("p.json", False)
    assert best_a == best_p and math.isclose(best_a[("A", "{'r': 1}")], 1e-5, rel_tol=1.0)
    assert ahead.extension_rounds < plain.extension_rounds and ahead.calls < plain.calls
    ext = [c for c in calls_a if any(src == "extension" for _, _, src in c)]
    assert ext and all(len({lr for _, lr, _ in c}) == 3 for c in ext)  # three distinct lrs: no padding repeat
