"""``python -m theory.capacity`` protects results: a file made from another configuration is not
overwritten without ``--force``, bad paths fail before anything is computed or written, a corrupted
results file gives one ``error:`` line naming it (exit 2, no traceback), writes are atomic."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from theory import capacity

COMMITTED = Path(__file__).resolve().parents[2] / "figures" / "theorem1_capacity.json"


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fails(argv, needle, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        capacity.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert needle in line and "Traceback" not in err, err
    return line


@pytest.fixture
def committed_copy(tmp_path):
    dst = tmp_path / "theorem1_capacity.json"
    shutil.copyfile(COMMITTED, dst)
    return dst


def test_quick_refuses_to_overwrite_results_of_another_configuration(committed_copy, tmp_path, capsys):
    before = _sha(committed_copy)
    fig = tmp_path / "fig.png"
    line = _fails(["--quick", "--out", str(committed_copy), "--figure", str(fig)], "--out:", capsys)
    assert "--force" in line and "another configuration" in line and f"{len(json.loads(COMMITTED.read_text())['rows'])} rows" in line
    assert _sha(committed_copy) == before and not fig.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_force_overwrites_and_same_configuration_reruns(committed_copy, tmp_path):
    fig = tmp_path / "fig.png"
    assert capacity.main(["--quick", "--force", "--out", str(committed_copy), "--figure", str(fig)]) == 0
    assert len(json.loads(committed_copy.read_text())["rows"]) == len(capacity.quick_configs())
    # the same configuration again needs no --force
    assert capacity.main(["--quick", "--out", str(committed_copy), "--figure", str(fig)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(committed_copy).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_figure_a_directory_fails_before_writing(committed_copy, tmp_path, capsys):
    new = tmp_path / "new.json"
    _fails(["--quick", "--out", str(new), "--figure", str(tmp_path)], "--figure:", capsys)
    assert not new.exists()
    before = _sha(committed_copy)
    _fails(["--replot", "--out", str(committed_copy), "--figure", str(tmp_path)], "--figure:", capsys)
    assert _sha(committed_copy) == before


def test_out_under_a_file_fails_before_computing(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails(["--quick", "--out", str(blocker / "c.json"), "--figure", str(tmp_path / "f.png")], "--out:", capsys)
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("content", ["{not json", None, "[1, 2]"])
def test_corrupted_results_file_names_the_file(tmp_path, capsys, content):
    bad = tmp_path / "bad.json"
    bad.write_text(COMMITTED.read_text()[:200] if content is None else content)  # None: truncated
    before = _sha(bad)
    line = _fails(["--replot", "--out", str(bad), "--figure", str(tmp_path / "f.png")], "--replot:", capsys)
    assert str(bad) in line
    line = _fails(["--quick", "--out", str(bad), "--figure", str(tmp_path / "f.png")], "--out:", capsys)
    assert str(bad) in line and "--force" in line
    assert _sha(bad) == before and not (tmp_path / "f.png").exists()


def test_default_grid_is_the_committed_files_configuration():
    """Regenerating the committed table with the defaults is not refused (same seed, grid, not quick)."""
    new = {"seed": 0, "quick": False,
           "grid": [[getattr(c, k) for k in capacity.GRID_FIELDS] for c in capacity.default_configs()]}
    assert capacity.grid_of(capacity.load_results(str(COMMITTED))) == new


def test_quick_from_the_shell_leaves_the_committed_file_alone():
    before = _sha(COMMITTED)
    r = subprocess.run([sys.executable, "-m", "theory.capacity", "--quick"], capture_output=True, text=True,
                       timeout=120, cwd=COMMITTED.parents[1])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--force" in r.stderr, r.stderr
    assert _sha(COMMITTED) == before


def test_a_run_cut_off_keeps_its_rows_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    """The file is written as rows and stages come (config.complete false until the end)."""
    out, fig = tmp_path / "c.json", tmp_path / "c.png"
    argv = ["--quick", "--out", str(out), "--figure", str(fig)]
    real = capacity.groebner_oracle

    def cut(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(capacity, "groebner_oracle", cut)
    with pytest.raises(KeyboardInterrupt):
        capacity.main(argv)
    part = json.loads(out.read_text())
    assert part["config"]["complete"] is False and len(part["rows"]) == 3 and "s6_obstruction" in part
    assert not fig.exists()
    calls = []
    monkeypatch.setattr(capacity, "probe", lambda *a: calls.append(a))  # the rows are not recomputed
    monkeypatch.setattr(capacity, "groebner_oracle", real)
    capsys.readouterr()
    assert capacity.main(argv) == 0
    assert "resuming" in capsys.readouterr().out and not calls
    done = json.loads(out.read_text())
    assert done["config"]["complete"] is True and done["rows"] == part["rows"] and len(done["groebner_D2"]) == 7
    assert fig.exists()
