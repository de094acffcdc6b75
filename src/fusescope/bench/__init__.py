"""Benchmarks that print figures: the known-answer benchmark and demo, robustness."""

# `fusescope demo`'s budget, sized to finish in a few minutes on 2 CPU cores (`fusescope bench
# known-answer` is the full one). Here, not in known_answer.py, so the command line's help shows
# it without loading torch.
DEMO_DEFAULTS = {"steps": 250, "fusion": "early_concat", "num": 400, "size": (96, 128)}
