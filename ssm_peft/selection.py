"""SDT's selection on a real model: Algorithm 1's warm-up and channel/state choice (Galim et al., ICML 2025,
Sec. 5, Algorithm 1), with the toolkit's rule and the official code's. The synthetic Mamba-family experiments
(:mod:`synthetic.mamba`, :mod:`synthetic.mamba2`, :mod:`synthetic.hybrid`) use the same scores, rules and
index sets (:func:`abar_change`, :func:`bc_change_scores`, :func:`select_channels`, :func:`official_select`,
:func:`sdt_indices`) on their reference blocks.

``sdt_select(model, config, batches, steps)`` warms up a copy of the model on the user's batches, scores
channels and states per mixer, and returns a :class:`Selection` (saved with the adapter, in its config).

Rules (``config.rule``):
- ``"ours"``: warm up the SSM parameters in full (mamba1: ``A_log``, ``x_proj``, ``dt_proj``; mamba2:
  ``A_log``, ``dt_bias``, ``in_proj``), then score channel d by the mean over a probe batch and time of
  ``‖Ā_t^(d),after − Ā_t^(d),before‖₂`` (``Ā = exp(Δ A)``, Δ as the scan receives it, so Jamba's Δ norm is
  included); states within a channel by the same change per state (mamba1) or, for mamba2, by the change
  of their B and C rows (:func:`bc_change_scores`).
- ``"official"`` (furiosa-ai/ssm-peft ``sd_lora.py``, Mamba-1 only): warm up ``A_log`` alone; channels by
  ``Σ_h δ[d, h]²``, states by ``δ[d, h]²`` (:func:`official_select`). The official
  warm-up also trains the method's LoRA; here only ``A_log`` moves (LoRA's change does not enter the score).

Budgets: ``n_channels`` per mixer and ``n_states`` (0 = all) or, as the official configs state them,
``channel_freeze`` / ``state_freeze`` fractions (:func:`official_counts`).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ssm_peft.layouts import HF_SCAN_FUNCTIONS, MixerDims, find_mixers, hf_module, mixer_dims
from synthetic.progress import progress

Tensor = torch.Tensor
RULES = ("ours", "official")  # the toolkit's Algorithm 1 (Ā change), or the official code's (A_log change)


# --------------------------------------------------------------------------------- the rules
def select_channels(scores: Tensor, n_channels: int) -> List[int]:
    """Indices of the ``n_channels`` largest scores (ties broken by lower index), sorted ascending."""
    if not 0 <= n_channels <= scores.numel():
        raise ValueError(f"n_channels: must be in [0, {scores.numel()}], got {n_channels}")
    order = sorted(range(scores.numel()), key=lambda d: (-float(scores[d]), d))
    return sorted(order[:n_channels])


def official_select(delta_a_log: Tensor, n_channels: int, n_states: int = 0) -> Tuple[List[int], List[List[int]]]:
    """The official SDLoRA selection (furiosa-ai/ssm-peft ``mamba_ssm_peft/peft/sd_lora.py``), facts re-implemented.

    delta_a_log: (D, H) change of ``A_log`` learnt in the warm-up. Channels: the ``n_channels``
    largest ``Σ_h δ[d, h]²``; per selected channel, the ``n_states`` largest ``δ[d, h]²`` (0 = all H).
    Ties go to the lower index. Returns (channels ascending, states per channel ascending).
    """
    if delta_a_log.dim() != 2:
        raise ValueError(f"delta_a_log: expected (D, H), got shape {tuple(delta_a_log.shape)}")
    D, H = delta_a_log.shape
    if not 0 <= n_states <= H:
        raise ValueError(f"n_states: must be in [0, {H}], got {n_states}")
    sq = delta_a_log.detach().double().square().cpu()
    channels = select_channels(sq.sum(dim=1), n_channels)
    states = [select_channels(sq[c], n_states or H) for c in channels]
    return channels, states


def official_counts(D: int, H: int, channel_freeze: float, state_freeze: float) -> Tuple[int, int]:
    """(channels, states) trained per layer by the official rule: ``D − round(f_d·D)``, ``H − round(f_n·H)``."""
    for name, f in (("channel_freeze", channel_freeze), ("state_freeze", state_freeze)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name}: must be in [0, 1), got {f!r}")
    return max(1, D - int(round(channel_freeze * D))), max(1, H - int(round(state_freeze * H)))


def abar_change(dt_b: Tensor, A_b: Tensor, dt_a: Tensor, A_a: Tensor, layout: str):
    """The toolkit's channel scores: the change of ``Ā = exp(Δ A)`` from before to after the warm-up.

    mamba1: dt (Bt, D, L) (Δ as the scan uses it), A (D, H); returns (channel scores (D,), state scores (D, H)):
    the mean over batch and time of ``‖Ā_after − Ā_before‖₂`` over states and of ``|Ā_after − Ā_before|`` per
    state. mamba2: dt (Bt, L, nheads), A (nheads,); returns (head scores (nheads,), None)."""
    if layout == "mamba1":
        ab = lambda dt, A: torch.exp(dt[..., None] * A[None, :, None, :])  # noqa: E731  (Bt, D, L, H)
        diff = ab(dt_a, A_a) - ab(dt_b, A_b)
        return torch.linalg.vector_norm(diff, dim=-1).mean(dim=(0, 2)), diff.abs().mean(dim=(0, 2))
    ab = lambda dt, A: torch.exp(dt * A)  # noqa: E731  dt (Bt, L, nheads), A (nheads,)
    return (ab(dt_a, A_a) - ab(dt_b, A_b)).abs().mean(dim=(0, 1)), None


def bc_change_scores(W_before: Tensor, W_after: Tensor, dims: MixerDims) -> Tensor:
    """mamba2's state scores (G, N): ``‖ΔW_B[g, n]‖ + ‖ΔW_C[g, n]‖``, the warm-up change of in_proj's B and C rows of
    state n in group g (the heads of a group share one decay per head, so Ā cannot rank its states)."""
    a, n = 2 * dims.d_inner, dims.G * dims.H
    dW = (W_after[a:a + 2 * n] - W_before[a:a + 2 * n]).float()  # (2GN, d_model)
    norms = torch.linalg.vector_norm(dW, dim=1).reshape(2, dims.G, dims.H)
    return (norms[0] + norms[1]).detach()


def sdt_indices(dims: MixerDims, entry: dict, dt: bool = False, in_features: Optional[int] = None
                ) -> Dict[str, List[int]]:
    """Flat indices of SDT's trainable entries per parameter path of one mixer (see :class:`ssm_peft.SDTConfig`).

    entry: ``{"channels": [...], "states": [[...], ...]}`` of :class:`Selection`. mamba1: ``A_log`` at the
    selected (channel, state) pairs, ``x_proj.weight`` rows R..R+2H (W_B, W_C) at the selected channels' columns,
    with ``dt`` the selected rows of ``dt_proj.weight`` and entries of ``dt_proj.bias``. mamba2: ``A_log`` of the
    selected heads, the whole ``in_proj.weight`` rows (``in_features`` columns) of the selected B/C states in the
    groups holding a selected head, with ``dt`` the heads' ``dt_bias`` entries.
    """
    channels, states = [int(c) for c in entry["channels"]], entry["states"]
    if any(not 0 <= c < dims.D for c in channels) or len(set(channels)) != len(channels):
        raise ValueError(f"selection: channels must be distinct indices in [0, {dims.D}), got {channels}")
    n_lists = len(channels) if dims.layout == "mamba1" else dims.G
    if len(states) != n_lists:
        raise ValueError(f"selection: {dims.layout} needs one state list per "
                         f"{'channel' if dims.layout == 'mamba1' else 'group'} ({n_lists}), got {len(states)}")
    states = [[int(s) for s in st] for st in states]
    if any(not 0 <= s < dims.H for st in states for s in st) or any(len(set(st)) != len(st) for st in states):
        raise ValueError(f"selection: states must be distinct indices in [0, {dims.H}) per list, got {states}")
    flat = lambda rows, cols, n: [r * n + c for r in rows for c in cols]  # noqa: E731
    out = {}
    if dims.layout == "mamba1":
        out["A_log"] = [c * dims.H + s for c, st in zip(channels, states) for s in st]
        out["x_proj.weight"] = flat(range(dims.R, dims.R + 2 * dims.H), channels, dims.D)
        if dt:
            out["dt_proj.weight"] = flat(channels, range(dims.R), dims.R)
            out["dt_proj.bias"] = list(channels)
        return out
    out["A_log"] = list(channels)
    groups = sorted({c // (dims.D // dims.G) for c in channels})
    rows = sorted(r for g in groups for n in states[g] for r in dims.bc_rows(g, n))
    out["in_proj.weight"] = flat(rows, range(in_features), in_features)
    if dt:
        out["dt_bias"] = list(channels)
    return out


@dataclass
class Selection:
    """SDT's choice per mixer: ``layers[name] = {"channels": [...], "states": [[...], ...]}``.

    mamba1: ``states`` has one list per selected channel (A_log states of that channel). mamba2: one list per
    group (B/C states of that group; used in the groups holding a selected head). ``rule``: how it was made.
    """

    layers: Dict[str, dict] = field(default_factory=dict)
    rule: str = "ours"

    def to_dict(self) -> dict:
        return {"rule": self.rule, "layers": {k: {"channels": list(map(int, v["channels"])),
                                                  "states": [list(map(int, s)) for s in v["states"]]}
                                              for k, v in self.layers.items()}}

    @classmethod
    def from_dict(cls, d) -> "Selection":
        """From :meth:`to_dict`'s form (a Selection itself is returned as is)."""
        if isinstance(d, Selection):
            return d
        if not isinstance(d, dict) or "layers" not in d:
            raise ValueError("selection: expected a dict with 'layers' (from Selection.to_dict)")
        return cls(layers={k: {"channels": list(v["channels"]), "states": [list(s) for s in v["states"]]}
                           for k, v in d["layers"].items()}, rule=d.get("rule", "ours"))


def budget(dims: MixerDims, config) -> tuple:
    """(channels, states) per mixer from ``config``: explicit counts, or the official freeze fractions."""
    if getattr(config, "channel_freeze", None) is not None:
        return official_counts(dims.D, dims.H, config.channel_freeze, config.state_freeze or 0.0)
    n_ch = min(int(config.n_channels), dims.D)
    n_st = dims.H if not config.n_states else min(int(config.n_states), dims.H)
    return n_ch, n_st


def first_selection(model: nn.Module, config) -> Selection:
    """A selection with no warm-up: the first channels and states (for tests and a deterministic start)."""
    layers = {}
    for name, mixer, spec in find_mixers(model):
        dims = mixer_dims(mixer, spec.layout)
        n_ch, n_st = budget(dims, config)
        groups = dims.G if spec.layout == "mamba2" else n_ch
        layers[name] = {"channels": list(range(n_ch)), "states": [list(range(n_st))] * groups}
    return Selection(layers, rule="first")


# --------------------------------------------------------------------------------- warm-up
def _as_inputs(batch) -> dict:
    if isinstance(batch, Tensor):
        return {"input_ids": batch, "labels": batch}
    batch = dict(batch)
    batch.setdefault("labels", batch["input_ids"])
    return batch


def _warmup_params(mixer: nn.Module, layout: str, rule: str) -> List[Tensor]:
    if rule == "official":
        return [mixer.A_log]
    if layout == "mamba1":
        return [mixer.A_log, mixer.x_proj.weight, mixer.dt_proj.weight, mixer.dt_proj.bias]
    return [mixer.A_log, mixer.dt_bias, mixer.in_proj.weight]


def _record_delta(model: nn.Module, mixers, batch: dict) -> Dict[str, Tensor]:
    """Δ as each transformers mixer's scan receives it (after bias and softplus), on one batch: name -> (Bt, ·, L)."""
    out, current, patched = {}, [None], []
    for name, mixer, spec in mixers:
        if spec.source != "transformers":
            raise NotImplementedError(f"sdt_select: {type(mixer).__name__} at {name!r}: the warm-up scores read Δ from "
                                      "transformers' scan functions; for other mixers pass a Selection made by hand")
        module, fn_name = hf_module(mixer), HF_SCAN_FUNCTIONS[spec.layout][1]
        if not any(m is module for m, _, _ in patched):
            original = getattr(module, fn_name)

            def recorder(*args, _orig=original, _layout=spec.layout, **kw):
                dt = args[1]
                bias = kw.get("delta_bias" if _layout == "mamba1" else "dt_bias")
                if bias is not None:
                    dt = dt + (bias[:, None] if _layout == "mamba1" else bias).to(dt.dtype)
                if kw.get("delta_softplus", kw.get("dt_softplus", False)):
                    dt = F.softplus(dt)
                out[current[0]] = dt.detach().float()
                return _orig(*args, **kw)
            setattr(module, fn_name, recorder)
            patched.append((module, fn_name, original))
    handles = [mixer.register_forward_pre_hook(lambda m, a, n=name: current.__setitem__(0, n))
               for name, mixer, _ in mixers]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(**{k: v for k, v in batch.items() if k != "labels"})
            model.train(was)
    finally:
        for h in handles:
            h.remove()
        for module, fn_name, original in patched:
            setattr(module, fn_name, original)
    return out


def sdt_select(model: nn.Module, config, batches: Iterable, steps: int = 20, lr: float = 1e-3,
               show_progress: bool = True) -> Selection:
    """Algorithm 1's warm-up on a copy of ``model`` and the selection per mixer (see the module docstring).

    model: a transformers causal LM with supported mixers (unchanged). config: an :class:`ssm_peft.SDTConfig`
    (its ``rule`` and budget). batches: an iterable of ``input_ids`` tensors (Bt, L) or dicts for the model
    (labels default to input_ids); it is cycled for ``steps`` AdamW steps (lr ``lr``, no weight decay, so the
    warm-up change is the learnt change). Returns a :class:`Selection`.
    """
    rule = config.rule
    if rule not in RULES:
        raise ValueError(f"rule: one of {RULES}, got {rule!r}")
    batches = [_as_inputs(b) for b in itertools.islice(batches, max(int(steps), 1))]
    if not batches:
        raise ValueError("batches: need at least one batch")
    mixers = find_mixers(model)
    for name, mixer, spec in mixers:
        if rule == "official" and spec.layout != "mamba1":
            raise NotImplementedError(f"rule 'official' on {type(mixer).__name__} ({name!r}): the official code "
                                      "(furiosa-ai/ssm-peft) selects for Mamba-1 only; use rule 'ours'")
    warm = copy.deepcopy(model)
    warm.train()
    warm.requires_grad_(False)
    warm_mixers = dict((n, m) for n, m, _ in find_mixers(warm))
    params = [p for name, _, spec in mixers for p in _warmup_params(warm_mixers[name], spec.layout, rule)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for i in progress(range(int(steps)), desc="SDT warm-up", enabled=show_progress):
        loss = warm(**batches[i % len(batches)]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe = batches[0]
    dt_before = _record_delta(model, mixers, probe) if rule == "ours" else {}
    dt_after = _record_delta(warm, [(n, warm_mixers[n], s) for n, _, s in mixers], probe) if rule == "ours" else {}
    layers = {}
    for name, mixer, spec in mixers:
        dims = mixer_dims(mixer, spec.layout)
        n_ch, n_st = budget(dims, config)
        A_b = -torch.exp(mixer.A_log.detach().float())
        A_a = -torch.exp(warm_mixers[name].A_log.detach().float())
        if rule == "official":
            channels, states = official_select(warm_mixers[name].A_log.detach() - mixer.A_log.detach(), n_ch, n_st)
        elif spec.layout == "mamba1":
            ch_scores, st_scores = abar_change(dt_before[name], A_b, dt_after[name], A_a, "mamba1")
            channels = select_channels(ch_scores, n_ch)
            states = [select_channels(st_scores[c], n_st) for c in channels]
        else:
            channels = select_channels(abar_change(dt_before[name], A_b, dt_after[name], A_a, "mamba2")[0], n_ch)
            scores = bc_change_scores(mixer.in_proj.weight.detach(), warm_mixers[name].in_proj.weight.detach(), dims)
            states = [select_channels(s, n_st) for s in scores]
        layers[name] = {"channels": channels, "states": states}
    del warm
    return Selection(layers, rule=rule)
