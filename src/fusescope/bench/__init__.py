"""Benchmarks that print figures: the known-answer benchmark and demo, robustness."""

# `fusescope demo`'s budget, sized to finish in a few minutes on 2 CPU cores (`fusescope bench
# known-answer` is the full one). Here, not in known_answer.py, so the command line's help shows
# it without loading torch. `threads`: torch's CPU threads for every training and evaluation,
# fixed because the thread count decides the order of the kernels' additions and thus the
# table's digits (2: the count the README's table was measured with).
DEMO_DEFAULTS = {
    "steps": 250,
    "fusion": "early_concat",
    "num": 400,
    "size": (96, 128),
    "threads": 2,
}
