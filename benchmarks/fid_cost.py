"""What FID / KID cost with each feature network: FLOPs per image and parameters (counted, not
timed), and the feature width that sets the cost of FID's d x d matrix square root.

Run: python benchmarks/fid_cost.py [--size 256]
Needs torch-fidelity for the Inception row (its architecture only: randomly initialised, so no
weights file is needed for counting).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fusescope.metrics.fid import EfficientNetLite0Features


def inception_architecture() -> torch.nn.Module:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unweighted(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random initialisation
            return None

    with tempfile.TemporaryDirectory() as folder:
        empty = Path(folder) / "empty.pth"
        torch.save({}, empty)
        return Unweighted("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input image side (CEN: 256)")
    args = parser.parse_args()
    images = torch.rand(1, 3, args.size, args.size)
    networks = {"efficientnet_lite0 (offline)": (EfficientNetLite0Features(), lambda x: x)}
    try:
        networks["inception_v3 (torch-fidelity)"] = (
            inception_architecture(),
            lambda x: (x * 255).round().to(torch.uint8),
        )
    except ImportError:
        print("torch-fidelity not installed: Inception row skipped")
    rows = []
    for name, (net, prepare) in networks.items():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            features = net(prepare(images))
        if isinstance(features, tuple):  # torch-fidelity returns one tensor per feature layer
            features = features[0]
        params = sum(p.numel() for p in net.parameters())
        rows.append((name, counter.get_total_flops(), params, features.shape[-1]))
    print(f"{'feature network':32s} {'GFLOPs/image':>12s} {'params (M)':>10s} {'d':>5s}")
    for name, flops, params, width in rows:
        print(f"{name:32s} {flops / 1e9:12.2f} {params / 1e6:10.2f} {width:5d}")
    if len(rows) == 2:
        (_, f0, _, d0), (_, f1, _, d1) = rows
        print(
            f"Inception / EfficientNet-Lite0: {f1 / f0:.1f}x the FLOPs per image, "
            f"{(d1 / d0) ** 3:.1f}x the d^3 work of FID's matrix square root"
        )


if __name__ == "__main__":
    main()
