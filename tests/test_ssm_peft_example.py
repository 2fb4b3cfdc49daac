"""The README's "Use the methods on your model" code block runs as written, and ``python -m ssm_peft.finetune``
runs end to end (tiny settings) for each of its methods."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="needs peft and transformers (pip install .[hf])")
pytest.importorskip("transformers", reason="needs peft and transformers (pip install .[hf])")

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- ssm-peft-example -->\s*```python\n(.*?)```\s*<!-- /ssm-peft-example -->", text, re.S)
    assert m, "README: the ssm-peft-example block is missing"
    return m.group(1)


def test_readme_block_is_short():
    assert len(readme_example().strip().splitlines()) <= 15


def test_readme_block_runs_as_written(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trainable params" in r.stdout
    assert (tmp_path / "out" / "sdlora-adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sdt", "sdlora", "lora"])
def test_finetune_example_runs(tmp_path, method):
    from ssm_peft.finetune import FinetuneConfig, run

    rec = run(FinetuneConfig(method=method, steps=3, seq_len=16, batch_size=2, warmup_steps=1, n_channels=4,
                             out=str(tmp_path)))
    assert len(rec["loss"]) == 3 and rec["trainable"] > 0
    assert (tmp_path / "loss.png").exists() and (tmp_path / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "loss.json").read_text())["config"]["method"] == method


def test_finetune_rejects_unknown_method(tmp_path, capsys):
    from ssm_peft.finetune import main

    with pytest.raises(SystemExit) as e:  # the parser's error: exit 2, one line naming the option
        main(["--method", "prefix", "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and not (tmp_path / "out").exists()
    assert "--method" in capsys.readouterr().err
