"""Mamba (S6) blocks (Galim et al., ICML 2025, Sec. 6.1 and Table 2): the pure-torch reference block with
mamba-ssm's layout, the PEFT wrappers and their registry, the regression experiment and the benchmark."""
