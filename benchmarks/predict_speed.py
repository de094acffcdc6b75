"""Prediction throughput: eager PyTorch vs ONNX Runtime, one thread vs all threads.

The four settings run interleaved, round by round, on the same random frames and the same
(randomly initialised) model, so machine load hits them alike; the medians over rounds and their
ratios are printed. Model throughput only (normalised tensors in, logits out): file decoding and
PNG writing are the same for both back ends and run in the `predict` pipeline's workers.

    python benchmarks/predict_speed.py [--method early_concat] [--size 120 160] [--batch 4]
        [--rounds 5] [--batches 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fusescope.models import build_model
from fusescope.tasks.segmentation.export import export_model

CHANNELS = {"rgb": 3, "depth": 1}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="early_concat")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, nargs=2, default=[120, 160], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3, help="batches per setting per round")
    args = parser.parse_args()
    import onnxruntime as ort

    all_threads = os.cpu_count() or 1
    mods = list(CHANNELS)
    model = build_model({"name": args.method, "backbone": args.backbone}, mods, CHANNELS, 13).eval()
    tmp = Path(tempfile.mkdtemp(prefix="predict_speed_"))
    export_model(model, mods, CHANNELS, tmp / "model.onnx", size=tuple(args.size))
    sessions = {}
    for threads in (1, all_threads):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions[threads] = ort.InferenceSession(
            str(tmp / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
    gen = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(args.batch, c, *args.size, generator=gen) for m, c in CHANNELS.items()}
    feeds = {m: x.numpy() for m, x in batch.items()}

    def eager(threads: int) -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(batch)

    def onnx(threads: int) -> None:
        sessions[threads].run(["logits"], feeds)

    settings = {f"pytorch eager, {t} thread(s)": (eager, t) for t in (1, all_threads)}
    settings.update({f"onnxruntime, {t} thread(s)": (onnx, t) for t in (1, all_threads)})
    for fn, threads in settings.values():  # warm-up (allocations, ORT graph optimisation)
        fn(threads)
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, (fn, threads) in settings.items():
            start = time.perf_counter()
            for _ in range(args.batches):
                fn(threads)
            rates[name].append(args.batches * args.batch / (time.perf_counter() - start))
    median = {name: statistics.median(v) for name, v in rates.items()}
    print(
        f"{args.method} ({args.backbone}), {args.batch} frames of {args.size[0]}x{args.size[1]}"
        f" per batch, {args.rounds} interleaved rounds x {args.batches} batches, "
        f"{all_threads} CPU threads available, torch {torch.__version__}, onnxruntime "
        f"{ort.__version__}"
    )
    for name, value in median.items():
        print(f"  {name:32s} {value:8.2f} images/s (median)")
    e1, ea = median["pytorch eager, 1 thread(s)"], median[f"pytorch eager, {all_threads} thread(s)"]
    o1, oa = median["onnxruntime, 1 thread(s)"], median[f"onnxruntime, {all_threads} thread(s)"]
    print(f"  onnxruntime / eager, 1 thread:          {o1 / e1:5.2f}x")
    print(f"  onnxruntime / eager, {all_threads} threads:        {oa / ea:5.2f}x")
    print(f"  {all_threads} threads / 1 thread, eager:       {ea / e1:5.2f}x")
    print(f"  {all_threads} threads / 1 thread, onnxruntime: {oa / o1:5.2f}x")


if __name__ == "__main__":
    main()
