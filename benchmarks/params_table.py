"""Parameters of every registered fusion method: resnet18, 2 modalities (rgb + 1-channel depth),
14 classes, light decoder. Multi-stream methods also get their CEN Table 2 variants.

With --paper: each configuration of CEN Table 2 (RefineNet, ResNet-101, 40 classes, NYUDv2) and
SA-Gate Table 1 (DeepLabV3+, ResNet-50, 3 x 480 x 480) at the papers' sizes, our parameters and
GFLOPs (FlopCounterMode: 1 multiply-add = 2 FLOPs, the papers' unit) beside the papers' numbers;
and TokenFusion / GeminiFusion on MiT (the SegFormer head of width 256, 40 classes) beside
DFormer's / DFormerv2's tables (thop multiply-adds of one 3 x 480 x 640 frame per modality) and
MANGO's Table 8 (no tool or size given: every rule at 480 x 640 and at its 256 x 256 shown),
and MANGO itself on MAE ViT-B/16 and MiT-B3 at 256 x 256 with the flow on all tokens or pooled.
Counted on the meta device (a few minutes in all).

Run: python benchmarks/params_table.py [--paper]
"""

from __future__ import annotations

import argparse
import time

import torch

from fusescope.models import FUSION_METHODS, build_model
from fusescope.models.backbones import create_encoder
from fusescope.models.cost import flow_cost, meta_cost

MODALITIES = ["rgb", "depth"]
IN_CHANNELS = {"rgb": 3, "depth": 1}
VARIANTS = {  # extra rows beyond each method's defaults
    "baseline": [
        {"fusion": f, "position": p, **setting}
        for setting in ({"shared": True}, {"shared": False}, {"shared": False, "streams": "merge"})
        for f in ("concat", "align", "attention")
        for p in ("early", "middle", "late", "all")
    ],
    "cen": [{}, {"shared": False}],
    "multistream": [{}, {"shared": False}],
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    uni = count(build_model({"name": "unimodal", "backbone": "resnet18"}, ["rgb"], IN_CHANNELS, 14))
    print(f"{'method':<72}{'params':>12}{'vs unimodal':>13}")
    for name in FUSION_METHODS.names():
        modalities = ["rgb"] if name == "unimodal" else MODALITIES
        for options in VARIANTS.get(name, [{}]):
            label = name + "".join(f" {k}={v}" for k, v in options.items())
            try:
                model = build_model(
                    {"name": name, "backbone": "resnet18", **options}, modalities, IN_CHANNELS, 14
                )
            except Exception as err:  # a method that cannot take these settings: say so
                print(f"{label:<72}{'n/a':>12}  ({type(err).__name__}: {err})")
                continue
            n = count(model)
            print(f"{label:<72}{n / 1e6:>11.3f}M{n / uni:>12.4f}x")


# CEN Table 2: (label, model options, modalities, paper params in the commonly-used setting,
# paper params in CEN's setting); None where the paper has no such row
CEN = {"backbone": "resnet101", "decoder": "refinenet"}
CEN_ROWS = [
    ("RGB uni-modal", {"name": "unimodal"}, ["rgb"], 118.1, 118.1),
    ("Depth uni-modal", {"name": "unimodal"}, ["depth"], 118.1, 118.1),
    *[
        (
            f"{label} ({pos})",
            {"name": "baseline", "fusion": fusion, "position": pos},
            ["rgb", "depth"],
            common,
            ours,
        )
        for fusion, label, numbers in (
            ("concat", "Concat", [(120.1, 118.8), (147.7, 120.3), (169.0, 126.6), (171.7, 129.4)]),
            ("align", "Align", [(238.8, 120.8), (246.7, 128.7), (278.1, 160.1), (291.9, 173.9)]),
            (
                "attention",
                "Self-att.",
                [(124.9, 123.6), (166.9, 139.4), (245.5, 203.2), (272.3, 231.0)],
            ),
        )
        for pos, (common, ours) in zip(("early", "middle", "late", "all"), numbers, strict=True)
    ],
    ("CEN (ours in the paper)", {"name": "cen"}, ["rgb", "depth"], None, 118.2),
]
# settings of CEN Table 2's two column groups, as model options of the `baseline` method
COMMON = {"shared": False, "streams": "merge"}
SAME = {"shared": True}
# SA-Gate Table 1: the authors' ResNet-50 has a deep stem of width 64 (timm's resnet50s) and
# output stride 16; RGB + HHA (3 channels each)
SAGATE_BACKBONE = {"name": "resnet50s", "output_stride": 16}
SAGATE_ROWS = [
    ("RGB-D baseline (two DeepLabV3+, averaged)", {"name": "late_average"}, 78.2, 269.6),
    ("SA-Gate", {"name": "sagate", "aux_weight": 0.0}, 63.4, 204.9),
]


# TokenFusion / GeminiFusion beside the tables that list them: (label, model options, paper
# params (M), paper GFLOPs, our counter of the source's unit). DFormer's Table (TokenFusion) and
# DFormerv2's (GeminiFusion) come from their benchmark.py: thop.profile at 1 x 3 x 480 x 640 per
# modality; GeminiFusion's fit thop with a MultiheadAttention rule (plain thop 0.1.1 counts the
# authors' cross-attention as 0, shown beside)
SEGFORMER = {"name": "segformer", "width": 256}
TRANSFORMER_ROWS = [
    ("TokenFusion MiT-B2 (DFormer)", {"name": "tokenfusion", "backbone": "mit_b2"}, 26.0, 55.2),
    ("TokenFusion MiT-B3 (DFormer)", {"name": "tokenfusion", "backbone": "mit_b3"}, 45.9, 94.4),
    (
        "GeminiFusion MiT-B3 (DFormerv2)",
        {"name": "geminifusion", "backbone": "mit_b3"},
        75.8,
        138.2,
    ),
    (
        "GeminiFusion MiT-B5 (DFormerv2)",
        {"name": "geminifusion", "backbone": "mit_b5"},
        137.2,
        256.1,
    ),
]
# MANGO Table 8 (TokenFusion "Small" = MiT-B3; GeminiFusion's row has B5's mIoU, B3's params)
MANGO_ROWS = [
    (
        "TokenFusion MiT-B3 (MANGO Table 8)",
        {"name": "tokenfusion", "backbone": "mit_b3"},
        45.9,
        108,
    ),
    (
        "GeminiFusion MiT-B3 (MANGO Table 8)",
        {"name": "geminifusion", "backbone": "mit_b3"},
        75.8,
        174,
    ),
    (
        "GeminiFusion MiT-B5 (MANGO Table 8)",
        {"name": "geminifusion", "backbone": "mit_b5"},
        75.8,
        174,
    ),
]
RULES = ("thop", "thop_mha", "fvcore", "torch")  # models/cost.COUNTERS
# MANGO itself in its paper's setting (section 4.1: MAE's encoder, TokenFusion's head, 256 x 256;
# configs/nyudv2/mango.yaml) and on MiT-B3 (TokenFusion's "Small" encoder, which Table 8's
# 72.9 M is closer to), each with the flow on the encoder's full 16 x 16 grid and pooled to 8 x 8
MANGO_TABLE8 = (72.9, 152)
MANGO_PAPER_ROWS = [
    ("MAE ViT-B/16", {"backbone": "vit_base_patch16_224.mae", "stage": 4}),
    ("MiT-B3", {"backbone": "mit_b3", "stage": 3}),
]
MANGO_GRIDS = ((16, 16), (8, 8))  # 256 x 256 at stride 16: all tokens; 2 x 2 pooled


def transformer_tables() -> None:
    mods, chans = ["rgb", "depth"], {"rgb": 3, "depth": 3}
    print(
        "\nTokenFusion / GeminiFusion (SegFormer head width 256, 40 classes), one 480 x 640 frame "
        "per modality. GMACs under thop's rules (DFormer's benchmark.py), with an "
        "nn.MultiheadAttention rule (thop+MHA), fvcore's, and FlopCounterMode's 2 FLOPs per "
        "multiply-add (torch)"
    )
    print(
        "| model | paper params (M) | ours (M) | diff | paper GFLOPs | thop | thop+MHA | diff "
        "(thop+MHA) | fvcore | torch (2/MAC) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, options, paper_params, paper_flops in TRANSFORMER_ROWS:
        counts = {}
        for rule in RULES:
            params, counts[rule] = meta_cost(
                {**options, "decoder": SEGFORMER}, mods, chans, 40, (480, 640), rule
            )
        g = {k: v / 1e9 for k, v in counts.items()}
        print(
            f"| {label} | {paper_params} | {params / 1e6:.2f} | "
            f"{diff(params / 1e6, paper_params)} | {paper_flops} | {g['thop']:.1f} | "
            f"{g['thop_mha']:.1f} | {diff(g['thop_mha'], paper_flops)} | {g['fvcore']:.1f} | "
            f"{g['torch']:.1f} |"
        )
    print(
        "\nMANGO Table 8 (no counting tool or input size stated; the paper trains at 256 x 256): "
        "our GMACs under each rule at 480 x 640 and 256 x 256"
    )
    print(
        "| model | paper params (M) | ours (M) | paper GFLOPs | 480x640: thop+MHA | fvcore | torch "
        "| 256x256: thop+MHA | fvcore | torch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, options, paper_params, paper_flops in MANGO_ROWS:
        cells = []
        for size in ((480, 640), (256, 256)):
            for rule in ("thop_mha", "fvcore", "torch"):
                params, flops = meta_cost(
                    {**options, "decoder": SEGFORMER}, mods, chans, 40, size, rule
                )
                cells.append(f"{flops / 1e9:.1f}")
        print(
            f"| {label} | {paper_params} | {params / 1e6:.2f} | {paper_flops} | "
            f"{' | '.join(cells)} |"
        )


def mango_tables() -> None:
    """MANGO on MAE ViT-B/16 and on MiT-B3 (SegFormer head, 40 classes, 256 x 256) against
    Table 8, and what the flow costs on all tokens against a pooled grid."""
    mods, chans = ["rgb", "depth"], {"rgb": 3, "depth": 3}
    paper_params, paper_flops = MANGO_TABLE8
    print(
        f"\nMANGO in its paper's setting (SegFormer head width 256, 40 classes, one 256 x 256 "
        f"frame per modality, 12 flow blocks of width 64) against Table 8 ({paper_params} M, "
        f"{paper_flops} GFLOPs; no counting tool stated). 'free': LICA's LU factors counted "
        f"once (each stores a full N x N matrix per triangle)"
    )
    print(
        "| encoder | flow grid (tokens) | params (M) | free (M) | diff (free) | torch GFLOPs "
        "(2/MAC) | diff | fvcore GMACs | thop GMACs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, options in MANGO_PAPER_ROWS:
        for grid in MANGO_GRIDS:
            cfg = {"name": "mango", **options, "decoder": SEGFORMER, "grid": list(grid)}
            counts = {}
            for rule in ("torch", "fvcore", "thop"):
                params, counts[rule] = meta_cost(cfg, mods, chans, 40, (256, 256), rule)
            free = meta_cost(cfg, mods, chans, 40, (256, 256), "torch", free_params=True)[0] / 1e6
            g = {k: v / 1e9 for k, v in counts.items()}
            print(
                f"| {label} | {grid[0]} x {grid[1]} ({2 * grid[0] * grid[1]}) | "
                f"{params / 1e6:.2f} | {free:.2f} | {diff(free, paper_params)} | "
                f"{g['torch']:.1f} | {diff(g['torch'], paper_flops)} | {g['fvcore']:.1f} | "
                f"{g['thop']:.1f} |"
            )
    print(
        "\nThe same at 480 x 640 (the flow's 16 x 16 grid pooled from 30 x 40) under fvcore's "
        "rule, the one Table 8's TokenFusion row fits (110.9 against 108)"
    )
    print("| encoder | fvcore GMACs | diff |")
    print("|---|---|---|")
    for label, options in MANGO_PAPER_ROWS:
        cfg = {"name": "mango", **options, "decoder": SEGFORMER, "grid": [16, 16]}
        flops = meta_cost(cfg, mods, chans, 40, (480, 640), "fvcore")[1] / 1e9
        print(f"| {label} | {flops:.1f} | {diff(flops, paper_flops)} |")
    print(
        "\nMANGO's flow alone (12 blocks, width 64, from a 768-channel map, batch 1): tokens, "
        "parameters, FLOPs of one forward (FlopCounterMode with LICA's triangular solves), "
        "activations kept for backward (float32)"
    )
    print("| grid per modality | tokens N | params (M) | GFLOPs | activations (MiB) |")
    print("|---|---|---|---|---|")
    for grid in ((16, 16), (8, 8), (4, 4)):
        cost = flow_cost(768, grid)
        print(
            f"| {grid[0]} x {grid[1]} | {cost['tokens']} | {cost['params'] / 1e6:.2f} | "
            f"{cost['flops'] / 1e9:.2f} | {cost['activation_bytes'] / 2**20:.1f} |"
        )


def diff(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{100 * (ours - paper) / paper:+.1f}%"


def paper_tables() -> None:
    chans = {"rgb": 3, "depth": 3}  # CEN tiles depth to 3 channels; so does its uni-modal net
    size = (480, 640)
    print(
        "CEN Table 2: RefineNet (ResNet-101), 40 classes; GFLOPs of one 480x640 frame "
        "(the paper gives none)"
    )
    print(
        "| approach | paper params, commonly-used (M) | ours (M) | diff | GFLOPs | "
        "paper params, CEN's setting (M) | ours (M) | diff | GFLOPs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, options, mods, common, same in CEN_ROWS:
        cells = []
        for setting, paper in ((COMMON, common), (SAME, same)):
            if paper is None:
                cells.append("- | - | - | -")
                continue
            extra = setting if options["name"] == "baseline" else {}
            params, flops = meta_cost({**CEN, **options, **extra}, mods, chans, 40, size)
            cells.append(
                f"{paper} | {params / 1e6:.1f} | {diff(params / 1e6, paper)} | {flops / 1e9:.0f}"
            )
        print(f"| {label} | {' | '.join(cells)} |")
    # the authors' dual ResNet hands one `downsample` module to both streams
    # (`self.hha_downsample = downsample`), so each stage's projection shortcut is shared:
    # SA-Gate builds it so with model.shared_shortcuts=true; for the baseline (two DeepLabV3+,
    # no such option) the second stream's copies are subtracted
    with torch.device("meta"):
        encoder = create_encoder(SAGATE_BACKBONE)
    shared = sum(p.numel() for n, p in encoder.named_parameters() if ".downsample." in n)
    print(
        "\nSA-Gate Table 1: DeepLabV3+ (ResNet-50), 40 classes, 3 x 480 x 480; 'shared "
        "shortcuts': one projection shortcut per stage for both streams, as the authors' code "
        f"builds them (SA-Gate: model.shared_shortcuts=true; the baseline: minus the second "
        f"stream's copies, {shared / 1e6:.2f} M)"
    )
    print(
        "| method | paper params (M) | ours (M) | diff | ours, shared shortcuts (M) | diff | "
        "paper GFLOPs | ours | diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, options, paper_params, paper_flops in SAGATE_ROWS:
        common = {"backbone": SAGATE_BACKBONE, "decoder": "deeplabv3plus", **options}
        args = (["rgb", "hha"], {"rgb": 3, "hha": 3}, 40, (480, 480))
        params, flops = meta_cost(common, *args)
        if options["name"] == "sagate":
            authors = meta_cost({**common, "shared_shortcuts": True}, *args)[0] / 1e6
        else:
            authors = (params - shared) / 1e6
        print(
            f"| {label} | {paper_params} | {params / 1e6:.1f} | "
            f"{diff(params / 1e6, paper_params)} | {authors:.1f} | "
            f"{diff(authors, paper_params)} | {paper_flops} | {flops / 1e9:.1f} | "
            f"{diff(flops / 1e9, paper_flops)} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--paper", action="store_true", help="the papers' configurations beside their tables"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.paper:
        paper_tables()
        transformer_tables()
        mango_tables()
    else:
        main()
    print(f"\n({time.perf_counter() - start:.0f} s)")
