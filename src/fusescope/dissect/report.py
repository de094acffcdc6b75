"""Write a dissection as a report folder: one self-contained HTML page, PNG plots, JSON numbers.

REPORT/index.html            the page (every image embedded as base64: the file alone works)
REPORT/results.json          all numbers (Set IoU, SVar table with per-concept states, CKA)
REPORT/setiou_<old>__<new>_l<level>.png   Set IoU bars per Table I pair (Fig. 3/6/8 style)
REPORT/cka_cross_layer.png   cross-layer CKA per stream (Fig. 5a/b)
REPORT/cka_cross_modal.png   cross-modal CKA per level, separate vs joint (Fig. 5c)
REPORT/cka_matrix.png        every pair of tapped features
REPORT/gradcam_<class>.png   Grad-CAM panels per cue group (Fig. 4/7)
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np

from fusescope.dissect.protocol import FEATURES, STREAMS, Dissection, GradCAMExample
from fusescope.io import atomic_path, write_json

MARKERS = {"new": "\u2191", "vanished": "\u2193", "increased": "\u2197", "decreased": "\u2198"}
CUE_TAGS = {"appearance": "A", "geometry": "G", "both": "B"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def class_ticks(names: list[str], cues: list[str | None]) -> list[str]:
    return [
        f"{n} [{CUE_TAGS[c]}]" if c in CUE_TAGS else n for n, c in zip(names, cues, strict=True)
    ]


def plot_set_iou(row: dict, names: list[str], cues: list[str | None], path: Path) -> Path:
    """The old feature's Set IoU as the baseline bar; the gain (red) or loss (green) on top;
    arrows for new / vanished / increased / decreased concepts."""
    plt = _pyplot()
    concepts = row["concepts"]
    old = np.array([c["iou_old"] if c["iou_old"] is not None else np.nan for c in concepts])
    new = np.array([c["iou_new"] if c["iou_new"] is not None else np.nan for c in concepts])
    old0, new0 = np.nan_to_num(old), np.nan_to_num(new)
    x = np.arange(len(concepts))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(concepts)), 3.6))
    ax.bar(x, np.minimum(old0, new0), color="#4477aa", label=FEATURES[row["old"]])
    gain = np.clip(new0 - old0, 0, None)
    loss = np.clip(old0 - new0, 0, None)
    ax.bar(x, gain, bottom=old0, color="#cc3311", label=f"{FEATURES[row['new']]}: higher")
    ax.bar(x, loss, bottom=new0, color="#228833", label=f"{FEATURES[row['new']]}: lower")
    for i, c in enumerate(concepts):
        if c["state"] in MARKERS:
            ax.text(
                i,
                max(old0[i], new0[i]) + 0.02,
                MARKERS[c["state"]],
                ha="center",
                va="bottom",
                fontsize=11,
            )
    ax.set_xticks(x, class_ticks(names, cues), rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("Set IoU")
    ax.set_title(f"{row['pair']} (stage {row['level'] + 1}): SVar {row['svar']:+.2f}", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncols=3)
    return _save(fig, path)


def plot_cka(cka: dict, out: Path) -> list[Path]:
    plt = _pyplot()
    levels = cka["levels"]
    ticks = [f"s{lvl + 1}" for lvl in levels]
    paths = []
    fig, axes = plt.subplots(1, len(STREAMS), figsize=(3.1 * len(STREAMS), 3.0))
    for ax, f in zip(np.atleast_1d(axes), STREAMS, strict=True):
        m = np.array(cka["cross_layer"][f], dtype=float)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", origin="lower")
        ax.set_xticks(range(len(levels)), ticks)
        ax.set_yticks(range(len(levels)), ticks)
        ax.set_title(FEATURES[f], fontsize=9)
        for i in range(len(levels)):
            for j in range(len(levels)):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if m[i, j] < 0.6 else "black",
                )
    fig.colorbar(im, ax=axes, shrink=0.8, label="CKA")
    paths.append(_save(fig, out / "cka_cross_layer.png"))

    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for key, style in (("separate", "o-"), ("joint", "s--")):
        ax.plot(ticks, cka["cross_modal"][key], style, label=f"RGB vs depth ({key})")
    ax.set_ylim(0, 1)
    ax.set_ylabel("CKA")
    ax.set_xlabel("encoder stage")
    ax.legend(fontsize=8)
    ax.set_title("cross-modal CKA per stage", fontsize=10)
    paths.append(_save(fig, out / "cka_cross_modal.png"))

    m = np.array(cka["matrix"], dtype=float)
    size = max(5, 0.32 * len(cka["names"]))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="magma")
    ax.set_xticks(range(len(cka["names"])), cka["names"], rotation=90, fontsize=7)
    ax.set_yticks(range(len(cka["names"])), cka["names"], fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.7, label="CKA")
    ax.set_title(
        f"CKA, every pair ({'debiased' if cka['debiased'] else 'biased'}, {cka['method']})",
        fontsize=10,
    )
    paths.append(_save(fig, out / "cka_matrix.png"))
    return paths


GRADCAM_COLUMNS = ("rgb_sep", "depth_sep", "rgb_joint", "depth_joint")


def plot_gradcam(example: GradCAMExample, path: Path) -> Path:
    """Rows: probe images; columns: RGB, depth, label, then each stream's map on one fixed
    0..1 colour scale (maps were put on a shared scale, never min-maxed per panel)."""
    plt = _pyplot()
    n = example.label.shape[0]
    cols = 3 + len(GRADCAM_COLUMNS)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.6 * n), squeeze=False)
    gray = example.rgb.mean(-1) if example.rgb.ndim == 4 else example.rgb
    for r in range(n):
        panels = [
            ("RGB", example.rgb[r], {}),
            ("depth", example.depth[r], {"cmap": "viridis"}),
            (
                f"label = {example.class_name}",
                example.label[r] == example.class_id,
                {"cmap": "gray", "vmin": 0, "vmax": 1},
            ),
        ]
        for c, (title, img, kw) in enumerate(panels):
            axes[r, c].imshow(img, **kw)
            axes[r, c].set_title(title if r == 0 else "", fontsize=8)
        for c, key in enumerate(GRADCAM_COLUMNS, start=3):
            axes[r, c].imshow(gray[r], cmap="gray")
            if key in example.maps:
                axes[r, c].imshow(example.maps[key][r], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[r, c].set_title(FEATURES[key] if r == 0 else "", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    cue = f" ({example.cue} cue)" if example.cue else ""
    fig.suptitle(f"Grad-CAM for '{example.class_name}'{cue}", fontsize=10)
    return _save(fig, path)


BLANK_PEAK = 0.02  # a map whose peak is under 2% of the shared scale shows no colour


def blank_gradcam_note(example: GradCAMExample) -> str | None:
    """A sentence explaining the blank Grad-CAM panels of an example, if it has any."""
    n = example.label.shape[0]
    blank = {
        key: int((example.maps[key].reshape(n, -1).max(1) < BLANK_PEAK).sum())
        for key in GRADCAM_COLUMNS
        if key in example.maps
    }
    listed = [f"{FEATURES[k]} in {b} of {n} image{'s' if n > 1 else ''}"
              for k, b in blank.items() if b]
    if not listed:
        return None
    return (
        f"Blank panels: {', '.join(listed)}. Grad-CAM explains the '{example.class_name}' "
        f"logit over the pixels the model predicts as '{example.class_name}', so a model that "
        f"predicts no such pixel in an image has nothing to explain there and its map is empty "
        f"(e.g. a model whose modality cannot see this class, or an undertrained one). A "
        f"panel also looks blank when its map is under {BLANK_PEAK:.0%} of the strongest map "
        f"it shares a scale with."
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_report(dissection: Dissection, out: str | os.PathLike) -> Path:
    """Write the report folder; returns the path of `index.html`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = dissection.results
    names = res["probe"]["class_names"]
    cues = res["probe"]["cues"]
    setiou_paths = []
    for row in res["svar"]:
        path = out / f"setiou_{row['old']}__{row['new']}_l{row['level']}.png"
        setiou_paths.append((row, plot_set_iou(row, names, cues, path)))
    cka_paths = plot_cka(res["cka"], out)
    cam_paths = []
    for ex in dissection.gradcam:
        safe = "".join(ch if ch.isalnum() else "_" for ch in ex.class_name)
        cam_paths.append((ex, plot_gradcam(ex, out / f"gradcam_{safe}.png")))
    files = sorted(p.name for p in out.glob("*.png"))
    write_json(out / "results.json", {**res, "files": files})

    spec = res["specialisation"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>fusescope dissection</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        ".ok{color:#228833}.bad{color:#cc3311}</style></head><body>",
        "<h1>Dissection of RGB-D fusion</h1>",
        f"<p>Runs: RGB <code>{html.escape(res['runs']['rgb'])}</code>, depth "
        f"<code>{html.escape(res['runs']['depth'])}</code>, joint "
        f"<code>{html.escape(res['runs']['joint'])}</code>. Probe: "
        f"{res['probe']['images']} images of split <code>{html.escape(res['probe']['split'])}"
        f"</code> in <code>{html.escape(res['probe']['root'])}</code>.</p>",
        "<h2>What each modality specialises in</h2><ul>",
        f"<li>{html.escape(spec['rgb']['sentence'])}</li>",
        f"<li>{html.escape(spec['depth']['sentence'])}</li></ul>",
        f"<p>A modality <em>specialises</em> in a class when the Net2Vec probe on its "
        f"separately trained encoder (stage {spec['level'] + 1}) finds the class with a Set IoU "
        f"at least {spec['margin']:.2f} higher than the other modality's. Set IoU is the "
        f"intersection over union (0 to 1), over all probe images, of the class's pixels and "
        f"the mask a linear probe predicts from the features; the brackets give this "
        f"modality's Set IoU, then the other's.</p>",
    ]
    if spec.get("cue_mean_iou"):
        parts.append("<table><tr><th>cue group</th><th>RGB Set IoU</th><th>depth Set IoU</th></tr>")
        for cue, v in spec["cue_mean_iou"].items():
            parts.append(f"<tr><td>{cue}</td><td>{v['rgb']:.3f}</td><td>{v['depth']:.3f}</td></tr>")
        parts.append("</table>")
    if "known_answer" in spec:
        parts.append("<p>Known answer (the data declares each class's cue): ")
        for key, ok in spec["known_answer"].items():
            parts.append(
                f"<span class='{'ok' if ok else 'bad'}'>{key.replace('_', ' ')}: "
                f"{'yes' if ok else 'NO'}</span>; "
            )
        parts.append("</p>")
    parts.append(
        "<h2>Semantic variance (Table I)</h2><p>Row \u201cA vs. B\u201d is SVar(B; A):"
        " positive when B carries more concept semantics than A (eq. 4-6, "
        "\u03bb = 2, per-concept frequency normalisation).</p><table><tr><th>group</th>"
        "<th>pair</th><th>stage</th><th>SVar</th><th>new</th><th>vanished</th>"
        "<th>increased</th><th>decreased</th></tr>"
    )
    for row in res["svar"]:
        counts = {s: sum(1 for c in row["concepts"] if c["state"] == s) for s in MARKERS}
        parts.append(
            f"<tr><td>{row['group']}</td><td>{html.escape(row['pair'])}</td>"
            f"<td>{row['level'] + 1}</td><td>{row['svar']:+.2f}</td>"
            + "".join(f"<td>{counts[s]}</td>" for s in MARKERS)
            + "</tr>"
        )
    parts.append(
        "</table><h2>Set IoU per concept</h2><p>[A] appearance-only, [G] "
        "geometry-only, [B] both cues. \u2191 new, \u2193 vanished, \u2197 increased, "
        "\u2198 decreased.</p>"
    )
    for row, path in setiou_paths:
        parts.append(_img(path, row["pair"]))
    parts.append("<h2>Set IoU table</h2>")
    for lvl, per_feature in res["set_iou"].items():
        parts.append(
            f"<p>stage {int(lvl) + 1}</p><table><tr><th>class</th>"
            + "".join(f"<th>{html.escape(FEATURES[f])}</th>" for f in per_feature)
            + "</tr>"
        )
        for i, name in enumerate(class_ticks(names, cues)):
            parts.append(
                f"<tr><td>{html.escape(name)}</td>"
                + "".join(f"<td>{_fmt(v[i])}</td>" for v in per_feature.values())
                + "</tr>"
            )
        parts.append("</table>")
    cka = res["cka"]
    parts.append(
        f"<h2>Feature similarity (linear CKA)</h2><p>{cka['examples']} examples, "
        f"{'debiased' if cka['debiased'] else 'biased'} HSIC, {cka['method']} "
        f"accumulation.</p>"
    )
    for path in cka_paths:
        parts.append(_img(path, path.stem))
    if cam_paths:
        parts.append(
            "<h2>Grad-CAM</h2><p>Target: the class logit summed over the pixels "
            "predicted as the class. The joint model's RGB and depth maps share one "
            "scale (one forward/backward); the two unimodal models' maps are put on "
            "a common scale too; no per-map min-max.</p>"
        )
        for ex, path in cam_paths:
            parts.append(_img(path, ex.class_name))
            note = blank_gradcam_note(ex)
            if note:
                parts.append(f"<p>{html.escape(note)}</p>")
    parts.append("</body></html>")
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return index
