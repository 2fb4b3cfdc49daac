"""The paper's SSM-side PEFT methods on real models (Galim et al., ICML 2025): SDT, SDLoRA, state-offset
and initial-state tuning for transformers' Mamba, Falcon-Mamba, Mamba-2, Jamba and Zamba2 mixers, in
peft's conventions::

    import peft, ssm_peft
    config = ssm_peft.SDTConfig(n_channels=8, n_states=4)
    config.selection = ssm_peft.sdt_select(model, config, batches, steps=20)
    model = peft.get_peft_model(model, config)

Modules: :mod:`ssm_peft.layouts` (where each mixer keeps its SSM parameters), :mod:`ssm_peft.sparse`
(weight-level adapters), :mod:`ssm_peft.state` (state methods inside the scan), :mod:`ssm_peft.selection`
(Algorithm 1's warm-up and selection), :mod:`ssm_peft.config` / :mod:`ssm_peft.tuner` (peft configs and
tuners), :mod:`ssm_peft._peft_registry` (registration with peft, tested version range),
:mod:`ssm_peft.finetune` (``python -m ssm_peft.finetune``).

The layout, sparse, state and selection modules do not import peft; the configs (and the registration
with peft, run on first access) need the ``hf`` extra.
"""

from ssm_peft.layouts import MIXERS, find_mixers, mixer_dims
from ssm_peft.selection import Selection, first_selection, sdt_select
from ssm_peft.sparse import LowRankDelta, SparseDelta

_PEFT_NAMES = {"SDTConfig": "config", "StateOffsetConfig": "config", "InitialStateConfig": "config",
               "SDTModel": "tuner", "StateOffsetModel": "tuner", "InitialStateModel": "tuner"}

__all__ = ["MIXERS", "find_mixers", "mixer_dims", "Selection", "first_selection", "sdt_select", "SparseDelta",
           "LowRankDelta", "register", *_PEFT_NAMES]


def register() -> None:
    """Register the methods with peft (done on first access to a config class; idempotent)."""
    from ssm_peft._peft_registry import register as _register
    _register()


def __getattr__(name):
    if name in _PEFT_NAMES:
        import importlib
        register()
        return getattr(importlib.import_module(f"ssm_peft.{_PEFT_NAMES[name]}"), name)
    raise AttributeError(f"module 'ssm_peft' has no attribute {name!r}")
