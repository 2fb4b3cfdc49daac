"""The paper's Table 2 on a real model: step time and peak memory of SDLoRA vs LoRA (Galim et al., ICML 2025,
Sec. 5, Table 2: 330 s vs 410 s per epoch on Mamba-130M, ratio 0.805).

    python -m ssm_peft.bench --help
    python -m ssm_peft.bench --preset paper --time-budget 180     # a GPU with mamba-ssm + causal-conv1d
    python -m ssm_peft.bench                                      # the default preset cpu: a small model, a CPU
    python -m ssm_peft.bench --preset tiny                        # seconds on a CPU (a smoke run)

Model: transformers' ``MambaForCausalLM`` at the Mamba-130M shape (24 layers, d_model 768, vocab 50280, 16
states, expand 2; random weights, float32 as the official Table 2 configurations train), a batch of 4 × 1024
random tokens, one training step = forward with the LM loss, backward, AdamW step. Per method: warm-up steps
(untimed), then rounds of ``steps`` steps with the methods interleaved in every round (drift hits all alike); the
median over rounds of ms per step, per-round ratios, the step's peak memory, the trainable count, and whether
every trainable tensor received a gradient (``acts``; false means the kernel bypassed the adapter).

Methods (:data:`METHODS`; the official configurations are those of furiosa-ai/ssm-peft's
``cfg/exps/sdlora/glue/*`` and ``cfg/peft/``, see notes/mamba.md):

- ``sdlora``: SDLoRA as configured officially, through :mod:`ssm_peft`: SDT on A_log (``D − round(0.99·D)`` =
  15 channels × ``H − round(0.75·H)`` = 4 states per layer) and the channels' W_B, W_C columns, plus LoRA r8
  (alpha 8) on out_proj, applied to the weights the fused kernel reads (no LoRA dropout: a weight-level LoRA
  has none). Which channels are chosen does not change the step cost: the first ones, no warm-up.
- ``lora_in_proj``: peft's LoRA r8, alpha 8, dropout 0.1 (the paper's LoRA setting, App. C.1) on in_proj, the one
  Mamba projection the fused path calls as a module.
- ``lora_r2`` / ``lora_r3`` / ``lora_r5``: Table 2's official LoRA baselines (r2 on out_proj + x_proj + dt_proj,
  r3 on out_proj + x_proj, r5 on out_proj + dt_proj; alpha = r) as weight-level LoRA (:class:`ssm_peft.LowRankDelta`,
  no dropout; x_proj as the official code's three sub-linears W_Δ↓, W_B, W_C, each with its own rank-r LoRA, unless
  ``--no-x-proj-split``; trainable 411,648 / 503,424 / 466,560 at Table 2's shape, the official counts): peft refuses
  out_proj on Mamba models, and its module-wrapping LoRA on x_proj / dt_proj is bypassed by the fused kernel.
- ``peft_lora_r2``: peft's LoRA r2 on the official targets that peft accepts (x_proj + dt_proj), on the fused path:
  a demonstration row, expected ``acts: false`` (its gradients are None: the kernel reads the base weights).
- ``full``: full fine-tuning, for reference.
- ``*_unfused``: the unfused path (transformers' slow path with causal-conv1d's conv and mamba-ssm's selective
  scan kernels, as the official code always runs): ``sdlora_unfused`` and peft's LoRA on the official targets
  it accepts, ``peft_lora_r2_unfused`` (x_proj + dt_proj), ``peft_lora_r3_unfused`` (x_proj),
  ``peft_lora_r5_unfused`` (dt_proj), dropout 0.1, activation side as the official code.

Peak memory (``peak_gib``): the largest allocation during one step (gradients included) with only this method's
model resident, i.e. ``max_memory_allocated − memory_allocated`` over the step plus the model's own parameters,
buffers and optimizer state (the other methods' models stay on the GPU for the interleaving). Not measured on a
CPU. Matmuls run in full float32 (torch's default, no TF32); the report records the setting.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from synthetic.atomic import write_json_atomic
from synthetic.checks import SEED_MAX, check_numbers, check_out_file, check_overwrite
from synthetic.cli import option, parse_options
from synthetic.progress import progress
from synthetic.provenance import environment

PAPER_TABLE2 = {"LoRA s/epoch": 410.0, "SDT + LoRA s/epoch": 330.0, "ratio": 330.0 / 410.0, "model": "Mamba-130M"}
OFFICIAL_LORA = {"lora_r2": (2, ("out_proj", "x_proj", "dt_proj")), "lora_r3": (3, ("out_proj", "x_proj")),
                 "lora_r5": (5, ("out_proj", "dt_proj"))}  # Table 2's official LoRA baselines: rank, targets
DEFAULT_METHODS = ("sdlora", "lora_in_proj", "lora_r2", "lora_r3", "lora_r5", "peft_lora_r2", "full", "sdlora_unfused",
                   "lora_r2_unfused", "lora_r3_unfused", "lora_r5_unfused", "peft_lora_r2_unfused",
                   "peft_lora_r3_unfused")  # peft_lora_r5_unfused: dt_proj alone, bypassed on both paths
PEFT_REFUSED = ("out_proj",)  # peft refuses LoRA on Mamba's out_proj (and conv1d): peft #2556


@dataclass(frozen=True)
class BenchConfig:
    """Every field is an option of ``python -m ssm_peft.bench``."""

    preset: str = option("cpu", "named configuration: its values are the defaults shown here; options override them")
    methods: Tuple[str, ...] = option(DEFAULT_METHODS, "methods to time (module docstring)")
    device: str = option("auto", "auto (CUDA if available), cpu, or cuda[:i]")
    dtype: str = option("float32", "model dtype: float32 (the official configurations) or bfloat16")
    hidden_size: int = option(768, "d_model (Mamba-130M: 768)")
    n_layers: int = option(24, "Mamba layers (Mamba-130M: 24)")
    vocab_size: int = option(50280, "vocabulary (Mamba-130M: 50280)")
    d_state: int = option(16, "states per channel")
    expand: int = option(2, "expansion factor (d_inner = expand x d_model)")
    batch: int = option(4, "sequences per step")
    seq_len: int = option(1024, "tokens per sequence")
    channel_freeze: float = option(0.99, "SDLoRA: fraction of channels frozen per layer (official 0.99)")
    state_freeze: float = option(0.75, "SDLoRA: fraction of A_log states frozen per channel (official 0.75)")
    sdlora_rank: int = option(8, "SDLoRA: LoRA rank (and alpha) on out_proj")
    lora_rank: int = option(8, "lora_in_proj: peft LoRA rank (and alpha)")
    lora_dropout: float = option(0.1, "peft LoRA dropout (the paper's 0.1)")
    x_proj_split: bool = option(True, "lora_r2/lora_r3: LoRA on x_proj as three rank-r updates of W_Δ↓, W_B, W_C, "
                                      "the official code's split x_proj (false: one matrix, fewer parameters)")
    lr: float = option(1e-4, "AdamW learning rate")
    warmup_steps: int = option(3, "untimed steps per method first (kernel selection, allocator)")
    steps: int = option(10, "timed steps per method per round")
    rounds: int = option(5, "rounds, methods interleaved in each")
    time_budget: float = option(0.0, "seconds for the whole run: no round starts that would end past it, at least "
                                     "one round runs (0 = no budget)")
    seed: int = option(0, "seed of the weights and tokens")
    out: str = option("figures/bench_real_models.json", "report file (JSON)")
    force: bool = option(False, "replace a report of another device or configuration at --out")
    summary: bool = option(False, "measure nothing: print the docs/benchmarks.md row of the report at --out "
                                  "(--preset paper: the committed figures/bench_real_models.json; "
                                  "'not measured yet' when there is none)")


PRESETS: Dict[str, Dict] = {
    "cpu": dict(hidden_size=64, n_layers=4, vocab_size=256, d_state=16, batch=2, seq_len=128, sdlora_rank=4,
                lora_rank=4, warmup_steps=1, steps=2, rounds=3, device="cpu",
                out="out/bench_real_models_cpu.json"),  # a small model on a CPU: not Table 2's shape
    "paper": {},  # Table 2's model and batch (a GPU; the fused path needs mamba-ssm and causal-conv1d)
    "tiny": dict(hidden_size=16, n_layers=2, vocab_size=64, d_state=4, batch=2, seq_len=16, sdlora_rank=2,
                 lora_rank=2, channel_freeze=0.75, warmup_steps=1, steps=1, rounds=2, device="cpu",
                 out="out/bench_real_models_tiny.json"),  # seconds on a CPU: the code path, not a measurement
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """A benchmarked method: ``make(model, cfg)`` returns the model to train; ``path``: the mixers' path."""

    label: str
    path: str  # "fused" | "unfused"
    make: Callable[[nn.Module, BenchConfig], nn.Module]
    lora: str  # how its LoRA is applied: "weights" (what the kernel reads), "peft" (module wrapper), "" (none)


def _sdlora(model: nn.Module, cfg: BenchConfig) -> nn.Module:
    import peft

    import ssm_peft

    config = ssm_peft.SDTConfig(channel_freeze=cfg.channel_freeze, state_freeze=cfg.state_freeze, rule="official",
                                lora_rank=cfg.sdlora_rank, lora_alpha=float(cfg.sdlora_rank), lora_targets=["out_proj"])
    config.selection = ssm_peft.first_selection(model, config)
    return peft.get_peft_model(model, config)


def _weight_lora(rank: int, targets: Sequence[str]) -> Callable:
    """LoRA on the weights of ``targets`` (ssm_peft's LowRankDelta: SDLoRA with no SDT channel)."""
    def make(model: nn.Module, cfg: BenchConfig) -> nn.Module:
        import peft

        import ssm_peft

        config = ssm_peft.SDTConfig(n_channels=0, lora_rank=rank, lora_alpha=float(rank), lora_targets=list(targets),
                                    lora_x_proj_split=cfg.x_proj_split and "x_proj" in targets)
        config.selection = ssm_peft.first_selection(model, config)
        return peft.get_peft_model(model, config)
    return make


def _peft_lora(rank: Optional[int], targets: Sequence[str]) -> Callable:
    """peft's LoRA (alpha = rank, dropout ``cfg.lora_dropout``); rank None: ``cfg.lora_rank``."""
    def make(model: nn.Module, cfg: BenchConfig) -> nn.Module:
        import peft

        r = cfg.lora_rank if rank is None else rank
        return peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=r, lora_dropout=cfg.lora_dropout,
                                                          target_modules=list(targets)))
    return make


def _full(model: nn.Module, cfg: BenchConfig) -> nn.Module:
    return model.requires_grad_(True)


def _accepted(targets: Sequence[str]) -> Tuple[str, ...]:
    return tuple(t for t in targets if t not in PEFT_REFUSED)


METHODS: Dict[str, Method] = {
    "sdlora": Method("SDLoRA (official: SDT 99 % ch / 75 % st frozen + LoRA r8 out_proj)", "fused", _sdlora, "weights"),
    "lora_in_proj": Method("LoRA r8 in_proj (peft)", "fused", _peft_lora(None, ("in_proj",)), "peft"),
    **{k: Method(f"LoRA r{r} {' + '.join(t)} (official targets, weight-level)", "fused", _weight_lora(r, t), "weights")
       for k, (r, t) in OFFICIAL_LORA.items()},
    "peft_lora_r2": Method("LoRA r2 x_proj + dt_proj (peft; the fused kernel bypasses it)", "fused",
                           _peft_lora(2, _accepted(OFFICIAL_LORA["lora_r2"][1])), "peft"),
    "full": Method("Full fine-tuning", "fused", _full, ""),
    "sdlora_unfused": Method("SDLoRA (official), unfused path", "unfused", _sdlora, "weights"),
    **{f"{k}_unfused": Method(f"LoRA r{r} {' + '.join(t)} (official targets, weight-level), unfused path", "unfused",
                              _weight_lora(r, t), "weights") for k, (r, t) in OFFICIAL_LORA.items()},
    **{f"peft_{k}_unfused": Method(f"LoRA r{r} {' + '.join(_accepted(t))} (peft, official targets without out_proj), "
                                   "unfused path", "unfused", _peft_lora(r, _accepted(t)), "peft")
       for k, (r, t) in OFFICIAL_LORA.items()},
}
SDLORA = {"fused": "sdlora", "unfused": "sdlora_unfused"}
# Table 2's comparison per path: SDLoRA over the mean of the official LoRA baselines (weight-level, as SDLoRA's own
# LoRA), per round; SDLoRA over every other timed method of its path is reported too.
OFFICIAL_BASELINES = {"fused": tuple(OFFICIAL_LORA), "unfused": tuple(f"{k}_unfused" for k in OFFICIAL_LORA)}


def check_config(cfg: BenchConfig) -> None:
    """ValueError naming the option, before anything is built."""
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise ValueError(f"--methods: unknown or empty {bad}; choose from {', '.join(METHODS)}")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ValueError(f"--methods: each method once, got {','.join(cfg.methods)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype: one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    check_numbers(cfg, nonnegative=("warmup_steps", "time_budget", "lora_dropout", "seed"),
                  positive=("hidden_size", "n_layers", "vocab_size", "d_state", "expand", "batch", "seq_len",
                            "sdlora_rank", "lora_rank", "lr", "steps", "rounds"))
    if cfg.seed > SEED_MAX:
        raise ValueError(f"--seed: must be an integer in [0, 2**63 - 1], got {cfg.seed}")
    for name in ("channel_freeze", "state_freeze", "lora_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ValueError(f"--{name.replace('_', '-')}: must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ValueError(f"--device: auto, cpu or cuda[:i], got {cfg.device!r}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: no CUDA device here (use --device cpu, or --preset tiny)")
    check_out_file(cfg.out)


# --------------------------------------------------------------------------------------------- the loop
def build_base(cfg: BenchConfig, device: torch.device) -> nn.Module:
    """A random MambaForCausalLM of the configured shape (no mambapy: the CUDA kernels or the torch path)."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(cfg.seed)
    mc = MambaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, state_size=cfg.d_state,
                     num_hidden_layers=cfg.n_layers, expand=cfg.expand, conv_kernel=4, use_mambapy=False)
    return MambaForCausalLM(mc).to(device=device, dtype=DTYPES[cfg.dtype])


def _static_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes of the model's parameters and buffers and of the optimizer's state (each storage once)."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _spread(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Time every method of ``cfg.methods`` (module docstring); returns the report (a JSON-ready dict)."""
    from ssm_peft.layouts import fused_path

    t_start = time.perf_counter()
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    on_cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if on_cuda else (lambda: None)
    base = build_base(cfg, dev)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (cfg.batch, cfg.seq_len), generator=g).to(dev)  # (Bt, L)

    models, opts, rows = {}, {}, {}
    for key in cfg.methods:
        m = METHODS[key]
        torch.manual_seed(cfg.seed + 2)  # the same LoRA init for every method
        models[key] = m.make(copy.deepcopy(base), cfg).train()
        trainable = [p for p in models[key].parameters() if p.requires_grad]
        opts[key] = torch.optim.AdamW(trainable, lr=cfg.lr)  # weight decay 0.01 (torch's default)
        rows[key] = {"method": key, "label": m.label, "path": m.path, "lora_form": m.lora,
                     "trainable_params": sum(p.numel() for p in trainable)}
    del base

    def path_of(key: str):
        """The method's path, entered once around a block of steps (so its cost stays out of the timings)."""
        return fused_path(models[key], enabled=METHODS[key].path == "fused")

    def step(key: str):
        loss = models[key](input_ids=ids, labels=ids).loss
        opts[key].zero_grad(set_to_none=True)
        if loss.requires_grad:  # False: every adapter tensor is bypassed (see the first step's record)
            loss.backward()
        opts[key].step()
        return loss

    notes: List[str] = []
    timed = []
    for key in progress(cfg.methods, desc="warm-up"):
        model = models[key]
        with path_of(key) as seen:
            loss = step(key)  # the first step: which path ran, which trainable tensors got a gradient
        # A gradient that is None: the tensor is not in the graph (its module's forward was skipped by a kernel
        # that reads the base weight). LoRA's A gets a zero gradient at the first step (B = 0), still not None.
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.numel()]  # an empty SDT delta: none
        with_grad = sum(gr is not None for gr in grads)
        rows[key].update(fused_kernel_ran=seen.kernel > 0, acts=with_grad == len(grads),
                         trainable_tensors=len(grads), tensors_with_gradient=with_grad,
                         first_loss=float(loss.detach()))
        if METHODS[key].path == "fused" and seen.kernel == 0:  # recorded, not fatal: the other rows still count
            notes.append(f"{key}: no fused kernel ran on {dev.type}, transformers took its unfused path"
                         + (" (is causal-conv1d importable? transformers binds mamba-ssm's fused function at import)"
                            if on_cuda else ""))
            log("WARNING: " + notes[-1])
        if with_grad == 0:
            notes.append(f"{key}: not timed: none of its {len(grads)} trainable tensors is in the graph "
                         f"({METHODS[key].label})")
            rows[key]["peak_gib"] = None
            continue
        if with_grad < len(grads):
            notes.append(f"{key}: {len(grads) - with_grad} of {len(grads)} trainable tensors get no gradient "
                         "(bypassed); timed as it trains")
        timed.append(key)
        with path_of(key):
            for _ in range(cfg.warmup_steps):
                step(key)
            sync()
            if on_cuda:
                opts[key].zero_grad(set_to_none=True)  # the step allocates its gradients: they count in its peak
                before = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                step(key)
                sync()
        if on_cuda:
            extra = torch.cuda.max_memory_allocated(dev) - before
            rows[key]["peak_gib"] = (extra + _static_bytes(model, opts[key])) / 2**30
        else:
            rows[key]["peak_gib"] = None  # not measured on a CPU
    for key in set(cfg.methods) - set(timed):  # free what is not timed
        del models[key], opts[key]

    times: Dict[str, List[float]] = {k: [] for k in timed}
    round_s: List[float] = []
    stopped = False
    for r in progress(range(cfg.rounds), desc="rounds"):
        elapsed = time.perf_counter() - t_start
        if r and cfg.time_budget and elapsed + max(round_s) > cfg.time_budget:
            stopped = True
            notes.append(f"stopped after {r} of {cfg.rounds} rounds: --time-budget {cfg.time_budget:g} s "
                         f"({elapsed:.0f} s spent, a round takes {max(round_s):.0f} s)")
            break
        t_round = time.perf_counter()
        for key in timed:  # interleaved: drift hits every method alike
            with path_of(key):
                sync()
                t0 = time.perf_counter()
                for _ in range(cfg.steps):
                    step(key)
                sync()
                times[key].append(1e3 * (time.perf_counter() - t0) / cfg.steps)
        round_s.append(time.perf_counter() - t_round)
        log(f"round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.1f}" for k in timed) + " ms/step")

    results = []
    for key in cfg.methods:
        ms = times.get(key)
        results.append({**rows[key], "ms_per_step": statistics.median(ms) if ms else None, "ms_per_step_rounds": ms})
    return _report(cfg, dev, rows, times, len(round_s), stopped, notes, results, time.perf_counter() - t_start)


def ratios_of(times: Dict[str, List[float]], n_rounds: int) -> Dict[str, Dict[str, dict]]:
    """Per path: SDLoRA's time over each other timed method of its path, per round (median, min, max), and over
    the mean of the official LoRA baselines (Table 2's comparison) when they were timed."""
    out = {}
    for path, sd in SDLORA.items():
        if sd not in times:
            continue
        others = [k for k in times if k != sd and METHODS[k].path == path]
        per = {f"{sd} / {b}": _spread([a / c for a, c in zip(times[sd], times[b])]) for b in others}
        official = [b for b in OFFICIAL_BASELINES[path] if b in times]
        if official:
            mean = [statistics.mean(times[b][i] for b in official) for i in range(n_rounds)]
            per[f"{sd} / mean of ({', '.join(official)})"] = _spread([a / c for a, c in zip(times[sd], mean)])
        if per:
            out[path] = per
    return out


def _report(cfg, dev, rows, times, n_rounds, stopped, notes, results, wall_s) -> dict:
    on_cuda = dev.type == "cuda"
    env = environment()
    return {
        "benchmark": "ssm_peft.bench (Table 2 on MambaForCausalLM)",
        "device": env["device"] if on_cuda else "cpu", "commit": env["commit"], "date": env["date"],
        "versions": _versions(), "dtype": cfg.dtype, "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "config": _identity_config(cfg), "rounds_done": n_rounds, "stopped_by_time_budget": stopped,
        "wall_s": wall_s, "results": results, "ratios": ratios_of(times, n_rounds), "paper_table2": PAPER_TABLE2,
        "notes": notes,
    }


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for pkg in ("transformers", "peft", "mamba_ssm", "causal_conv1d"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _identity_config(cfg: BenchConfig) -> dict:
    """The fields that define the measurement (not where it goes, how long it may run, or --force)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "force", "time_budget", "summary")}


REPORT = Path("figures/bench_real_models.json")  # the committed report the docs row is drawn from
ROW_TITLE = ("Table 2 on transformers' `MambaForCausalLM` ({layers} × {width}, random weights), batch {batch} × "
             "{seq}, `python -m ssm_peft.bench --preset {preset}`, ms per step (median of rounds) and peak GiB; "
             "official LoRA baselines with x_proj {x_proj}")


def summary_row(report: Optional[dict]) -> str:
    """The docs/benchmarks.md row of a report (None: not measured yet): | benchmark | device | ours | paper |."""
    paper = f"paper Table 2: 410 s vs 330 s per epoch ({PAPER_TABLE2['ratio']:.3f})"
    c = report["config"] if report else dataclasses.asdict(BenchConfig())
    title = ROW_TITLE.format(layers=c["n_layers"], width=c["hidden_size"], batch=c["batch"], seq=c["seq_len"],
                             preset=c["preset"] if report else "paper",  # the committed report: the paper preset
                             x_proj="split in three, as the official code" if c.get("x_proj_split", False) else
                             "as one matrix (fewer parameters than the official code's split)")
    if report is None:
        return f"| {title} | — | not measured yet (`{REPORT}` does not exist) | {paper} |"
    v = report["versions"]
    device = (f"{report['device']}, {report['dtype']}, torch {v['torch']}, transformers {v['transformers']}, "
              f"peft {v['peft']}, mamba-ssm {v['mamba_ssm']}, causal-conv1d {v['causal_conv1d']}; "
              f"{report['rounds_done']} rounds, commit {report['commit']}, {report['date'][:10]}")
    parts = []
    for path in ("fused", "unfused"):
        rows = [r for r in report["results"] if r["path"] == path]
        if not rows:
            continue
        cells = []
        for r in rows:
            if r["ms_per_step"] is None:
                cells.append(f"{r['method']} not timed (no trainable tensor in the graph)")
                continue
            peak = "" if r["peak_gib"] is None else f", {r['peak_gib']:.2f} GiB"
            bypass = "" if r["acts"] else f", {r['tensors_with_gradient']}/{r['trainable_tensors']} tensors train"
            cells.append(f"{r['method']} {r['ms_per_step']:.1f}{peak}{bypass}")
        ratio = next((f"; **{k.split(' / ', 1)[1]}: {s['median']:.3f}** (rounds {s['min']:.3f}–{s['max']:.3f})"
                      for k, s in report["ratios"].get(path, {}).items() if "mean of" in k), "")
        label = path if path == "unfused" or all(r["fused_kernel_ran"] for r in rows) else \
            "fused requested, **the fused kernel did not run**"
        parts.append(f"{label}: " + ", ".join(cells) + (f"; SDLoRA over the{ratio[1:]}" if ratio else ""))
    return f"| {title} | {device} | {' · '.join(parts)} | {paper} |"


def read_summary_report(path: Path, error: Callable[[str], None]) -> dict:
    """The report at ``path`` for ``--summary``; ``error`` (the parser's: exit 2, one line naming --out) when it is
    not JSON or not a report of this benchmark (another benchmark's report, an experiment's results)."""
    try:
        report = json.loads(path.read_text(errors="replace"))
    except ValueError as e:
        error(f"--out: {path} is not valid JSON ({e}); --summary reads a report of python -m ssm_peft.bench")
    if not isinstance(report, dict) or not str(report.get("benchmark", "")).startswith("ssm_peft.bench") \
            or not all(k in report for k in ("config", "versions", "results", "ratios")):
        error(f"--out: {path} is not a report of python -m ssm_peft.bench (no 'benchmark': 'ssm_peft.bench ...' with "
              "its config, versions, results and ratios); --summary reads one")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg, p = parse_options(BenchConfig, PRESETS, argv, prog="python -m ssm_peft.bench",
                           description=__doc__.split("\n\n")[0], default_preset="cpu", validate=check_config)
    if cfg.summary:
        out = Path(cfg.out)
        report = read_summary_report(out, p.error) if out.exists() else None
        print(summary_row(report))
        return 0
    ident = {"device": environment()["device"] if cfg.device != "cpu" and torch.cuda.is_available() else "cpu",
             "config": _identity_config(cfg)}
    try:  # before anything runs: a report of another device or configuration at --out is kept unless --force
        check_overwrite(cfg.out, ident, cfg.force)
    except ValueError as e:
        p.error(str(e))
    res = bench(cfg)
    write_json_atomic(Path(cfg.out), res)
    for r in res["results"]:
        pk = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        ms = "not timed" if r["ms_per_step"] is None else f"{r['ms_per_step']:9.2f} ms/step"
        print(f"{r['method']:<22} {r['path']:<7} trainable {r['trainable_params']:>11,}  {ms}  peak {pk:>6} GiB  "
              f"acts={r['acts']}  fused_kernel={r['fused_kernel_ran']}")
    for path, per in res["ratios"].items():
        for name, s in per.items():
            print(f"ratio ({path}) {name}: median {s['median']:.3f} (rounds {s['min']:.3f}..{s['max']:.3f}); "
                  f"paper {PAPER_TABLE2['ratio']:.3f}")
    for n in res["notes"]:
        print("note:", n)
    print(f"-> {cfg.out} on {res['device']} ({res['rounds_done']} rounds, {res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
