"""Constructive checks of the theory in Galim et al., *Parameter-Efficient Fine-Tuning of State
Space Models* (ICML 2025): the reference SSM core, PEFT parameterisations, and one module per
result (``proposition1``, ``lemma1``, ``lemma2``, ``theorem1``). ``python -m theory`` prints the
verification report.
"""

from .deep import DeepLayer, DeepSSM, deep_forward, random_deep
from .s6 import S6Params, s6_forward, selective_scan
from .ssm import DiagonalSSM, discretize_zoh, ssm_convolution, ssm_kernel, ssm_recurrence

__all__ = [
    "DeepLayer", "DeepSSM", "deep_forward", "random_deep",
    "S6Params", "s6_forward", "selective_scan",
    "DiagonalSSM", "discretize_zoh", "ssm_convolution", "ssm_kernel", "ssm_recurrence",
]
