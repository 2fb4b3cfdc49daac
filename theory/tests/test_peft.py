"""PEFT parameterisations: LoRA merge/unmerge, SDT masks, exact trainable counts."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from theory.peft import (DoRAConfig, DoRALinear, DoRAMatrix, LoRAConfig, LoRALinear, LoRAMatrix, MaskedParameter, Role,
                         SDTMask, count_trainable, dora_weight, lora_delta, sdt_budget_mask, sdt_mask)
from theory.tests.strategies import dims, generator, seeds
from theory.tolerances import RTOL, rel_err

TOL = RTOL[torch.float64]


@given(st.data())
def test_lora_merge_unmerge_round_trips_exactly(data):
    g = generator(data.draw(seeds()))
    out_f, in_f = data.draw(dims(1, 8)), data.draw(dims(1, 8))
    r = data.draw(st.integers(1, min(out_f, in_f)))
    alpha = data.draw(st.sampled_from([None, 1.0, 16.0]))
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    b = torch.randn(out_f, generator=g, dtype=torch.float64)
    lin = LoRALinear(W, b, LoRAConfig(r, alpha), generator=g)
    with torch.no_grad():
        lin.lora_B.copy_(torch.randn(out_f, r, generator=g, dtype=torch.float64))
    x = torch.randn(5, in_f, generator=g, dtype=torch.float64)
    y = lin(x)
    assert rel_err(y, x @ (W + lin.delta_weight()).T + b) <= TOL
    assert torch.linalg.matrix_rank(lin.delta_weight()) <= r
    lin.merge()
    assert lin.merged and rel_err(lin(x), y) <= TOL
    lin.unmerge()
    assert torch.equal(lin.weight, W)  # bit-exact
    assert rel_err(lin(x), y) <= TOL


def test_lora_starts_at_the_frozen_map_and_scales():
    W = torch.randn(4, 3, dtype=torch.float64)
    lin = LoRALinear(W, None, LoRAConfig(2, alpha=8.0))
    assert lin.config.scaling == 4.0
    assert torch.equal(lin.effective_weight(), W)
    A, B = torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    assert rel_err(lora_delta(A, B, 4.0), 4.0 * B @ A) <= TOL


def test_lora_refuses_bad_config():
    with pytest.raises(ValueError, match="rank: must be >= 1"):
        LoRAConfig(0)
    with pytest.raises(ValueError, match="rank: must be <= min"):
        LoRALinear(torch.zeros(3, 2, dtype=torch.float64), None, LoRAConfig(3))
    with pytest.raises(RuntimeError, match="unmerge: not merged"):
        LoRALinear(torch.zeros(3, 2, dtype=torch.float64), None, LoRAConfig(1)).unmerge()


@st.composite
def random_masks(draw):
    D, H = draw(dims(1, 6)), draw(dims(1, 6))
    codes = draw(st.lists(st.sampled_from([0, 1, 2]), min_size=D * H, max_size=D * H))
    return SDTMask(torch.tensor(codes, dtype=torch.int8).reshape(D, H))


@given(random_masks(), seeds())
def test_count_equals_entries_with_nonzero_gradient(mask, seed):
    """count_trainable == number of entries of the effective parameter that receive a non-zero
    gradient, for masked SSM parameters plus LoRA factors (whose B starts at zero, so its first
    gradient is the only non-zero one: we check after perturbing it)."""
    g = generator(seed)
    D, H = mask.roles.shape
    base = torch.randn(D, H, generator=g, dtype=torch.float64)
    mp = MaskedParameter(base, mask.roles)
    assert count_trainable(mp) == mask.count()
    eff = mp()
    w = torch.randn(D, H, generator=g, dtype=torch.float64)
    (eff * w).sum().backward()
    assert int((mp.values.grad != 0).sum()) == mask.count()
    # gradient w.r.t. the *effective* parameter flows only into trainable positions
    eff2 = mp().detach().requires_grad_(True)
    grad_mask = torch.zeros_like(eff2).masked_scatter(mask.trainable, torch.ones(mask.count(), dtype=torch.float64))
    assert int((grad_mask != 0).sum()) == count_trainable(mp)
    assert torch.equal(mp()[mask.pruned], torch.zeros(int(mask.pruned.sum()), dtype=torch.float64))
    assert torch.equal(mp()[mask.frozen], base[mask.frozen])


@given(random_masks(), seeds())
def test_frozen_entries_bit_identical_after_adamw(mask, seed):
    """AdamW's weight decay would move frozen entries of a gradient-masked parameter; ours cannot."""
    g = generator(seed)
    D, H = mask.roles.shape
    base = torch.randn(D, H, generator=g, dtype=torch.float64)
    mp = MaskedParameter(base, mask.roles)
    lora = LoRAMatrix(torch.randn(D, H, generator=g, dtype=torch.float64), LoRAConfig(1), generator=g)
    opt = torch.optim.AdamW(list(mp.parameters()) + list(lora.parameters()), lr=1e-2, weight_decay=0.1)
    target = torch.randn(D, H, generator=g, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        ((mp() + lora() - target) ** 2).sum().backward()
        opt.step()
    assert torch.equal(mp()[mask.frozen], base[mask.frozen])
    assert bool((mp()[mask.pruned] == 0).all())
    assert count_trainable(list(mp.parameters()) + list(lora.parameters())) == mask.count() + (D + H)
    if mask.count():
        assert not torch.equal(mp()[mask.trainable], base[mask.trainable])


def test_sdt_masks_roles():
    m = sdt_mask(5, 4, channels=[1, 3], states=[[0, 2], [1]], prune_rest=True, prune_channels=[4])
    assert m.count() == 3
    assert m.roles[1].tolist() == [Role.TRAINABLE, Role.PRUNED, Role.TRAINABLE, Role.PRUNED]
    assert m.roles[0].tolist() == [Role.FROZEN] * 4 and m.roles[4].tolist() == [Role.PRUNED] * 4
    assert m.trainable_channels.tolist() == [False, True, False, True, False]
    m2 = sdt_budget_mask(6, 5, 2, 3)
    assert m2.count() == 6 and int(m2.pruned.sum()) == 0
    with pytest.raises(ValueError, match="n_channels: must be <= 6"):
        sdt_budget_mask(6, 5, 7, 1)
    with pytest.raises(ValueError, match="n_states: must be >= 0"):
        sdt_budget_mask(6, 5, 1, -1)
    with pytest.raises(ValueError, match="channels: index 9 out of range"):
        sdt_mask(5, 4, channels=[9], states=[0])
    with pytest.raises(ValueError, match="states: repeated"):
        sdt_mask(5, 4, channels=[0], states=[[1, 1]])
    with pytest.raises(ValueError, match="roles: every entry"):
        SDTMask(torch.full((2, 2), 5, dtype=torch.int8))


def test_channel_roles_broadcast():
    """A (D,) channel-role vector masks whole rows of a (D, K) parameter (e.g. columns of W)."""
    base = torch.randn(4, 3, dtype=torch.float64)
    roles = torch.tensor([0, 1, 2, 0], dtype=torch.int8)
    mp = MaskedParameter(base, roles)
    assert count_trainable(mp) == 6
    assert bool((mp()[2] == 0).all()) and torch.equal(mp()[1], base[1])


# --------------------------------------------------------------------------------------------- DoRA
def _dora_grads(detach_norm, seed=0):
    g = generator(seed)
    W = torch.randn(5, 4, generator=g, dtype=torch.float64)
    mod = DoRALinear(W, None, DoRAConfig(2, detach_norm=detach_norm), generator=g)
    with torch.no_grad():
        mod.lora_B.copy_(torch.randn(5, 2, generator=g, dtype=torch.float64))
        mod.magnitude.mul_(1.3)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    w_out = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = mod(x)
    (y * w_out).sum().backward()
    return mod, x, w_out, y


def test_dora_norm_is_detached_by_default():
    """Default (DoRA paper Sec. 4.3, peft): the gradients are those of ``m ⊙ V / c`` with the row norm
    ``c = ‖V‖`` a constant; the named option ``detach_norm=False`` differentiates through it. Forward
    values agree bit for bit; the gradients of A and B differ."""
    mod, x, w_out, y = _dora_grads(True)
    assert DoRALinear(torch.eye(3, dtype=torch.float64), None, LoRAConfig(1)).config.detach_norm  # LoRAConfig: default
    A = mod.lora_A.detach().clone().requires_grad_(True)
    B = mod.lora_B.detach().clone().requires_grad_(True)
    V = mod.weight + B @ A
    c = torch.linalg.vector_norm(V, dim=1, keepdim=True).detach()  # a constant
    ((x @ (mod.magnitude.detach()[:, None] * V / c).T) * w_out).sum().backward()
    assert rel_err(mod.lora_A.grad, A.grad) <= TOL and rel_err(mod.lora_B.grad, B.grad) <= TOL
    through, _, _, y2 = _dora_grads(False)
    assert torch.equal(y, y2)
    assert rel_err(through.lora_A.grad, mod.lora_A.grad) > 1e-3  # a different gradient, not rounding
    assert rel_err(through.magnitude.grad, mod.magnitude.grad) <= TOL  # m enters linearly either way


def test_dora_config_refuses_non_bool_detach():
    with pytest.raises(ValueError, match="detach_norm"):
        DoRAConfig(2, detach_norm="yes")


def test_dora_matrix_follows_its_config():
    W = torch.randn(4, 3, dtype=torch.float64)
    for detach in (True, False):
        m = DoRAMatrix(W, DoRAConfig(1, detach_norm=detach))
        with torch.no_grad():
            m.lora_B.fill_(0.5)
        assert rel_err(m(), dora_weight(W, m.lora_B @ m.lora_A, m.magnitude, detach_norm=detach)) <= TOL
        m().sum().backward()
        assert bool(torch.isfinite(m.lora_A.grad).all())
