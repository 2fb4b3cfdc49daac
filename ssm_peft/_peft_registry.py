"""Registration of the SSM methods with peft's internals, in one place, with the tested version range.

peft looks methods up by ``PeftType`` (an Enum) in ``PEFT_TYPE_TO_CONFIG_MAPPING`` /
``PEFT_TYPE_TO_TUNER_MAPPING``; :func:`register` adds three members (``SDT``, ``SSM_STATE_OFFSET``,
``SSM_INITIAL_STATE``) and calls ``peft.utils.register_peft_method`` for each. The tuner relies on
BaseTuner's state-dict hooks (``_get_adapter_state_dict``, ``_remap_adapter_state_dict_for_load``) and on
transformers' module-level scan functions (:mod:`ssm_peft.state`), so versions outside :data:`TESTED`
are refused with the range, rather than failing somewhere inside. ``SSM_PEFT_UNTESTED_VERSIONS=1`` in the
environment turns the refusal into a warning (for a machine whose packages cannot be changed, e.g. a GPU image
without network: run the tests there and record the versions with the results).
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata

from packaging.version import Version

# Tested: peft 0.21.2 with transformers 5.24.0 (CPU torch 2.13). Keep in step with pyproject's [hf] extra.
TESTED = {"peft": ("0.21.2", "0.22"), "transformers": ("5.24.0", "5.25")}
ALLOW_UNTESTED = "SSM_PEFT_UNTESTED_VERSIONS"  # environment variable: "1" = warn instead of refusing
METHODS = {"SDT": "sdt_", "SSM_STATE_OFFSET": "ssm_offset_", "SSM_INITIAL_STATE": "ssm_h0_"}  # type -> prefix


def check_versions() -> None:
    """ImportError naming the package, its version and the tested range when outside it (a warning instead when
    the environment sets ``SSM_PEFT_UNTESTED_VERSIONS=1``)."""
    for pkg, (lo, hi) in TESTED.items():
        try:
            v = Version(metadata.version(pkg))
        except metadata.PackageNotFoundError:
            raise ImportError(f"ssm_peft needs {pkg}>={lo},<{hi}: pip install '.[hf]'") from None
        if not Version(lo) <= v < Version(hi):
            if os.environ.get(ALLOW_UNTESTED) == "1":
                warnings.warn(f"ssm_peft: {pkg} {v} is outside the tested range >={lo},<{hi} ({ALLOW_UNTESTED}=1)",
                              stacklevel=2)
                continue
            raise ImportError(f"ssm_peft is tested with {pkg}>={lo},<{hi}; found {pkg} {v}. Install the tested range "
                              f"(pip install '.[hf]') or extend ssm_peft._peft_registry.TESTED after running "
                              f"tests/test_ssm_peft*.py")


def peft_type(name: str):
    """The ``peft.PeftType`` member ``name``, added to the Enum if peft does not have it."""
    from peft.utils.peft_types import PeftType

    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_, member._value_ = name, name
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


_DONE = []


def register() -> None:
    """Check the versions, then register the three methods with peft (once per process)."""
    if _DONE:
        return
    check_versions()
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    from ssm_peft.config import InitialStateConfig, SDTConfig, StateOffsetConfig
    from ssm_peft.tuner import InitialStateModel, SDTModel, StateOffsetModel

    for name, config_cls, model_cls in (("SDT", SDTConfig, SDTModel),
                                        ("SSM_STATE_OFFSET", StateOffsetConfig, StateOffsetModel),
                                        ("SSM_INITIAL_STATE", InitialStateConfig, InitialStateModel)):
        member = peft_type(name)
        if member not in PEFT_TYPE_TO_CONFIG_MAPPING:
            register_peft_method(name=name.lower(), config_cls=config_cls, model_cls=model_cls, prefix=METHODS[name])
    _DONE.append(True)
