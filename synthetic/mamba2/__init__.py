"""Mamba-II (SSD) blocks (Galim et al., ICML 2025, Sec. 2 and App. C.2/E.2; Dao & Gu, 2024): the pure-torch
reference block with mamba-ssm's ``Mamba2`` layout, its PEFT methods registry and the synthetic regression."""
