"""Robustness to corrupted inputs: mIoU against corruption severity, summarised per run.

For each trained run folder and one corruption kind (see `fusescope.data.corruptions`), the run
is evaluated at severities 0..5 (`evaluate_run(run, corrupt="KIND:S")`); the curve is summarised
as in MultiBench (Liang et al., 2021):

    auc        the area under mIoU(severity) with severity rescaled to [0, 1] (trapezoids): the
               mean mIoU over the range, in mIoU units. MultiBench's *relative robustness*.
    relative   `auc` min-max normalised over the compared runs (MultiBench reports this: 1 = the
               most robust run compared, 0 = the least); needs two or more runs.
    effective  MultiBench's *effective robustness*: how far a run's curve lies above a reference
               run's curve shifted to the same clean score, `auc(f) - auc(ref) - (f0 - ref0)`
               (MultiBench sums the gap over levels; the normalised area keeps it in mIoU units
               and independent of the number of levels). The reference is the first run (put a
               late-fusion baseline first to match MultiBench).

Corruption randomness is seeded per sample by the data set, so a curve is repeatable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusescope.data.corruptions import KINDS, MAX_SEVERITY, make_corruption
from fusescope.engine.evaluate import evaluate_run
from fusescope.io import write_json

SEVERITIES = tuple(range(MAX_SEVERITY + 1))

EvaluateFn = Callable[..., dict]


def normalized_auc(values: Sequence[float], severities: Sequence[float] = SEVERITIES) -> float:
    """Trapezoid area under `values(severities)` with the severity axis rescaled to [0, 1].

    A flat curve at height h has area h; a line from h to 0 has area h / 2.
    """
    x = np.asarray(severities, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need matching severities and values (>= 2), got {x.size} and {y.size}")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"severities must increase, got {list(severities)}")
    x = (x - x[0]) / (x[-1] - x[0])
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x) / 2))


def effective_robustness(
    values: Sequence[float], reference: Sequence[float], severities: Sequence[float] = SEVERITIES
) -> float:
    """Area between a curve and the reference curve shifted to the curve's clean score."""
    values, reference = np.asarray(values, float), np.asarray(reference, float)
    shifted = reference + (values[0] - reference[0])
    return normalized_auc(values - shifted, severities)


def minmax(scores: Sequence[float]) -> list[float]:
    """Min-max normalisation over compared runs; all-equal scores (or one run) give 1.0 each."""
    s = np.asarray(scores, dtype=np.float64)
    span = s.max() - s.min()
    if span <= 0:
        return [1.0] * len(s)
    return [float(v) for v in (s - s.min()) / span]


@dataclass
class RobustnessResult:
    """Curves and summaries for several runs under one corruption kind."""

    kind: str
    severities: list[int]
    runs: list[str]  # display names, in the order given
    miou: list[list[float]]  # [run][severity]
    auc: list[float] = field(default_factory=list)
    relative: list[float] = field(default_factory=list)
    effective: list[float] = field(default_factory=list)

    @classmethod
    def from_curves(
        cls,
        kind: str,
        severities: Sequence[int],
        runs: Sequence[str],
        miou: Sequence[Sequence[float]],
    ) -> RobustnessResult:
        curves = [list(map(float, c)) for c in miou]
        auc = [normalized_auc(c, severities) for c in curves]
        effective = [effective_robustness(c, curves[0], severities) for c in curves]
        return cls(kind, list(severities), list(runs), curves, auc, minmax(auc), effective)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "severities": self.severities,
            "runs": [
                {"run": r, "miou": m, "auc": a, "relative": rel, "effective": e}
                for r, m, a, rel, e in zip(
                    self.runs, self.miou, self.auc, self.relative, self.effective, strict=True
                )
            ],
        }

    def table(self) -> str:
        """A plain-text table: one row per run, mIoU (%) per severity and the summaries."""
        name_w = max(8, *(len(r) for r in self.runs))
        head = (
            f"{'run':<{name_w}} "
            + " ".join(f"{'s' + str(s):>6}" for s in self.severities)
            + f" {'AUC':>6} {'rel':>5} {'eff':>6}"
        )
        lines = [
            f"robustness to {self.kind} ({KINDS[self.kind].parameter} per severity: "
            f"{', '.join(str(v) for v in KINDS[self.kind].levels)})"
            if self.kind in KINDS
            else f"robustness to {self.kind}",
            head,
        ]
        for r, m, a, rel, e in zip(
            self.runs, self.miou, self.auc, self.relative, self.effective, strict=True
        ):
            lines.append(
                f"{r:<{name_w}} "
                + " ".join(f"{100 * v:6.1f}" for v in m)
                + f" {100 * a:6.1f} {rel:5.2f} {100 * e:+6.1f}"
            )
        lines += self.legend()
        return "\n".join(lines)

    def legend(self) -> list[str]:
        """What each summary column means, for a reader who has not read this module."""
        ref, last = self.runs[0], self.severities[-1]
        return [
            f"s0..s{last}: mIoU (%) at each severity (s0: clean inputs).",
            f"AUC: the area under the run's mIoU curve with severities 0..{last} scaled to "
            "0..1, i.e. its mIoU averaged over the severities (trapezoid rule).",
            "rel: AUC rescaled over the runs compared here (1 = the most robust of them, "
            "0 = the least).",
            f"eff: effective robustness against {ref}, in mIoU points: how far, on average over "
            f"the severities, the run's curve stays above {ref}'s curve shifted to start at "
            f"the run's clean score; "
            f"> 0: the run loses less under corruption than {ref}, < 0: it loses more "
            f"({ref} itself is 0).",
        ]

    def plot(self, path: str | os.PathLike) -> Path:
        """Save mIoU-vs-severity curves (one line per run) as an image (matplotlib, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        for r, m, a in zip(self.runs, self.miou, self.auc, strict=True):
            ax.plot(
                self.severities, [100 * v for v in m], marker="o", label=f"{r} (AUC {100 * a:.1f})"
            )
        ax.set_xlabel(f"{self.kind} severity")
        ax.set_ylabel("mIoU (%)")
        ax.set_xticks(self.severities)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def run_names(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Folder names, or full paths where two runs share a folder name."""
    names = [Path(r).name or str(r) for r in run_dirs]
    if len(set(names)) < len(names):
        return [str(r) for r in run_dirs]
    return names


def severity_curve(
    run_dir: str | os.PathLike,
    kind: str,
    severities: Sequence[int] = SEVERITIES,
    evaluate: EvaluateFn | None = None,
    **eval_kwargs,
) -> list[float]:
    """mIoU of one run at each severity of `kind` (evaluated with `corrupt="KIND:S"`)."""
    if evaluate is None:
        evaluate = evaluate_run
    specs = [make_corruption(f"{kind}:{s}").spec for s in severities]  # fail before evaluating
    return [
        float(evaluate(run_dir, corrupt=spec if s else None, **eval_kwargs)["miou"])
        for s, spec in zip(severities, specs, strict=True)
    ]


def robustness(
    run_dirs: Sequence[str | os.PathLike],
    kind: str,
    severities: Sequence[int] = SEVERITIES,
    out: str | os.PathLike | None = None,
    evaluate: EvaluateFn | None = None,
    echo: Callable[[str], None] | None = print,
    **eval_kwargs,
) -> RobustnessResult:
    """Evaluate every run at every severity; print the table, save plot and JSON under `out`.

    Args:
        run_dirs: trained run folders (the first is the effective-robustness reference).
        kind: a corruption kind (`fusescope.data.corruptions.KINDS`).
        severities: increasing severities, 0 (clean) first.
        out: folder for `robustness_<kind>.png` and `.json`; None writes nothing.
        evaluate: `(run_dir, corrupt=spec|None, **eval_kwargs) -> {"miou": ...}`; default
            `fusescope.engine.evaluate.evaluate_run`. Tests pass a fake.
        echo: where the table goes (None: nowhere, and no progress bar either).
        **eval_kwargs: passed to `evaluate` (split, device, batch_size, ...).
    """
    severities = [int(s) for s in severities]
    for s in severities:
        make_corruption(f"{kind}:{s}")  # a bad kind or severity fails before any evaluation
    if not run_dirs:
        raise ValueError("no run folders given")
    if len(severities) < 2 or severities[0] != 0:
        raise ValueError(
            f"severities must start at 0 (clean) and have two or more, got {severities}"
        )
    if evaluate is None:
        evaluate = evaluate_run
    from tqdm import tqdm

    # one evaluation per run and severity, each a pass over the split: say which one is running
    bar = tqdm(
        total=len(run_dirs) * len(severities),
        desc=f"robustness {kind}",
        unit="eval",
        disable=echo is None,
    )

    def evaluate_counted(run_dir, **kwargs):
        bar.set_postfix_str(f"{Path(run_dir).name} {kwargs.get('corrupt') or 'clean'}")
        result = evaluate(run_dir, **kwargs)
        bar.update()
        return result

    with bar:
        curves = [
            severity_curve(r, kind, severities, evaluate_counted, **eval_kwargs) for r in run_dirs
        ]
    result = RobustnessResult.from_curves(kind, severities, run_names(run_dirs), curves)
    if echo is not None:
        echo(result.table())
    if out is not None:
        out = Path(out)
        plot = result.plot(out / f"robustness_{kind}.png")
        write_json(out / f"robustness_{kind}.json", result.to_dict())
        if echo is not None:
            echo(f"wrote {plot} and {plot.with_suffix('.json')}")
    return result
