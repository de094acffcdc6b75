"""The dissection protocol end to end on three tiny runs, and its known-answer reading."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY_MODEL, write_folder_dataset
from fusescope.cli import main
from fusescope.dissect.protocol import TABLE_I, specialisation
from fusescope.errors import FusescopeError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    ROOT / "configs" / "synthetic" / f"{n}.yaml"
    for n in ("rgb_only", "depth_only", "two_stream_concat")
]
CUES = ["both", "appearance", "geometry"]  # the tiny set: class 1 is red, class 2 is closer


def cue_data(root):
    root = write_folder_dataset(root, n=12)
    meta = json.loads((root / "meta.json").read_text())
    for c, cue in zip(meta["classes"], CUES, strict=True):
        c["cue"] = cue
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dissect")
    data = cue_data(tmp / "data")
    runs = [tmp / n for n in ("rgb", "depth", "joint")]
    sets = [f"--set={o}" for o in [f"data.root={data}", "data.synth=null", *TINY_MODEL]]
    code = main(
        [
            "dissect",
            *map(str, runs),
            "--out",
            str(tmp / "report"),
            "--train",
            *map(str, CONFIGS),
            *sets,
            "--probe-size",
            "0",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--gradcam-images",
            "2",
            "--quiet",
        ]
    )
    assert code in (0, None)
    return tmp / "report"


@pytest.mark.slow
def test_report_folder(report):
    names = {p.name for p in report.iterdir()}
    assert {
        "index.html",
        "results.json",
        "cka_cross_layer.png",
        "cka_cross_modal.png",
        "cka_matrix.png",
    } <= names
    assert sum(n.startswith("setiou_") for n in names) == len(TABLE_I)
    assert any(n.startswith("gradcam_") for n in names)
    page = (report / "index.html").read_text()
    assert "data:image/png;base64," in page
    assert "specialises" in page or "leads" in page


@pytest.mark.slow
def test_results_json(report):
    res = json.loads((report / "results.json").read_text())
    assert res["probe"]["cues"] == CUES and res["probe"]["images"] == 4
    assert len(res["svar"]) == len(TABLE_I)
    row = res["svar"][0]
    assert row["pair"] == "Depth (separate) vs. RGB (separate)"
    assert {c["state"] for r in res["svar"] for c in r["concepts"]} <= {
        "new",
        "vanished",
        "increased",
        "decreased",
        "unchanged",
        "absent",
    }
    level = str(res["levels"]["net2vec"][-1])
    assert set(res["set_iou"][level]) == set(res["features"])
    m = np.array(res["cka"]["matrix"])
    assert np.allclose(m, m.T) and m.shape == (5 * 4, 5 * 4)
    assert len(res["cka"]["cross_modal"]["separate"]) == 4
    for who in ("rgb", "depth"):
        assert res["specialisation"][who]["sentence"]


def test_specialisation_reads_the_known_answer():
    meta = SimpleNamespace(
        class_names=["wall", "poster", "pillar"], classes=[SimpleNamespace(cue=c) for c in CUES]
    )
    spec = specialisation(
        {"rgb_sep": [0.8, 0.7, 0.05], "depth_sep": [0.75, 0.02, 0.6]}, meta, level=3, margin=0.1
    )
    assert spec["rgb"]["classes"] == ["poster"] and spec["depth"]["classes"] == ["pillar"]
    assert spec["known_answer"] == {
        "rgb_leads_on_appearance": True,
        "depth_leads_on_geometry": True,
    }
    assert "poster" in spec["rgb"]["sentence"] and "appearance-cue" in spec["rgb"]["sentence"]


@pytest.mark.slow
def test_wrong_runs_fail_clearly(report, tmp_path):
    runs = report.parent
    with pytest.raises(FusescopeError, match="one modality"):
        from fusescope.dissect.protocol import load_runs

        load_runs(runs / "joint", runs / "depth", runs / "joint")
    assert (
        main(
            [
                "dissect",
                str(runs / "rgb"),
                str(runs / "depth"),
                str(runs / "rgb"),
                "--out",
                str(tmp_path / "r"),
                "--quiet",
            ]
        )
        == 2
    )
