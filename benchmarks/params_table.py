"""Parameters of every registered fusion method: resnet18, 2 modalities (rgb + 1-channel depth),
14 classes, light decoder. Multi-stream methods also get their CEN Table 2 variants.

Run: python benchmarks/params_table.py
"""

from __future__ import annotations

import torch

from fusescope.models import FUSION_METHODS, build_model

MODALITIES = ["rgb", "depth"]
IN_CHANNELS = {"rgb": 3, "depth": 1}
VARIANTS = {  # extra rows beyond each method's defaults
    "baseline": [
        {"fusion": f, "position": p, **setting}
        for setting in ({"shared": True}, {"shared": False},
                        {"shared": False, "streams": "merge"})
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


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
