"""Dissection of a classification run (`fusescope dissect RUN --out REPORT`): what each modality
contributes to each label, how alike the modalities' features are, and where the image branch
looks.

- **Per-modality contribution of each label** (drop one modality): per-class F1 on the probe
  split with every modality, then with modality m removed (an image replaced by zeros after
  normalisation, i.e. the mean image; a text by a text that says nothing: one unknown word,
  or a pretrained tokenizer's empty text, its special tokens alone), at the headline
  threshold of `fusescope eval`, 0.5 (`threshold="tuned"`: the one chosen on the run's
  validation split, as `eval`'s `"tuned"` F1s). The F1 a label loses without m is m's
  contribution. On the known-answer posters, text-cue genres must lose F1 when the plot goes and
  not when the poster goes, appearance-cue genres the reverse, and both-cue genres little
  either way. The verdict per cue group compares the drops.
- **CKA** (linear, debiased, over the probe samples) between the modalities' pooled features
  (each branch's `pooled`; multi-stream models: each stream's deepest feature), and between each
  of them and the model's logits.
- **Grad-CAM** on the image branch's deepest feature for one class per cue group: the class
  logit summed over the probe samples that carry the class. Raw maps (no per-image min-max), so
  the mean map energy per cue group is comparable: a text-only genre has no cue on the poster.

Models are read through forward hooks on named modules (`branches.<m>`, `encoder`), as the rest
of dissection does; nothing is added to the models.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from fusescope.data.batching import collate
from fusescope.data.kinds import KINDS
from fusescope.dissect.cka import CKAAccumulator
from fusescope.dissect.gradcam import cam
from fusescope.dissect.taps import FeatureTaps, Tap, move_batch
from fusescope.errors import FusescopeError
from fusescope.io import json_safe, write_json
from fusescope.tasks.classification.metrics import (
    HEADLINE_THRESHOLD,
    choose_threshold,
    per_class_f1,
)

DROP_MARGIN = 0.1  # F1 a cue group must lose (on average) to count as "comes from" a modality


def feature_taps(model: nn.Module, modalities: list[str]) -> dict[str, Tap]:
    """The pooled feature of each modality: `branches.<m>` (element 2 of `Encoded`), or the
    multi-stream encoder's deepest level split per modality."""
    names = dict(model.named_modules())
    if all(f"branches.{m}" in names for m in modalities):
        return {m: Tap(f"branches.{m}", index=2) for m in modalities}
    if "encoder.body" in names and len(modalities) > 1:
        return {"stream": Tap("encoder", index=-1, split=tuple(modalities))}
    raise FusescopeError(
        f"model {type(model).__name__} has no per-modality branch to dissect "
        f"(single-encoder models such as early_concat mix the modalities "
        f"from the input on)"
    )


def image_tap(model: nn.Module, modality: str) -> Tap | None:
    """The image branch's deepest feature map, for Grad-CAM."""
    names = dict(model.named_modules())
    if f"branches.{modality}.encoder" in names:
        return Tap(f"branches.{modality}.encoder", index=-1)
    if "encoder" in names and "encoder.body" not in names:  # unimodal image / early_concat
        return Tap("encoder.encoder", index=-1) if "encoder.encoder" in names else None
    return None


def remove_modality(
    batch: dict[str, Tensor], modality: str, kind: str, blank: np.ndarray | None = None
) -> dict[str, Tensor]:
    """The batch without `modality`'s information: its kind's fill for an absent modality
    (`fusescope.data.kinds`: zeros for an image, the mean image after normalisation; for a
    text the ids `blank` of a text that says nothing in the run's own tokenizer, its
    `blank_ids()`: a pretrained tokenizer's unknown word is not ours)."""
    x = batch[modality]
    channels = x.shape[1] if x.ndim == 4 else 0
    text = None if blank is None else [int(i) for i in blank]
    return {**batch, **KINDS[kind].blank(modality, x, x.shape[0], channels, text)}


@torch.no_grad()
def _logits_and_features(model, loader, taps, device, removed: tuple | None = None):
    logits, targets, feats = [], [], {}
    hooks = FeatureTaps(model, taps) if taps else None
    for batch in loader:
        batch = move_batch({k: v for k, v in batch.items() if k != "id"}, device)
        inputs = remove_modality(batch, *removed) if removed else batch
        if hooks is not None:
            with hooks:
                out = model(inputs)
            for k, v in hooks.features.items():
                feats.setdefault(k, []).append(v.flatten(1).float().cpu())
        else:
            out = model(inputs)
        logits.append(out["logits"].float().cpu())
        targets.append(batch["target"].float().cpu())
    return torch.cat(logits), torch.cat(targets), {k: torch.cat(v) for k, v in feats.items()}


def dissect_classifier(
    run: Any,
    split: str = "test",
    probe_size: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    gradcam_images: int = 4,
    progress: bool = False,
    threshold: float | str = HEADLINE_THRESHOLD,
) -> dict:
    """Every number of the classification report (module docstring) as a JSON-able dict, plus
    the Grad-CAM panels under the key `gradcam` (arrays). `threshold`: the sigmoid threshold
    of the per-class F1s, or "tuned" for the one `fusescope eval` chooses on validation."""
    from fusescope.tasks import task_of

    task = task_of(run.cfg)
    cfg = run.cfg
    model = run.model.to(device).eval()
    modalities = list(cfg.data.modalities)
    kinds = {m: run.meta.modalities[m].kind for m in modalities}
    ds = task.eval_dataset(cfg, split, run.stats)
    n = len(ds) if probe_size is None else min(probe_size, len(ds))
    if n < 4:
        raise FusescopeError(
            f"{cfg.data.root}/splits/{split}.txt: {n} samples; the probe needs >= 4"
        )
    loader = DataLoader(Subset(ds, range(n)), batch_size=batch_size, collate_fn=collate)
    if not ds.multi_label:
        raise FusescopeError(
            "classification dissection scores per-class F1 of multi-label "
            "data; this data set is single-label"
        )
    threshold_from = "published convention"
    if threshold == "tuned":  # chosen on the run's validation split, as `eval`'s "tuned" F1s
        val = task.eval_dataset(cfg, cfg.data.val_split, run.stats)
        val_loader = DataLoader(val, batch_size=batch_size, collate_fn=collate)
        val_logits, val_targets, _ = _logits_and_features(model, val_loader, {}, device)
        threshold = choose_threshold(val_logits.sigmoid(), val_targets)
        threshold_from = f"chosen on split {cfg.data.val_split}"
    elif isinstance(threshold, str) or not 0 < threshold < 1:
        raise FusescopeError(f"dissection threshold must be in (0, 1) or 'tuned'; got {threshold}")

    taps = feature_taps(model, modalities) if len(modalities) > 1 else {}
    logits, targets, feats = _logits_and_features(model, loader, taps, device)
    full = per_class_f1(logits.sigmoid(), targets, threshold)
    drops = {}
    for m in modalities if len(modalities) > 1 else []:
        blank = ds.tokenizers[m].blank_ids() if kinds[m] == "text" else None
        lg, _, _ = _logits_and_features(model, loader, {}, device, removed=(m, kinds[m], blank))
        without = per_class_f1(lg.sigmoid(), targets, threshold)
        drops[m] = [a - b for a, b in zip(full, without, strict=True)]

    names = run.meta.class_names
    cues = [c.cue for c in run.meta.classes]
    groups = sorted({c for c in cues if c})
    by_group = {
        m: {
            g: float(np.mean([d for d, c in zip(drops[m], cues, strict=True) if c == g]))
            for g in groups
        }
        for m in drops
    }
    group_f1 = {
        g: float(np.mean([f for f, c in zip(full, cues, strict=True) if c == g])) for g in groups
    }
    verdicts = {
        g: contribution_verdict({m: by_group[m][g] for m in drops}, group_f1[g]) for g in groups
    }

    cka = {}
    if feats:
        keys = sorted(feats) + ["logits"]
        acc = CKAAccumulator(keys, debiased=True, method="exact")
        acc.update({**feats, "logits": logits})
        matrix = acc.result()
        cka = {"names": keys, "matrix": matrix.tolist()}

    image = next((m for m in modalities if KINDS[kinds[m]].spatial), None)
    gradcam = []
    tap = image_tap(model, image) if image else None
    if tap is not None:
        gradcam = class_gradcam(
            model, ds, n, tap, image, names, cues, targets, device, gradcam_images
        )
    return {
        "run": str(run.path),
        "model": cfg.model.name,
        "split": split,
        "samples": n,
        "threshold": threshold,
        "threshold_from": threshold_from,
        "class_names": names,
        "cues": cues,
        "f1": full,
        "f1_drop": drops,
        "f1_drop_by_cue": by_group,
        "verdicts": verdicts,
        "cka": cka,
        "gradcam": gradcam,
    }


def contribution_verdict(drop_by_modality: dict[str, float], f1: float) -> str:
    """Which modalities a cue group's labels come from: those whose removal costs more than
    `DROP_MARGIN` F1 on average (`f1`: the group's F1 with every modality)."""
    needed = [m for m, d in drop_by_modality.items() if d > DROP_MARGIN]
    if needed:
        return "comes from " + " and ".join(needed)
    if f1 < 0.5:
        return f"not learnt (F1 {f1:.2f} with every modality)"
    return f"either modality alone suffices (no single removal costs > {DROP_MARGIN:.2f} F1)"


def class_gradcam(model, ds, n, tap, image, names, cues, targets, device, per_class) -> list:
    """Grad-CAM of one class per cue group on the image branch: raw maps of up to `per_class`
    probe samples carrying the class, and the mean map energy over those samples."""
    out = []
    chosen = {}
    for k, cue in enumerate(cues):
        if cue and cue not in chosen and targets[:, k].sum() > 0:
            chosen[cue] = k
    for cue, k in sorted(chosen.items()):
        idx = torch.nonzero(targets[:, k] > 0).flatten()[:per_class].tolist()
        batch = move_batch(
            {k2: v for k2, v in collate([ds[i] for i in idx]).items() if k2 != "id"}, device
        )
        taps = FeatureTaps(model, {"image": tap}, grad=True)
        with torch.enable_grad(), taps:
            logits = model(batch)["logits"]
            act = taps.raw["image"]
            target = logits[:, k].sum()
            # a class the image branch plays no part in has no gradient there: an all-zero map
            (grad,) = (
                torch.autograd.grad(target, [act], allow_unused=True)
                if target.requires_grad
                else (None,)
            )
        grad = torch.zeros_like(act) if grad is None else grad
        maps = cam(act.detach(), grad, tuple(batch[image].shape[-2:]))  # (B, H, W), raw
        out.append(
            {
                "class": names[k],
                "cue": cue,
                "samples": idx,
                "energy": float(maps.mean()),
                "maps": maps.cpu().numpy(),
                "images": batch[image].cpu().numpy(),
            }
        )
    return out


def write_classification_report(result: dict, out: str | os.PathLike) -> Path:
    """REPORT/index.html, results.json and PNGs (contribution bars, CKA, Grad-CAM)."""
    from fusescope.dissect.report import _img, _pyplot, _save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    names, cues = result["class_names"], result["cues"]
    ticks = [f"{n} [{c[0].upper()}]" if c else n for n, c in zip(names, cues, strict=True)]
    pngs = []
    if result["f1_drop"]:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 3.2))
        mods = list(result["f1_drop"])
        width = 0.8 / len(mods)
        for i, m in enumerate(mods):
            ax.bar(
                np.arange(len(names)) + i * width, result["f1_drop"][m], width, label=f"without {m}"
            )
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, ticks, rotation=45, ha="right")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("F1 lost")
        ax.legend()
        ax.set_title("What each modality contributes to each label (drop one modality)")
        pngs.append(("contribution", _save(fig, out / "contribution.png")))
    if result["cka"]:
        keys, matrix = result["cka"]["names"], np.array(result["cka"]["matrix"])
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right")
        ax.set_yticks(range(len(keys)), keys)
        for i in range(len(keys)):
            for j in range(len(keys)):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w")
        ax.set_title("linear CKA")
        pngs.append(("cka", _save(fig, out / "cka.png")))
    for ex in result["gradcam"]:
        b = len(ex["samples"])
        fig, axes = plt.subplots(2, b, figsize=(1.6 * b, 3.6), squeeze=False)
        peak = max(float(ex["maps"].max()), 1e-12)
        for j in range(b):
            img = ex["images"][j]
            img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
            axes[0, j].imshow(
                img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0],
                cmap=None if img.shape[0] == 3 else "gray",
            )
            axes[1, j].imshow(ex["maps"][j], vmin=0, vmax=peak, cmap="jet")
            for a in axes[:, j]:
                a.axis("off")
        fig.suptitle(f"Grad-CAM of {ex['class']} ({ex['cue']} cue), mean {ex['energy']:.3g}")
        safe = "".join(ch if ch.isalnum() else "_" for ch in ex["class"])
        pngs.append((f"gradcam {ex['class']}", _save(fig, out / f"gradcam_{safe}.png")))
    numbers = {k: v for k, v in result.items() if k != "gradcam"}
    numbers["gradcam"] = [
        {k: v for k, v in ex.items() if k not in ("maps", "images")} for ex in result["gradcam"]
    ]
    write_json(out / "results.json", json_safe(numbers))

    rows = "".join(
        f"<tr><td>{html.escape(g)}</td>"
        + "".join(f"<td>{result['f1_drop_by_cue'][m][g]:+.3f}</td>" for m in result["f1_drop"])
        + f"<td>{html.escape(result['verdicts'][g])}</td></tr>"
        for g in result["verdicts"]
    )
    heads = "".join(f"<th>F1 lost without {html.escape(m)}</th>" for m in result["f1_drop"])
    cam_rows = "".join(
        f"<tr><td>{html.escape(ex['class'])}</td><td>{ex['cue']}</td>"
        f"<td>{ex['energy']:.4g}</td></tr>"
        for ex in result["gradcam"]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>fusescope dissection</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "</style></head><body>",
        "<h1>Dissection of a multimodal classifier</h1>",
        f"<p>Run <code>{html.escape(result['run'])}</code> ({html.escape(result['model'])}), "
        f"{result['samples']} samples of split <code>{html.escape(result['split'])}</code>, "
        f"per-class F1 at threshold {result['threshold']:.2f} "
        f"({html.escape(result.get('threshold_from', ''))}).</p>",
        "<h2>Where each label comes from</h2>",
        "<p>Per-class F1 with every modality minus F1 with one modality removed (an image "
        "replaced by the mean image, a text by one unknown word), averaged over each cue "
        f"group. A group comes from a modality when removing it costs more than "
        f"{DROP_MARGIN:.2f} F1.</p>",
        f"<table><tr><th>cue group</th>{heads}<th>verdict</th></tr>{rows}</table>",
    ]
    parts += [f"<p>{_img(p, name)}</p>" for name, p in pngs if name == "contribution"]
    if result["cka"]:
        parts.append("<h2>How alike the modalities' features are (linear CKA)</h2>")
        parts += [f"<p>{_img(p, name)}</p>" for name, p in pngs if name == "cka"]
    if result["gradcam"]:
        parts.append(
            "<h2>Where the image branch looks (Grad-CAM, raw maps)</h2>"
            "<p>Mean map energy per class: a class whose cue is not on the image "
            f"has little to look at.</p><table><tr><th>class</th><th>cue</th>"
            f"<th>mean Grad-CAM</th></tr>{cam_rows}</table>"
        )
        parts += [f"<p>{_img(p, name)}</p>" for name, p in pngs if name.startswith("gradcam")]
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
