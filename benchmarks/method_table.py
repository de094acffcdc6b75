"""Parameters, FLOPs and training-step time of every fusion method, next to each other.

Each model: resnet18, its config's decoder, batch 8, 120x160, 2 modalities (1 for the unimodal
row), 14 classes, forward + backward + SGD step. Steps of all models are interleaved round by
round so machine-load drift hits them alike; the median per model is reported as a ratio to the
unimodal model, all from one run (absolute times depend on the machine; ratios travel). GFLOPs:
one inference forward pass of one 120x160 frame (FlopCounterMode: 1 multiply-add = 2 FLOPs).

Run: python benchmarks/method_table.py [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fusescope.config import load_config
from fusescope.models import build_model
from fusescope.models.cost import count_flops

CONFIGS = [
    "rgb_only",
    "early_concat",
    "late_average",
    "two_stream_concat",
    "multistream",
    "cen",
    "asymfusion",
    "baseline_concat_all",
    "baseline_align_all",
    "baseline_attention_all",
    "baseline_concat_early_merged",
    "sagate",
    "mango",
]
CHANNELS = {"rgb": 3, "depth": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
    models, opts = {}, {}
    for name in CONFIGS:
        cfg = load_config(root / f"{name}.yaml")
        mods = list(cfg.data.modalities)
        torch.manual_seed(0)
        model = build_model(dict(cfg.model), mods, {m: CHANNELS[m] for m in mods}, 14).train()
        models[name] = (model, mods)
        opts[name] = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = {
        "rgb": torch.randn(8, 3, 120, 160, generator=g),
        "depth": torch.randn(8, 1, 120, 160, generator=g),
        "label": torch.randint(0, 14, (8, 120, 160), generator=g),
    }
    times = {name: [] for name in models}
    for step in range(args.steps + 1):  # the first round warms up
        for name, (model, mods) in models.items():
            start = time.perf_counter()
            out = model({m: batch[m] for m in mods})
            loss = F.cross_entropy(out["logits"], batch["label"])
            loss = loss + sum(out["aux_losses"].values(), torch.zeros(()))
            loss = loss + sum(
                (F.cross_entropy(v, batch["label"]) for v in out["per_modality"].values()),
                torch.zeros(()),
            )
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            if step:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["rgb_only"])
    base_params = sum(p.numel() for p in models["rgb_only"][0].parameters())
    frame = {m: batch[m][:1] for m in ("rgb", "depth")}
    print("| method | params (M) | params / unimodal | GFLOPs | step time / unimodal |")
    print("|---|---|---|---|---|")
    for name, (model, mods) in models.items():
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(model, {m: frame[m] for m in mods})
        print(
            f"| {name} | {params / 1e6:.2f} | {params / base_params:.2f} | "
            f"{flops / 1e9:.2f} | {statistics.median(times[name]) / base:.2f} |"
        )
    print(
        f"\n(unimodal step: {1000 * base:.0f} ms median over {args.steps} steps, "
        f"{args.threads} threads)"
    )


if __name__ == "__main__":
    main()
