"""The benchmark's other PEFT methods on Mamba blocks (synthetic.mamba.peft.BENCHMARK_METHODS): each new term
against a float64 composition around theory.s6, counts == entries with a non-zero gradient, frozen weights
bit-identical after training, bad configs rejected, and ``--methods all`` end to end on the CPU."""

import pytest

from synthetic.results import ResultsFile, run_records
import torch
import torch.nn.functional as F

from synthetic.mamba import experiment as mamba_regression
from synthetic.mamba import config as mcfg
from synthetic.mamba.peft import (BENCHMARK_METHODS, METHODS, MambaPeftConfig, PeftMambaBlock, PeftMambaStack,
                                  get_backend, residual_stack)
from synthetic.mamba.ref import MambaRef, block_weights, mamba_forward, mamba_s6_inputs
from theory.peft import count_trainable, dora_weight
from theory.s6 import selective_scan
from theory.tolerances import RTOL, rel_err

F64 = torch.float64
REF = get_backend("reference")
BUDGETS = {"Prompt tuning": {"prompt_len": 3}, "Prefix-tuning": {"prefix_len": 2}, "Initial-state tuning": {},
           "State-offset tuning": {}, "BitFit": {}, "DoRA (Proj)": {"rank": 2}, "Additional-scan": {"states": 2}}


def _weights(seed=0, dtype=F64, d_model=8, d_state=4):
    torch.manual_seed(seed)
    return block_weights(MambaRef(d_model, d_state=d_state, expand=2, dtype=dtype))


def _perturb(module, seed=1, scale=0.1):
    """Random values for every trainable tensor that starts at zero (LoRA B, prefixes, states, W_C')."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _composed(w, hidden, d_state, dt_rank, h0=None, offset=None):
    """Steps 1-6 of the block written out around theory.s6.selective_scan (float64), with h_0 and C_t·h'."""
    x, z, dt_low, B, C = mamba_s6_inputs(w, hidden, d_state, dt_rank)
    delta = F.softplus(torch.einsum("dr,brn->bdn", w["dt_proj.weight"], dt_low) + w["dt_proj.bias"][None, :, None])
    y = selective_scan(x, delta, -torch.exp(w["A_log"]), B, C, h0=h0) + w["D"][:, None] * x
    if offset is not None:
        y = y + torch.einsum("bhn,dh->bdn", C, offset)
    return torch.einsum("md,bdn->bnm", w["out_proj.weight"], y * F.silu(z))


@pytest.mark.parametrize("method", ["Initial-state tuning", "State-offset tuning"])
def test_state_terms_equal_the_scan_started_at_h0(method):
    w = _weights()
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=BENCHMARK_METHODS[method]({})).double()
    _perturb(blk)
    x = torch.randn(2, 9, 8, dtype=F64)
    st = blk.added["initial_state" if method.startswith("Initial") else "state_offset"].state.detach()
    kw = {"h0": st} if method.startswith("Initial") else {"offset": st}
    assert rel_err(blk(x, REF), _composed(w, x, 4, 1, **kw)) < RTOL[F64]


def test_prefix_and_prompt_prepend_and_drop():
    w = [_weights(0), _weights(1)]
    x = torch.randn(2, 7, 8, dtype=F64)
    blk = PeftMambaBlock(w[0], d_state=4, dt_rank=1, config=BENCHMARK_METHODS["Prefix-tuning"]({"prefix_len": 3})).double()
    _perturb(blk)
    P = blk.added["prefix"].prefix.detach().T  # (M, d_model)
    xp = torch.cat([P.expand(2, -1, -1), x], dim=1)
    assert rel_err(blk(x, REF), mamba_forward(w[0], xp, d_state=4, dt_rank=1)[:, 3:]) < RTOL[F64]
    stack = PeftMambaStack(w, d_state=4, dt_rank=1, config=BENCHMARK_METHODS["Prompt tuning"]({"prompt_len": 2})).double()
    _perturb(stack)
    P = stack.prompt.prefix.detach().T
    want = residual_stack([lambda h, v=v: mamba_forward(v, h, d_state=4, dt_rank=1) for v in w],
                          torch.cat([P.expand(2, -1, -1), x], dim=1))[:, 2:]
    assert rel_err(stack(x, REF), want) < RTOL[F64]


def test_additional_scan_is_a_scan_with_more_states():
    """The block with n added states equals theory.s6's scan over H + n states (A_log, W_B, W_C concatenated);
    with W_C' = 0 (the start) it equals the frozen block."""
    w = _weights()
    x = torch.randn(2, 9, 8, dtype=F64)
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=BENCHMARK_METHODS["Additional-scan"]({"states": 2})).double()
    assert rel_err(blk(x, REF), mamba_forward(w, x, d_state=4, dt_rank=1)) < RTOL[F64]
    _perturb(blk)
    add = blk.added["additional_scan"]
    xp = w["x_proj.weight"]
    w2 = dict(w, A_log=torch.cat([w["A_log"], add.A_log.detach()], 1),
              **{"x_proj.weight": torch.cat([xp[:5], add.W_B.detach(), xp[5:], add.W_C.detach()], 0)})
    assert rel_err(blk(x, REF), _composed(w2, x, 6, 1)) < RTOL[F64]


def test_dora_effective_weights():
    w = _weights()
    blk = PeftMambaBlock(w, d_state=4, dt_rank=1, config=BENCHMARK_METHODS["DoRA (Proj)"]({"rank": 2})).double()
    eff0 = blk.effective_weights()
    assert rel_err(eff0["in_proj.weight"], w["in_proj.weight"]) < RTOL[F64]  # m = ‖W‖_row: starts at W
    _perturb(blk)
    mod = blk.lora["in_proj__weight"]
    want = dora_weight(w["in_proj.weight"], mod.lora_B @ mod.lora_A, mod.magnitude)
    assert rel_err(blk.effective_weights()["in_proj.weight"], want) < RTOL[F64]
    assert blk.roles["in_proj.weight"] == "dora" and blk.roles["x_proj.weight"] == "frozen"


@pytest.mark.parametrize("method", list(BENCHMARK_METHODS))
def test_count_equals_nonzero_gradients_and_frozen_weights_stay(method):
    w = [_weights(0, torch.float32), _weights(1, torch.float32)]
    stack = PeftMambaStack(w, d_state=4, dt_rank=1, config=METHODS[method](BUDGETS[method]),
                           generator=torch.Generator().manual_seed(0))
    _perturb(stack, scale=0.05)
    params = [p for p in stack.parameters() if p.requires_grad]
    x = torch.randn(3, 10, 8)
    grads = torch.autograd.grad(stack(x, REF).square().mean(), params)
    assert sum(int((g != 0).sum()) for g in grads) == count_trainable(stack) > 0
    opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.5)
    for _ in range(3):
        loss = stack(torch.randn(3, 10, 8), REF).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = {"BitFit": {"conv1d.bias", "dt_proj.bias"}, "DoRA (Proj)": {"in_proj.weight", "out_proj.weight"}}
    for blk, wl in zip(stack.blocks, w):
        eff = blk.effective_weights()
        if method == "Additional-scan":  # the original states' A_log columns and x_proj rows: bit-identical
            assert eff["A_log"].shape == (16, 6) and torch.equal(eff["A_log"][:, :4], wl["A_log"])
            xp = eff["x_proj.weight"]  # rows [W_dt (1); W_B (4); W_B' (2); W_C (4); W_C' (2)]
            assert torch.equal(torch.cat([xp[:5], xp[7:11]]), wl["x_proj.weight"])
            eff = {k: wl[k] if k in ("A_log", "x_proj.weight") else v for k, v in eff.items()}
        for k, v in wl.items():
            if k in trained.get(method, ()):
                assert not torch.equal(eff[k], v), (method, k)  # the trained part moved
            else:
                assert torch.equal(eff[k], v), (method, k)  # frozen: bit-identical


def test_benchmark_configs_reject_what_they_cannot_do(capsys):
    with pytest.raises(ValueError, match="dora"):
        MambaPeftConfig(dora=("A_log",), lora_rank=1)
    with pytest.raises(ValueError, match="lora_rank"):
        MambaPeftConfig(dora=("in_proj.weight",))
    with pytest.raises(ValueError, match="prefix_len"):
        MambaPeftConfig(prefix_len=-1)
    with pytest.raises(ValueError, match="additional_states"):
        MambaPeftConfig(additional_states=1, sdt_channels=2)
    for argv, needle in ((["--prompt-lens", "0"], "--prompt-lens"), (["--dora-ranks", "99"], "--dora-ranks"),
                         (["--prefix-lens", "0"], "--prefix-lens")):
        with pytest.raises(SystemExit):
            mcfg.parse_args(["--preset", "tiny"] + argv)
        assert needle in capsys.readouterr().err, argv


def test_run_keys_of_existing_methods_unchanged():
    """The budget lists added for the new methods are not part of a run's config dict."""
    d = mcfg.config_dict(mcfg.make("cpu"))
    assert not set(d) & set(mcfg.BENCHMARK_BUDGET_FIELDS)


def test_methods_all_end_to_end(tmp_path):
    argv = ["--preset", "tiny", "--backend", "reference", "--out", str(tmp_path), "--methods", "all"]
    mamba_regression.main(argv)
    recs = run_records(ResultsFile(tmp_path / "peft_methods_mamba_tiny.jsonl").load())
    assert {r["method"] for r in recs} == set(mcfg.ALL_METHODS)
    assert all(r["status"] == "ok" for r in recs)
    assert (tmp_path / "peft_methods_mamba_tiny.png").stat().st_size > 0
    assert not (tmp_path / "mamba_regression_tiny.jsonl").exists()
