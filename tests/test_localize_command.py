"""``cvloc localize`` in-process: pose against the GT, files, batch mode, user errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from cvloc.checkpoint import save_checkpoint
from cvloc.cli import main
from cvloc.config import config_to_dict, load_config
from cvloc.engine.builders import build_model
from cvloc.geometry import pixel_to_latlon

CENTER_LATLON = (49.015, 8.43)  # KITTI's latitude: zoom 17 x scale 2 = kitti-small's m/px


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for preset, num in (("kitti-small", 2), ("vigor-small", 1)):
        out = str(root / preset)
        assert main(["synth", "--preset", preset, "--num", str(num), "--out", out]) == 0
    return root


def pair(pairs, preset, index=0):
    """Image paths, meta, and the options of the pair's camera (K.json from meta["K"])."""
    directory = pairs / preset / "samples" / f"{index:06d}"
    meta = json.loads((directory / "meta.json").read_text())
    camera = ["--panorama"]
    if meta["camera_model"] == "pinhole":
        k_json = directory / "K.json"
        k_json.write_text(json.dumps(meta["K"]))
        camera = ["--intrinsics", str(k_json)]
    images = [
        "--ground",
        str(directory / "ground.png"),
        "--satellite",
        str(directory / "satellite.png"),
    ]
    return directory, meta, images + camera


def one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err


def test_classical_localizes_an_easy_pair_of_unknown_heading_with_latlon(pairs, tmp_path):
    _, meta, args = pair(pairs, "kitti-small", 1)
    gt_uv = np.array(meta["camera_uv"])
    prior = gt_uv + np.array([3.0, -2.0])  # 1.4 m from the GT: easy, but any heading
    out = tmp_path / "out"
    lat, lon = CENTER_LATLON
    options = f"--camera-height-m 1.65 --zoom 17 --scale 2 --sat-center-latlon {lat},{lon} "
    options += f"--prior-uv {prior[0]},{prior[1]} --search-radius-m 4"
    argv = ["localize", "--method", "classical", *args, *options.split(), "--out", str(out)]
    assert main(argv) == 0
    pose = json.loads((out / "pose.json").read_text())
    m_per_px = pose["inputs"]["m_per_px"]
    assert m_per_px == pytest.approx(meta["m_per_px"], rel=1e-4)
    error_m = np.linalg.norm(np.array(pose["camera_uv"]) - gt_uv) * m_per_px
    assert error_m < 1.0
    assert abs((pose["yaw_deg"] - meta["yaw_deg"] + 180) % 360 - 180) < 1.5
    assert pose["inputs"]["prior"]["yaw_deg"] is None

    # Geo round trip: the lat/lon is the predicted pixel's, and as far from the GT's as the
    # pose error says.
    def latlon(uv):
        return pixel_to_latlon(
            torch.tensor(uv, dtype=torch.float64),
            torch.tensor(CENTER_LATLON, dtype=torch.float64),
            torch.tensor([127.5, 127.5], dtype=torch.float64),
            17,
            2,
        ).numpy()

    np.testing.assert_allclose(pose["latlon"], latlon(pose["camera_uv"]), atol=1e-10)
    d_lat, d_lon = np.radians(np.array(pose["latlon"]) - latlon(gt_uv))
    metres = 6378137.0 * math.hypot(d_lat, math.cos(math.radians(CENTER_LATLON[0])) * d_lon)
    assert metres == pytest.approx(error_m, rel=0.01, abs=1e-3)
    with open(out / "correspondences.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ground_u", "ground_v", "sat_u", "sat_v", "score"]
    table = np.array(rows[1:], dtype=float)
    assert len(table) == pose["num_matches"] > 100
    assert np.all((table[:, :2] >= -0.5) & (table[:, :2] <= [511.5, 127.5]))
    assert np.all((table[:, 2:4] >= -0.5) & (table[:, 2:4] <= 255.5))
    assert 0 < (out / "visualization.png").stat().st_size < 300_000


def test_checkpoint_on_a_panorama_writes_pose_with_uncertainty(pairs, tmp_path, capsys):
    cfg = load_config("overfit", ["data.preset=vigor-small"])
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(
        checkpoint, {"model": build_model(cfg.model).state_dict(), "config": config_to_dict(cfg)}
    )
    _, meta, args = pair(pairs, "vigor-small")
    out = tmp_path / "out"
    options = f"--m-per-px {meta['m_per_px']} --prior-yaw-deg {meta['yaw_deg']}".split()
    argv = ["localize", "--checkpoint", str(checkpoint), *args, *options, "--out", str(out)]
    assert main(argv) == 0
    pose = json.loads((out / "pose.json").read_text())
    assert pose["inputs"]["camera_height_m"] == 2.0  # the training data's default
    assert pose["inputs"]["working"]["ground_size"] == [320, 160]
    assert pose["latlon"] is None
    assert np.array(pose["covariance_m2"]).shape == (2, 2)
    assert pose["sigma_m"]["major"] >= pose["sigma_m"]["minor"] >= 0.0
    assert (out / "visualization.png").is_file()
    # The printed confidence keeps 3 significant digits (FineMatch's are often below 0.01).
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("confidence "))
    assert line.split()[1] == f"{pose['confidence']:.3g},"


def test_batch_reports_a_bad_row_and_runs_the_others(pairs, tmp_path, capsys):
    directory, _, _ = pair(pairs, "kitti-small")
    k_json = directory / "K.json"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    table = tmp_path / "pairs.csv"
    rows = [("a", directory / "ground.png"), ("b", corrupt), ("c", directory / "ground.png")]
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "ground", "satellite", "fov_deg", "prior_yaw_deg"])
        for (name, ground), fov in zip(rows, (80, 80, ""), strict=True):
            writer.writerow([name, ground, directory / "satellite.png", fov, 10])
    out = tmp_path / "out"
    # Command-line values fill empty cells; a row's camera replaces the command line's.
    options = "--method prior --m-per-px 0.39 --camera-height-m 1.65 --no-visualization"
    options += " --intrinsics " + str(k_json)
    argv = ["localize", *options.split(), "--pairs", str(table), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "row 2" in err and "corrupt.png" in err
    with open(out / "results.csv") as f:
        summary = list(csv.DictReader(f))
    assert [r["status"] for r in summary] == ["ok", "error", "ok"]
    assert (out / "a" / "pose.json").is_file() and (out / "c" / "pose.json").is_file()
    assert not (out / "b").exists()
    assert float(summary[0]["yaw_deg"]) == pytest.approx(10.0)
    cameras = [json.loads((out / n / "pose.json").read_text())["inputs"]["camera"] for n in "ac"]
    assert cameras[0] == {"model": "pinhole", "fov_deg": 80.0}
    assert cameras[1]["K"] == json.loads(k_json.read_text())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"camera": []}, "the ground camera is missing: give exactly one of --fov-deg"),
        ({"camera": ["--fov-deg", "90", "--panorama"]}, "the ground camera is given twice"),
        ({"camera": ["--panorama"]}, "--ground: a panorama must be equirectangular"),
        ({"ground": "missing.png"}, "missing.png: missing"),
        ({"ground": "corrupt.png"}, "corrupt.png: cannot decode the image"),
        ({"camera": ["--intrinsics", "bad_K.json"]}, "bad_K.json: expected a JSON 3x3 matrix"),
        ({"extra": ["--search-radius-m", "60"]}, "--satellite: the 256x256 px tile"),
        ({"extra": ["--zoom", "17"]}, "--m-per-px / --zoom: give the satellite resolution"),
        ({"extra": ["--prior-uv", "12"]}, "--prior-uv: expected two numbers"),
        ({"method": ["--checkpoint", "no-such-model"]}, "--checkpoint: no-such-model"),
    ],
)
def test_user_errors_exit_2_with_one_line(pairs, tmp_path, capsys, change, expected):
    directory, _, _ = pair(pairs, "kitti-small")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "bad_K.json").write_text("[[300, 0, 255], [0, 300]]")
    ground = tmp_path / change["ground"] if "ground" in change else directory / "ground.png"
    camera = change.get("camera", ["--fov-deg", "80"])
    camera = [str(tmp_path / a) if a.endswith(".json") else a for a in camera]
    argv = ["localize", *change.get("method", ["--method", "prior"]), "--ground", str(ground),
            "--satellite", str(directory / "satellite.png"), *camera,
            *["--m-per-px", "0.39", "--camera-height-m", "1.65"], *change.get("extra", []),
            "--out", str(tmp_path / "out")]  # fmt: skip
    one_line_error(capsys, argv, expected)


def test_refinement_options_override_the_weights(pairs, tmp_path, capsys):
    # The shipped DenseFlow weights record the classical refinement (3 m window):
    # --no-classical-refine runs the network alone, as the Python API's override does.
    from cvloc.localize import Localizer, Pinhole, Prior

    directory, meta, args = pair(pairs, "kitti-small", 1)
    options = ["--m-per-px", str(meta["m_per_px"]), "--camera-height-m", "1.65",
               "--prior-yaw-deg", str(meta["prior"]["yaw_deg"])]  # fmt: skip
    base = ["localize", "--checkpoint", "denseflow-synth-kitti-small", *args, *options]
    poses = {}
    for name, extra in (("shipped", []), ("network", ["--no-classical-refine"])):
        assert main([*base, *extra, "--out", str(tmp_path / name), "--no-visualization"]) == 0
        poses[name] = json.loads((tmp_path / name / "pose.json").read_text())
    moved_m = np.abs(np.subtract(poses["shipped"]["camera_uv"], poses["network"]["camera_uv"]))
    assert 0 < moved_m.max() * meta["m_per_px"] <= 3.0 + 1e-4
    network = Localizer.from_pretrained(
        "denseflow-synth-kitti-small", refinement={"classical_refine": False}
    ).localize(
        directory / "ground.png", directory / "satellite.png", Pinhole(K=meta["K"]),
        m_per_px=meta["m_per_px"], camera_height_m=1.65,
        prior=Prior(yaw_deg=meta["prior"]["yaw_deg"]),
    )  # fmt: skip
    np.testing.assert_allclose(network.camera_uv, poses["network"]["camera_uv"], atol=1e-4)
    capsys.readouterr()
    one_line_error(capsys, [*base, "--classical-shift-m", "0", "--out", str(tmp_path / "x")],
                   "--classical-shift-m must be > 0")  # fmt: skip
    prior = ["localize", "--method", "prior", *args, *options, "--out", str(tmp_path / "y")]
    one_line_error(capsys, [*prior, "--no-classical-refine"], "--classical-refine applies to a")
    with pytest.raises(ValueError, match=r"unknown fields \['passes'\]"):
        Localizer.from_pretrained("denseflow-synth-kitti-small", refinement={"passes": 2})
