"""Bad input never costs data or a traceback: each case below exits 2 with a one-line error naming the option or
the file, before anything runs, and leaves the results file byte-identical."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthetic import bench, s4_regression
from synthetic.hybrid.model import AttentionRef
from synthetic.mamba2.ref import Mamba2Ref, ssd_scan_chunked, ssd_scan_recurrent
from synthetic.hybrid import experiment as hybrid_experiment
from synthetic.mamba import experiment as mamba_experiment
from synthetic.mamba2 import experiment as mamba2_experiment
from synthetic.s4 import fig2, theorem1_study
from synthetic.results import ResultsFile

ROOT = Path(__file__).resolve().parent.parent

S4 = ["--preset", "tiny", "--device", "cpu", "--no-compile"]
OFF = ["--preset", "official-tiny", "--device", "cpu", "--no-compile"]
MAMBA = ["--preset", "tiny", "--backend", "reference"]

# (entry point, argv, text the error must contain)
CASES = [
    ("s4", S4 + ["--seeds", "99999999999999999999999"], "--seeds"),
    ("s4", S4 + ["--seeds", "0,0"], "--seeds"),
    ("s4", S4 + ["--lrs", "0.01,0.01"], "--lrs"),
    ("s4", S4 + ["--weight-decay", "nan"], "--weight-decay"),
    ("s4", S4 + ["--weight-decay", "-1"], "--weight-decay"),
    ("s4", S4 + ["--warmup-lr", "nan"], "--warmup-lr"),
    ("s4", S4 + ["--magnitude-floor", "-1"], "--magnitude-floor"),
    ("s4", S4 + ["--time-budget", "nan"], "--time-budget"),
    ("s4", S4 + ["--batch", "100000000"], "--batch"),
    ("s4", S4 + ["--shard", "3/2"], "--shard"),
    ("s4", S4 + ["--out", "{file}"], "--out"),
    ("s4", S4 + ["--out", "{file}/sub"], "--out"),
    ("s4", S4 + ["--out", "{corrupt}"], "line 1: not valid JSON"),
    ("official", OFF + ["--seeds", "-1"], "--seeds"),
    ("official", OFF + ["--weight-decay", "nan"], "--weight-decay"),
    ("official", OFF + ["--out", "{file}"], "--out"),
    ("official", OFF + ["--out", "{corrupt}"], "not valid JSON"),
    ("official", OFF + ["--plot-only", "--out", "{empty}"], "--plot-only"),
    ("mamba", MAMBA + ["--lora-ranks", "1000"], "--lora-ranks"),
    ("mamba", MAMBA + ["--sdt", "1000"], "--sdt"),
    ("mamba", MAMBA + ["--sdt-lora", "abc"], "--sdt-lora"),
    ("mamba", MAMBA + ["--seeds", "99999999999999999999999"], "--seeds"),
    ("mamba", MAMBA + ["--lrs", "0.01,0.01"], "--lrs"),
    ("mamba", MAMBA + ["--out", "{file}"], "--out"),
    ("mamba", MAMBA + ["--out", "{corrupt}"], "not valid JSON"),
    ("mamba", MAMBA + ["--plot-only", "--out", "{empty}"], "--plot-only"),
    ("fig2", ["--preset", "{empty}/none.json", "--out", "{empty}/fig"], "--preset"),
    ("fig2", ["--preset", str(ROOT / "figures" / "s4_regression_paper.jsonl"), "--out", "{empty}/fig"],
     "no official-preset runs"),
    ("fig2", ["--preset", "{corrupt}/s4_regression_official.jsonl", "--out", "{empty}/fig"], "not valid JSON"),
    ("fig2", ["--out", "{file}/x"], "--out: "),
    ("fig2", ["--out", "{empty}"], "--out: "),
    # memory estimates before any allocation, and lists that would train every run twice
    ("mamba", MAMBA + ["--seq-len", "2000000"], "--batch or --seq-len: a training step needs about"),
    ("mamba2", MAMBA + ["--seq-len", "2000000"], "--batch or --seq-len: a training step needs about"),
    ("hybrid", MAMBA + ["--seq-len", "2000000"], "--batch or --seq-len: a training step needs about"),
    ("theorem1", ["--preset", "tiny", "--no-compile", "--seq-len", "2000000"], "a training step needs about"),
    ("theorem1", ["--preset", "tiny", "--no-compile", "--arms", "Oracle masks,Oracle masks"], "--arms: Oracle masks"),
    ("theorem1", ["--preset", "tiny", "--no-compile", "--noise-levels", "0,0.1,0"], "--noise-levels: 0.0 given twice"),
]
CORRUPT = {"s4": "s4_regression_tiny.jsonl", "official": "s4_regression_official-tiny.jsonl",
           "mamba": "mamba_regression_tiny.jsonl", "fig2": "s4_regression_official.jsonl",
           "mamba2": "mamba2_regression_tiny.jsonl", "hybrid": "hybrid_regression_tiny.jsonl",
           "theorem1": "theorem1_training_tiny_linear.jsonl"}


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _refused(main, argv, folder: Path, capsys, needle: str):
    """``main(argv)`` must exit 2 with ``needle`` in its error and no traceback, and leave ``folder`` byte-identical
    (nothing written, no file touched). Returns what it printed (out, err)."""
    before = _digest(folder)
    code = _exit_code(main, argv)
    printed = capsys.readouterr()
    assert code == 2, printed.err
    assert needle in printed.err and "Traceback" not in printed.err, printed.err
    assert _digest(folder) == before
    return printed


@pytest.mark.parametrize("entry,argv,needle", CASES, ids=[f"{e}:{' '.join(a[-2:])}" for e, a, _ in CASES])
def test_bad_input_exits_2_naming_the_rule_and_touches_nothing(tmp_path, capsys, entry, argv, needle):
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / CORRUPT[entry]).write_text("{not json")
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(file=afile, corrupt=corrupt, empty=empty) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    main = {"mamba": mamba_experiment.main, "mamba2": mamba2_experiment.main, "hybrid": hybrid_experiment.main,
            "theorem1": theorem1_study.main, "fig2": fig2.main}.get(entry, s4_regression.main)
    _refused(main, argv, tmp_path, capsys, needle)  # nothing written, the corrupted file untouched
    assert not (tmp_path / "out").exists()


SCALING_TABLE = ROOT / "figures" / "bench_s4_scaling_cpu.json"
TINY_SCALING = ["--scaling", "--device", "cpu", "--no-compile", "--scaling-N", "8", "--scaling-D", "4",
                "--scaling-forms", "toeplitz", "--iters", "1", "--warm", "1", "--rounds", "1"]
# python -m synthetic.bench [--scaling]: (argv, text the error must contain); run in a folder holding a copy of the
# committed calibration table at the default --out (figures/bench_s4_scaling_cpu.json), another experiment's results
# file ({other}), a corrupt file ({corrupt}) and an empty folder ({empty})
BENCH_CASES = [
    (TINY_SCALING + ["--out", "{other}"], "--out: {other} holds results of another run (an experiment's JSON Lines results"),
    (TINY_SCALING + ["--out", "{corrupt}"], "--out: {corrupt} exists and is not valid JSON"),
    (TINY_SCALING + ["--keep-previous", "--out", "{corrupt}"], "not valid JSON"),
    (TINY_SCALING, "--out: figures/bench_s4_scaling_cpu.json is a scaling table of another setting (state_convention"),
    (TINY_SCALING + ["--out", "{empty}"], "--out: {empty} is a folder"),
    (TINY_SCALING + ["--out", "{other}/x.json"], "--out: "),
    (TINY_SCALING + ["--scaling-max-gb", "nan"], "--scaling-max-gb: must be a positive finite number"),
    (TINY_SCALING + ["--scaling-max-gb", "inf"], "--scaling-max-gb"),
    (TINY_SCALING + ["--scaling-max-gb", "0"], "--scaling-max-gb"),
    (TINY_SCALING + ["--scaling-max-gb", "-1"], "--scaling-max-gb"),
    (TINY_SCALING + ["--scaling-tokens", "-5"], "--scaling-tokens"),
    (TINY_SCALING + ["--threads", "-1"], "--threads: must be >= 0"),
    (["--threads", "-1"], "--threads: must be >= 0"),
    (["--preset", "tiny", "--device", "cpu", "--out", "{empty}"], "--out: {empty} is a folder"),
    (["--preset", "tiny", "--device", "cpu", "--out", "{other}"], "--out: {other} holds results of another run"),
    (["--preset", "tiny", "--device", "cpu", "--keep-previous", "--out", "{corrupt}"], "not valid JSON"),
    (["--preset", "tiny", "--device", "cpu", "--keep-previous", "--out", "{other}"], "another kind of file"),
    (["--preset", "tiny", "--device", "cpu", "--check-iters", "-1"], "--check-iters: must be >= 0"),
    (["--preset", "tiny", "--device", "cpu", "--runs", "100000000"], "--runs or --batch: a training step needs about"),
    (["--preset", "tiny", "--device", "tpu"], "python -m synthetic.bench: error: --device: must be 'auto', 'cpu'"),
    (["--preset", "tiny", "--device", "cpu", "--proj-split", "-1"], "python -m synthetic.bench: error: --proj-split"),
]


@pytest.mark.parametrize("argv,needle", BENCH_CASES, ids=[" ".join(a[-2:]) + ("" if "--scaling" in a else " (plain)")
                                                          for a, _ in BENCH_CASES])
def test_bench_bad_input_exits_2_before_timing_and_touches_nothing(tmp_path, monkeypatch, capsys, argv, needle):
    """Bad input to a benchmark exits 2 before any timing and leaves --out as it was: another experiment's results,
    a corrupt file (even with --keep-previous), the committed calibration table."""
    (tmp_path / "figures").mkdir()
    shutil.copy(SCALING_TABLE, tmp_path / "figures" / SCALING_TABLE.name)
    paths = {"other": tmp_path / "s4_regression_paper.jsonl", "corrupt": tmp_path / "corrupt.json",
             "empty": tmp_path / "empty"}
    shutil.copy(ROOT / "figures" / "s4_regression_paper.jsonl", paths["other"])
    paths["corrupt"].write_text("{not json")
    paths["empty"].mkdir()
    monkeypatch.chdir(tmp_path)
    argv = [a.format(**paths) for a in argv]
    out = _refused(bench.main, argv, tmp_path, capsys, needle.format(**paths))
    assert "ms/iter" not in out.out  # refused before anything was timed


# python -m synthetic.gpu_queue: (argv, text the error must contain); {file} is an existing file
QUEUE_CASES = [
    (["--budget", "inf"], "--budget: must be a positive finite number"),
    (["--margin", "inf"], "--margin: must be a finite number"),
    (["--jobs", "nope"], "--jobs: unknown job(s) nope; the jobs are mamba2-paper"),
    (["--dry-run", "--jobs", "nope"], "--jobs: unknown job(s) nope"),
    (["--jobs", ","], "--jobs: ',' names no job"),
    (["--tests", "tests/test_nosuch.py"], "--tests: no such test module tests/test_nosuch.py"),
    (["--tests", "tests/test_cli.py,,tests/nosuch.py"], "--tests: no such test module tests/nosuch.py"),
    (["--tests", ","], "--tests: ',' names no test module"),
    (["--out", "{file}"], "--out: '{file}' is a file, not a folder"),
    (["--out", "{file}/sub"], "--out: '{file}' is a file, not a folder"),
]


@pytest.mark.parametrize("argv,needle", QUEUE_CASES, ids=[" ".join(a) for a, _ in QUEUE_CASES])
def test_gpu_queue_bad_input_exits_2_before_any_job(tmp_path, monkeypatch, capsys, argv, needle):
    """The queue refuses bad options before it runs anything (an --out that is a file used to fail only when
    packing, after the whole budget was spent)."""
    from synthetic import gpu_queue

    def started(*a, **k):
        raise AssertionError("the queue started work")

    monkeypatch.setattr(gpu_queue, "Queue", started)
    monkeypatch.setattr(gpu_queue, "show_queue", started)
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    argv = [a.format(file=afile) for a in argv]
    _refused(gpu_queue.main, argv, tmp_path, capsys, needle.format(file=afile))


# python -m ssm_peft.bench --preset tiny: (argv, text the error must contain); {corrupt}: text that is not JSON,
# {jsonl}: an experiment's JSON Lines results, {other}: JSON that is not a report of this benchmark
SSM_BENCH_CASES = [
    (["--summary", "--out", "{corrupt}"], "--out: {corrupt} is not valid JSON"),
    (["--summary", "--out", "{jsonl}"], "--out: {jsonl} is not valid JSON"),
    (["--summary", "--out", "{other}"], "--out: {other} is not a report of python -m ssm_peft.bench"),
    (["--seed", "99999999999999999999999"], "--seed: must be an integer in [0, 2**63 - 1]"),
]


@pytest.mark.parametrize("argv,needle", SSM_BENCH_CASES, ids=[" ".join(a) for a, _ in SSM_BENCH_CASES])
def test_ssm_peft_bench_bad_input_exits_2_and_touches_nothing(tmp_path, capsys, argv, needle):
    from ssm_peft import bench as ssm_bench

    paths = {"corrupt": tmp_path / "corrupt.json", "jsonl": tmp_path / "runs.jsonl", "other": tmp_path / "other.json"}
    paths["corrupt"].write_text("{not json")
    paths["jsonl"].write_text('{"key": 1}\n{"key": 2}\n')
    paths["other"].write_text(json.dumps({"device": "cpu", "results": []}))
    argv = ["--preset", "tiny"] + [a.format(**paths) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.json")]
    _refused(ssm_bench.main, argv, tmp_path, capsys, needle.format(**paths))


# python -m ssm_peft.finetune: (argv, text the error must contain); {file}: an existing file, {empty}: an empty
# folder, {none}: a path that does not exist, {blank}: an empty text file, {binary}: a file that is not UTF-8
FINETUNE_CASES = [
    (["--model", "{none}"], "--model: {none} is not a folder holding a transformers model"),
    (["--model", "{empty}"], "--model: {empty} is not a folder holding a transformers model"),
    (["--text", "{none}"], "--text: {none} is not a file"),
    (["--text", "{empty}"], "--text: {empty} is not a file"),
    (["--text", "{blank}"], "--text: 0 tokens, need more than --seq-len + 1"),
    (["--text", "{binary}"], "--text: {binary} is not UTF-8 text"),
    (["--steps", "0"], "--steps: must be > 0"),
    (["--batch-size", "0"], "--batch-size: must be > 0"),
    (["--seq-len", "0"], "--seq-len: must be > 0"),
    (["--lr", "nan"], "--lr: must be finite"),
    (["--weight-decay", "nan"], "--weight-decay: must be finite"),
    (["--seed", "99999999999999999999999"], "--seed: must be an integer in [0, 2**63 - 1]"),
    (["--out", "{file}"], "--out: '{file}' is a file, not a folder"),
    (["--out", "{file}/sub"], "--out: '{file}' is a file, not a folder"),
]


@pytest.mark.parametrize("argv,needle", FINETUNE_CASES, ids=[" ".join(a) for a, _ in FINETUNE_CASES])
def test_finetune_bad_input_exits_2_before_anything_is_written(tmp_path, capsys, argv, needle):
    """Bad options of the fine-tuning example exit 2 naming the option before a model is built or trained and
    before <out> (and its base/ model) is written."""
    from ssm_peft import finetune

    paths = {"file": tmp_path / "a_file", "empty": tmp_path / "empty", "none": tmp_path / "none",
             "blank": tmp_path / "blank.txt", "binary": tmp_path / "binary.txt"}
    paths["file"].write_text("not a folder")
    paths["empty"].mkdir()
    paths["blank"].write_text("")
    paths["binary"].write_bytes(b"\xff\xfe\x00 not utf-8" * 10)
    argv = [a.format(**paths) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    _refused(finetune.main, argv, tmp_path, capsys, needle.format(**paths))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["{file}", "{file}/sub"])
def test_report_out_that_is_a_file_exits_2_before_any_page(tmp_path, monkeypatch, capsys, out):
    """python -m synthetic.report --out FILE: one line naming --out, no page and no README.md written (it was a
    FileExistsError traceback from the first page)."""
    from synthetic import report

    def started(*a, **k):
        raise AssertionError("a page or README.md was written")

    monkeypatch.setattr(report, "write_readme", started)
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    _refused(report.main, ["--out", out.format(file=afile)], tmp_path, capsys,
             f"--out: '{afile}' is a file, not a folder")


PROFILE = ["--device", "cpu", "--no-compile", "--batch", "2", "--rows", "1"]
# scripts/profile_s4_step.py: (argv, text the error must contain); {file}: an existing file, {empty}: a folder
PROFILE_CASES = [
    (PROFILE + ["--runs", "0"], "--runs: must be >= 1"),
    (PROFILE + ["--iters", "0"], "--iters: must be >= 1"),
    (PROFILE + ["--warm", "-1"], "--warm: must be >= 0"),
    (PROFILE + ["--runs", "100000000"], "--runs or --batch: a training step needs about"),
    (PROFILE + ["--runs", "1", "--iters", "1", "--out", "{empty}"], "--out: {empty} is a folder"),
    (PROFILE + ["--runs", "1", "--iters", "1", "--out", "{file}/x.txt"], "--out: '{file}' is a file, not a folder"),
]


@pytest.mark.parametrize("argv,needle", PROFILE_CASES, ids=[" ".join(a[len(PROFILE):]) for a, _ in PROFILE_CASES])
def test_profile_script_bad_input_exits_2_before_profiling(tmp_path, capsys, argv, needle):
    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_s4_step", ROOT / "scripts" / "profile_s4_step.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    paths = {"file": tmp_path / "a_file", "empty": tmp_path / "empty"}
    paths["file"].write_text("not a folder")
    paths["empty"].mkdir()
    out = _refused(script.main, [a.format(**paths) for a in argv], tmp_path, capsys, needle.format(**paths))
    assert "ms/step" not in out.out  # refused before anything was timed


def test_bench_scaling_extends_the_calibration_table_never_shrinks_it(tmp_path, capsys):
    table = tmp_path / SCALING_TABLE.name
    shutil.copy(SCALING_TABLE, table)
    old = json.loads(table.read_text())["results"]
    assert bench.main(TINY_SCALING + ["--state-convention", "complex", "--out", str(table)]) == 0
    new = json.loads(table.read_text())["results"]
    assert len(new) == len(old) + 1 and new[1:] == old and (new[0]["N"], new[0]["D"]) == (8, 4)
    assert bench.main(TINY_SCALING + ["--state-convention", "complex", "--out", str(table)]) == 0  # same key: replaced
    assert len(json.loads(table.read_text())["results"]) == len(old) + 1


def _scan_inputs(l=5, sign=-1.0, dtype=torch.float32):
    b, h, p, g, n = 1, 2, 3, 1, 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, l, h, p, generator=gen).to(dtype)
    return (x, torch.rand(b, l, h, generator=gen), sign * torch.rand(h, generator=gen) - 0.1 * (sign < 0),
            torch.randn(b, l, g, n, generator=gen), torch.randn(b, l, g, n, generator=gen))


# library functions of synthetic/: (id, call, exception type, text the message starts with)
LIBRARY_CASES = [
    ("ssd_scan_chunked positive A", lambda: ssd_scan_chunked(*_scan_inputs(sign=1.0)), ValueError, "A: must be <= 0"),
    ("ssd_scan_recurrent positive A", lambda: ssd_scan_recurrent(*_scan_inputs(sign=1.0)), ValueError, "A: must be"),
    ("ssd_scan_chunked complex x", lambda: ssd_scan_chunked(*_scan_inputs(dtype=torch.complex64)), TypeError,
     "x: expected a real floating dtype"),
    ("ssd_scan_recurrent complex x", lambda: ssd_scan_recurrent(*_scan_inputs(dtype=torch.complex64)), TypeError,
     "x: expected a real floating dtype"),
    ("Mamba2Ref d_model=-4", lambda: Mamba2Ref(-4), ValueError, "d_model: must be a positive integer"),
    ("Mamba2Ref d_state=0", lambda: Mamba2Ref(8, d_state=0), ValueError, "d_state: must be a positive integer"),
    ("Mamba2Ref d_model=2.5", lambda: Mamba2Ref(2.5), ValueError, "d_model: must be a positive integer"),
    ("AttentionRef d_model=-4", lambda: AttentionRef(-4, 2), ValueError, "d_model: must be a positive integer"),
    ("AttentionRef d_model=0", lambda: AttentionRef(0, 1), ValueError, "d_model: must be a positive integer"),
]


@pytest.mark.parametrize("call, exc, needle", [c[1:] for c in LIBRARY_CASES], ids=[c[0] for c in LIBRARY_CASES])
def test_library_refuses_what_its_mathematics_excludes(call, exc, needle):
    with pytest.raises(exc) as e:
        call()
    assert str(e.value).startswith(needle), str(e.value)


@pytest.mark.parametrize("scan", [ssd_scan_chunked, ssd_scan_recurrent])
def test_ssd_scans_of_an_empty_sequence_are_empty(scan):
    x, dt, A, B, C = _scan_inputs(l=0)
    y = scan(x, dt, A, B, C, 4, D=torch.ones(2), z=torch.zeros_like(x))
    assert y.shape == (1, 0, 2, 3) and y.dtype == x.dtype


def test_a_corrupted_results_file_is_one_line_from_the_command_line(tmp_path):
    (tmp_path / "s4_regression_tiny.jsonl").write_text("[{\"key\": 1},")  # truncated
    r = subprocess.run([sys.executable, "-m", "synthetic.s4_regression", "--preset", "tiny", "--device", "cpu",
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "s4_regression_tiny.jsonl: not valid JSON" in r.stderr
    assert (tmp_path / "s4_regression_tiny.jsonl").read_text() == "[{\"key\": 1},"


def test_results_files_are_readable_by_others(tmp_path):
    from synthetic.results import ResultsFile

    rf = ResultsFile(tmp_path / "r.json")
    rf.append({"key": "a"})
    assert (rf.path.stat().st_mode & 0o044) == 0o044  # group and others may read (mkstemp alone gives 0600)


def test_mamba_summary_keeps_to_one_configuration(tmp_path, capsys):
    """Two configurations in one results file (another --iters): the summary and figures use one of them and say
    how many records they leave out (never an average over both)."""
    base = ["--preset", "tiny", "--backend", "reference", "--methods", "Frozen,Full", "--lr-extend-factor", "0",
            "--out", str(tmp_path)]
    assert mamba_experiment.main(base) == 0
    capsys.readouterr()
    assert mamba_experiment.main(base + ["--iters", "3"]) == 0
    out = capsys.readouterr()
    recs = ResultsFile(tmp_path / "mamba_regression_tiny.jsonl").runs()
    assert len(recs) == 4  # Frozen + Full, twice
    assert "2 records of other configurations in the file are not shown" in out.err


def test_the_benchmarks_memory_guard_lets_the_measured_paper_step_through(monkeypatch):
    """The guard of synthetic.bench and the profile script refuses absurd steps, never one measured to fit: the paper
    configuration at R = 16 (estimate 98.9 GiB, measured peak 30.7 GiB) must pass on an 80 GB H100."""
    import synthetic.checks as checks
    from synthetic.s4 import train as s4t

    monkeypatch.setattr(checks, "available_memory", lambda device: 79 * 2**30)
    paper_r16 = s4t.estimate_step_bytes(16, 64, 200, 4000, 4)
    assert paper_r16 > 79 * 2**30  # without the slack this step would be refused
    checks.check_memory(paper_r16, "cuda", "--runs or --batch", slack=s4t.ESTIMATE_SLACK)
    with pytest.raises(ValueError, match="--runs or --batch: a training step needs about"):
        checks.check_memory(s4t.estimate_step_bytes(10**8, 64, 200, 4000, 4), "cuda", "--runs or --batch",
                            slack=s4t.ESTIMATE_SLACK)


def test_setup_official_s4_refuses_a_bad_source_or_an_existing_destination(tmp_path):
    """scripts/setup_official_s4.sh: a GIT_DIR that is not a git directory of furiosa-ai/ssm-peft, and a DEST that
    exists, are refused with exit 2 and a one-line message naming the argument; nothing is written."""
    script = str(ROOT / "scripts" / "setup_official_s4.sh")
    r = subprocess.run(["bash", script, str(tmp_path), str(tmp_path / "dest")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("GIT_DIR: ")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "dest.partial").exists()
    subprocess.run(["git", "init", "-q", str(tmp_path / "src")], check=True)
    r = subprocess.run(["bash", script, str(tmp_path / "src" / ".git")], capture_output=True, text=True)
    assert r.returncode == 2 and "GIT_DIR: " in r.stderr
    r = subprocess.run(["bash", script], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("usage: ")
    src = tmp_path / "src"  # a source that passes the check: S4/run_s4.py committed
    (src / "S4").mkdir()
    (src / "S4" / "run_s4.py").write_text("print('official')\n")
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "S4"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "s4"], check=True)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("an older copy")
    r = subprocess.run(["bash", script, str(src / ".git"), str(tmp_path / "old")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("DEST: ")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["keep.txt"]
