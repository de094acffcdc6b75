"""The one contract tester: every fusion op x task x backbone family, and every task's own
methods, keep the model core's contract.

The matrix is derived from the registries, not kept by hand: each op of `FUSION_OPS` (and the
multi-stream host with no op) for segmentation and classification on a tiny member of every tested
timm family, and for translation on the U-Net; each method a task registers itself on a ResNet
(every family for segmentation's). Per case:

* forward at a size that is not a multiple of 32, a backward through every output that reaches
  every trainable parameter with a finite gradient;
* a save / load round trip into a fresh build (other seed) with the same state-dict keys, which
  changes its outputs to the saved model's exactly (and they differed before: it can fail);
* a bf16 autocast forward close to float32;
* segmentation: ONNX export where the method exports (ONNX Runtime equal to PyTorch at another
  size), else the one-line reason, which must be the expected one (`NO_EXPORT`);
* `torch.compile` for one method per family (the `eager` backend: TorchDynamo's graph capture
  of the hooked model, forward and backward, without a C++ build, so the suite stays fast;
  `benchmarks/fusion_speed.py --compile` times inductor);
* M = 3 modalities where the method takes them, and a one-line error where it does not.

A combination that cannot work is a one-line error naming why (`CANNOT`), listed in the README.
Every segmentation method also trains a step on every family through `fusescope train`
(`test_every_segmentation_method_trains_on_every_family`).
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from conftest import transformer_only
from fusescope.errors import FusescopeError, OptionError
from fusescope.models import FUSION_METHODS, FUSION_OPS, build_model
from fusescope.models.classification import CLASSIFICATION_METHODS, build_classifier
from fusescope.models.translation import TRANSLATION_METHODS

# tiny members of every tested family (timm arguments shrink them; the code paths are the real
# ones: blocks, norms, sites and layouts of the family)
FAMILIES = {
    "resnet": "resnet18",
    "efficientnet": "efficientnet_lite0",
    "convnext": {"name": "convnext_atto", "depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
    "swin": {
        "name": "swin_tiny_patch4_window7_224",
        "embed_dim": 16,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
    },
    "mit": {
        "name": "mit_b0",
        "depths": [1, 1, 1, 1],
        "embed_dims": [8, 16, 32, 64],
        "num_heads": [1, 1, 2, 2],
    },
    "vit": {"name": "vit_tiny_patch16_224", "depth": 4, "embed_dim": 32, "num_heads": 2},
}
OPS = [*FUSION_OPS.names(), "multistream"]
# small options of methods whose defaults are CPU-heavy
SMALL = {
    "mango": {"blocks": 1, "flow_width": 8, "attn_dim": 8, "coupling_hidden": 8, "grid": [2, 2]},
    "sagate": {"decoder": "light"},
    "bmc": {"bmc_levels": [2, 3]},
}
SMALL_CLS = {"mango": {"blocks": 1, "width": 8, "slots": 2, "attn_dim": 8, "coupling_hidden": 8}}
SMALL_TR = {"depth": 4, "width": 8, "dropout": 1}
# ops defined on transformer tokens (no CNN or U-Net form), and the family they are tested on
# where one family stands for all (export, three modalities)
TRANSFORMER_ONLY = tuple(name for name in FUSION_OPS.names() if transformer_only(name))
CNN_FAMILIES = ("resnet", "efficientnet", "convnext")
# (task, method, family) that cannot work, and the reason their one-line error gives
CANNOT = {
    ("segmentation", "sagate", "vit"): "single-scale ViT has one token trunk",
    **{
        (task, op, family): "needs transformer blocks"
        for op in TRANSFORMER_ONLY
        for task, families in (
            ("segmentation", CNN_FAMILIES),
            ("classification", CNN_FAMILIES),
            ("translation", ("unet",)),
        )
        for family in families
    },
}


def home_family(name: str) -> str:
    """The family a method's single-family checks run on."""
    return "mit" if name in TRANSFORMER_ONLY else "resnet"


# segmentation methods whose ONNX export is refused, and the reason it names
NO_EXPORT = {
    ("mango", "*"): "fixed token grid",
    ("*", "vit"): "upsample_bicubic2d_aa",  # timm resizes a ViT's position table with it
}
# families whose transformer blocks the exporter traces, but whose token-grid shift ONNX
# Runtime computes differently from PyTorch at another size: refused in one line
EXPORT_DIFFERS = {("asymfusion", "swin"), ("asymfusion", "mit")}

IMAGE_SPECS = {
    "rgb": {"kind": "color", "channels": 3},
    "depth": {"kind": "depth", "channels": 1},
    "hha": {"kind": "image", "channels": 3},
    "poster": {"kind": "color", "channels": 3},
    "plot": {"kind": "text", "vocab_size": 30, "pad_id": 0},
}
SEG_MODALITIES = {"unimodal": ["rgb"]}
CLS_MODALITIES = {
    "unimodal": ["poster"],
    "late": ["poster", "plot"],
    "ensemble": ["poster", "plot"],
    "concat": ["poster", "plot"],
    "attention": ["poster", "plot"],
    "mango": ["poster", "plot"],
}
TR_CHANNELS = {"shade": 1, "texture": 3, "depth": 1}


def cases() -> list[tuple[str, str, str]]:
    """(task, method, family): every op on every family, each task's own methods on ResNet
    (segmentation's on every family)."""
    out = []
    for name in FUSION_METHODS.names():
        for family in FAMILIES:
            out.append(("segmentation", name, family))
    for name in CLASSIFICATION_METHODS.names():
        for family in FAMILIES if name in OPS else ["resnet"]:
            out.append(("classification", name, family))
    for name in TRANSLATION_METHODS.names():
        out.append(("translation", name, "unet"))
    for name in OPS:  # the generator on a timm encoder (`backbone`), where the transformer ops fit
        out.append(("translation", name, "mit"))
    return out


CASES = cases()


def test_every_op_is_a_method_of_every_task():
    for registry in (FUSION_METHODS, CLASSIFICATION_METHODS, TRANSLATION_METHODS):
        assert set(OPS) <= set(registry.names()), registry.kind


def build(task: str, name: str, family: str, seed: int = 0, modalities: list[str] | None = None):
    torch.manual_seed(seed)
    if task == "segmentation":
        mods = modalities or SEG_MODALITIES.get(name, ["rgb", "depth"])
        cfg = {"name": name, "backbone": FAMILIES[family], **SMALL.get(name, {})}
        channels = {m: IMAGE_SPECS[m]["channels"] for m in mods}
        return build_model(cfg, mods, channels, 4), mods
    if task == "classification":
        mods = modalities or CLS_MODALITIES.get(name, ["rgb", "depth"])
        small = SMALL_CLS[name] if name in SMALL_CLS else SMALL.get(name, {})
        cfg = {"name": name, "backbone": FAMILIES[family], **small}
        if any(IMAGE_SPECS[m]["kind"] == "text" for m in mods):
            cfg.update(text_dim=16, text_layers=1, text_heads=2)
        return build_classifier(cfg, mods, IMAGE_SPECS, 5), mods
    mods = modalities or (["shade"] if name == "unimodal" else ["shade", "texture"])
    generator = SMALL_TR if family == "unet" else {"backbone": FAMILIES[family], "decoder_width": 8}
    options = {**generator, **SMALL.get(name, {})}
    if name == "bmc":
        options["bmc_levels"] = [1, 2]
    try:
        model = TRANSLATION_METHODS.build(
            name,
            options,
            where="model",
            modalities=mods,
            in_channels=TR_CHANNELS,
            out_channels=3,
        )
    except OptionError as err:  # as the translation task's build_model reports it
        raise FusescopeError(f"model ({name}): {err}") from None
    return model, mods


def batch(task: str, mods: list[str], seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w = 33, 41  # not multiples of 32 (nor of the U-Net's 16)
    out = {}
    for m in mods:
        if task == "translation":
            out[m] = torch.randn(2, TR_CHANNELS[m], h, w, generator=g)
        elif IMAGE_SPECS[m]["kind"] == "text":
            out[m] = torch.randint(1, 30, (2, 7), generator=g)
            out[f"{m}_mask"] = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
            out[m] = out[m].masked_fill(~out[f"{m}_mask"], 0)
        else:
            out[m] = torch.randn(2, IMAGE_SPECS[m]["channels"], h, w, generator=g)
    return out


def scored(model, out: dict) -> torch.Tensor:
    return out[model.output_key]


def every_output(out: dict) -> list[torch.Tensor]:
    tensors = [v for k, v in out.items() if isinstance(v, torch.Tensor)]
    tensors += list(out.get("per_modality", {}).values())
    tensors += [aux.logits for aux in out.get("aux_logits", {}).values()]
    return tensors


@pytest.mark.parametrize("task, name, family", CASES)
def test_contract(task, name, family):
    if (task, name, family) in CANNOT:
        with pytest.raises(FusescopeError, match=CANNOT[task, name, family]) as err:
            build(task, name, family)
        assert "\n" not in str(err.value)
        return
    model, mods = build(task, name, family)
    model.train()
    b = batch(task, mods)
    out = model(b)
    prediction = scored(model, out)
    assert prediction.shape[0] == 2 and torch.isfinite(prediction).all()
    if task != "classification":
        assert prediction.shape[-2:] == next(v for v in b.values()).shape[-2:]
    # a backward through every output reaches every trainable parameter
    loss = sum(t.float().square().mean() for t in every_output(out))
    loss = loss + sum(out["aux_losses"].values(), torch.zeros(()))
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    # save / load into a fresh build of another seed
    model.eval()
    fresh, _ = build(task, name, family, seed=1)
    fresh.eval()
    assert list(fresh.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        ref = scored(model, model(b))
        before = scored(fresh, fresh(b))
        fresh.load_state_dict(model.state_dict())
        after = scored(fresh, fresh(b))
    torch.testing.assert_close(after, ref)
    assert not torch.allclose(before, ref)
    # bf16 autocast: finite and close to float32 (relative to the output's scale)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = scored(model, model(b)).float()
    assert torch.isfinite(half).all()
    assert (half - ref).abs().max() <= 0.1 * ref.abs().max() + 0.05


def _export_expectation(name: str, family: str) -> str | None:
    for (method, fam), reason in NO_EXPORT.items():
        if method in (name, "*") and fam in (family, "*"):
            return reason
    if (name, family) in EXPORT_DIFFERS:
        return "differ from PyTorch's"
    return None


EXPORT_CASES = [(n, home_family(n)) for n in FUSION_METHODS.names()] + [
    (op, family) for op in ("cen", "asymfusion") for family in FAMILIES if family != "resnet"
]


@pytest.mark.parametrize("name, family", EXPORT_CASES)
def test_export_or_one_line_why(name, family, tmp_path):
    pytest.importorskip("onnxruntime")
    from fusescope.tasks.segmentation.export import export_model

    model, mods = build("segmentation", name, family)
    model.eval()
    channels = {m: IMAGE_SPECS[m]["channels"] for m in mods}
    out = tmp_path / "m.onnx"
    reason = _export_expectation(name, family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if reason is not None:
            with pytest.raises(FusescopeError, match=reason) as err:
                export_model(model, mods, channels, out, size=(32, 40))
            assert "\n" not in str(err.value) and not out.exists()
            return
        export_model(model, mods, channels, out, size=(32, 40))  # checks ORT at another size
    assert out.exists()


COMPILE_CASES = [("segmentation", "cen", family) for family in FAMILIES] + [
    ("classification", "asymfusion", "resnet"),
    ("translation", "cen", "unet"),
]


@pytest.mark.parametrize("task, name, family", COMPILE_CASES)
def test_compiled_equals_eager(task, name, family):
    model, mods = build(task, name, family)
    model.eval()
    b = batch(task, mods)
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(
            scored(model, compiled(b)), scored(model, model(b)), atol=1e-5, rtol=1e-5
        )
    model.train()
    out = compiled(b)
    sum(t.float().square().mean() for t in every_output(out)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", FUSION_METHODS.names())
def test_three_modalities_or_a_one_line_error(name):
    three = ["rgb", "depth", "hha"]
    if name in ("unimodal", "sagate", "mango", "bmc"):
        with pytest.raises(FusescopeError, match="modalit") as err:
            build("segmentation", name, "resnet", modalities=three)
        assert "\n" not in str(err.value)
        return
    model, _ = build("segmentation", name, home_family(name), modalities=three)
    out = model(batch("segmentation", three))
    assert out["logits"].shape == (2, 4, 33, 41)
    if getattr(model, "ensemble", None) is not None:
        assert sorted(out["per_modality"]) == sorted(three)


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    from fusescope.cli import main

    out = tmp_path_factory.mktemp("rooms") / "data"
    args = ["data", "synth", "--out", str(out), "--num", "6", "--seed", "0", "--size", "32", "40"]
    assert main(args) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", FUSION_METHODS.names())
def test_every_segmentation_method_trains_on_every_family(name, rooms, tmp_path):
    """`fusescope train` one step of `name` on every family (a config per family), or the
    one-line error of `CANNOT`."""
    from fusescope.cli import main

    mods = SEG_MODALITIES.get(name, ["rgb", "depth"])
    for family, backbone in FAMILIES.items():
        config = tmp_path / f"{family}.yaml"
        model = {"name": name, "backbone": backbone, **SMALL.get(name, {})}
        data = {"root": str(rooms), "modalities": mods, "synth": None, "num_workers": 0}
        train = {"max_steps": 1, "batch_size": 2, "progress": False, "eval_every": 0}
        config.write_text(json.dumps({"data": data, "model": model, "train": train}))
        run = tmp_path / f"run_{family}"
        code = main(["train", str(config), "--out", str(run)])
        if ("segmentation", name, family) in CANNOT:
            assert code == 2 and not run.exists()
            continue
        assert code == 0, (name, family)
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == 1
        shutil.rmtree(run)
