"""Training-step time (forward + backward) of CEN and AsymFusion against the same multi-stream
network with fusion off, and against the authors' style: a Python loop over modalities calling
every layer with each modality's BN (CEN's ModuleParallel / BatchNorm2dParallel, with its
boolean-index exchange).

resnet18, light decoder, batch 4, 120x160, 2 modalities, 14 classes; 2 threads. Steps of all
models are interleaved round by round (so machine load drifts hit them alike) and the median per
model is reported as a ratio to the fusion-off multi-stream network, all from one run.

Run: python benchmarks/fusion_speed.py [--steps 15]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.models import build_model
from fusescope.models.backbones import create_encoder, feature_channels, feature_reductions
from fusescope.models.decoders import build_decoder
from fusescope.models.segmentor import resize_to

MODALITIES = ["rgb", "depth"]
IN_CHANNELS = {"rgb": 3, "depth": 1}
CLASSES = 14


class LoopResNet(nn.Module):
    """The authors' style for a timm resnet18 encoder + light decoder: every layer is called
    once per modality in a Python loop, with that modality's BN; CEN's exchange (optional) uses
    boolean channel indexing as in their `Exchange` module."""

    def __init__(self, num_modalities: int, exchange: bool, theta: float = 2e-2):
        super().__init__()
        M = num_modalities
        self.M, self.exchange, self.theta = M, exchange, theta
        self.enc = create_encoder("resnet18")
        self.bns = nn.ModuleDict(
            {  # per-modality copies of every BN, keyed by module path
                name.replace(".", "_"): nn.ModuleList(copy.deepcopy(mod) for _ in range(M))
                for name, mod in self.enc.named_modules()
                if isinstance(mod, nn.BatchNorm2d)
            }
        )
        self.decoders = nn.ModuleList(
            build_decoder(
                "light", feature_channels(self.enc), feature_reductions(self.enc), CLASSES
            )
            for _ in range(M)
        )
        self.alpha = nn.Parameter(torch.ones(M))

    def bn(self, name: str, xs: list[Tensor]) -> list[Tensor]:
        return [bn(x) for bn, x in zip(self.bns[name.replace(".", "_")], xs, strict=True)]

    def exchange_channels(self, name: str, xs: list[Tensor]) -> list[Tensor]:
        bns = self.bns[name.replace(".", "_")]
        out = []
        for m, x in enumerate(xs):  # M = 2: the other modality; its own half only
            gamma = bns[m].weight.abs()
            half = torch.zeros_like(gamma, dtype=torch.bool)
            C = gamma.numel()
            half[m * C // 2 : (m + 1) * C // 2] = True
            mask = (gamma < self.theta) & half
            y = x.clone()
            y[:, mask] = xs[1 - m][:, mask]
            out.append(y)
        return out

    def forward(self, xs: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        e = self.enc
        xs = [e.conv1(x) for x in xs]
        xs = [F.relu(x) for x in self.bn("bn1", xs)]
        xs = [e.maxpool(x) for x in xs]
        feats = []
        for li in range(1, 5):
            layer = getattr(e, f"layer{li}")
            for bi, blk in enumerate(layer):
                p = f"layer{li}.{bi}"
                h = self.bn(f"{p}.bn1", [blk.conv1(x) for x in xs])
                if self.exchange:
                    h = self.exchange_channels(f"{p}.bn1", h)
                h = [F.relu(t) for t in h]
                h = self.bn(f"{p}.bn2", [blk.conv2(t) for t in h])
                if blk.downsample is not None:
                    xs = self.bn(f"{p}.downsample.1", [blk.downsample[0](x) for x in xs])
                xs = [F.relu(a + b) for a, b in zip(h, xs, strict=True)]
            feats.append(xs)
        logits = [dec([f[m] for f in feats]) for m, dec in enumerate(self.decoders)]
        weights = torch.softmax(self.alpha, 0)
        ensemble = sum(w * t.detach() for w, t in zip(weights, logits, strict=True))
        return ensemble, logits


def step_fused(model, batch, label):
    out = model(batch)
    loss = F.cross_entropy(out["logits"], label)
    loss = loss + sum(F.cross_entropy(t, label) for t in out["per_modality"].values())
    loss = loss + sum(out["aux_losses"].values(), torch.zeros(()))
    model.zero_grad(set_to_none=True)
    loss.backward()


def step_loop(model, batch, label):
    xs = [batch["rgb"], batch["depth"].expand(-1, 3, -1, -1)]
    ensemble, logits = model(xs)
    size = label.shape[-2:]
    loss = F.cross_entropy(resize_to(ensemble, size), label)
    loss = loss + sum(F.cross_entropy(resize_to(t, size), label) for t in logits)
    model.zero_grad(set_to_none=True)
    loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    B, H, W = 4, 120, 160
    batch = {"rgb": torch.randn(B, 3, H, W), "depth": torch.randn(B, 1, H, W)}
    label = torch.randint(0, CLASSES, (B, H, W))

    def fused(cfg):
        return build_model({"backbone": "resnet18", **cfg}, MODALITIES, IN_CHANNELS, CLASSES)

    runs = {
        "multistream (fusion off)": (fused({"name": "multistream"}), step_fused),
        "cen": (fused({"name": "cen"}), step_fused),
        "asymfusion": (fused({"name": "asymfusion"}), step_fused),
        "loop, no fusion (authors' style)": (LoopResNet(2, exchange=False), step_loop),
        "loop, cen exchange (authors' style)": (LoopResNet(2, exchange=True), step_loop),
    }
    for model, _ in runs.values():
        model.train()
        # make some gammas fall under theta so the exchange paths do real work (~10 %)
        with torch.no_grad():
            for mod in model.modules():
                w = getattr(mod, "weight", None)
                if isinstance(mod, nn.BatchNorm2d) or type(mod).__name__ == "ModalityBatchNorm":
                    w.copy_(torch.where(torch.rand_like(w) < 0.1, 0.0, w))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.steps):
        for name, (model, step) in runs.items():
            t0 = time.perf_counter()
            step(model, batch, label)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["multistream (fusion off)"])
    print(
        f"training step, resnet18, batch {B}, {H}x{W}, 2 modalities, 2 threads, "
        f"median of {args.steps}; ratio to the fusion-off multi-stream network"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"  {name:<40} {med / base:6.3f}x   (spread {min(ts) / base:.3f}-{max(ts) / base:.3f})"
        )


if __name__ == "__main__":
    main()
