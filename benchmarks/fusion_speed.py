"""Is the stacked multi-stream network at least as fast as running its modalities one by one?

Three tables, each from one run with every contender interleaved round by round (so machine-load
drift hits them alike), after warm-up rounds; medians, printed as ratios:

1. Training step (forward + backward; the optimiser step is left out because the M unimodal
   models hold M times the parameters) of the stacked `multistream` network (shared convs,
   private BNs, fusion off) against M separate `unimodal` passes of the same backbone and light
   decoder on the same images, one model per modality, for each backbone and M. The stacked
   network does strictly more work: it also scores its learned ensemble.
2. Per-modality BatchNorm (forward + backward, an in-place ReLU after it as in timm's blocks):
   `ModalityBatchNorm` on the stacked batch against M native `BatchNorm2d` calls on M separate
   tensors, and against the hand-written grouped statistics it replaced (`var_mean` +
   `addcmul` on the `(M, B, C, H, W)` view, modality-major).
3. (`--fusion`) CEN and AsymFusion against the same network with fusion off, and the authors'
   style for resnet18, M = 2: every layer called once per modality in a Python loop with that
   modality's BN (CEN's ModuleParallel / BatchNorm2dParallel).
4. (`--compile`) `torch.compile` (inductor, what `train.compile: true` uses) against eager, a
   training step of each method in `--compile-methods` on each backbone in
   `--compile-backbones`, M = 2; compilation happens in the warm-up rounds, which are not timed.

Run: python benchmarks/fusion_speed.py [--steps 10] [--warmup 2] [--threads 2] [--fusion]
     [--compile] [--tables 1 2 3 4] [--backbones ...] [--modalities 2 3]
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import interleave  # benchmarks/timing.py (the script's folder is on sys.path)
from torch import Tensor, nn

from fusescope.models import build_model
from fusescope.models.backbones import create_encoder, feature_channels, feature_reductions
from fusescope.models.core import resize_to
from fusescope.models.decoders import build_decoder
from fusescope.models.norms import ModalityBatchNorm
from fusescope.tasks.segmentation.loss import total_loss

CLASSES = 14
NAMES = ["rgb", "depth", "hha"]


def training_step(model: nn.Module, batch: dict[str, Tensor], label: Tensor) -> None:
    loss, _ = total_loss(model(batch), label, ignore_index=255)
    loss.backward()
    model.zero_grad(set_to_none=True)


def stacked_vs_separate(backbone: str, M: int, args) -> dict[str, float]:
    B, (H, W) = args.batch, args.size
    mods = NAMES[:M]
    batch = {m: torch.randn(B, 3, H, W) for m in mods}
    label = torch.randint(0, CLASSES, (B, H, W))
    cfg = {"backbone": backbone, "decoder": "light"}
    stacked = build_model({"name": "multistream", **cfg}, mods, dict.fromkeys(mods, 3), CLASSES)
    separate = [build_model({"name": "unimodal", **cfg}, [m], {m: 3}, CLASSES) for m in mods]

    def run_separate():
        for m, model in zip(mods, separate, strict=True):
            training_step(model, {m: batch[m]}, label)

    return interleave(
        {
            "stacked": lambda: training_step(stacked.train(), batch, label),
            "separate": run_separate,
        },
        args.steps,
        args.warmup,
    )


def handwritten_bn(
    x: Tensor, M: int, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor
) -> Tensor:
    """The former ModalityBatchNorm (modality-major stack): grouped var_mean, folded affine."""
    MB, C, H, W = x.shape
    x5 = x.view(M, MB // M, C, H, W)
    var, mean = torch.var_mean(x5, dim=(1, 3, 4), correction=0)
    with torch.no_grad():
        n = x5[0].numel() // C
        running_mean.lerp_(mean, 0.1)
        running_var.lerp_(var * n / (n - 1), 0.1)
    scale = weight * torch.rsqrt(var + 1e-5)
    shift = bias - mean * scale
    return torch.addcmul(shift[:, None, :, None, None], x5, scale[:, None, :, None, None]).reshape(
        MB, C, H, W
    )


def batchnorm_contenders(M: int, B: int, C: int, H: int, W: int) -> dict[str, Callable]:
    xs = [torch.randn(B, C, H, W, requires_grad=True) for _ in range(M)]
    stacked = torch.randn(B * M, C, H, W, requires_grad=True)
    grad = torch.randn(B, C, H, W)
    stacked_grad = grad.repeat(M, 1, 1, 1)
    ours = ModalityBatchNorm(C, M).train()
    natives = [nn.BatchNorm2d(C).train() for _ in range(M)]
    old = [
        torch.ones(M, C, requires_grad=True),
        torch.zeros(M, C, requires_grad=True),
        torch.zeros(M, C),
        torch.ones(M, C),
    ]

    def run_ours():
        ours(stacked).relu_().backward(stacked_grad)

    def run_natives():
        for bn, x in zip(natives, xs, strict=True):
            bn(x).relu_().backward(grad)

    def run_old():
        handwritten_bn(stacked, M, *old).relu_().backward(stacked_grad)

    return {
        "ModalityBatchNorm": run_ours,
        "M native BatchNorm2d": run_natives,
        "hand-written (before)": run_old,
    }


class LoopResNet(nn.Module):
    """The authors' style for a timm resnet18 encoder + light decoder: every layer is called
    once per modality in a Python loop, with that modality's BN; CEN's exchange (optional) uses
    boolean channel indexing as in their `Exchange` module (here on own halves, as the paper)."""

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
            for bi, blk in enumerate(getattr(e, f"layer{li}")):
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


def loop_step(model: LoopResNet, batch: dict[str, Tensor], label: Tensor) -> None:
    ensemble, logits = model([batch["rgb"], batch["depth"]])
    size = label.shape[-2:]
    loss = F.cross_entropy(resize_to(ensemble, size), label)
    loss = loss + sum(F.cross_entropy(resize_to(t, size), label) for t in logits)
    loss.backward()
    model.zero_grad(set_to_none=True)


def fusion_contenders(args) -> dict[str, Callable]:
    B, (H, W) = args.batch, args.size
    mods, chans = ["rgb", "depth"], {"rgb": 3, "depth": 3}
    batch = {m: torch.randn(B, 3, H, W) for m in mods}
    label = torch.randint(0, CLASSES, (B, H, W))
    models = {
        name: build_model({"name": name, "backbone": "resnet18"}, mods, chans, CLASSES)
        for name in ("multistream", "cen", "asymfusion")
    }
    loops = {
        "loop, no fusion (authors' style)": LoopResNet(2, exchange=False),
        "loop, cen exchange (authors' style)": LoopResNet(2, exchange=True),
    }
    for model in [*models.values(), *loops.values()]:
        model.train()
        with torch.no_grad():  # ~10 % of gammas under theta: the exchange paths do real work
            for mod in model.modules():
                if isinstance(mod, (nn.BatchNorm2d, ModalityBatchNorm)):
                    mod.weight.copy_(
                        torch.where(torch.rand_like(mod.weight) < 0.1, 0.0, mod.weight)
                    )
    out = {
        f"{name} (stacked)": (lambda m=model: training_step(m, batch, label))
        for name, model in models.items()
    }
    out.update(
        {name: (lambda m=model: loop_step(m, batch, label)) for name, model in loops.items()}
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=[120, 160])
    parser.add_argument(
        "--backbones", nargs="+", default=["resnet18", "resnet50", "efficientnet_lite0"]
    )
    parser.add_argument("--modalities", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--fusion", action="store_true", help="also table 3")
    parser.add_argument("--compile", action="store_true", help="also table 4")
    parser.add_argument(
        "--compile-methods", nargs="+", default=["multistream", "cen", "asymfusion"]
    )
    parser.add_argument(
        "--compile-backbones", nargs="+", default=["resnet18", "convnext_atto", "mit_b0"]
    )
    parser.add_argument("--tables", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if 1 in args.tables:
        step_table(args)
    if 2 in args.tables:
        batchnorm_table(args)
    if args.fusion and 3 in args.tables:
        print("3. training step, resnet18, M = 2, ratio to the stacked network with fusion off")
        t = interleave(fusion_contenders(args), args.steps, args.warmup)
        base = t["multistream (stacked)"]
        for name, sec in t.items():
            print(f"   {name:<40} {sec / base:6.3f}x")
    if args.compile and 4 in args.tables:
        compile_table(args)


def compile_table(args) -> None:
    B, (H, W) = args.batch, args.size
    print(
        f"4. training step, torch.compile (inductor) / eager, batch {B}, {H}x{W}, M = 2, "
        f"{args.threads} threads, median of {args.steps} after {args.warmup} warm-up rounds"
    )
    print(f"   {'method':<14} {'backbone':<16} {'compiled / eager':>17} {'eager (ms)':>11}")
    mods = ["rgb", "depth"]
    batch = {m: torch.randn(B, 3, H, W) for m in mods}
    label = torch.randint(0, CLASSES, (B, H, W))
    for backbone in args.compile_backbones:
        for name in args.compile_methods:
            cfg = {"name": name, "backbone": backbone}
            eager = build_model(cfg, mods, dict.fromkeys(mods, 3), CLASSES).train()
            compiled = torch.compile(copy.deepcopy(eager))
            t = interleave(
                {
                    "eager": lambda m=eager: training_step(m, batch, label),
                    "compiled": lambda m=compiled: training_step(m, batch, label),
                },
                args.steps,
                max(args.warmup, 2),  # the first compiled calls compile
            )
            print(
                f"   {name:<14} {backbone:<16} {t['compiled'] / t['eager']:>16.3f}x "
                f"{t['eager'] * 1e3:>11.0f}"
            )


def step_table(args) -> None:
    B, (H, W) = args.batch, args.size
    print(
        f"1. training step (forward + backward), batch {B}, {H}x{W}, light decoder, "
        f"{args.threads} threads, median of {args.steps} after {args.warmup} warm-up rounds"
    )
    print(f"   {'backbone':<20} {'M':>2} {'stacked / M separate':>21} {'separate (ms)':>14}")
    for backbone in args.backbones:
        for M in args.modalities:
            t = stacked_vs_separate(backbone, M, args)
            print(
                f"   {backbone:<20} {M:>2} {t['stacked'] / t['separate']:>20.3f}x "
                f"{t['separate'] * 1e3:>14.0f}"
            )


def batchnorm_table(args) -> None:
    B, (H, W) = args.batch, args.size
    print("2. per-modality BatchNorm, forward + backward, ratio to M native BatchNorm2d calls")
    print(
        f"   {'M':>2} {'shape (B, C, H, W)':<22} {'ModalityBatchNorm':>18} "
        f"{'hand-written (before)':>22}"
    )
    for M in args.modalities:
        for C, h, w in (
            (64, H // 4, W // 4),
            (128, H // 8, W // 8),
            (256, H // 16, W // 16),
            (512, H // 32, W // 32),
        ):
            t = interleave(batchnorm_contenders(M, B, C, h, w), 5 * args.steps, args.warmup)
            base = t["M native BatchNorm2d"]
            print(
                f"   {M:>2} {str((B, C, h, w)):<22} {t['ModalityBatchNorm'] / base:>17.3f}x "
                f"{t['hand-written (before)'] / base:>21.3f}x"
            )


if __name__ == "__main__":
    main()
