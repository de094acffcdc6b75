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
        f"{args.steps} interleaved rounds after {args.warmup}"
    )
    print("| stage | tokens N | width C | max abs diff | loop / ours, forward | loop / ours, fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for stage, tokens, width in STAGES:
        if stage not in args.stages:
            continue
        torch.manual_seed(0)
        ours = PixelCrossAttention(width, 2, heads=8)
        params = {f"g.{k}": v for k, v in ours.state_dict().items()}
        loop = GeminiReference(width, 8).load_from(params, "g").eval()
        x = torch.randn(args.batch, 2, tokens, width)
        with torch.no_grad():
            a = ours(x, "attn_mix")
            b = torch.stack(loop([x[:, 0], x[:, 1]]), 1)
        gap = (a - b).abs().max().item()

        def forward(fn):
            def run():
                with torch.no_grad():
                    fn()

            return run

        def training(fn):
            def run():
                xg = x.clone().requires_grad_(True)
                out = fn(xg)
                out.square().mean().backward()

            return run

        fwd = interleave(
            {
                "ours": forward(lambda: ours(x, "attn_mix")),
                "loop": forward(lambda: loop([x[:, 0], x[:, 1]])),
            },
            args.steps,
            args.warmup,
        )
        both = interleave(
            {
                "ours": training(lambda xg: ours(xg, "attn_mix")),
                "loop": training(lambda xg: torch.stack(loop([xg[:, 0], xg[:, 1]]), 1)),
            },
            args.steps,
            args.warmup,
        )
        print(
            f"| {stage} | {tokens} | {width} | {gap:.1e} | {fwd['loop'] / fwd['ours']:.2f} | "
            f"{both['loop'] / both['ours']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
