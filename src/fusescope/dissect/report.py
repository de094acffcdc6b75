"""Write a dissection as a report folder: one self-contained HTML page, PNG plots, JSON numbers.

REPORT/index.html            the page (every image embedded as base64: the file alone works)
REPORT/results.json          all numbers (Set IoU, SVar table with per-concept states, CKA)
REPORT/known_answer.png      cue-group Set IoU of RGB vs depth per level, spread and noise floor
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

from fusescope.dissect.protocol import (
    FEATURES,
    KNOWN_ANSWER,
    STREAMS,
    Dissection,
    GradCAMExample,
)
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


def plot_set_iou(
    row: dict, names: list[str], cues: list[str | None], spread: dict, path: Path
) -> Path:
    """Held-out Set IoU of the old and the new feature side by side, per concept, with the
    spread over probe splits as error bars and each feature's noise floor as a black tick;
    arrows for new / vanished / increased / decreased concepts.

    Args:
        spread: {"sd": {feature: (C,)}, "floor": {feature: (C,)}} at the row's level.
    """
    plt = _pyplot()
    concepts = row["concepts"]
    x = np.arange(len(concepts))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(concepts)), 3.8))
    top = np.zeros(len(concepts))
    for side, key, color in ((-1, "old", "#4477aa"), (1, "new", "#ee7733")):
        feature = row[key]
        iou = np.array([np.nan if c[f"iou_{key}"] is None else c[f"iou_{key}"] for c in concepts])
        sd = np.nan_to_num(np.array(spread["sd"][feature], dtype=float))
        floor = np.array(spread["floor"][feature], dtype=float)
        xs = x + side * width / 2
        ax.bar(
            xs,
            np.nan_to_num(iou),
            width,
            yerr=sd,
            color=color,
            capsize=2,
            error_kw={"elinewidth": 0.8},
            label=FEATURES[feature],
        )
        ax.hlines(floor, xs - width / 2, xs + width / 2, colors="black", linewidth=1.6)
        top = np.maximum(top, np.nan_to_num(iou) + sd)
    ax.plot([], [], color="black", linewidth=1.6, label="noise floor (shuffled features)")
    for i, c in enumerate(concepts):
        if c["state"] in MARKERS:
            ax.text(i, top[i] + 0.02, MARKERS[c["state"]], ha="center", va="bottom", fontsize=11)
    ax.set_xticks(x, class_ticks(names, cues), rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("held-out Set IoU")
    ax.set_title(
        f"{row['pair']} (stage {row['level'] + 1}): SVar {row['svar']:+.2f} "
        f"\u00b1 {row['svar_sd']:.2f}",
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="upper right", ncols=3)
    return _save(fig, path)


def probe_source(probe: dict) -> str:
    """Where the probe images came from, as HTML."""
    root = f"<code>{html.escape(probe['root'])}</code>"
    fresh = probe.get("fresh_frames")
    if fresh:
        return (
            f"{probe['images']} new frames rendered by the known-answer generator of {root} "
            f"({html.escape(str(fresh['kind']))}, seed {fresh['seed']}: none of them a frame "
            f"the runs trained on), in place of its split "
            f"<code>{html.escape(probe['split'])}</code>"
        )
    return f"{probe['images']} images of split <code>{html.escape(probe['split'])}</code> in {root}"


def plot_known_answer(by_level: dict, path: Path) -> Path:
    """`known_answer_figure` written to `path`."""
    return _save(known_answer_figure(by_level), path)


def known_answer_figure(by_level: dict):
    """Per Net2Vec level: mean held-out Set IoU of each cue group for RGB (separate) and depth
    (separate), spread over probe splits as error bars, noise floor as black ticks, and the
    known-answer verdicts under the panel title, one per line (side by side they ran into the
    next panel's title). One y axis for every panel, labelled once."""
    plt = _pyplot()
    levels = sorted(by_level, key=int)
    fig, axes = plt.subplots(
        1,
        len(levels),
        figsize=(4.2 * len(levels), 3.8),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    top = 0.0
    short = {
        "rgb_leads_on_appearance": "RGB > depth on A",
        "depth_leads_on_geometry": "depth > RGB on G",
    }
    for ax, lvl in zip(axes[0], levels, strict=True):
        spec = by_level[lvl]
        groups = list(spec["cue_mean_iou"])
        x = np.arange(len(groups))
        for side, m, color in ((-1, "rgb", "#cc6677"), (1, "depth", "#117733")):
            v = np.array([spec["cue_mean_iou"][g][m] for g in groups])
            sd = np.array([spec["cue_mean_iou"][g][f"{m}_sd"] for g in groups])
            floor = np.array([spec["cue_mean_iou"][g][f"{m}_floor"] for g in groups])
            xs = x + side * 0.2
            ax.bar(xs, v, 0.4, yerr=sd, capsize=3, color=color, label=f"{m} (separate)")
            ax.hlines(floor, xs - 0.2, xs + 0.2, colors="black", linewidth=1.6)
            top = max(top, float(np.nanmax(v + sd, initial=0)))
        ax.plot([], [], color="black", linewidth=1.6, label="noise floor")
        ticks = {"appearance": "appearance\nonly (A)", "geometry": "geometry\nonly (G)"}
        ax.set_xticks(x, [ticks.get(g, "both\ncues") for g in groups], fontsize=8)
        verdicts = spec.get("known_answer", {})
        lines = [f"{short.get(k, k)}: {v}" for k, v in verdicts.items()]
        ax.set_title("\n".join([f"stage {int(lvl) + 1}", *lines]), fontsize=9)
    axes[0, 0].set_ylabel("mean held-out Set IoU")
    axes[0, 0].set_ylim(0, min(1.0, max(0.3, 1.35 * top)))  # room for the legend
    axes[0, 0].legend(fontsize=7, loc="upper left")
    return fig


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
    where = "labelled" if example.region == "label" else "predicted"
    fig.suptitle(
        f"Grad-CAM for '{example.class_name}'{cue}: score over the {where} pixels; "
        "one colour scale for the four streams of an image",
        fontsize=10,
    )
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
    listed = [
        f"{FEATURES[k]} in {b} of {n} image{'s' if n > 1 else ''}" for k, b in blank.items() if b
    ]
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
        lvl = str(row["level"])
        spread = {"sd": res["set_iou_sd"][lvl], "floor": res["noise_floor"][lvl]}
        path = out / f"setiou_{row['old']}__{row['new']}_l{row['level']}.png"
        setiou_paths.append((row, plot_set_iou(row, names, cues, spread, path)))
    known_path = plot_known_answer(res["specialisation_by_level"], out / "known_answer.png")
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
        ".ok{color:#228833}.bad{color:#cc3311}.open{color:#777777}</style></head><body>",
        "<h1>Dissection of RGB-D fusion</h1>",
        f"<p>Runs: RGB <code>{html.escape(res['runs']['rgb'])}</code>, depth "
        f"<code>{html.escape(res['runs']['depth'])}</code>, joint "
        f"<code>{html.escape(res['runs']['joint'])}</code>. Probe: {probe_source(res['probe'])}"
        ".</p>",
        f"<p><b>Every Set IoU here is held out</b> ({html.escape(res['probe']['scoring'])}): "
        "each probe image is scored by a probe trained on the other folds. Beside it, the "
        "<b>noise floor</b>: the same procedure on features paired with another image's labels "
        "(what the label statistics alone give). \u00b1 is the standard deviation over the "
        "probe splits (the probes' variability, not that of training the models again).</p>",
        "<h2>What each modality specialises in</h2><ul>",
        f"<li>{html.escape(spec['rgb']['sentence'])}</li>",
        f"<li>{html.escape(spec['depth']['sentence'])}</li></ul>",
        f"<p>A modality <em>specialises</em> in a class when the Net2Vec probe on its "
        f"separately trained encoder (stage {spec['level'] + 1}) finds the class with a held-out "
        f"Set IoU at least {spec['margin']:.2f} (and twice the spread over probe splits) higher "
        f"than the other modality's, and that far above its noise floor. Set IoU is the "
        f"intersection over union (0 to 1), pooled over held-out probe images, of the class's "
        f"pixels and the mask a linear probe predicts from the features; the brackets give this "
        f"modality's Set IoU, then the other's.</p>",
        "<h3>Known answer per level</h3><p>The data declares each class's cue. The check "
        "compares cue-group means of Set IoU above the noise floor: \u201cyes\u201d / "
        "\u201cno\u201d only when the lead is beyond the threshold (the larger of "
        f"{spec['margin_known']:.2f} and twice the lead's spread over probe splits), "
        "otherwise \u201cnot resolved\u201d.</p>",
        _img(known_path, "known answer per level"),
        "<table><tr><th>stage</th><th>cue group</th><th>RGB (sep.)</th><th>floor</th>"
        "<th>depth (sep.)</th><th>floor</th><th>check</th><th>lead above floor</th>"
        "<th>threshold</th><th>verdict</th></tr>",
    ]
    checks = {cue: (key, leader) for key, cue, leader, _ in KNOWN_ANSWER}
    for lvl, by_level in sorted(res["specialisation_by_level"].items(), key=lambda t: int(t[0])):
        for cue, v in by_level["cue_mean_iou"].items():
            cells = [
                f"{int(lvl) + 1}",
                cue,
                f"{v['rgb']:.3f} \u00b1 {v['rgb_sd']:.3f}",
                f"{v['rgb_floor']:.3f}",
                f"{v['depth']:.3f} \u00b1 {v['depth_sd']:.3f}",
                f"{v['depth_floor']:.3f}",
            ]
            key = checks.get(cue, (None, None))[0]
            if key and key in by_level.get("known_answer", {}):
                d = by_level["known_answer_detail"][key]
                verdict = by_level["known_answer"][key]
                cls = {"yes": "ok", "no": "bad"}.get(verdict, "open")
                cells += [
                    f"{checks[cue][1]} leads",
                    f"{d['lead']:+.3f} \u00b1 {d['lead_sd']:.3f}",
                    f"{d['threshold']:.3f}",
                    f"<span class='{cls}' title='{html.escape(d['reason'])}'>{verdict}</span>",
                ]
            else:
                cells += ["", "", "", ""]
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    unresolved = []
    for lvl, by_level in sorted(res["specialisation_by_level"].items(), key=lambda t: int(t[0])):
        for key, verdict in by_level.get("known_answer", {}).items():
            if verdict == "yes":
                continue
            d = by_level["known_answer_detail"][key]
            what = (
                "contradicts the known answer"
                if verdict == "no"
                else "neither confirms nor contradicts the known answer: the separately "
                "trained features of this stage do not tell the cue group apart beyond the "
                "probes' noise (check the models' own per-class IoU with fusescope eval)"
            )
            unresolved.append(
                f"<li>stage {int(lvl) + 1}, {key.replace('_', ' ')}: {verdict} "
                f"({html.escape(d['reason'])}; lead {d['lead']:+.3f} \u00b1 "
                f"{d['lead_sd']:.3f}, threshold {d['threshold']:.3f}). This stage {what}.</li>"
            )
    if unresolved:
        parts.append("<ul>" + "".join(unresolved) + "</ul>")
    parts.append(
        "<h2>Semantic variance (Table I)</h2><p>Row \u201cA vs. B\u201d is SVar(B; A):"
        " positive when B carries more concept semantics than A (eq. 4-6, "
        "\u03bb = 2, per-concept frequency normalisation). SVar is computed from the mean "
        "held-out Set IoUs; \u00b1 is the spread of SVar over the probe splits. Eq. 6 divides "
        "each concept's term by its pixel frequency, so a rare class can dominate the sum: "
        "the last column names the class whose term is over half of the total.</p>"
        "<table><tr><th>group</th><th>pair</th><th>stage</th><th>SVar</th><th>per split</th>"
        "<th>new</th><th>vanished</th><th>increased</th><th>decreased</th>"
        "<th>dominated by (1/f weighting)</th></tr>"
    )
    for row in res["svar"]:
        counts = {s: sum(1 for c in row["concepts"] if c["state"] == s) for s in MARKERS}
        dom = row.get("dominated_by")
        dom_text = (
            f"{html.escape(dom['class'])}: {100 * dom['share']:.0f}% of |terms| "
            f"(frequency {100 * dom['frequency']:.2f}%)"
            if dom
            else "-"
        )
        per_split = ", ".join(f"{v:+.1f}" for v in row["svar_splits"])
        parts.append(
            f"<tr><td>{row['group']}</td><td>{html.escape(row['pair'])}</td>"
            f"<td>{row['level'] + 1}</td><td>{row['svar']:+.2f} \u00b1 {row['svar_sd']:.2f}</td>"
            f"<td>{per_split}</td>"
            + "".join(f"<td>{counts[s]}</td>" for s in MARKERS)
            + f"<td>{dom_text}</td></tr>"
        )
    parts.append(
        "</table><h2>Set IoU per concept</h2><p>Held-out Set IoU, mean over probe splits; "
        "error bars: spread over splits; black ticks: noise floor. [A] appearance-only, [G] "
        "geometry-only, [B] both cues. \u2191 new, \u2193 vanished, \u2197 increased, "
        "\u2198 decreased.</p>"
    )
    for row, path in setiou_paths:
        parts.append(_img(path, row["pair"]))
    parts.append(
        "<h2>Set IoU table</h2><p>Held-out Set IoU \u00b1 spread over probe splits, and "
        "(in brackets) the noise floor of the same feature.</p>"
    )
    for lvl, per_feature in res["set_iou"].items():
        sd, floor = res["set_iou_sd"][lvl], res["noise_floor"][lvl]
        parts.append(
            f"<p>stage {int(lvl) + 1}</p><table><tr><th>class</th>"
            + "".join(f"<th>{html.escape(FEATURES[f])}</th>" for f in per_feature)
            + "</tr>"
        )
        for i, name in enumerate(class_ticks(names, cues)):
            parts.append(
                f"<tr><td>{html.escape(name)}</td>"
                + "".join(
                    f"<td>{_fmt(v[i])} \u00b1 {_fmt(sd[f][i])} ({_fmt(floor[f][i])})</td>"
                    for f, v in per_feature.items()
                )
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
        region = res.get("gradcam", {}).get("region", "label")
        where = "labelled as" if region == "label" else "predicted as"
        parts.append(
            f"<h2>Grad-CAM</h2><p>Target: the class logit summed over the pixels {where} the "
            "class"
            + (" (the paper's choice)" if region == "label" else "")
            + ". Scale: the four maps of an image (RGB and depth of the separate models, RGB "
            "and depth streams of the joint model) share one colour scale, divided by the "
            "largest value among the four; no per-map min-max, so a weak stream looks weak. "
            "Each map is \u2211<sub>k</sub> \u03b1<sub>k</sub> A<sub>k</sub>, a first-order "
            "share of the class score in logit units, which is what makes the four "
            "comparable.</p>"
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
