"""Synthetic experiments of Galim et al. (ICML 2025), Sec. 6.1: deep S4 and real Mamba regressions."""
