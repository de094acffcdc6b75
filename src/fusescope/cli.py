"""The `fusescope` command line.

    fusescope demo                                  the known-answer demo (data, 3 models, table)
    fusescope data synth --out DIR --num N          generate the known-answer data set
    fusescope data prepare|hha|inspect ...          real data sets (official files), HHA, stats
    fusescope train CONFIG --out RUN [key=value]    train (resumes if RUN has a checkpoint;
                                                    --dry-run: say what it would do)
    fusescope eval RUN [--tta ...] [--json]         evaluate a run
    fusescope predict RUN --rgb A --depth B --out M predict on your own frames (a modality
                                                    left out: --rgb A --out M; --onnx FILE)
    fusescope export RUN --out model.onnx           ONNX graph + normalisation JSON beside it
    fusescope compare RUN... --out DIR              table and overlaid training curves
    fusescope bench ...                             benchmarks that print figures
    fusescope dissect ...                           what each modality contributes
    fusescope list methods|backbones|configs|tasks  what exists (from the registries)

User errors (a bad file, key or value) print one line naming it and exit with status 2; warnings
(input that is probably not what was meant) print one line `fusescope: warning: ...` and go on.
`fusescope COMMAND --help` describes every option with its default.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys
import warnings
from pathlib import Path

from fusescope import __version__
from fusescope.console import format_warning
from fusescope.errors import FusescopeError

# Command bodies import their modules when they run, so `fusescope --help` and argument errors
# answer without loading torch and the models.


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default after its help.

    argparse's ArgumentDefaultsHelpFormatter, except that a default of None, False or [] (a
    flag, nothing, or "taken from the run / config", which the help then says in words) is not
    printed, and lists print as `120 160`, the way they are typed.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or (isinstance(default, list) and not default)
            or (
                not action.option_strings
                and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
            )
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


class _SubParsers(argparse._SubParsersAction):
    """Sub-commands whose own --help starts with the line shown in the parent's list."""

    def add_parser(self, name: str, **kwargs):
        if "help" in kwargs and "description" not in kwargs:
            kwargs["description"] = kwargs["help"]
        return super().add_parser(name, **kwargs)


class Parser(argparse.ArgumentParser):
    """The fusescope parser: every sub-command (added by any module) inherits its formatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)


def _optional_register(module: str, subparsers) -> None:
    """Sub-commands contributed by a module (real data, dissection, benchmarks)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return
    mod.register(subparsers)


def cmd_synth(args: argparse.Namespace) -> None:
    import shutil

    from fusescope.data.prepare import is_data_folder
    from fusescope.data.synthetic import generate

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FusescopeError(f"{out}: a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise FusescopeError(f"{out}: exists and is not empty (use --force to replace it)")
        if not is_data_folder(out):
            raise FusescopeError(f"{out}: not a fusescope data folder; refusing to delete it")
        shutil.rmtree(out)
    meta = generate(
        out,
        num=args.num,
        seed=args.seed,
        size=tuple(args.size),
        progress=not args.quiet,
        workers=args.workers,
        modalities=args.modalities,
    )
    print(
        f"wrote {args.num} frames of {args.size[0]}x{args.size[1]} to {out} "
        f"({meta.num_classes} classes; {', '.join(meta.modalities)})"
    )


def cmd_train(args: argparse.Namespace) -> None:
    from fusescope.config import load_config
    from fusescope.engine.train import train

    config, run_config = Path(args.config), Path(args.out) / "config.yaml"
    if (
        config.is_file()
        and run_config.is_file()
        and config.resolve() == run_config.resolve()
        and not (Path(args.out) / "run.json").is_file()
    ):
        raise FusescopeError(
            f"{config}: the config being trained is the file the run writes into --out "
            f"{args.out}; move it or choose another --out"
        )
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from fusescope.engine.dry_run import describe_training

        print(describe_training(cfg, args.out))
        return
    if args.quiet:
        cfg.train.progress = False
    out = train(cfg, args.out, resume=not args.no_resume)
    if out is None:  # not the first process
        return
    print(f"run saved to {out}")
    if not args.no_eval:
        from fusescope.engine.device import training_device
        from fusescope.engine.evaluate import evaluate_run, save_eval

        # on the device the run trained on (a GPU run is not evaluated on the CPU)
        device = str(training_device(cfg.train.accelerator))
        print(
            format_result(
                save_eval(
                    out,
                    evaluate_run(
                        out, split=cfg.data.val_split, device=device, progress=not args.quiet
                    ),
                ),
                str(out),
            )
        )


def cmd_eval(args: argparse.Namespace) -> None:
    from fusescope.engine.device import resolve_device
    from fusescope.engine.evaluate import evaluate_run, save_eval

    device = str(resolve_device(args.device))
    result = save_eval(
        args.run,
        evaluate_run(
            args.run,
            split=args.split,
            tta=args.tta,
            corrupt=args.corrupt,
            window=args.window,
            batch_size=args.batch_size,
            data_root=args.data_root,
            device=device,
            progress=not args.json,
            drop=args.drop,
        ),
    )
    if args.json:
        if not result.get("finished", True):
            print(f"fusescope: warning: {unfinished_note(result, args.run)}", file=sys.stderr)
        print(json.dumps(result))
        return
    print(format_result(result, args.run))


def unfinished_note(result: dict, run: str) -> str:
    return (
        f"unfinished run: these weights were trained for {result['step']} of "
        f"{result['max_steps']} steps (`fusescope train` with the same config and "
        f"--out {run} resumes it)"
    )


def format_result(result: dict, run: str = "RUN") -> str:
    """The task's lines for an evaluation result, with a note when the run is unfinished."""
    from fusescope.tasks import task_of

    lines = task_of(result.get("task", "segmentation")).format_result(result).split("\n")
    if not result.get("finished", True):
        lines.insert(1, f"  {unfinished_note(result, run)}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> None:
    from fusescope.engine.checkpoint import load_run, require_task
    from fusescope.engine.device import resolve_device
    from fusescope.tasks.segmentation.predict import predict

    inputs = {}
    for item in args.input or []:
        if "=" not in item:
            raise FusescopeError(f"--input {item!r} is not NAME=PATH")
        name, path = item.split("=", 1)
        inputs[name] = path
    for name in ("rgb", "depth", "hha"):
        if getattr(args, name):
            inputs[name] = getattr(args, name)
    device = str(resolve_device(args.device))
    run = load_run(args.run, device=device)
    require_task(run, "segmentation", "fusescope predict")
    if args.onnx:
        from fusescope.tasks.segmentation.export import OnnxSegmentor

        run.model = OnnxSegmentor(args.onnx, run, threads=args.threads)
    from fusescope.engine.missing import absent_for_inputs, fill_rule

    absent = absent_for_inputs(run, list(inputs))
    if absent:
        print(f"note: {', '.join(absent)} absent: {fill_rule(run.model.model)}", file=sys.stderr)
    written = predict(
        run,
        inputs,
        args.out,
        tta=args.tta,
        device=device,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    print(
        f"wrote {len(written)} mask(s) and overlay(s): {written[0]}"
        + (" ..." if len(written) > 1 else "")
    )


def cmd_export(args: argparse.Namespace) -> None:
    from fusescope.engine.checkpoint import load_run, require_task
    from fusescope.tasks.segmentation.export import _require_onnx, export_run, sidecar_path

    _require_onnx()
    run = load_run(args.run)
    require_task(run, "segmentation", "fusescope export")
    info = export_run(
        run, args.out, size=tuple(args.size) if args.size else None, progress=not args.quiet
    )
    print(
        f"wrote {args.out} (opset {info['opset']}, inputs "
        f"{', '.join(info['modalities'])} normalised, output logits; ONNX Runtime vs PyTorch "
        f"max |diff| {info['max_abs_diff_vs_torch']:.2g}) and {sidecar_path(args.out)}"
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from fusescope.bench.known_answer import run_demo

    run_demo(
        Path(args.out),
        steps=args.steps,
        fusion=args.fusion,
        num=args.num,
        backbone=args.backbone,
        threads=args.threads,
    )


def build_parser() -> argparse.ArgumentParser:
    from fusescope.engine.device import add_device_argument, non_negative_int, positive_int

    parser = Parser(prog="fusescope", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"fusescope {__version__}",
        help="print the package version and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from fusescope.bench import DEMO_DEFAULTS

    p = sub.add_parser(
        "demo",
        help="generate the known-answer data, train RGB-only, "
        "depth-only and a fusion model, print the per-cue table, draw a figure",
    )
    p.add_argument(
        "--out",
        default="runs/demo",
        help="folder for the data, the three runs, results.json/.md and the figure",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"training steps per model (default: {DEMO_DEFAULTS['steps']})",
    )
    p.add_argument(
        "--fusion",
        default=None,
        help="fusion config name under configs/synthetic, "
        f"e.g. cen, late_average (default: {DEMO_DEFAULTS['fusion']})",
    )
    p.add_argument(
        "--num",
        type=positive_int,
        default=None,
        help=f"frames to generate (default: {DEMO_DEFAULTS['num']})",
    )
    p.add_argument(
        "--backbone",
        default=None,
        help="encoder of all three models, e.g. resnet34 (default: each config's, resnet18)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads for training and evaluation; the table's last digits depend "
        f"on it (default: {DEMO_DEFAULTS['threads']}, as the README's table was measured)",
    )
    p.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="data sets: synth, prepare, hha, inspect")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("synth", help="generate the known-answer RGB-D data set")
    p.add_argument("--out", required=True, help="data folder to create (new or empty)")
    p.add_argument(
        "--num", type=positive_int, default=600, help="frames (70/15/15%% train/val/test)"
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="frame i is drawn from (seed, i)"
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[120, 160],
        metavar=("H", "W"),
        help="frame height and width in pixels",
    )
    p.add_argument("--workers", type=positive_int, default=2, help="processes (same bytes for any)")
    p.add_argument(
        "--modalities",
        nargs="+",
        default=None,
        metavar="NAME",
        help="modalities to write, of rgb depth texture shade normal edge thermal "
        "(default: rgb depth; texture shade normal edge: the translation modalities; thermal "
        "adds a 16-bit thermal image and the classes only it can see)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing data folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)
    _optional_register("fusescope.data.commands", data_sub)

    p = sub.add_parser("train", help="train a config into a run folder")
    p.add_argument("config", help="YAML config, e.g. configs/synthetic/cen.yaml")
    p.add_argument(
        "--out",
        required=True,
        help="run folder (a folder with a checkpoint of this config is resumed)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over: delete the folder's old checkpoint and weights instead of resuming",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the validation at the end")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, the data, parameters, device and run folder a "
        "training would use, after its checks, and write nothing",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.max_steps=100 model.backbone=resnet34",
    )
    p.set_defaults(func=cmd_train)

    from fusescope.data.corruptions import KINDS, MAX_SEVERITY

    p = sub.add_parser("eval", help="evaluate a run folder")
    p.add_argument("run", help="run folder written by `fusescope train`")
    p.add_argument(
        "--split",
        default=None,
        help="split to evaluate (default: the run's eval.split, which is val unless "
        "the config says otherwise; the README's tables use --split test)",
    )
    p.add_argument(
        "--tta",
        default=None,
        choices=["none", "flip", "ms-flip"],
        help="test-time augmentation: flip averages with the mirrored image, "
        "ms-flip also over eval.scales (default: the run's eval.tta, none)",
    )
    p.add_argument(
        "--window",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="sliding-window inference with this crop (default: the run's "
        "eval.window, normally none: whole images)",
    )
    p.add_argument(
        "--corrupt",
        default=None,
        metavar="KIND:SEVERITY",
        help=f"corrupt the inputs, e.g. depth_noise:3; SEVERITY 1-{MAX_SEVERITY}, "
        f"KIND one of {', '.join(sorted(KINDS))}",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per forward pass (default: the run's eval.batch_size, 8)",
    )
    add_device_argument(p)
    p.add_argument(
        "--data-root",
        default=None,
        help="evaluate on another data folder (default: the run's data.root)",
    )
    p.add_argument(
        "--drop",
        action="append",
        metavar="MODALITY",
        help="evaluate with this modality absent (zeros after normalisation, or the "
        "method's own rule); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict masks for your own frames or folders")
    p.add_argument("run", help="run folder written by `fusescope train`")
    p.add_argument("--rgb", help="colour image, or a folder of them")
    p.add_argument("--depth", help="depth image in the run's data units, or a folder of them")
    p.add_argument("--hha", help="HHA image, or a folder of them")
    p.add_argument(
        "--input", action="append", metavar="NAME=PATH", help="any other modality of the run"
    )
    p.add_argument("--out", required=True, help="mask .png (or folder for folder inputs)")
    p.add_argument(
        "--tta",
        default="none",
        choices=["none", "flip", "ms-flip"],
        help="test-time augmentation (see `fusescope eval --help`)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="frames per forward pass for folders (frames of one size are batched)",
    )
    add_device_argument(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow --out to be, or be inside, an input (replacing input files)",
    )
    p.add_argument(
        "--onnx",
        metavar="FILE",
        help="run this ONNX export of RUN (fusescope "
        "export) through ONNX Runtime instead of PyTorch",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        help="processes reading the next frames of a folder while the model runs "
        "(0: read in the main process)",
    )
    p.add_argument(
        "--threads",
        type=non_negative_int,
        default=0,
        help="ONNX Runtime threads (0: all cores); with --onnx",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export",
        help="export a run to ONNX (inputs normalised; the "
        "normalisation is written beside it as JSON)",
    )
    p.add_argument("run", help="run folder written by `fusescope train`")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="example input size for tracing (height and width stay dynamic; "
        "default: the run's crop size)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    _optional_register("fusescope.engine.commands", sub)
    _optional_register("fusescope.bench.commands", sub)
    _optional_register("fusescope.dissect.commands", sub)
    _optional_register("fusescope.listing", sub)
    return parser


def _clear_progress_bars() -> None:
    """Erase the progress bars an error interrupted, so its message is a line of its own."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return
    for bar in list(getattr(std.tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = format_warning
    parser = build_parser()
    # overrides may come after --out; argparse leaves those to us
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "command", None) != "train" or any(a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        from fusescope.io import check_output_path

        # every command's output: a place it can be written, checked before any work
        for dest, what in (("out", "--out"), ("samples", "--samples")):
            if getattr(args, dest, None) is not None:
                check_output_path(getattr(args, dest), what)
        args.func(args)
    except FusescopeError as err:
        _clear_progress_bars()
        print(f"fusescope: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fusescope: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk outside fusescope's atomic writes (logs, plots)
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _clear_progress_bars()
        print(
            f"fusescope: error: {err.filename or 'a file'}: no space left on the device",
            file=sys.stderr,
        )
        return 2
    return 0
