"""peft tuners of the SSM methods: which tensors of which mixers are adapted, injection, unloading, merging.

Following peft's ``tuners/<method>/model.py``, but the "layers" are parametrizations of parameters
(:mod:`ssm_peft.sparse`) and per-mixer state adapters (:mod:`ssm_peft.state`), never module wrappers:
what a fused kernel reads is the adapted tensor. One adapter per model (a second raises).

State dict: the adapter's entries are the trainable values (``delta``, LoRA factors, ``state``) and the
flat ``index`` buffers of the sparse updates, found structurally (the modules of those classes); keys
carry no adapter name, so saving and loading map them one to one.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from torch.nn.utils import parametrize

from ssm_peft.layouts import INITIAL_STATE, SDT, STATE_OFFSET, find_mixers, mixer_dims
from ssm_peft.selection import Selection, sdt_indices
from ssm_peft.sparse import LowRankDelta, SparseDelta
from ssm_peft.state import StateAdapter

Tensor = torch.Tensor
STATE_ATTR = "ssm_peft_state"  # the StateAdapter's attribute on a mixer
ADAPTER_CLASSES = (SparseDelta, LowRankDelta, StateAdapter)


def _owner(mixer: nn.Module, path: str):
    *mods, pname = path.split(".")
    owner = mixer
    for m in mods:
        owner = getattr(owner, m)
    return owner, pname


def _original(owner: nn.Module, pname: str) -> Tensor:
    if parametrize.is_parametrized(owner, pname):
        return owner.parametrizations[pname].original
    return getattr(owner, pname)


class _SSMTuner(BaseTuner):
    """Shared machinery of the three methods; subclasses set ``method`` and ``prefix``."""

    method: str = ""
    tuner_layer_cls = BaseTunerLayer  # no module is wrapped; peft's structural helpers find nothing of this class
    target_module_mapping: dict = {}

    # ----------------------------------------------------------------- injection
    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    def _create_and_replace(self, *args, **kwargs):
        raise NotImplementedError("ssm_peft adapts parameters through inject_adapter, not by replacing modules")

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        if getattr(self, "_ssm_injected", None):
            raise ValueError(f"{type(self).__name__}: one adapter per model (already holds "
                             f"{self._ssm_injected!r}); unload it first")
        config = self.peft_config[adapter_name]
        mixers = find_mixers(model)
        for name, mixer, spec in mixers:
            spec.check_method(self.method)
        self._inject(model, config, mixers)
        self._ssm_injected = adapter_name
        self._mark_only_adapters_as_trainable(model)
        if config.inference_mode:
            for m in self._adapter_modules(model):
                m.requires_grad_(False)

    def _inject(self, model, config, mixers) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- bookkeeping
    @staticmethod
    def _adapter_modules(model: nn.Module) -> List[nn.Module]:
        return [m for m in model.modules() if isinstance(m, ADAPTER_CLASSES)]

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        model.requires_grad_(False)
        for m in self._adapter_modules(model):
            m.requires_grad_(True)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        pass  # the trainable tensors are created float32 (float64 for a float64 base), see ssm_peft.sparse

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        for m in self._adapter_modules(self.model):
            m.enabled = enabled

    def enable_adapter_layers(self) -> None:
        self._enable_adapter_layers(True)

    def disable_adapter_layers(self) -> None:
        self._enable_adapter_layers(False)

    def merge_adapter(self, *args, **kwargs) -> None:
        raise NotImplementedError("ssm_peft: merge in place is not supported; use merge_and_unload()")

    def unmerge_adapter(self, *args, **kwargs) -> None:
        raise NotImplementedError("ssm_peft: merge in place is not supported; use merge_and_unload()")

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        prefixes = [n + "." for n, m in model.named_modules() if isinstance(m, ADAPTER_CLASSES)]
        return {k: v for k, v in state_dict.items() if any(k.startswith(p) for p in prefixes)}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return key

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        own = set(model.state_dict())
        peft_prefix = "base_model.model."
        return {(k if k in own or not (peft_prefix + k) in own else peft_prefix + k): v for k, v in state_dict.items()}

    # ----------------------------------------------------------------- unloading
    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: Optional[list] = None):
        if merge:
            self._check_mergeable()
        for module in list(self.model.modules()):
            params = getattr(module, "parametrizations", None)
            if params is not None:
                for pname in list(params.keys()):
                    if all(isinstance(p, (SparseDelta, LowRankDelta)) for p in params[pname]):
                        parametrize.remove_parametrizations(module, pname, leave_parametrized=merge)
            state = getattr(module, STATE_ATTR, None)
            if isinstance(state, StateAdapter):
                state.detach_hooks()
                delattr(module, STATE_ATTR)
        self.model.requires_grad_(True)
        self._ssm_injected = None
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def _check_mergeable(self) -> None:
        pass


class SDTModel(_SSMTuner):
    """SDT / SDLoRA (:class:`ssm_peft.SDTConfig`): sparse deltas on A_log, W_B/W_C (and Δ), LoRA on projections."""

    method = SDT
    prefix = "sdt_"

    def _inject(self, model, config, mixers) -> None:
        if config.selection is None:
            raise ValueError("SDTConfig.selection is None: run ssm_peft.sdt_select(model, config, batches) and pass "
                             "its result as SDTConfig(selection=...)")
        selection = Selection.from_dict(config.selection)
        missing = [n for n, _, _ in mixers if n not in selection.layers]
        if missing:
            raise ValueError(f"selection: no entry for the mixers {missing}; it was made for another model")
        for name, mixer, spec in mixers:
            dims = mixer_dims(mixer, spec.layout)
            if config.lora_rank:
                for target in config.lora_targets:
                    lin = getattr(mixer, target, None)
                    if not isinstance(lin, nn.Linear):
                        raise ValueError(f"lora_targets: {type(mixer).__name__} at {name!r} has no linear {target!r}")
                    W = _original(lin, "weight")
                    split = target == "x_proj" and config.lora_x_proj_split
                    blocks = (dims.R, dims.H, dims.H) if split else None  # W_Δ↓ (R, D), W_B, W_C (H, D)
                    parametrize.register_parametrization(lin, "weight", LowRankDelta(
                        W.shape, min(config.lora_rank, LowRankDelta.max_rank(W.shape, blocks)), config.lora_alpha,
                        W.dtype, W.device, row_blocks=blocks))
            indices = sdt_indices(dims, selection.layers[name], config.dt,
                                  mixer.in_proj.weight.shape[1])
            for path, idx in indices.items():
                owner, pname = _owner(mixer, path)
                base = _original(owner, pname)
                parametrize.register_parametrization(owner, pname, SparseDelta(base.shape, idx, base.dtype,
                                                                               base.device))


class _StateModel(_SSMTuner):
    def _inject(self, model, config, mixers) -> None:
        chosen = [(n, m, s) for n, m, s in mixers if config.layers is None or n in config.layers]
        unknown = set(config.layers or ()) - {n for n, _, _ in mixers}
        if unknown:
            raise ValueError(f"layers: not SSM mixers of this model: {sorted(unknown)}")
        for name, mixer, spec in chosen:
            dims = mixer_dims(mixer, spec.layout)
            shape = (dims.D, dims.H) if spec.layout == "mamba1" else (dims.D, dims.P, dims.H)
            base = _original(mixer, "A_log")
            ref = mixer.out_proj.weight
            adapter = StateAdapter(self.method, spec.layout, shape, ref.dtype, base.device)
            setattr(mixer, STATE_ATTR, adapter)
            adapter.attach(mixer)

    def _check_mergeable(self) -> None:
        raise ValueError(f"{self.method} tuning cannot be merged into the base weights: its trainable state enters the "
                         "scan's recurrence (an initial state / an offset added to every state read), which no weight "
                         "of the mixer can express. Keep the PeftModel, or call unload() to drop the adapter")


class StateOffsetModel(_StateModel):
    """State-offset tuning (:class:`ssm_peft.StateOffsetConfig`)."""

    method = STATE_OFFSET
    prefix = "ssm_offset_"


class InitialStateModel(_StateModel):
    """Initial-state tuning (:class:`ssm_peft.InitialStateConfig`)."""

    method = INITIAL_STATE
    prefix = "ssm_h0_"
