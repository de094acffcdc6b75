"""Folder prediction through the read pipeline (DataLoader workers, a writer thread)."""

import shutil

import numpy as np

from conftest import cli_train
from fusescope.cli import main
from fusescope.io import read_image


def test_workers_give_the_same_masks_and_clean_errors(tiny_data, tmp_path, capsys):

    run = tmp_path / "run"
    assert cli_train(run, tiny_data, "train.max_steps=2", "--no-eval") == 0
    folders = ["--rgb", str(tiny_data / "rgb"), "--depth", str(tiny_data / "depth")]
    for workers in (0, 2):
        assert (
            main(
                [
                    "predict",
                    str(run),
                    *folders,
                    "--out",
                    str(tmp_path / f"w{workers}"),
                    "--batch-size",
                    "5",
                    "--workers",
                    str(workers),
                ]
            )
            == 0
        )
    names = sorted(p.name for p in (tmp_path / "w0").glob("*.png"))
    assert len(names) == 24  # 12 masks + 12 overlays
    assert names == sorted(p.name for p in (tmp_path / "w2").glob("*.png"))
    for name in names:
        assert np.array_equal(
            read_image(tmp_path / "w0" / name), read_image(tmp_path / "w2" / name)
        )

    # a broken file read by a worker: the one-line error naming it, exit 2
    bad = tmp_path / "rgb"
    shutil.copytree(tiny_data / "rgb", bad)
    (bad / "0007.png").write_bytes(b"not a png")
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(run),
                "--rgb",
                str(bad),
                "--depth",
                str(tiny_data / "depth"),
                "--out",
                str(tmp_path / "bad"),
                "--workers",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err  # the progress bar, then the error
    lines = [line for line in err.splitlines() if line.startswith("fusescope:")]
    assert len(lines) == 1 and "0007.png" in lines[0] and "Traceback" not in err, err
