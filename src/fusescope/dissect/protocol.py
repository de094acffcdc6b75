"""The dissection paper's protocol over three trained runs: RGB alone, depth alone, and a joint
model: the paper's two-stream model (separate encoders, concat + 1x1 conv fusion), or a
multi-stream model (CEN, AsymFusion, TokenFusion, GeminiFusion, ...: one encoder shared by the
streams, fused inside it).

Features (the paper's notation), read through taps at encoder level l (0 = stride 4 ... 3 =
stride 32, "stage l+1"):

    rgb_sep   F_I^S  the RGB-only run's encoder          `encoder[l]`
    depth_sep F_D^S  the depth-only run's encoder        `encoder[l]`
    rgb_joint F_I^J  the joint run's RGB encoder         `encoders.<rgb>[l]`; multi-stream: the
                                                         RGB stream of `encoder.body[l]`
    depth_joint F_D^J the joint run's depth encoder      `encoders.<depth>[l]`; multi-stream:
                                                         the depth stream of `encoder.body[l]`
    fused     F_C^J  the joint run's fused feature       `fuse.<l>`; multi-stream: the streams
                                                         concatenated (they fuse inside the
                                                         encoder, and their heads read them
                                                         together only through the ensemble)
    cat_sep   Cat(F_I^S, F_D^S);  cat_joint  Cat(F_I^J, F_D^J)

One streaming pass over the probe set feeds the CKA accumulator (every feature at every level:
cross-layer and cross-modal CKA, Fig. 5) and caches the Net2Vec levels' activations (low
resolution; the probes need several epochs). Net2Vec then gives Set IoU per concept per feature
(Fig. 3/6/8), SVar compares the Table I pairs, and Grad-CAM draws a few examples per cue group
(Fig. 4/7). `report.write_report` turns the result into a folder.

What a reviewer needs to trust the Set IoUs (the paper reports single in-sample numbers):
- Held out: each probe image is scored by a probe trained on the other folds (k-fold,
  `Net2Vec.cross_validated`); in sample, a 512-channel probe fits a few dozen images whatever
  the features hold.
- A noise floor beside every Set IoU: the same k-fold probe on features paired with another
  image's labels, i.e. what the label statistics alone give.
- A spread: the k-fold split is drawn `seeds` times; every Set IoU, floor and SVar is reported
  as the mean and standard deviation over those splits. (The spread is that of the probe
  split, not of training the models again.)
- The known-answer check ("RGB leads on appearance-only classes, depth on geometry-only ones")
  compares Set IoUs above the floor and says "yes" or "no" only when the lead is beyond
  `margin_known` and twice the spread of the lead over splits; otherwise "not resolved".
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from fusescope.config import load_config
from fusescope.console import stage, warn
from fusescope.data.batching import collate
from fusescope.data.folder import FolderDataset
from fusescope.data.generators import generator, kind_of_record
from fusescope.data.transforms import Normalize
from fusescope.dissect.cka import CKAAccumulator
from fusescope.dissect.gradcam import GradCAM, shared_scale
from fusescope.dissect.net2vec import HeldOutSplit, Net2Vec, concept_pixels, labelled_pixels
from fusescope.dissect.svar import concept_variance, semantic_variance
from fusescope.dissect.taps import Tap, find_module, move_batch, stream_features
from fusescope.engine.checkpoint import load_run, require_task
from fusescope.engine.train import train
from fusescope.errors import FusescopeError
from fusescope.io import json_safe

FEATURES = {
    "rgb_sep": "RGB (separate)",
    "depth_sep": "Depth (separate)",
    "rgb_joint": "RGB (joint)",
    "depth_joint": "Depth (joint)",
    "fused": "RGB-D (joint)",
    "cat_sep": "Cat (separate)",
    "cat_joint": "Cat (joint)",
}
STREAMS = ("rgb_sep", "depth_sep", "rgb_joint", "depth_joint", "fused")  # CKA features
# Table I: (group, old, new); the paper's row "A vs. B" is SVar(B; A)
TABLE_I = (
    (1, "depth_sep", "rgb_sep"),
    (1, "depth_joint", "rgb_joint"),
    (2, "depth_sep", "depth_joint"),
    (2, "rgb_sep", "rgb_joint"),
    (3, "depth_sep", "fused"),
    (3, "rgb_sep", "fused"),
    (4, "depth_joint", "fused"),
    (4, "rgb_joint", "fused"),
    (5, "cat_sep", "cat_joint"),
)


# label pixels per image and probe step (of 12,288 at the demo's 96x128); see DissectOptions
PROBE_PIXELS = 1024


@dataclass
class DissectOptions:
    """What the protocol measures and on which data.

    Attributes:
        split: the probe split (the paper: 500 test pairs), or several joined by "+"
            (`val+test`): images none of the runs trained on.
        probe_size: use the first N images of the split (None: all).
        probe_frames: probe on this many frames newly rendered by the data folder's
            known-answer generator, at a seed none of the runs drew from, instead of a split
            (`fresh_probe_frames`); "auto": `probe_size` of them when the folder was
            generated and its split holds fewer images; 0: always the split.
        batch_size: images per streamed batch; also the CKA minibatch (>= 4 for debiased).
        levels: encoder levels probed with Net2Vec (None: `default_levels`: stage 2 and the
            deepest stage whose map is at least `MIN_PROBE_MAP_SIDE` cells on its short side).
        cka_levels: levels compared with CKA (None: all).
        epochs: Net2Vec epochs (the paper: 30).
        lr: Net2Vec learning rate (Adam on standardised channels).
        pixels: label pixels per image in each probe step, drawn at random (None: every
            pixel; see `Net2Vec`). Set IoU is scored on every pixel either way.
        cka_method: "minibatch" (bounded memory) or "exact" (full-set value, O(p^2) memory).
        gradcam_images: Grad-CAM examples per chosen class (one class per cue group).
        margin: Set IoU lead that counts as a modality specialising in a class (it must also
            be beyond twice its spread over probe splits).
        margin_known: the least lead (above the noise floor, mean over a cue group) that
            resolves the known-answer check; twice the lead's spread counts if larger.
        folds: k of the k-fold held-out scoring of Set IoU.
        seeds: how many k-fold splits are drawn (mean and spread over them; >= 2 for a spread).
            3 by default; 5 steadies the spread the known-answer verdicts are judged by (with
            3, one of 8 fresh data seeds left a 0.037 lead "not resolved" against a 0.042
            threshold at stage 3; 5 resolved it and every other) at 1.8x Net2Vec's time, which
            would make the demo's dissection slower than training its runs (README, "Other
            figures").
        gradcam_region: "label" (the paper: the class logit summed over labelled pixels) or
            "predicted" (over the pixels the model assigns to the class).
        data_root: probe data folder (None: the joint run's `data.root`).
        device: where models and probes run.
    """

    split: str = "test"
    probe_size: int | None = 200
    probe_frames: int | str = "auto"
    batch_size: int = 16
    levels: list[int] | None = None
    cka_levels: list[int] | None = None
    epochs: int = 30
    lr: float = 0.05
    pixels: int | None = PROBE_PIXELS
    cka_method: str = "minibatch"
    gradcam_images: int = 3
    margin: float = 0.1
    margin_known: float = 0.02
    folds: int = 2
    seeds: int = 3
    gradcam_region: str = "label"
    data_root: str | None = None
    device: str = "cpu"


@dataclass
class GradCAMExample:
    """Grad-CAM panels for one class: inputs, label and maps `(N, H, W)` per stream."""

    class_id: int
    class_name: str
    cue: str | None
    rgb: np.ndarray  # (N, H, W, 3) in [0, 1]
    depth: np.ndarray  # (N, H, W) in natural units
    label: np.ndarray  # (N, H, W)
    maps: dict[str, np.ndarray]  # feature name -> (N, H, W), one scale over all four streams
    region: str = "label"  # where the class score was summed: "label" or "predicted"


@dataclass
class Dissection:
    """The protocol's output: JSON-able `results` and the Grad-CAM arrays."""

    results: dict[str, Any]
    gradcam: list[GradCAMExample] = field(default_factory=list)


@dataclass
class Runs:
    """The three loaded runs and their modality names."""

    rgb: Any
    depth: Any
    joint: Any
    rgb_modality: str
    depth_modality: str

    @property
    def models(self) -> dict[str, nn.Module]:
        return {"rgb": self.rgb.model, "depth": self.depth.model, "joint": self.joint.model}

    @property
    def multistream(self) -> bool:
        """Whether the joint model is multi-stream (one encoder over the stacked modalities)
        rather than the paper's two-stream model (`encoders.<m>` and `fuse`)."""
        return not hasattr(self.joint.model, "fuse")

    @property
    def joint_modalities(self) -> tuple[str, ...]:
        """The joint model's modalities in its stacking order."""
        return tuple(self.joint.cfg.data.modalities)

    def num_levels(self) -> int:
        if self.multistream:
            return len(self.joint.model.encoder.feature_info.channels())
        return len(find_module(self.joint.model, "fuse"))  # one fusion module per level

    def joint_taps(self, level: int) -> dict[str, Tap]:
        """Taps on the joint model's per-modality streams at `level`: the two-stream model's
        `encoders.<m>`, or the multi-stream encoder's stacked output split by modality (keys
        `"joint_streams@<m>"`)."""
        if self.multistream:
            # `encoder.body`: the multi-stream encoder runs its body inside `run`, not `forward`
            body = Tap("encoder.body", index=level, split=self.joint_modalities)
            return {"joint_streams": body}
        return {
            "rgb_joint": Tap(f"encoders.{self.rgb_modality}", index=level),
            "depth_joint": Tap(f"encoders.{self.depth_modality}", index=level),
        }

    def joint_names(self) -> dict[str, str]:
        """The keys `joint_taps` gives -> the protocol's feature names."""
        if not self.multistream:
            return {"rgb_joint": "rgb_joint", "depth_joint": "depth_joint"}
        return {
            f"joint_streams@{self.rgb_modality}": "rgb_joint",
            f"joint_streams@{self.depth_modality}": "depth_joint",
        }


def load_runs(
    rgb_dir: str | os.PathLike,
    depth_dir: str | os.PathLike,
    joint_dir: str | os.PathLike,
    device: str = "cpu",
) -> Runs:
    """Load and cross-check the three runs (one modality each, then both, same classes)."""
    rgb, depth, joint = (load_run(d, device=device) for d in (rgb_dir, depth_dir, joint_dir))
    for run in (rgb, depth, joint):
        require_task(run, "segmentation", "fusescope dissect RUN_RGB RUN_DEPTH RUN_JOINT")
    for run, what in ((rgb, "RGB"), (depth, "depth")):
        mods = list(run.cfg.data.modalities)
        if len(mods) != 1:
            raise FusescopeError(f"{run.path}: the {what} run must read one modality, reads {mods}")
    m_rgb, m_depth = rgb.cfg.data.modalities[0], depth.cfg.data.modalities[0]
    joint_mods = list(joint.cfg.data.modalities)
    if sorted(joint_mods) != sorted([m_rgb, m_depth]):
        raise FusescopeError(
            f"{joint.path}: the joint run reads {joint_mods}; expected [{m_rgb}, {m_depth}] "
            f"(the modalities of the two unimodal runs)"
        )
    names = rgb.meta.class_names
    for run in (depth, joint):
        if run.meta.class_names != names:
            raise FusescopeError(f"{run.path}: classes differ from {rgb.path}'s")
    encoder = getattr(joint.model, "encoder", None)
    if getattr(encoder, "num_modalities", 1) == 2:  # a multi-stream model (stacked streams)
        find_module(joint.model, "encoder")
    else:
        try:
            for m in (m_rgb, m_depth):
                for sub in ("encoders", f"encoders.{m}", "fuse"):
                    find_module(joint.model, sub)
        except FusescopeError:
            raise FusescopeError(
                f"{joint.path}: the joint run must be a two-stream model (two_stream_concat: "
                f"encoders.<modality> and fuse) or a multi-stream one (cen, asymfusion, "
                f"tokenfusion, geminifusion, multistream, ...); its model is "
                f"{joint.cfg.model.name}"
            ) from None
    for run in (rgb, depth):
        find_module(run.model, "encoder")
    return Runs(rgb, depth, joint, m_rgb, m_depth)


def feature_taps(runs: Runs, levels: Sequence[int]) -> dict[str, tuple[str, Tap]]:
    """`"{feature}/{level}"` -> (model, Tap) for every CKA stream at every level."""
    taps = {}
    for lvl in levels:
        taps[f"rgb_sep/{lvl}"] = ("rgb", Tap("encoder", index=lvl))
        taps[f"depth_sep/{lvl}"] = ("depth", Tap("encoder", index=lvl))
        for name, tap in runs.joint_taps(lvl).items():
            taps[f"{name}/{lvl}"] = ("joint", tap)
        if not runs.multistream:
            taps[f"fused/{lvl}"] = ("joint", Tap(f"fuse.{lvl}"))
    return taps


def joint_features(runs: Runs, levels: Sequence[int]) -> dict[str, list[str]]:
    """For a multi-stream joint run, the protocol's joint features as `stream_features`
    concatenations of its split taps: `rgb_joint` and `depth_joint` (one stream each) and
    `fused` (both streams); the two-stream model's are taps of their own (nothing here)."""
    if not runs.multistream:
        return {}
    out = {}
    for lvl in levels:
        streams = [f"joint_streams/{lvl}@{m}" for m in runs.joint_modalities]
        out[f"rgb_joint/{lvl}"] = [f"joint_streams/{lvl}@{runs.rgb_modality}"]
        out[f"depth_joint/{lvl}"] = [f"joint_streams/{lvl}@{runs.depth_modality}"]
        out[f"fused/{lvl}"] = streams
    return out


class RunInput:
    """A run's view of the shared raw batch: its modalities, normalised with its statistics by
    the training pipeline's own `Normalize`."""

    def __init__(self, run: Any, device: str | torch.device):
        mods = list(run.cfg.data.modalities)
        self.modalities = mods
        self.normalize = Normalize(
            {m: run.meta.modalities[m] for m in mods}, {m: run.stats[m] for m in mods}
        ).to(device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.normalize({m: batch[m] for m in self.modalities})


FEW_PROBE_IMAGES = 50  # below this, probe results are noisy enough to warn


def probe_splits(spec: str) -> list[str]:
    """`"test"` or `"val+test"` -> the splits whose images make the probe set, in order."""
    splits = [s.strip() for s in spec.split("+")]
    if not all(splits) or len(set(splits)) < len(splits):
        raise FusescopeError(f"probe split {spec!r}: give split names joined by '+', e.g. val+test")
    return splits


class ProbeSet(torch.utils.data.ConcatDataset):
    """The images of one or more splits of a data folder, in order, as one probe set (images a
    run trained on have no place in it: the protocol probes held-out images)."""

    def __init__(self, root: str | os.PathLike, splits: Sequence[str], modalities: list[str]):
        parts = [FolderDataset(root, split, modalities) for split in splits]
        super().__init__(parts)
        self.meta, self.root = parts[0].meta, parts[0].root


FRESH_SEED_OFFSET = 1_000_000
"""Fresh probe frames of a known-answer folder of data seed s are drawn from seed s + this:
frame i of seed s is drawn from (s, i) alone, so none of them is a frame the runs trained on."""


def fresh_probe_frames(ds: ProbeSet, opts: DissectOptions):
    """How many fresh probe frames to render in place of the probe split `ds` (0: probe the
    split), and its data folder's generator record (None: not generated).

    Why: a known-answer folder's test split is small (60 images of the demo's 400 frames), and
    the spread of the held-out Set IoU over probe splits, which the known-answer verdicts are
    judged by, shrinks with the probe images. New frames of the same generator are images
    none of the runs trained on, as the test split's are, in any number (measured on data
    seeds 11-18 in README, "Other figures").
    """
    want = opts.probe_frames
    record = ds.meta.extra.get("generator")
    if want == 0:
        return 0, record
    if want == "auto":
        if record is None or opts.probe_size is None or len(ds) >= opts.probe_size:
            return 0, record
        want = opts.probe_size
    if not (isinstance(want, int) and want > 0):
        raise FusescopeError(f"probe frames must be 'auto' or an integer >= 0, got {want!r}")
    if record is None:
        raise FusescopeError(
            f"{ds.root}: probe frames render new frames of a known-answer data folder, and this "
            f"one was not generated by fusescope (no generator record in its meta.json); "
            f"probe one of its splits instead (--split, --probe-frames 0)"
        )
    return want, record


def render_probe_frames(record: dict, num: int, out: Path, progress: bool) -> dict:
    """Write `num` new frames of the generator that wrote `record` to `out` (all splits are
    probe images); returns what was rendered, for the results."""
    kind = kind_of_record(record)
    if kind is None:
        raise FusescopeError(f"generator {record.get('name')!r}: no such known-answer generator")
    # the record's own options (size, modalities, ...) and a count and seed of our own
    options = {
        k: v for k, v in record.items() if k not in ("name", "version", "splits", "frame_seed")
    }
    spec = {**options, "kind": kind, "num": num, "seed": int(record["seed"]) + FRESH_SEED_OFFSET}
    made = generator(kind)
    if made.version != record.get("version", made.version):
        raise FusescopeError(
            f"the probe data was written by {kind} generator version {record.get('version')}; "
            f"this fusescope renders version {made.version}: new frames would not match it "
            f"(--probe-frames 0 probes its split)"
        )
    spec = OmegaConf.create(spec)
    made.check(spec)
    made.generate(out, spec, progress)
    return {"kind": kind, "frames": num, "seed": spec.seed, "size": list(spec.size)}


def probe_loader(
    runs: Runs, opts: DissectOptions, scratch: Path | None = None, progress: bool = False
) -> tuple[Any, torch.utils.data.DataLoader]:
    """The raw (unnormalised) probe set over both modalities and its loader.

    With `scratch` (a folder that outlives the loader; `dissect` passes a temporary one), the
    probe set may be fresh frames rendered there (`fresh_probe_frames`); the loader's dataset
    then has `fresh` (what was rendered), else `fresh` is None.
    """
    root = opts.data_root or runs.joint.cfg.data.root
    splits = probe_splits(opts.split)
    ds = ProbeSet(root, splits, [runs.rgb_modality, runs.depth_modality])
    if ds.meta.class_names != runs.rgb.meta.class_names:
        raise FusescopeError(f"{root}: classes differ from the runs' classes")
    fresh = None
    num_fresh, record = fresh_probe_frames(ds, opts)
    if num_fresh and scratch is not None:
        stage(
            f"rendering {num_fresh} new probe frames of the known-answer generator (the "
            f"{opts.split} split of {root} holds {len(ds)}; --probe-frames 0 probes it)",
            progress,
        )
        fresh = render_probe_frames(record, num_fresh, Path(scratch) / "probe_frames", progress)
        modalities = [runs.rgb_modality, runs.depth_modality]
        ds = ProbeSet(Path(scratch) / "probe_frames", ["train", "val", "test"], modalities)
        if ds.meta.class_names != runs.rgb.meta.class_names:
            raise FusescopeError(f"{root}: new frames of its generator have other classes")
    else:
        trained_on = {str(run.cfg.data.train_split) for run in (runs.rgb, runs.depth, runs.joint)}
        if root == runs.joint.cfg.data.root and trained_on & set(splits):
            warn(
                f"probe split(s) {', '.join(sorted(trained_on & set(splits)))} of {root}: the "
                f"runs trained on these images, so their features fit them better than new "
                f"images"
            )
    n = len(ds) if opts.probe_size is None or fresh else min(opts.probe_size, len(ds))
    if n < 4:
        raise FusescopeError(f"{root}, split {opts.split}: {n} images; the probe needs >= 4")
    if n < FEW_PROBE_IMAGES:
        if fresh:
            where, hint = f"new frames of {root}'s generator", "more new frames (--probe-frames N)"
        else:
            where = f"{root}, split {opts.split}"
            hint = "a larger split or " + (
                "--probe-frames N (new frames of its generator)" if record else "--probe-size"
            )
        warn(
            f"the probe set has only {n} images ({where}): Set IoU, SVar and CKA from so few "
            f"are noisy (the paper probes 500); use {hint}"
        )
    subset = torch.utils.data.Subset(ds, range(n))
    subset.fresh = fresh
    loader = torch.utils.data.DataLoader(
        subset, batch_size=opts.batch_size, shuffle=False, collate_fn=collate
    )
    return ds, loader


MIN_PROBE_MAP_SIDE = 6
"""The deepest level read by default has at least this many cells on its feature map's short
side. On the demo's 96x128 frames stage 4 is a 3x4 map: with 200 new probe frames the
separately trained RGB encoder's lead on the appearance-only classes there was 0.002-0.029 (not
resolved on 4 of 4 data seeds) against 0.029-0.058 at stage 3 (6x8; resolved on 7 of 8 data seeds
with the default settings, 8 of 8 with 5 splits); small objects fall inside one or two cells of
a map that coarse."""


def default_levels(
    num_levels: int,
    reductions: Sequence[int] | None = None,
    image_size: tuple[int, int] | None = None,
) -> list[int]:
    """Stage 2 (stride 8) and the last stage, or (with the levels' `reductions` and the probe
    images' `image_size`) the deepest stage whose map has `MIN_PROBE_MAP_SIDE` cells on its
    short side. On small known-answer runs the deepest stage alone was seen to miss the known
    answer that stage 2 showed (a 120-frame, 80-step run of data seed 7, scored in sample:
    stage 4 RGB 0.200 vs depth 0.220 on the appearance-only classes, stage 2 0.197 vs 0.155),
    so both are read, each with its own verdict. Stage 1 is left out: even untrained networks
    pass colour and depth through it (see tests/test_dissect_known_answer.py), and its cached
    activations are the largest."""
    second = min(1, num_levels - 1)
    deepest = num_levels - 1
    if reductions is not None and image_size is not None:
        short = min(image_size)
        fit = [
            lvl
            for lvl in range(num_levels)
            if math.ceil(short / reductions[lvl]) >= MIN_PROBE_MAP_SIDE
        ]
        deepest = max([second, *fit])
    return sorted({second, deepest})


def level_reductions(runs: Runs) -> list[int] | None:
    """Each encoder level's stride, from the RGB-only run's encoder (the three runs' levels
    are read at the same indices); None when its encoder does not say."""
    info = getattr(find_module(runs.rgb.model, "encoder"), "feature_info", None)
    try:
        return [int(r) for r in info.reduction()]
    except (AttributeError, TypeError):
        return None


def dissect(runs: Runs, opts: DissectOptions, progress: bool = False) -> Dissection:
    """Run the whole protocol (see the module docstring)."""
    if opts.cka_method not in ("minibatch", "exact"):
        raise FusescopeError(f"cka method must be minibatch or exact, got {opts.cka_method!r}")
    if opts.gradcam_region not in ("label", "predicted"):
        raise FusescopeError(
            f"gradcam region must be label or predicted, got {opts.gradcam_region!r}"
        )
    if opts.folds < 2 or opts.seeds < 1:
        raise FusescopeError(f"folds must be >= 2 and seeds >= 1, got {opts.folds}, {opts.seeds}")
    # fresh probe frames (if any) live in a temporary folder for the protocol's whole run
    with tempfile.TemporaryDirectory(prefix="fusescope-probe-") as scratch:
        return _dissect(runs, opts, Path(scratch), progress)


def _dissect(runs: Runs, opts: DissectOptions, scratch: Path, progress: bool) -> Dissection:
    ds, loader = probe_loader(runs, opts, scratch, progress)
    meta = runs.joint.meta
    num_levels = runs.num_levels()
    if opts.levels is not None:
        levels = sorted(set(opts.levels))
    else:
        image_size = tuple(loader.dataset[0]["label"].shape[-2:])
        levels = default_levels(num_levels, level_reductions(runs), image_size)
    cka_levels = sorted(set(opts.cka_levels if opts.cka_levels is not None else range(num_levels)))
    bad = [lvl for lvl in {*levels, *cka_levels} if not 0 <= lvl < num_levels]
    if bad:
        raise FusescopeError(f"levels {bad} out of range 0..{num_levels - 1}")
    tapped = sorted({*levels, *cka_levels})
    taps = feature_taps(runs, tapped)
    concat = joint_features(runs, tapped)  # first: cat_joint reads them
    for lvl in levels:
        concat[f"cat_sep/{lvl}"] = [f"rgb_sep/{lvl}", f"depth_sep/{lvl}"]
        concat[f"cat_joint/{lvl}"] = [f"rgb_joint/{lvl}", f"depth_joint/{lvl}"]
    adapt = {
        name: RunInput(run, opts.device)
        for name, run in (("rgb", runs.rgb), ("depth", runs.depth), ("joint", runs.joint))
    }
    cka_names = [f"{f}/{lvl}" for f in STREAMS for lvl in cka_levels]
    cka = CKAAccumulator(cka_names, debiased=True, method=opts.cka_method)
    probe_features = [f"{f}/{lvl}" for f in FEATURES for lvl in levels]
    cache: dict[str, list[tuple[Tensor, Tensor]]] = {k: [] for k in probe_features}
    stream = stream_features(
        runs.models, taps, loader, concat=concat, device=opts.device, adapt=adapt
    )
    stage(f"feature pass over {len(loader.dataset)} probe images (CKA, Net2Vec inputs)", progress)
    if progress:
        stream = tqdm(stream, total=len(loader), desc="probe pass", leave=False)
    for batch, feats in stream:
        cka.update({k: feats[k] for k in cka_names})
        label = batch["label"].cpu()
        for k in probe_features:
            cache[k].append((feats[k].cpu(), label))
    num_classes = meta.num_classes
    if len(loader.dataset) < opts.folds:
        raise FusescopeError(
            f"{len(loader.dataset)} probe images are fewer than --folds {opts.folds}"
        )
    net2vec = Net2Vec(
        num_classes,
        epochs=opts.epochs,
        lr=opts.lr,
        ignore_index=meta.ignore_index,
        device=opts.device,
        pixels=opts.pixels,
    )
    splits: dict[str, dict[str, np.ndarray]] = {}  # level -> feature -> (seeds, C)
    floors: dict[str, dict[str, np.ndarray]] = {}
    labels = None
    for lvl in levels:
        splits[str(lvl)], floors[str(lvl)] = {}, {}
        for f in FEATURES:
            k = levels.index(lvl) * len(FEATURES) + list(FEATURES).index(f) + 1
            stage(
                f"Net2Vec probes {k}/{len(levels) * len(FEATURES)}: {FEATURES[f]}, stage "
                f"{lvl + 1} ({opts.seeds} splits x {opts.folds} folds, held out and noise "
                f"floor: {2 * opts.seeds * opts.folds} probes trained as one)",
                progress,
            )
            pairs = cache.pop(f"{f}/{lvl}")
            acts = torch.cat([a for a, _ in pairs])  # (N, K, h, w)
            labels = torch.cat([lab for _, lab in pairs])  # (N, H, W)
            del pairs
            # every split's held-out probes and noise-floor probes, trained as one bank
            scores = net2vec.held_out(
                acts,
                labels,
                [
                    HeldOutSplit(seed, floor)
                    for floor in (False, True)
                    for seed in range(opts.seeds)
                ],
                folds=opts.folds,
                batch_size=opts.batch_size,
                progress=f"{FEATURES[f]}, stage {lvl + 1}" if progress else None,
            )
            splits[str(lvl)][f], floors[str(lvl)][f] = scores[: opts.seeds], scores[opts.seeds :]
    valid = labelled_pixels(labels, num_classes, meta.ignore_index)
    pixels = concept_pixels(labels, num_classes, valid).sum(0).double()  # (C,)
    frequency = (pixels / valid.sum().clamp_min(1)).numpy()
    set_iou = mean_over_splits(splits)
    stage("SVar, CKA and specialisation summaries", progress)
    results = {
        "runs": {
            "rgb": str(runs.rgb.path),
            "depth": str(runs.depth.path),
            "joint": str(runs.joint.path),
        },
        "modalities": {"rgb": runs.rgb_modality, "depth": runs.depth_modality},
        "probe": {
            # the data folder, also when the probe images were new frames of its generator
            "root": str(opts.data_root or runs.joint.cfg.data.root),
            "split": opts.split,
            "images": len(loader.dataset),
            "fresh_frames": loader.dataset.fresh,
            "class_names": meta.class_names,
            "cues": [c.cue for c in meta.classes],
            "frequency": frequency.tolist(),
            "scoring": f"held out: {opts.folds}-fold over probe images, {opts.seeds} split(s)",
            "folds": opts.folds,
            "seeds": opts.seeds,
        },
        "options": asdict(opts),
        "levels": {"net2vec": levels, "cka": cka_levels},
        "features": FEATURES,
        "set_iou": set_iou,
        "set_iou_sd": sd_over_splits(splits),
        "noise_floor": mean_over_splits(floors),
        "noise_floor_sd": sd_over_splits(floors),
        "set_iou_splits": {lvl: {f: v.tolist() for f, v in d.items()} for lvl, d in splits.items()},
        "noise_floor_splits": {
            lvl: {f: v.tolist() for f, v in d.items()} for lvl, d in floors.items()
        },
        "svar": svar_table(splits, frequency, meta.class_names),
        "cka": cka_summary(cka, cka_levels),
        "specialisation_by_level": {
            str(lvl): specialisation(
                splits[str(lvl)], floors[str(lvl)], meta, lvl, opts.margin, opts.margin_known
            )
            for lvl in levels
        },
        "gradcam": {"level": levels[-1], "region": opts.gradcam_region},
    }
    # the last level's reading is the headline (and what the CLI prints)
    results["specialisation"] = results["specialisation_by_level"][str(levels[-1])]
    stage("Grad-CAM examples", progress)
    examples = gradcam_examples(runs, ds, loader, adapt, opts, levels[-1], frequency.tolist())
    return Dissection(json_safe(results), examples)


def mean_over_splits(values: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """level -> feature -> `(seeds, C)` array  ->  the per-class mean over splits (NaN kept)."""
    return {lvl: {f: _nanmean(v).tolist() for f, v in d.items()} for lvl, d in values.items()}


def sd_over_splits(values: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """The per-class standard deviation over splits (0 with one split)."""
    return {lvl: {f: _sd(v).tolist() for f, v in d.items()} for lvl, d in values.items()}


def _nanmean(v: np.ndarray) -> np.ndarray:
    finite = np.isfinite(v)
    total = np.where(finite, v, 0).sum(0)
    count = finite.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _sd(v: np.ndarray) -> np.ndarray:
    """Sample standard deviation over axis 0 (ddof 1; 0 for a single row)."""
    v = np.asarray(v, dtype=float)
    if v.shape[0] < 2:
        return np.zeros(v.shape[1:])
    return np.nan_to_num(np.std(v, axis=0, ddof=1))


# a concept whose term is more than this share of sum |terms| "dominates" an SVar value
DOMINANT_SHARE = 0.5


def svar_table(
    splits: dict[str, dict[str, np.ndarray]], frequency: np.ndarray, class_names: list[str]
) -> list[dict[str, Any]]:
    """Table I rows for each Net2Vec level: SVar of the mean Set IoUs with its per-concept
    breakdown, SVar on each probe split and their spread, and the concept (if any) whose
    1/frequency-weighted term dominates the sum."""
    rows = []
    for lvl, per_feature in splits.items():
        for group, old, new in TABLE_I:
            mean_new, mean_old = _nanmean(per_feature[new]), _nanmean(per_feature[old])
            parts = concept_variance(mean_new, mean_old, frequency)
            per_split = [
                semantic_variance(n, o, frequency)
                for n, o in zip(per_feature[new], per_feature[old], strict=True)
            ]
            terms = np.array([abs(p.contribution) for p in parts])
            dominant = None
            if terms.sum() > 0 and terms.max() > DOMINANT_SHARE * terms.sum():
                j = int(terms.argmax())
                dominant = {
                    "class": class_names[j],
                    "share": float(terms[j] / terms.sum()),
                    "frequency": float(frequency[j]),
                }
            rows.append(
                {
                    "group": group,
                    "level": int(lvl),
                    "pair": f"{FEATURES[old]} vs. {FEATURES[new]}",
                    "old": old,
                    "new": new,
                    "svar": float(sum(p.contribution for p in parts)),
                    "svar_splits": per_split,
                    "svar_sd": float(_sd(np.array(per_split)[:, None])[0]),
                    "dominated_by": dominant,
                    "concepts": [
                        {
                            "class": class_names[p.index],
                            "state": p.state,
                            "iou_old": p.iou_old,
                            "iou_new": p.iou_new,
                            "contribution": p.contribution,
                        }
                        for p in parts
                    ],
                }
            )
    return rows


def cka_summary(cka: CKAAccumulator, levels: list[int]) -> dict[str, Any]:
    """The full matrix plus Fig. 5's views: cross-layer per stream, cross-modal per layer."""
    matrix = cka.result()
    index = {n: i for i, n in enumerate(cka.names)}

    def value(a: str, b: str) -> float:
        return float(matrix[index[a], index[b]])

    cross_layer = {
        f: [[value(f"{f}/{i}", f"{f}/{j}") for j in levels] for i in levels] for f in STREAMS
    }
    cross_modal = {
        "separate": [value(f"rgb_sep/{lvl}", f"depth_sep/{lvl}") for lvl in levels],
        "joint": [value(f"rgb_joint/{lvl}", f"depth_joint/{lvl}") for lvl in levels],
    }
    return {
        "method": cka.method,
        "debiased": cka.debiased,
        "batches": cka.batches,
        "examples": cka.examples,
        "dropped": cka.dropped,
        "levels": levels,
        "names": cka.names,
        "matrix": matrix.tolist(),
        "cross_layer": cross_layer,
        "cross_modal": cross_modal,
    }


KNOWN_ANSWER = (  # (key, cue group, the modality that should lead, the other)
    ("rgb_leads_on_appearance", "appearance", "rgb", "depth"),
    ("depth_leads_on_geometry", "geometry", "depth", "rgb"),
)


def specialisation(
    splits: dict[str, Any],
    floors: dict[str, Any] | None,
    meta: Any,
    level: int,
    margin: float,
    margin_known: float = 0.02,
) -> dict[str, Any]:
    """Which classes each modality (separately trained) identifies better than the other,
    checked against the cues the data declares, and one sentence per modality.

    Args:
        splits: "rgb_sep" / "depth_sep" -> `(seeds, C)` held-out Set IoU per probe split.
        floors: the same for the noise floor (None: a floor of 0).
        meta: the data's classes (names, cues).
        level: the encoder level read (for the sentences).
        margin: a class counts for a modality when its mean lead is at least this and twice
            its spread over splits.
        margin_known: the least mean lead, above the floor, that resolves a known-answer check.

    Returns:
        Per modality the classes it leads on and a sentence; per cue group the mean Set IoU,
        its spread and floor; and `known_answer`: per check "yes", "no" or "not resolved",
        with the numbers behind it in `known_answer_detail`.
    """
    iou = {m: np.atleast_2d(np.asarray(splits[f"{m}_sep"], dtype=float)) for m in MODS}
    floor = {
        m: np.atleast_2d(np.asarray(floors[f"{m}_sep"], dtype=float))
        if floors is not None
        else np.zeros_like(iou[m])
        for m in MODS
    }
    names = meta.class_names
    cues = [c.cue for c in meta.classes]
    mean = {m: np.nan_to_num(_nanmean(iou[m])) for m in MODS}
    mean_floor = {m: np.nan_to_num(_nanmean(floor[m])) for m in MODS}
    diff = np.nan_to_num(iou["rgb"]) - np.nan_to_num(iou["depth"])  # (seeds, C)
    diff_mean, diff_sd = diff.mean(0), _sd(diff)
    out: dict[str, Any] = {
        "level": level,
        "margin": margin,
        "margin_known": margin_known,
        "splits": int(iou["rgb"].shape[0]),
        "cue_mean_iou": {},
    }
    per_split: dict[str, tuple[dict, dict]] = {}  # cue -> (IoU, floor) per modality, (seeds,)
    finite = np.isfinite(iou["rgb"]).all(0) & np.isfinite(iou["depth"]).all(0)
    for cue in ("appearance", "geometry", "both"):
        ids = [i for i, c in enumerate(cues) if c == cue and finite[i]]
        if ids:
            group = {m: iou[m][:, ids].mean(1) for m in MODS}  # (seeds,)
            group_floor = {m: np.nan_to_num(floor[m][:, ids]).mean(1) for m in MODS}
            out["cue_mean_iou"][cue] = {
                **{m: float(group[m].mean()) for m in MODS},
                **{f"{m}_sd": float(_sd(group[m][:, None])[0]) for m in MODS},
                **{f"{m}_floor": float(group_floor[m].mean()) for m in MODS},
            }
            per_split[cue] = (group, group_floor)
    for who, sign, label in (("rgb", 1.0, "RGB"), ("depth", -1.0, "Depth")):
        other = "depth" if who == "rgb" else "rgb"
        lead_of = sign * diff_mean
        need = np.maximum(margin, 2 * diff_sd)
        lead = [
            i
            for i in range(len(names))
            if lead_of[i] >= need[i] and mean[who][i] - mean_floor[who][i] >= margin
        ]
        lead.sort(key=lambda i: -lead_of[i])
        mine, theirs = mean[who], mean[other]
        by_cue = {cue: sum(1 for i in lead if cues[i] == cue) for cue in set(cues) if cue}
        if lead:
            listed = ", ".join(f"{names[i]} ({mine[i]:.2f} vs {theirs[i]:.2f})" for i in lead)
            sentence = f"{label} (separately trained, stage {level + 1}) specialises in {listed}"
            if by_cue:
                counts = ", ".join(f"{n} {cue}-cue" for cue, n in sorted(by_cue.items()) if n)
                sentence += f": {counts} class{'es' if len(lead) > 1 else ''}."
            else:
                sentence += "."
        else:
            rival = "depth" if who == "rgb" else "RGB"
            sentence = (
                f"{label} (separately trained, stage {level + 1}) identifies no class clearly "
                f"better than {rival}: on every class its Set IoU is less than {margin:.2f} "
                f"above {rival}'s."
            )
        out[who] = {"classes": [names[i] for i in lead], "by_cue": by_cue, "sentence": sentence}
    groups = out["cue_mean_iou"]
    if "appearance" in groups and "geometry" in groups:
        out["known_answer"], out["known_answer_detail"] = {}, {}
        for key, cue, leader, other in KNOWN_ANSWER:
            group, group_floor = per_split[cue]
            verdict, detail = known_answer_verdict(
                group[leader] - group_floor[leader], group[other] - group_floor[other], margin_known
            )
            out["known_answer"][key] = verdict
            out["known_answer_detail"][key] = {"cue": cue, "leader": leader, **detail}
    return out


MODS = ("rgb", "depth")


def known_answer_verdict(
    gain_leader: np.ndarray, gain_other: np.ndarray, margin_known: float
) -> tuple[str, dict[str, Any]]:
    """Does the expected modality lead? From per-split group means of Set IoU above the floor.

    "yes" when the mean lead is beyond `threshold = max(margin_known, 2 sd of the lead over
    splits)` and the leader is itself that far above its floor; "no" when the other modality
    leads by the same threshold; "not resolved" otherwise, and always with a single split (no
    spread to judge a lead by).
    """
    lead = np.asarray(gain_leader, dtype=float) - np.asarray(gain_other, dtype=float)
    n = lead.shape[0]
    sd = float(_sd(lead[:, None])[0])
    threshold = max(margin_known, 2 * sd)
    detail = {
        "lead": float(lead.mean()),
        "lead_sd": sd,
        "threshold": threshold,
        "above_floor": {"leader": float(np.mean(gain_leader)), "other": float(np.mean(gain_other))},
    }
    if n < 2:
        return "not resolved", {**detail, "reason": "one probe split: no spread to judge by"}
    if lead.mean() > threshold and np.mean(gain_leader) > threshold:
        return "yes", {**detail, "reason": "lead beyond the threshold"}
    if lead.mean() < -threshold:
        return "no", {**detail, "reason": "the other modality leads beyond the threshold"}
    if lead.mean() > threshold:
        reason = "the leader is within the threshold of its noise floor"
    else:
        reason = "lead within the threshold (noise floor, spread over probe splits)"
    return "not resolved", {**detail, "reason": reason}


def pick_classes(meta: Any, frequency: list[float] | None = None) -> list[int]:
    """One class per cue group (the most frequent on the probe set), or the most frequent
    classes when the data declares no cues."""
    freq = np.nan_to_num(
        np.asarray(frequency if frequency is not None else np.ones(meta.num_classes), dtype=float)
    )
    groups = meta.cue_groups()
    if groups:
        return [max(ids, key=lambda i: freq[i]) for ids in groups.values() if freq[ids].max() > 0]
    return [int(i) for i in np.argsort(-freq)[:3] if freq[i] > 0]


def gradcam_examples(
    runs: Runs,
    ds: Any,
    loader: Any,
    adapt: dict[str, RunInput],
    opts: DissectOptions,
    level: int,
    frequency: list[float],
) -> list[GradCAMExample]:
    """A few probe images per chosen class, with Grad-CAM at `level` for the four streams."""
    if opts.gradcam_images <= 0:
        return []
    meta = runs.joint.meta
    cams = {
        "joint": GradCAM(runs.joint.model, runs.joint_taps(level)),
        "rgb": GradCAM(runs.rgb.model, {"rgb_sep": Tap("encoder", index=level)}),
        "depth": GradCAM(runs.depth.model, {"depth_sep": Tap("encoder", index=level)}),
    }
    examples = []
    for cid in pick_classes(meta, frequency):
        chosen = [i for i in range(len(loader.dataset)) if (ds[i]["label"] == cid).any()][
            : opts.gradcam_images
        ]
        if not chosen:
            continue
        batch = move_batch(collate([ds[i] for i in chosen]), opts.device)
        raw = {}
        for name in ("joint", "rgb", "depth"):
            model_batch = {**adapt[name](batch), "label": batch["label"]}
            maps = cams[name](
                model_batch, cid, region=opts.gradcam_region, ignore_index=meta.ignore_index
            )
            if name == "joint":  # the streams' tap keys -> rgb_joint / depth_joint
                rename = runs.joint_names()
                maps = {rename[k]: v for k, v in maps.items() if k in rename}
            raw.update(maps)
        # one scale per image over all four streams: each map is sum_k alpha_k A_k, a
        # first-order share of the class score (logit units), so the four compare directly
        maps = shared_scale(raw)
        rgb = batch[runs.rgb_modality].cpu()
        examples.append(
            GradCAMExample(
                class_id=int(cid),
                class_name=meta.class_names[cid],
                cue=meta.classes[cid].cue,
                rgb=(
                    rgb[:, :3].permute(0, 2, 3, 1).clamp(0, 1).numpy()
                    if rgb.shape[1] >= 3
                    else rgb[:, 0].numpy()
                ),
                depth=batch[runs.depth_modality][:, 0].cpu().numpy(),
                label=batch["label"].cpu().numpy(),
                maps={k: v.detach().cpu().numpy() for k, v in maps.items()},
                region=opts.gradcam_region,
            )
        )
    return examples


def train_runs(
    configs: Sequence[str], run_dirs: Sequence[str | os.PathLike], overrides: Sequence[str] = ()
) -> None:
    """Train (or finish) each config into its run folder with the engine; finished runs
    (with `model.safetensors`) are left alone."""
    for config, run_dir in zip(configs, run_dirs, strict=True):
        if (Path(run_dir) / "model.safetensors").is_file():
            continue
        train(load_config(config, list(overrides)), run_dir)
