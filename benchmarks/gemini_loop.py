"""GeminiFusion's fusion module, vectorised (fusescope) against the authors' Python loop over the
batch (one `nn.MultiheadAttention` call per sample and direction, as JiaDingCN/GeminiFusion's
`mix_transformer.py` runs it; the loop is tests/transformer_reference.GeminiReference, the
reference the tests check ours against to 1e-10 in float64).

For MiT-B3's stages at 480 x 640 (tokens N and width C per stage) and a batch of B samples, it
prints the largest difference between the two outputs (float32) and the median time of the loop
over ours, forward and forward + backward, contenders interleaved (benchmarks/timing.py).

Run: python benchmarks/gemini_loop.py [--batch 6] [--steps 5] [--warmup 1] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fusescope.models.fusion.gemini import PixelCrossAttention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleave  # noqa: E402

from transformer_reference import GeminiReference  # noqa: E402

# MiT-B3 at 480 x 640: (stage, tokens per modality, width)
STAGES = [(1, 120 * 160, 64), (2, 60 * 80, 128), (3, 30 * 40, 320), (4, 15 * 20, 512)]


def measure(tokens: int, width: int, batch: int, steps: int, warmup: int) -> tuple:
    """(max |ours - loop|, loop / ours forward, loop / ours forward + backward)."""
    torch.manual_seed(0)
    ours = PixelCrossAttention(width, 2, heads=8)
    params = {f"g.{k}": v for k, v in ours.state_dict().items()}
    loop = GeminiReference(width, 8).load_from(params, "g").eval()
    x = torch.randn(batch, 2, tokens, width)

    def run_ours(t):
        return ours(t, "attn_mix")

    def run_loop(t):
        return torch.stack(loop([t[:, 0], t[:, 1]]), 1)

    with torch.no_grad():
        gap = (run_ours(x) - run_loop(x)).abs().max().item()

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(x)

        return run

    def training(fn):
        def run():
            fn(x.clone().requires_grad_(True)).square().mean().backward()

        return run

    fwd = interleave({"ours": forward(run_ours), "loop": forward(run_loop)}, steps, warmup)
    both = interleave({"ours": training(run_ours), "loop": training(run_loop)}, steps, warmup)
    return gap, fwd["loop"] / fwd["ours"], both["loop"] / both["ours"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=6, help="samples (their NYUDv2 batch: 6)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"GeminiFusion fusion module, batch {args.batch}, 2 modalities, 8 heads, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}; medians of "
        f"{args.steps} interleaved rounds after {args.warmup}",
        flush=True,
    )
    print("| stage | tokens N | width C | max abs diff | loop / ours, fwd | loop / ours, fwd+bwd |")
    print("|---|---|---|---|---|---|", flush=True)
    for stage, tokens, width in STAGES:
        if stage in args.stages:
            gap, fwd, both = measure(tokens, width, args.batch, args.steps, args.warmup)
            print(
                f"| {stage} | {tokens} | {width} | {gap:.1e} | {fwd:.2f} | {both:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
