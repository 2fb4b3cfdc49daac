"""One palette for every figure of the project: method -> colour and marker, source -> marker.

Colours come from two colour-blind-safe sets: Okabe & Ito's (2008; "Color Universal Design") eight, used for the
methods of Figure 2 (Galim et al., ICML 2025, Sec. 6.1), and Paul Tol's "muted" scheme (SRON/EPS/TN/09-002) for the
other methods of the benchmark (with a few of his "bright" and "light" colours where a muted one sat too close to a
method it is drawn beside, e.g. State-offset tuning's pink, not teal, beside SDT's bluish green). Every method has its own colour (no two entries share one) and its own marker, so a
reader who cannot tell two hues apart still tells the methods apart. Kindred methods of other experiments are
drawn like their counterpart (:data:`ALIASES`: Mamba's "LoRA (S6+Proj)" like "LoRA (S4+Proj)").

Figures with a single source of points use colour *and* marker for the method; figures that compare sources
(the paper, the official code, this toolkit) use colour for the method and marker for the source
(:data:`SOURCE_MARKERS`), each with its own legend.

No matplotlib import: the module is plain data.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["METHOD_COLORS", "METHOD_MARKERS", "ALIASES", "REFERENCE_COLORS", "SOURCE_MARKERS", "method_color",
           "method_marker", "method_style"]

# method -> colour. Okabe-Ito: #0072B2 blue, #E69F00 orange, #009E73 bluish green, #D55E00 vermillion, #CC79A7
# reddish purple, #56B4E9 sky blue; Tol muted: #882255 wine, #999933 olive, #AA4499 purple, #DDCC77 sand,
# #88CCEE cyan, #332288 indigo, #117733 green; Tol bright #CCBB44 yellow; Tol light #FFAABB pink; #661100 brown.
METHOD_COLORS: Dict[str, str] = {
    "Frozen": "#666666",                   # grey: the baseline every method must beat
    "LoRA (Proj)": "#0072B2",
    "LoRA (S4+Proj)": "#E69F00",
    "LoRA (A&C+Proj)": "#999933",
    "SDT": "#009E73",
    "SDT + LoRA": "#D55E00",
    "DoRA (Proj)": "#882255",              # wine: far from LoRA (Proj)'s blue
    "Prompt tuning": "#AA4499",
    "Prefix-tuning": "#DDCC77",
    "Initial-state tuning": "#88CCEE",
    "State-offset tuning": "#FFAABB",      # Tol light pink: teal sat too close to SDT's bluish green
    "BitFit": "#661100",
    "Additional-scan": "#332288",
    "DoRA (Lin) + DoRA (SSM)": "#117733",  # the hybrid's Table 4 rows (synthetic.hybrid)
    "DoRA (Lin) + SDT (SSM)": "#CCBB44",
    "Full": "#CC79A7",
    "construction's masks": "#56B4E9",     # Theorem 1 study: the construction's trainable set, trained
}
METHOD_MARKERS: Dict[str, str] = {
    "Frozen": "o", "LoRA (Proj)": "s", "LoRA (S4+Proj)": "D", "LoRA (A&C+Proj)": "d", "SDT": "o", "SDT + LoRA": "^",
    "DoRA (Proj)": "p", "Prompt tuning": "v", "Prefix-tuning": "<", "Initial-state tuning": ">",
    "State-offset tuning": "h", "BitFit": "X", "Additional-scan": "H", "DoRA (Lin) + DoRA (SSM)": "8",
    "DoRA (Lin) + SDT (SSM)": "*", "Full": "P", "construction's masks": "v",
}
# Counterparts drawn like the method they extend: Mamba's LoRA (S6+Proj), Mamba-II's LoRA (SSM+Proj) like
# LoRA (S4+Proj); the hybrid's "LoRA (Attn) + X" like X with LoRA on the projections; the Theorem 1 study's arms
# like the method they train (its "Oracle masks" is the construction's own trainable set).
ALIASES: Dict[str, str] = {
    "LoRA (S6+Proj)": "LoRA (S4+Proj)", "LoRA (SSM+Proj)": "LoRA (S4+Proj)",
    "LoRA (Attn) + LoRA (Proj)": "LoRA (Proj)", "LoRA (Attn) + LoRA (SSM)": "LoRA (S4+Proj)",
    "LoRA (Attn) + DoRA (SSM)": "DoRA (Proj)", "LoRA (Attn) + SDT (SSM)": "SDT + LoRA",
    "SDT (Alg. 1)": "SDT", "SDT + LoRA (Alg. 1)": "SDT + LoRA", "Oracle masks": "construction's masks",
}
# Things that are not methods: a theory construction's exact point, and its float64 MSE as a floor.
REFERENCE_COLORS: Dict[str, str] = {"Theorem 1 construction": "#000000", "paper": "#000000"}
FALLBACK_COLORS = ("#7f7f7f", "#000000", "#BBBBBB")  # a method not in the table (grey-ish: it stands out as unknown)

# Figures comparing sources: marker (and its size) and line style say where a point comes from.
SOURCE_MARKERS: Dict[str, Dict] = {
    "paper": {"marker": "*", "ms": 11, "ls": ":"},
    "official_code": {"marker": "s", "ms": 6, "ls": "--"},
    "preset": {"marker": "o", "ms": 6, "ls": "-"},
    "default_conventions": {"marker": "^", "ms": 6, "ls": "-."},
}


def _canonical(method: str) -> str:
    return ALIASES.get(method, method)


def method_color(method: str) -> str:
    """The colour of ``method`` (through :data:`ALIASES`); one of :data:`FALLBACK_COLORS`, stable across runs,
    for a method not in the table."""
    m = _canonical(method)
    if m in METHOD_COLORS:
        return METHOD_COLORS[m]
    return FALLBACK_COLORS[sum(ord(c) for c in m) % len(FALLBACK_COLORS)]


def method_marker(method: str) -> str:
    m = _canonical(method)
    return METHOD_MARKERS.get(m, "osv^"[sum(ord(c) for c in m) % 4])


def method_style(method: str) -> Dict[str, str]:
    """``{"color", "marker"}`` of a method."""
    return {"color": method_color(method), "marker": method_marker(method)}
