"""Bad input never costs data or a traceback: each case below exits 2 with a one-line error naming the option or
the file, before anything runs, and leaves the results file byte-identical."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import s4_regression
from synthetic.mamba import experiment as mamba_experiment
from synthetic.s4 import fig2

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
    ("mamba", MAMBA + ["--sdt-channels", "1000"], "--sdt-channels"),
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
]
CORRUPT = {"s4": "s4_regression_tiny.jsonl", "official": "s4_regression_official-tiny.jsonl",
           "mamba": "mamba_regression_tiny.jsonl", "fig2": "s4_regression_official.jsonl"}


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    before = _digest(tmp_path)
    main = {"mamba": mamba_experiment.main, "fig2": fig2.main}.get(entry, s4_regression.main)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err, err
    assert _digest(tmp_path) == before  # nothing written, the corrupted file untouched
    assert not (tmp_path / "out").exists()


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
    how many records they leave out (they used to average both)."""
    base = ["--preset", "tiny", "--backend", "reference", "--methods", "Frozen,Full", "--lr-extend-factor", "0",
            "--out", str(tmp_path)]
    assert mamba_experiment.main(base) == 0
    capsys.readouterr()
    assert mamba_experiment.main(base + ["--iters", "3"]) == 0
    out = capsys.readouterr()
    recs = mamba_experiment.ResultsFile(tmp_path / "mamba_regression_tiny.jsonl").runs()
    assert len(recs) == 4  # Frozen + Full, twice
    assert "2 records of other configurations in the file are not shown" in out.err
