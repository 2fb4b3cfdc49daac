"""peft configs of the paper's SSM-side methods: SDT / SDLoRA, state-offset and initial-state tuning.

Each is a ``peft.PeftConfig`` dataclass, so ``peft.get_peft_model(model, config)``, ``save_pretrained``
(the config, with SDT's selection, goes to adapter_config.json) and ``PeftModel.from_pretrained`` work
as for peft's own methods once :mod:`ssm_peft._peft_registry` has registered them (importing
``ssm_peft`` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from peft import PeftConfig

from ssm_peft._peft_registry import peft_type
from ssm_peft.selection import RULES, Selection

LORA_TARGETS = ("in_proj", "out_proj", "x_proj", "dt_proj")  # a mixer's linear projections (x/dt_proj: Mamba-1)


@dataclass
class SDTConfig(PeftConfig):
    """SDT (Algorithm 1's sparse update of the SSM), and SDLoRA when ``lora_rank > 0``.

    Per mixer, for the selected channels (Mamba-2: heads) and states: the entries of ``A_log``; the
    matching columns of ``W_B``, ``W_C`` (Mamba-1: x_proj rows R..R+2H at the selected channels' columns,
    every state, as the official code does; Mamba-2: the in_proj rows of the selected B/C states in the
    groups holding a selected head); with ``dt``, Δ's parameters of the selected channels (Mamba-1:
    dt_proj.weight rows and dt_proj.bias entries; Mamba-2: dt_bias entries).
    """

    n_channels: int = field(default=8, metadata={"help": "channels (Mamba-2: heads) updated per mixer"})
    n_states: int = field(default=0, metadata={"help": "states per selected channel (Mamba-2: per group); 0 = all"})
    channel_freeze: Optional[float] = field(default=None, metadata={
        "help": "official budget: freeze round(f·D) channels (e.g. 0.99); overrides n_channels"})
    state_freeze: Optional[float] = field(default=None, metadata={
        "help": "official budget: freeze round(f·H) states per channel (e.g. 0.75); with channel_freeze"})
    rule: str = field(default="ours", metadata={"help": "selection rule of sdt_select: 'ours' or 'official'"})
    dt: bool = field(default=False, metadata={"help": "also train Δ's parameters of the selected channels"})
    lora_rank: int = field(default=0, metadata={"help": "SDLoRA: LoRA rank on lora_targets (0 = SDT alone)"})
    lora_alpha: Optional[float] = field(default=None, metadata={"help": "LoRA alpha (None: = rank, scaling 1)"})
    lora_targets: List[str] = field(default_factory=lambda: ["in_proj", "out_proj"], metadata={
        "help": f"mixer projections given LoRA, from {LORA_TARGETS}"})
    lora_x_proj_split: bool = field(default=False, metadata={
        "help": "LoRA on x_proj as three rank-r updates of its row blocks W_Δ↓, W_B, W_C (Mamba-1), as the "
                "official code's split x_proj: r(3·D + R + 2H) trainable instead of r(D + R + 2H)"})
    selection: Optional[dict] = field(default=None, metadata={
        "help": "the selection (Selection.to_dict()); ssm_peft.sdt_select makes it"})

    def __setattr__(self, name, value):
        if name == "selection" and isinstance(value, Selection):
            value = value.to_dict()  # stored as plain data: it is written to adapter_config.json
        super().__setattr__(name, value)

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("SDT")
        if self.rule not in RULES:
            raise ValueError(f"rule: one of {RULES}, got {self.rule!r}")
        for name in ("n_channels", "n_states", "lora_rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")
        if (self.state_freeze is not None) and self.channel_freeze is None:
            raise ValueError("state_freeze: needs channel_freeze (the official budget is given by both)")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad:
            raise ValueError(f"lora_targets: unknown {bad}; choose from {LORA_TARGETS}")
        self.lora_targets = list(self.lora_targets)
        if self.lora_x_proj_split and not (self.lora_rank and "x_proj" in self.lora_targets):
            raise ValueError("lora_x_proj_split: needs lora_rank > 0 and 'x_proj' in lora_targets")


@dataclass
class _StateConfig(PeftConfig):
    layers: Optional[List[str]] = field(default=None, metadata={
        "help": "qualified names of the mixers to adapt (None: every SSM mixer)"})


@dataclass
class StateOffsetConfig(_StateConfig):
    """State-offset tuning: a trainable ``h'`` per mixer, ``y_t = C_t (h_t + h') + D x_t`` (zero at start)."""

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("SSM_STATE_OFFSET")


@dataclass
class InitialStateConfig(_StateConfig):
    """Initial-state tuning: a trainable ``h_0`` per mixer, the scan starts from it (zero at start)."""

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("SSM_INITIAL_STATE")
