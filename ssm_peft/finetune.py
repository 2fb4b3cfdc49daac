"""Fine-tune a causal-LM Mamba with SDT, SDLoRA or peft's LoRA: ``python -m ssm_peft.finetune --help``.

With no ``--model`` it builds a tiny random Mamba (saved to ``<out>/base`` and loaded back from that path,
as a user's checkpoint would be) and with no ``--text`` a small text of its own, so it runs offline on a
CPU in about a minute. Writes ``<out>/adapter`` (peft's save_pretrained), ``<out>/loss.json`` and
``<out>/loss.png``, and prints the trainable-parameter table.

Tokens: the model folder's tokenizer when it has one, else the text's UTF-8 bytes (the model's
vocabulary must then hold 256 ids).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from synthetic.progress import progress


@dataclass
class FinetuneConfig:
    model: str = ""  # local folder of a transformers causal-LM Mamba ("" = build a tiny one)
    text: str = ""  # a UTF-8 text file ("" = a small generated text)
    method: str = "sdlora"  # sdt | sdlora | lora (peft's LoRA on in_proj and x_proj)
    steps: int = 40
    lr: float = 3e-3
    batch_size: int = 8
    seq_len: int = 32
    n_channels: int = 16  # SDT: channels per mixer
    n_states: int = 4  # SDT: states per channel (0 = all)
    lora_rank: int = 4  # SDLoRA and LoRA
    warmup_steps: int = 10  # SDT's Algorithm 1 warm-up
    weight_decay: float = 0.01
    seed: int = 0
    out: str = "out/finetune"


def make_text() -> str:
    """A few kilobytes of regular English-like text (counting sentences), so the loss has something to learn."""
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    return "\n".join(f"{a} and {b} make {words[(i + j + 1) % 10]}."
                     for i, a in enumerate(words) for j, b in enumerate(words)) * 3


def tiny_model(path: Path, seed: int):
    """A random 2-layer Mamba with a 256-id (byte) vocabulary, saved to ``path``."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    MambaForCausalLM(MambaConfig(vocab_size=256, hidden_size=64, state_size=8, num_hidden_layers=2, expand=2,
                                 conv_kernel=4)).save_pretrained(path)
    return path


def tokenize(text: str, model_path: Optional[Path]) -> torch.Tensor:
    """The model folder's tokenizer when it has one, else the text's UTF-8 bytes (``model_path`` None: the tiny
    model, a byte vocabulary)."""
    if model_path is not None and (model_path / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer
        return torch.tensor(AutoTokenizer.from_pretrained(model_path)(text)["input_ids"])
    return torch.tensor(list(text.encode("utf-8")))


def batches(tokens: torch.Tensor, cfg: FinetuneConfig, g: torch.Generator):
    while True:
        starts = torch.randint(0, len(tokens) - cfg.seq_len - 1, (cfg.batch_size,), generator=g)
        yield torch.stack([tokens[s:s + cfg.seq_len] for s in starts.tolist()])


def _sdt(cfg: FinetuneConfig, model, data, lora: bool):
    import ssm_peft

    config = ssm_peft.SDTConfig(n_channels=cfg.n_channels, n_states=cfg.n_states, lora_rank=cfg.lora_rank if lora else 0)
    config.selection = ssm_peft.sdt_select(model, config, data, steps=cfg.warmup_steps, lr=cfg.lr)
    return config


def _lora(cfg: FinetuneConfig, model, data):
    from peft import LoraConfig
    # peft refuses out_proj on Mamba (peft #2556), and its LoRA wraps module forwards: on a GPU the fused
    # mamba_inner_fn bypasses the x_proj one. ssm_peft's SDLoRA adapts the weights instead.
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, target_modules=["in_proj", "x_proj"],
                      lora_dropout=0.0)


METHODS: Dict[str, Callable] = {
    "sdt": lambda cfg, model, data: _sdt(cfg, model, data, lora=False),
    "sdlora": lambda cfg, model, data: _sdt(cfg, model, data, lora=True),
    "lora": _lora,
}


def trainable_table(model) -> List[tuple]:
    """(parameter pattern, tensors, trainable scalars), layer indices folded into ``*``."""
    rows: Dict[str, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = re.sub(r"\.\d+\.", ".*.", name.removeprefix("base_model.model."))
            r = rows.setdefault(key, [0, 0])
            r[0], r[1] = r[0] + 1, r[1] + p.numel()
    return [(k, n, c) for k, (n, c) in sorted(rows.items())]


def plot_loss(losses: List[float], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_config(cfg: FinetuneConfig) -> None:
    """ValueError naming the option, before anything is built or written: the method, the numbers, the --model
    folder, the --text file, the --out folder."""
    from synthetic.checks import SEED_MAX, check_numbers, check_out_dir

    if cfg.method not in METHODS:
        raise ValueError(f"--method: one of {sorted(METHODS)}, got {cfg.method!r}")
    check_numbers(cfg, nonnegative=("n_channels", "n_states", "warmup_steps", "weight_decay", "seed"),
                  positive=("steps", "lr", "batch_size", "seq_len", "lora_rank"))
    if cfg.seed > SEED_MAX:
        raise ValueError(f"--seed: must be an integer in [0, 2**63 - 1], got {cfg.seed}")
    if cfg.model and not (Path(cfg.model) / "config.json").is_file():
        raise ValueError(f"--model: {cfg.model} is not a folder holding a transformers model (no config.json)")
    if cfg.text and not Path(cfg.text).is_file():
        raise ValueError(f"--text: {cfg.text} is not a file")
    check_out_dir(cfg.out)


def run(cfg: FinetuneConfig) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_config(cfg)
    try:  # the text and its tokens before anything is written
        text = Path(cfg.text).read_text(encoding="utf-8") if cfg.text else make_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"--text: {cfg.text} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    tokens = tokenize(text, Path(cfg.model) if cfg.model else None)
    if len(tokens) <= cfg.seq_len + 1:
        raise ValueError(f"--text: {len(tokens)} tokens, need more than --seq-len + 1 = {cfg.seq_len + 1}")
    import peft
    from transformers import AutoModelForCausalLM

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = Path(cfg.model) if cfg.model else tiny_model(out / "base", cfg.seed)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    data = batches(tokens, cfg, g)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    config = METHODS[cfg.method](cfg, model, data)
    model = peft.get_peft_model(model, config)
    model.print_trainable_parameters()
    table = trainable_table(model)
    width = max(len(r[0]) for r in table)
    print(f"{'trainable parameter':<{width}}  tensors  scalars")
    for k, n, c in table:
        print(f"{k:<{width}}  {n:>7}  {c:>7}")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    model.train()
    losses = []
    bar = progress(range(cfg.steps), desc=f"fine-tune ({cfg.method})")
    for _ in bar:
        ids = next(data)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.save_pretrained(out / "adapter")
    record = {"config": {f.name: getattr(cfg, f.name) for f in fields(cfg)}, "loss": losses,
              "trainable": model.get_nb_trainable_parameters()[0], "model_path": str(model_path)}
    (out / "loss.json").write_text(json.dumps(record, indent=1))
    plot_loss(losses, out / "loss.png", f"{cfg.method}: {record['trainable']:,} trainable")
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; adapter, loss.json and loss.png in {out}")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssm_peft.finetune", description=__doc__.split("\n\n")[0])
    for f in fields(FinetuneConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                            help=f"(default: {f.default!r})")
    args = parser.parse_args(argv)
    cfg = FinetuneConfig(**vars(args))
    try:  # bad options: exit 2 with one line naming the option, before anything is built or written
        check_config(cfg)
    except ValueError as e:
        parser.error(str(e))
    try:
        run(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
