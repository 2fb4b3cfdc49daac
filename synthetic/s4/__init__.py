"""Deep S4 (Galim et al., ICML 2025, Sec. 6.1, Figure 2): the fast batched model, Algorithm 1's selection,
the methods registry, training, the paper-convention experiment and the official-convention one."""
