"""Run configuration: YAML files merged over typed defaults, with dotted command-line overrides.

A config has four sections. `model` is free-form because each fusion method's builder signature is
its schema (checked when the model is built); the other sections are fixed here, so an unknown key
anywhere is an error naming it.

A config file may say only what differs from others: `_base_: path.yaml` (or a list of paths,
relative to the file) names files merged first, in order, each with its own bases before it;
then the file itself, then the command-line overrides. Mappings merge key by key, anything else
(a list, a number) is replaced. An unknown key is reported with the file it came from, a base
or the child. A run folder's `config.yaml` is the fully resolved config, without `_base_`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fusescope.errors import FusescopeError
from fusescope.io import is_plain_name

# the most optimiser steps a schedule may count: a billion steps outlasts any run, and a larger
# train.max_steps is a typo that would train forever at an lr that never decays
MAX_STEPS = 10**9
INPUT_MAPS = ("train_stats", "cen")  # data.input_map
GENERATOR_MODES = ("eval", "train")  # eval.generator_mode


@dataclass
class SynthSpec:
    """How to generate the known-answer data set when `data.root` does not exist yet."""

    num: int = 600
    seed: int = 0
    size: list[int] = field(default_factory=lambda: [120, 160])
    kind: str = "rooms"  # a generator of fusescope.data.generators: rooms (RGB-D), posters
    # rooms: modalities to write (rgb depth texture shade normal edge thermal); null: rgb, depth
    modalities: list[str] | None = None


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    modalities: list[str] = field(default_factory=lambda: ["rgb", "depth"])
    targets: list[str] | None = None  # translation: the modalities to predict from the others
    synth: SynthSpec | None = None  # generate the known-answer set at `root` if it is missing
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] | None = None  # [H, W]; null trains on whole (rescaled) frames
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    hflip: bool = True
    color_jitter: float = 0.2  # brightness/contrast/saturation strength, colour modality only
    num_workers: int = 0
    max_tokens: int = 256  # text modalities: token ids kept per sample (the rest is cut)
    vocab_size: int = 20000  # text: most vocabulary entries, <pad> and <unk> included
    vocab_min_count: int = 2  # text: fewer occurrences in the train split: <unk>
    min_pixels: int = 20  # frame classification: a class is present if it covers this many pixels
    # translation inputs: train_stats (mean / std of the train split) | cen (each to [-1, 1] as
    # CEN's loader maps it: data/paired.CenInputMap)
    input_map: str = "train_stats"


@dataclass
class StageSpec:
    """One stage of a staged schedule (`train.stages`): `steps` optimiser steps at peak `lr`,
    a fresh linear warm-up over `warmup_steps` (default `train.warmup_steps`) and a poly decay
    (power `train.poly_power`) towards 0 at `decay_steps` steps into the stage (default: the
    stage's own length)."""

    steps: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    decay_steps: int | None = None


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 400
    batch_size: int = 8
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw; pix2pix: [0.5, 0.999]
    warmup_steps: int = 20
    poly_power: float = 0.9
    # a staged schedule (TokenFusion / GeminiFusion: AdamW in three stages at lr 6e-5 / 3e-5 /
    # 1.5e-5): each stage its own peak lr, a fresh warm-up and poly decay, in place of train.lr's
    # one warm-up + decay; train.max_steps may stop inside the stages, never beyond them
    stages: list[StageSpec] | None = None
    # with stages: each stage starts a fresh optimiser state (AdamW moments, SGD momentum), as
    # the authors' code builds a new optimiser per stage
    stage_fresh_optimizer: bool = True
    # learning-rate multipliers by module name prefix, e.g. {decoder: 6.0} (CEN trains its
    # decoder at 6x the encoder's lr); the longest matching prefix wins
    lr_scales: dict[str, float] = field(default_factory=dict)
    grad_accum: int = 1
    per_modality_weight: float = 1.0  # weight of each `per_modality` output's task loss
    recon_weight: float = 100.0  # translation: weight of the L1 term (pix2pix, CEN: 100)
    gan_weight: float = 1.0  # translation: weight of the adversarial terms (with model.gan)
    gan_mode: str = "vanilla"  # translation: vanilla (BCE, pix2pix / CEN) | lsgan
    # BatchNorms normalise with their running statistics and do not update them while the rest
    # trains (gammas and betas still learn): the CEN / AsymFusion code's FREEZE_BN
    freeze_bn_stats: bool = False
    # weight decay on every parameter, norm gammas / betas and biases included, as the CEN /
    # AsymFusion code's SGD does; false exempts norms and biases (decay fights CEN's l1 rule)
    decay_all: bool = False
    # probability of zeroing a modality per sample (a number, or {modality: p}); never all of a
    # sample's modalities at once (fusescope.engine.missing)
    modality_dropout: Any = None
    class_weights: list[float] | None = None
    ckpt_every: int = 200
    # also checkpoint when this many minutes passed since the last one (0: by steps only), so a
    # run killed before its first `ckpt_every` step does not restart from 0
    ckpt_minutes: float = 10.0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate on data.val_split at the end only
    precision: str = "32-true"  # any Lightning Fabric precision, e.g. bf16-mixed
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    sync_bn: bool = True  # with several processes; keeps BN statistics equal to one process
    tensorboard: bool = False
    progress: bool = True
    # torch.compile the model for training and evaluation (benchmarks/fusion_speed.py measures
    # the compiled / eager step ratio per method)
    compile: bool = False


@dataclass
class EvalConfig:
    split: str = "val"
    tta: str = "none"  # none | flip | ms-flip
    scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25])
    window: list[int] | None = None  # [H, W] sliding-window crop; null: whole image
    stride: list[int] | None = None  # default: 2/3 of the window
    batch_size: int = 8
    fid_weights: str | None = None  # translation: Inception weights for FID / KID (else Lite0)
    # translation: score the generator in eval mode, or in train mode as CEN's code does (dropout
    # on at test, drawn from a fixed seed)
    generator_mode: str = "eval"


@dataclass
class RunConfig:
    task: str = "segmentation"  # a task of fusescope.tasks: segmentation, translation, ...
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "early_concat"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _structured() -> DictConfig:
    return OmegaConf.structured(RunConfig)


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> DictConfig:
    """Read a YAML config (its `_base_` files first) over the defaults, then apply `key=value`
    overrides.

    Raises:
        FusescopeError: missing file or base, a cycle of bases, bad YAML, unknown key or a value
            of the wrong type; the message names where the key came from (the file, one of its
            bases, or the override) and, for an unknown key, lists the keys its section accepts
            and the closest one.
    """
    cfg = _structured()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FusescopeError(f"{path}: config file not found")
        for layer, where in config_layers(path):
            cfg = _merge(cfg, layer, str(where))
    for item in overrides:
        if "=" not in item:
            raise FusescopeError(f"override {item!r} is not key=value")
    # one override at a time, so an error names the override that caused it
    for item in overrides:
        cfg = _merge(cfg, _parse_overrides([item]), f"command-line override `{item}`")
    try:
        OmegaConf.to_container(cfg, resolve=True)  # ${...} interpolations fail here, not later
    except OmegaConfBaseException as err:
        where = f"{path}: " if path is not None else ""
        raise FusescopeError(f"{where}{_explain(err)}") from None
    check_config(cfg)
    return cfg


BASE_KEY = "_base_"


def config_layers(path: Path, _chain: tuple[Path, ...] = ()) -> list[tuple[DictConfig, Path]]:
    """The mappings a config file stands for, in merge order: its bases' layers (each base's
    own bases first), then the file's own keys without `_base_`, each with the file it is from.

    Raises:
        FusescopeError: one line naming the file: a `_base_` that is not a path or a list of
            paths, a base file that does not exist, or a cycle of bases.
    """
    here = path.resolve()
    if here in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(here) :], here))
        raise FusescopeError(f"{path}: _base_ cycle: {cycle}")
    node = _read_yaml(path)
    raw = node.pop(BASE_KEY) if BASE_KEY in node else []
    bases = OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else raw
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise FusescopeError(
            f"{path}: {BASE_KEY} must be a file path or a list of file paths (relative to "
            f"the config's folder), got {bases!r}"
        )
    layers: list[tuple[DictConfig, Path]] = []
    for base in bases:
        base_path = path.parent / Path(base).expanduser()
        if not base_path.is_file():
            raise FusescopeError(f"{path}: {BASE_KEY} {base!r}: file not found ({base_path})")
        layers += config_layers(base_path, (*_chain, here))
    layers.append((node, path))
    return layers


def _merge(cfg: DictConfig, other: DictConfig, where: str) -> DictConfig:
    """OmegaConf.merge, with its errors (an unknown key, a value of the wrong type, a mapping
    where a list belongs) as a one-line error naming `where`."""
    try:
        return OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as err:
        raise FusescopeError(f"{where}: {_explain(err)}") from None
    except (TypeError, ValueError) as err:
        raise FusescopeError(
            f"{where}: {str(err).splitlines()[0]} (a value of the wrong shape for its key?)"
        ) from None


def _read_yaml(path: Path) -> DictConfig:
    """A config file's mapping; a file that does not parse, is not UTF-8 or is not a mapping is
    an error naming it."""
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise FusescopeError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    except UnicodeDecodeError as err:
        raise FusescopeError(f"{path}: not UTF-8 text ({err})") from None
    if not isinstance(loaded, DictConfig):
        raise FusescopeError(
            f"{path}: a config must be a mapping of sections (data, model, "
            f"train, eval), not a {type(loaded).__name__}"
        )
    return loaded


def _parse_overrides(overrides) -> DictConfig:
    for item in overrides:
        key = item.split("=", 1)[0]
        if not key or any(not part for part in key.split(".")):
            raise FusescopeError(f"override {item!r}: {key!r} is not a dotted key")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except yaml.YAMLError as err:
        bad = next((o for o in overrides if _yaml_fails(o.split("=", 1)[1])), overrides[0])
        raise FusescopeError(
            f"override {bad!r}: the value is not valid YAML ({str(err).splitlines()[0]})"
        ) from None


def _yaml_fails(text: str) -> bool:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        return True
    return False


def check_plain_name(value: Any, what: str) -> None:
    """A split or modality name is a name inside the data root, never a path."""
    if not is_plain_name(value):
        raise FusescopeError(
            f"{what}={value!r} must be a plain name, not a path (no / or \\, not . or ..)"
        )


def check_config(cfg: DictConfig) -> None:
    """Check every value the engine uses before anything is built or written: numbers in range,
    sizes as pairs of positive integers, names without path separators.

    Raises:
        FusescopeError: naming the first key whose value is unusable.
    """
    t, d, e = cfg.train, cfg.data, cfg.eval

    def number(
        key: str, value: Any, low: float, low_ok: bool = True, integer: bool = False
    ) -> None:
        kind = int if integer else (int, float)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and not integer:
            ok = math.isfinite(value)
        ok = ok and (value >= low if low_ok else value > low)
        if not ok:
            bound = f"{'>=' if low_ok else '>'} {low}"
            kind_name = "an integer" if integer else "a number"
            raise FusescopeError(f"{key}={value!r} must be {kind_name} {bound}")

    def pair(key: str, value: Any, integer: bool = True) -> None:
        if value is None:
            return
        if not (len(value) == 2):
            raise FusescopeError(f"{key}={list(value)!r} must be two values [H, W]")
        for v in value:
            number(key, v, 1 if integer else 0, low_ok=integer, integer=integer)

    for key in (
        "max_steps",
        "batch_size",
        "grad_accum",
        "ckpt_every",
        "log_every",
        "devices",
        "num_nodes",
    ):
        number(f"train.{key}", t[key], 1, integer=True)
    for key in ("eval_every", "warmup_steps"):
        number(f"train.{key}", t[key], 0, integer=True)
    number("train.seed", t.seed, 0, integer=True)
    if t.seed >= 2**63:
        raise FusescopeError(f"train.seed={t.seed} must be < 2**63")
    for key in ("max_steps", "warmup_steps"):
        if t[key] > MAX_STEPS:
            # such a schedule never decays (nor warms up) within any run's life
            raise FusescopeError(f"train.{key}={t[key]} must be at most {MAX_STEPS:.0e}")
    number("train.lr", t.lr, 0, low_ok=False)
    for key in (
        "weight_decay",
        "momentum",
        "poly_power",
        "per_modality_weight",
        "ckpt_minutes",
        "recon_weight",
        "gan_weight",
    ):
        number(f"train.{key}", t[key], 0)
    if t.gan_mode not in ("vanilla", "lsgan"):
        raise FusescopeError(f"train.gan_mode={t.gan_mode!r} unknown; known: vanilla, lsgan")
    if len(t.betas) != 2 or not all(isinstance(v, int | float) and 0 <= v < 1 for v in t.betas):
        raise FusescopeError(f"train.betas={list(t.betas)!r} must be two numbers in [0, 1)")
    if t.optimizer not in ("adamw", "sgd"):
        raise FusescopeError(f"train.optimizer={t.optimizer!r} unknown; known: adamw, sgd")
    for prefix, scale in (t.lr_scales or {}).items():  # 0 freezes (TokenFusion's alpha)
        number(f"train.lr_scales.{prefix}", scale, 0)
    for i, stage in enumerate(t.stages or []):
        where = f"train.stages[{i}]"
        for key in ("steps", "lr"):
            if stage[key] is None:
                raise FusescopeError(f"{where}.{key} is required (a stage is {{steps, lr}})")
        number(f"{where}.steps", stage.steps, 1, integer=True)
        number(f"{where}.lr", stage.lr, 0, low_ok=False)
        if stage.warmup_steps is not None:
            number(f"{where}.warmup_steps", stage.warmup_steps, 0, integer=True)
        if stage.decay_steps is not None:
            number(f"{where}.decay_steps", stage.decay_steps, 1, integer=True)
    if t.stages is not None:
        total = sum(stage.steps for stage in t.stages)
        if not t.stages:
            raise FusescopeError("train.stages is empty (null: one schedule over train.lr)")
        if t.max_steps > total:
            raise FusescopeError(
                f"train.max_steps={t.max_steps} runs past train.stages, which end after "
                f"{total} steps (add a stage or lower train.max_steps)"
            )
    if t.class_weights is not None:
        for w in t.class_weights:
            number("train.class_weights", w, 0)

    if not d.root:
        raise FusescopeError("data.root is empty")
    from fusescope.tasks.base import task_of

    task_of(cfg.task)  # an unknown task is an error listing the known ones
    for m in d.targets or []:
        check_plain_name(m, "data.targets")
    if d.targets is not None and len(set(d.targets)) != len(d.targets):
        raise FusescopeError(f"data.targets={list(d.targets)} names one twice")
    if not d.modalities:
        raise FusescopeError("data.modalities is empty")
    for m in d.modalities:
        check_plain_name(m, "data.modalities")
    if len(set(d.modalities)) != len(d.modalities):
        raise FusescopeError(f"data.modalities={list(d.modalities)} names one twice")
    check_plain_name(d.train_split, "data.train_split")
    check_plain_name(d.val_split, "data.val_split")
    pair("data.crop_size", d.crop_size)
    pair("data.scale_range", d.scale_range, integer=False)
    if d.scale_range[0] > d.scale_range[1]:
        raise FusescopeError(f"data.scale_range={list(d.scale_range)}: low above high")
    number("data.color_jitter", d.color_jitter, 0)
    if d.color_jitter > 1:
        raise FusescopeError(f"data.color_jitter={d.color_jitter} must be at most 1")
    number("data.num_workers", d.num_workers, 0, integer=True)
    number("data.max_tokens", d.max_tokens, 1, integer=True)
    number("data.vocab_size", d.vocab_size, 2, integer=True)
    number("data.vocab_min_count", d.vocab_min_count, 1, integer=True)
    number("data.min_pixels", d.min_pixels, 1, integer=True)
    if d.input_map not in INPUT_MAPS:
        raise FusescopeError(
            f"data.input_map={d.input_map!r} unknown; known: {', '.join(INPUT_MAPS)}"
        )
    if d.input_map != "train_stats" and cfg.task != "translation":
        raise FusescopeError(
            f"data.input_map={d.input_map!r} maps translation inputs; task is {cfg.task}"
        )
    if d.synth is not None:
        from fusescope.data.generators import generator

        generator(d.synth.kind)  # an unknown kind is an error listing the known ones

    check_plain_name(e.split, "eval.split")
    if e.tta not in ("none", "flip", "ms-flip"):
        raise FusescopeError(f"eval.tta={e.tta!r} unknown; known: none, flip, ms-flip")
    if not e.scales:
        raise FusescopeError("eval.scales is empty")
    for s in e.scales:
        number("eval.scales", s, 0, low_ok=False)
    pair("eval.window", e.window)
    pair("eval.stride", e.stride)
    number("eval.batch_size", e.batch_size, 1, integer=True)
    if e.generator_mode not in GENERATOR_MODES:
        raise FusescopeError(
            f"eval.generator_mode={e.generator_mode!r} unknown; known: {', '.join(GENERATOR_MODES)}"
        )


def config_from_dict(d: dict[str, Any]) -> DictConfig:
    """Re-validate a saved (resolved) config, e.g. the one in a run folder."""
    try:
        return OmegaConf.merge(_structured(), OmegaConf.create(d))
    except OmegaConfBaseException as err:
        raise FusescopeError(_explain(err)) from None


def section_keys(section: str) -> list[str] | None:
    """The keys a config section accepts (`""` for the top level, `"data.synth"` nested), or
    None for a free-form section (`model`) or a path that is not a section."""
    node: Any = RunConfig
    for part in [p for p in section.split(".") if p]:
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        node = hints[part]
        # `SynthSpec | None`: the section's schema is the dataclass member
        members = [a for a in typing.get_args(node) if dataclasses.is_dataclass(a)]
        if members:
            node = members[0]
    if not dataclasses.is_dataclass(node):
        return None
    return [f.name for f in dataclasses.fields(node)]


def _unknown_key(key: str) -> str:
    section, _, name = key.rpartition(".")
    accepted = section_keys(section)
    msg = f"unknown config key {key}"
    if accepted is None:
        return msg
    close = difflib.get_close_matches(name, accepted, n=1)
    if close:
        msg += f"; did you mean {section + '.' if section else ''}{close[0]}?"
    where = f"section {section}" if section else "the top level"
    return msg + f" ({where} accepts: {', '.join(accepted)})"


def _explain(err: Exception) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return _unknown_key(key) if key else msg
    return f"config key {key}: {msg}" if key else msg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
