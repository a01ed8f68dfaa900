"""``cvloc demo`` end to end on a few pairs with a tiny untrained DenseFlow."""

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvloc import demo
from cvloc.checkpoint import export_weights, save_checkpoint
from cvloc.cli import main
from cvloc.config import config_to_dict, load_config
from cvloc.data.pairs import PairsDataset
from cvloc.engine.builders import build_model

NUM, FIGURES = 4, 2
LEARNED = ("DenseFlow", "DenseFlow + classical")
DESIGN_KEYS = {
    "num_samples", "location_mean_m", "location_median_m", "lateral_mean_m",
    "lateral_median_m", "longitudinal_mean_m", "longitudinal_median_m", "lateral_recall_1m",
    "lateral_recall_3m", "lateral_recall_5m", "longitudinal_recall_1m",
    "longitudinal_recall_3m", "longitudinal_recall_5m", "yaw_mean_deg", "yaw_median_deg",
    "yaw_recall_1deg", "yaw_recall_3deg", "yaw_recall_5deg", "seconds_per_pair", "method",
    "checkpoint",
}  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained DenseFlow exported as shipped weights (.safetensors)."""
    tmp = tmp_path_factory.mktemp("weights")
    cfg = load_config("overfit")
    torch.manual_seed(0)
    save_checkpoint(
        tmp / "last.pt",
        {"model": build_model(cfg.model).state_dict(), "config": config_to_dict(cfg)},
    )
    return export_weights(tmp / "last.pt", tmp / "tiny.safetensors")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    args = ["demo", "--out", str(out), "--num", str(NUM), "--figures", str(FIGURES)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--checkpoint", str(weights)]) == 0
    return out, printed.getvalue()


def test_pairs_written_as_cvloc_pairs(demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    info = json.loads((out / "dataset.json").read_text())
    assert info["format"] == "cvloc-pairs/1"
    assert (info["preset"], info["split"], info["area"], info["seed"], info["num"]) == (
        "kitti-small", "test", "same", 0, NUM
    )  # fmt: skip
    dataset = PairsDataset(out)
    assert len(dataset) == NUM
    assert dataset[0]["name"] == "synth/kitti-small/test/same/s0/000000"


def test_metrics_json_has_every_method(demo_run: tuple[Path, str], weights: Path) -> None:
    out, _ = demo_run
    report = json.loads((out / "metrics.json").read_text())
    assert set(report) == {"data", "methods", "stage_seconds"}
    assert list(report["methods"]) == ["prior", "classical", *LEARNED]
    for name, metrics in report["methods"].items():
        assert DESIGN_KEYS.issubset(metrics), name
        assert metrics["num_samples"] == NUM and metrics["method"] == name
    assert report["methods"]["DenseFlow"]["checkpoint"] == str(weights)
    assert "flow_epe_px" in report["methods"]["DenseFlow"]
    assert "match_precision_5px" in report["methods"]["classical"]
    assert set(report["stage_seconds"]) == {"pairs", "prior", "classical", *LEARNED}
    # The refinement keeps DenseFlow's correspondences and moves its pose by at most the
    # default window (2 m per axis: 2 sqrt(2) m at most, so the errors differ by no more).
    plain, finished = (report["methods"][name] for name in LEARNED)
    assert finished["match_precision_15px"] == plain["match_precision_15px"]
    assert finished["location_mean_m"] <= plain["location_mean_m"] + 2 * math.sqrt(2) + 1e-6


def test_figures_written(demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    for index in range(FIGURES):
        for kind in ("localization", "confidence"):
            path = out / f"{kind}_{index:06d}.png"
            assert path.stat().st_size > 30_000, path
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
            assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200 and rgb.std() > 30
    assert not (out / f"localization_{FIGURES:06d}.png").exists()


def test_prints_table_and_timing(demo_run: tuple[Path, str]) -> None:
    _, text = demo_run
    assert "| Method | Location mean (m) |" in text
    for name in ("prior", "classical", *LEARNED):
        assert f"| {name} |" in text
    assert "demo finished in" in text and "classical" in text


def test_pairs_are_reused(demo_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    out, _ = demo_run
    before = (out / "dataset.json").stat().st_mtime_ns
    assert len(demo.write_synthetic_pairs(out, NUM, 0, 1)) == NUM
    assert "reusing" in capsys.readouterr().out
    assert (out / "dataset.json").stat().st_mtime_ns == before


def test_without_weights_the_baselines_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["demo", "--out", str(tmp_path / "o"), "--num", "2", "--figures", "1"]
    assert main([*args, "--checkpoint", "no-such-weights"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "weights not available" in line]
    report = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert list(report["methods"]) == ["prior", "classical"]
    # The figures then show the classical baseline's prediction.
    assert (tmp_path / "o" / "localization_000000.png").stat().st_size > 30_000


def test_refuses_a_foreign_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path), "--num", "1"]) == 2
    assert "not written by the demo" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_rejects_bad_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--out", str(tmp_path), "--num", "0"]) == 2
    assert "--num must be >= 1" in capsys.readouterr().err
