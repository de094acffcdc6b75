"""Record, then compare, the weights every shipped known-answer config reaches after a few
fixed-seed steps: the guard of a reshape ("record fixed-seed weights before, compare after").

    python benchmarks/behaviour_snapshot.py record --out /tmp/before
    ... reshape ...
    python benchmarks/behaviour_snapshot.py record --out /tmp/after
    python benchmarks/behaviour_snapshot.py compare /tmp/before /tmp/after

Each config under configs/synthetic, configs/translation and configs/classification trains
`--steps` steps (default 20) on tiny data made here (the known-answer generators, seed 0), on one
thread, with its backbone set to resnet18 where it names one; the final weights are written as
`<config>.safetensors`. `compare` prints, per config, whether every tensor is bitwise equal, and
otherwise the largest difference and which tensors differ (renamed keys are listed as such);
`--rename REGEX=REPLACEMENT` (repeatable, applied in order) maps the keys of the first recording
to the second's, for a reshape that renames modules but must keep every value:

    python benchmarks/behaviour_snapshot.py compare /tmp/before /tmp/after \
        --rename '^generator\\.down\\.(\\d+)\\.=generator.encoder.body.levels.\1.conv.'
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("synthetic", "translation", "classification")


def make_data(base: Path) -> dict[str, Path]:
    from fusescope.cli import main
    from fusescope.data.posters import generate_poster_data

    rooms, translation, posters = base / "rooms", base / "translation", base / "posters"
    common = ["--num", "12", "--seed", "0", "--size", "32", "40"]
    assert main(["data", "synth", "--out", str(rooms), *common]) == 0
    extra = ["--modalities", "rgb", "depth", "texture", "shade", "normal", "edge"]
    assert main(["data", "synth", "--out", str(translation), *common, *extra]) == 0
    generate_poster_data(posters, num=24, seed=0, size=(48, 32), progress=False)
    return {"synthetic": rooms, "translation": translation, "posters": posters, "frames": rooms}


def data_for(config: Path, data: dict[str, Path]) -> Path:
    kind = config.parent.name
    if kind == "classification":
        return data[config.name.split("_")[0]]
    return data[kind]


def record(out: Path, steps: int, only: list[str]) -> None:
    import torch

    from fusescope.config import load_config
    from fusescope.engine.train import train

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    configs = [p for kind in KINDS for p in sorted((ROOT / "configs" / kind).glob("*.yaml"))]
    if only:
        configs = [p for p in configs if any(s in p.as_posix() for s in only)]
    with tempfile.TemporaryDirectory(prefix="fusescope-snapshot-") as tmp:
        data = make_data(Path(tmp) / "data")
        for path in configs:
            name = f"{path.parent.name}__{path.stem}"
            shipped = load_config(path)
            overrides = [
                f"data.root={data_for(path, data)}",
                "data.synth=null",
                "data.num_workers=0",
                f"train.max_steps={steps}",
                "train.batch_size=2",
                "train.progress=false",
                "train.eval_every=0",
                "train.seed=0",
            ]
            if "backbone" in shipped.model:
                overrides.append("model.backbone=resnet18")
            if shipped.data.get("crop_size") is not None:
                overrides.append("data.crop_size=[32,40]")
            cfg = load_config(path, overrides)
            run = Path(tmp) / "runs" / name
            train(cfg, run)
            shutil.copy(run / "model.safetensors", out / f"{name}.safetensors")
            shutil.rmtree(run, ignore_errors=True)
            print(f"recorded {name}", flush=True)


def compare(before: Path, after: Path, renames: list[tuple[str, str]] = ()) -> int:
    from safetensors.torch import load_file

    def renamed(key: str) -> str:
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        return key

    failures = 0
    for file in sorted(before.glob("*.safetensors")):
        other = after / file.name
        if not other.exists():
            print(f"{file.stem:50s} MISSING after")
            failures += 1
            continue
        a = {renamed(k): v for k, v in load_file(str(file)).items()}
        b = load_file(str(other))
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        worst, differ = 0.0, []
        for key in sorted(set(a) & set(b)):
            if a[key].shape != b[key].shape:
                differ.append(f"{key} shape {tuple(a[key].shape)} -> {tuple(b[key].shape)}")
                continue
            diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0
            if diff > 0:
                differ.append(f"{key} {diff:.3g}")
                worst = max(worst, diff)
        if not (only_a or only_b or differ):
            print(f"{file.stem:50s} identical ({len(a)} tensors)")
            continue
        failures += 1
        print(f"{file.stem:50s} DIFFERS: max |dw| {worst:.3g}, {len(differ)} tensors")
        for line in differ[:5]:
            print(f"    {line}")
        if only_a or only_b:
            print(f"    keys only before: {only_a[:5]}{' ...' if len(only_a) > 5 else ''}")
            print(f"    keys only after:  {only_b[:5]}{' ...' if len(only_b) > 5 else ''}")
    print(f"{failures} of {len(list(before.glob('*.safetensors')))} configs differ")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train every config and save its weights")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--steps", type=int, default=20)
    rec.add_argument("--only", nargs="*", default=[], help="substrings of config paths")
    cmp_ = sub.add_parser("compare", help="compare two recordings")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="REGEX=REPLACEMENT",
        help="map a key of the first recording to the second's (re.sub; repeatable)",
    )
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.out, args.steps, args.only)
        return 0
    renames = [tuple(r.split("=", 1)) for r in getattr(args, "rename", [])]
    return compare(args.before, args.after, renames)


if __name__ == "__main__":
    sys.exit(main())
