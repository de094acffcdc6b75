"""`fusescope dissect RUN_RGB RUN_DEPTH RUN_JOINT --out REPORT`: the dissection protocol and its
report. `register` adds the sub-command to the main parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusescope.errors import FusescopeError

# Sub-command bodies import their modules when they run, so `fusescope --help` and argument
# errors answer without loading torch and the models.


def register(subparsers: argparse._SubParsersAction) -> None:
    from fusescope.engine.device import (
        add_device_argument,
        non_negative_int,
        positive_float,
        positive_int,
    )

    p = subparsers.add_parser(
        "dissect",
        help="what each modality contributes: Set IoU, SVar, CKA, Grad-CAM, as a report",
        description="Dissect an RGB-only run, a depth-only run and a joint run (two-stream: "
        "two_stream_concat; or multi-stream: cen, asymfusion, tokenfusion, geminifusion, ...) "
        "with the protocol of 'Dissecting RGB-D Learning for Improved "
        "Multi-modal Fusion'; or one classification run (fusescope.dissect.classification). "
        "Writes REPORT/index.html, results.json and PNG plots.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="RUN_RGB RUN_DEPTH RUN_JOINT: the RGB-only model (model: unimodal), the "
        "depth-only model and the joint model (two_stream_concat, or a multi-stream model: "
        "its streams are the joint features, their concatenation the fused one); or one "
        "classification RUN (per-modality contribution of each label, CKA, Grad-CAM)",
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--split",
        default="test",
        help="probe split, or splits joined by '+' (e.g. val+test: more probe images; never "
        "the runs' training split) (default: test)",
    )
    p.add_argument(
        "--probe-size", type=non_negative_int, default=200, help="first N probe images (0: all)"
    )
    p.add_argument(
        "--probe-frames",
        type=probe_frames,
        default="auto",
        metavar="N",
        help="known-answer data: probe on N frames newly rendered by the data folder's "
        "generator (a seed none of the runs trained on) instead of the split; 'auto' "
        "(default): --probe-size of them when the folder was generated and the split holds "
        "fewer; 0: the split",
    )
    p.add_argument("--batch-size", type=int, default=16, help="probe batch (>= 4; CKA batch)")
    p.add_argument(
        "--level",
        type=non_negative_int,
        action="append",
        dest="levels",
        metavar="L",
        help="encoder level for Net2Vec/SVar, 0 = stride 4 (repeatable; default: 1 and the "
        "deepest with a map of at least 6 cells on its short side)",
    )
    p.add_argument("--epochs", type=positive_int, default=30, help="Net2Vec epochs (paper: 30)")
    p.add_argument("--lr", type=positive_float, default=0.05, help="Net2Vec learning rate")
    p.add_argument(
        "--pixels",
        type=int,
        default=None,
        help="label pixels per image drawn at random for each Net2Vec step (0: every pixel; "
        "Set IoU is always scored on every pixel) (default: 1024)",
    )
    p.add_argument(
        "--cka",
        choices=["minibatch", "exact"],
        default="minibatch",
        help="minibatch (bounded memory) or exact full-set CKA",
    )
    p.add_argument(
        "--gradcam-images", type=non_negative_int, default=3, help="examples per cue group"
    )
    p.add_argument(
        "--threshold",
        default="0.5",
        help="classification: sigmoid threshold of the per-class F1s (default 0.5, the "
        "published convention and eval's headline), or 'tuned' (chosen on the val split)",
    )
    p.add_argument(
        "--gradcam-region",
        choices=["label", "predicted"],
        default="label",
        help="sum the class score over the labelled pixels (the paper) or the predicted ones",
    )
    p.add_argument(
        "--folds", type=int, default=2, help="k-fold held-out Set IoU over the probe images (>= 2)"
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=3,
        help="k-fold splits drawn; Set IoU, noise floor and SVar are reported as mean and spread "
        "(default: 3; 5 steadies the spread the known-answer verdicts are judged by, at 1.8x "
        "the probes' time)",
    )
    p.add_argument(
        "--data-root", default=None, help="probe data folder (default: the joint run's data.root)"
    )
    add_device_argument(p)
    p.add_argument(
        "--train",
        nargs=3,
        metavar=("CFG_RGB", "CFG_DEPTH", "CFG_JOINT"),
        help="first train these configs into the three run folders (finished runs are kept)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for --train (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or stage lines")
    p.set_defaults(func=cmd_dissect)


def cmd_dissect(args: argparse.Namespace) -> None:
    from fusescope.console import stage
    from fusescope.dissect.protocol import (
        PROBE_PIXELS,
        DissectOptions,
        dissect,
        load_runs,
        train_runs,
    )
    from fusescope.dissect.report import write_report
    from fusescope.engine.device import resolve_device

    if args.batch_size < 4:
        raise FusescopeError("--batch-size must be >= 4 (debiased CKA per batch)")
    if args.folds < 2:
        raise FusescopeError(
            f"--folds {args.folds}: held-out Set IoU needs at least 2 folds (each image scored "
            f"by a probe trained on the others)"
        )
    if args.pixels is not None and args.pixels < 0:
        raise FusescopeError(f"--pixels must be >= 0 (0: every pixel), got {args.pixels}")
    device = str(resolve_device(args.device))  # before any training or loading
    if len(args.runs) == 1 and not args.train:
        cmd_dissect_classifier(args, device)
        return
    if len(args.runs) != 3:
        raise FusescopeError(
            f"fusescope dissect takes RUN_RGB RUN_DEPTH RUN_JOINT (segmentation) "
            f"or one classification RUN; got {len(args.runs)} runs"
        )
    runs_dirs = list(args.runs)
    if args.train:
        stage("training the three runs (finished ones are kept)", not args.quiet)
        train_runs(args.train, runs_dirs, args.set)
    opts = DissectOptions(
        split=args.split,
        probe_size=args.probe_size or None,
        probe_frames=args.probe_frames,
        batch_size=args.batch_size,
        levels=args.levels,
        epochs=args.epochs,
        lr=args.lr,
        pixels=(args.pixels or None) if args.pixels is not None else PROBE_PIXELS,
        cka_method=args.cka,
        gradcam_images=args.gradcam_images,
        gradcam_region=args.gradcam_region,
        folds=args.folds,
        seeds=args.seeds,
        data_root=args.data_root,
        device=device,
    )
    stage("loading the three runs", not args.quiet)
    runs = load_runs(*runs_dirs, device=device)
    result = dissect(runs, opts, progress=not args.quiet)
    stage(f"writing the report to {args.out}", not args.quiet)
    index = write_report(result, Path(args.out))
    spec = result.results["specialisation"]
    print(spec["rgb"]["sentence"])
    print(spec["depth"]["sentence"])
    for lvl, by_level in result.results["specialisation_by_level"].items():
        for key, verdict in by_level.get("known_answer", {}).items():
            d = by_level["known_answer_detail"][key]
            print(
                f"  stage {int(lvl) + 1}  {key.replace('_', ' ')}: {verdict} "
                f"(lead {d['lead']:+.3f} +- {d['lead_sd']:.3f}, threshold {d['threshold']:.3f})"
            )
    for row in result.results["svar"]:
        print(
            f"  group {row['group']}  {row['pair']:<40s} stage {row['level'] + 1}"
            f"  SVar {row['svar']:+9.2f} +- {row['svar_sd']:.2f}"
        )
    # the last line: where to look (absolute, and as a URL a terminal or browser opens)
    print(f"report: {index.resolve()}  (open {index.resolve().as_uri()})")


def probe_frames(value: str) -> int | str:
    """`--probe-frames`: "auto" or an integer >= 0."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: 'auto' or an integer >= 0")
    return count


def _threshold(value: str) -> float | str:
    """`--threshold`: a number in (0, 1) or "tuned"."""
    if value == "tuned":
        return value
    try:
        return float(value)
    except ValueError:
        raise FusescopeError(f"--threshold {value!r}: a number in (0, 1) or 'tuned'") from None


def cmd_dissect_classifier(args: argparse.Namespace, device: str) -> None:
    """One classification run: per-modality contribution of each label, CKA, Grad-CAM."""
    from fusescope.console import stage
    from fusescope.dissect.classification import dissect_classifier, write_classification_report
    from fusescope.engine.checkpoint import load_run

    run = load_run(args.runs[0], device=device)
    if run.cfg.get("task", "segmentation") != "classification":
        raise FusescopeError(
            f"{args.runs[0]}: a {run.cfg.get('task', 'segmentation')} run; "
            f"segmentation dissection takes RUN_RGB RUN_DEPTH RUN_JOINT"
        )
    stage("dissecting the classifier", not args.quiet)
    result = dissect_classifier(
        run,
        split=args.split,
        probe_size=args.probe_size or None,
        batch_size=args.batch_size,
        device=device,
        gradcam_images=args.gradcam_images,
        progress=not args.quiet,
        threshold=_threshold(args.threshold),
    )
    index = write_classification_report(result, Path(args.out))
    for group, verdict in result["verdicts"].items():
        drops = ", ".join(
            f"without {m} {by[group]:+.3f}" for m, by in result["f1_drop_by_cue"].items()
        )
        print(f"  {group}-cue labels: {verdict} (F1 lost: {drops})")
    print(f"report: {index.resolve()}  (open {index.resolve().as_uri()})")
