"""``python -m theory``'s table fits a 100-column terminal: claims wrapped in their column, notes
on indented lines below; ``--wide`` gives one line per claim; the verdicts are the same either way.
Help texts are plain text (no reStructuredText markup)."""

import pytest

from theory import capacity, nondividing
from theory.__main__ import main
from theory.report import REPORT_WIDTH, ClaimResult, format_table, plain

RESULTS = [
    ClaimResult("Core: SSM recurrence == FFT convolution", 20, 3.57e-16, "verified", "real and conjugate-pair forms"),
    ClaimResult("Lemma 2 as stated: eq. (5) is the minimum (repeated eigenvalues allowed) " * 2, 3, 1.2e-16, "finding",
                "repeated a*: eq.(5)=3 vs min 1; " * 20),
    ClaimResult("Theorem 1 (S6)", 1, float("nan"), "FAILED", ""),
    ClaimResult("x", 1, 0.0, "verified", "a_very_long_token_" * 12),
]


def test_default_layout_fits_100_columns_and_keeps_every_verdict_and_note():
    text = format_table(RESULTS)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= REPORT_WIDTH
    assert [line.split()[-1] for line in lines if line.split()[-1] in ("verified", "finding", "FAILED")] == \
        [r.verdict for r in RESULTS]
    body = " ".join(text.split())  # every word of the notes is there, in order
    for r in RESULTS:
        assert " ".join(r.note.split()) in body or "a_very_long_token_" in r.note


def test_wide_is_the_old_layout():
    wide = format_table(RESULTS, width=None).splitlines()
    assert len(wide) == 2 + len(RESULTS) and max(len(line) for line in wide) > REPORT_WIDTH
    assert [line.split()[-1] for line in wide[2:3]] == ["forms"]


@pytest.mark.parametrize("main_fn", [main, capacity.main, nondividing.main])
def test_help_is_plain_text(main_fn, capsys):
    with pytest.raises(SystemExit) as e:
        main_fn(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out and ":func:" not in out and ":mod:" not in out, out


def test_plain_strips_sphinx_roles():
    assert plain("see :class:`Config` and ``python -m theory`` (:func:`~theory.ssm.ssm_kernel`)") == \
        "see Config and python -m theory (theory.ssm.ssm_kernel)"
