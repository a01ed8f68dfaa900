import hashlib
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cvloc.cli import main
from cvloc.data.pairs import write_dataset_json, write_pair
from cvloc.evaluate import evaluate, gt_at_ground_pixels, lift_matches_to_ground
from cvloc.models.pose_head import flow_from_pose

M_PER_PX = 0.5
HEIGHT_M = 1.5
CENTER_UV = (31.5, 31.5)
GROUND_WH = (128, 64)
# Principal point off the half-pixel grid so that hand-projected pixels never round at .5.
FOCAL, CX, CY = 64.0, 63.3, 31.2
GT_YAWS = (0.0, 90.0, 175.0, -120.0)
# Per sample: (lateral, longitudinal) error in metres in the GT heading frame, yaw error.
ERRORS = {"s0": (0.5, 0.0, 0.5), "s1": (0.0, 2.0, -2.0), "s2": (-4.0, 2.5, 10.0), "s3": (0, 0, 0)}
# Match sources as ego points (right, forward) of the prior camera, and their errors in px.
EGO_MATCHES = ((0.0, 6.0), (1.5, 8.0), (-2.2, 10.0), (2.5, 5.0))
MATCH_ERRORS_PX = (0.0, 7.0, 12.0, 20.0)
FLOW_ERROR = {"s0": (3.0, 4.0)}  # an end-point error of 5 px on every visible pixel of s0


def heading_axes(yaw_deg):
    """(forward, right) unit vectors in the world frame (x east, y north)."""
    y = math.radians(yaw_deg)
    return np.array([math.sin(y), math.cos(y)]), np.array([math.cos(y), -math.sin(y)])


def to_uv(xy):
    return np.array([CENTER_UV[0] + xy[0] / M_PER_PX, CENTER_UV[1] - xy[1] / M_PER_PX])


def to_xy(uv):
    return np.array([(uv[0] - CENTER_UV[0]) * M_PER_PX, -(uv[1] - CENTER_UV[1]) * M_PER_PX])


def extrinsics(uv, yaw_deg, height=HEIGHT_M):
    """Level camera world_to_cam written out from design.md."""
    forward, right = heading_axes(yaw_deg)
    R = np.array([[*right, 0.0], [0.0, 0.0, -1.0], [*forward, 0.0]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ np.array([*to_xy(uv), height])
    return T


def gt_map():
    """gt_sat_uv_grd: ground pixel (u, v) -> (1000 + u, 2000 + v); NaN in the upper half."""
    vv, uu = np.meshgrid(np.arange(GROUND_WH[1]), np.arange(GROUND_WH[0]), indexing="ij")
    out = np.stack([1000.0 + uu, 2000.0 + vv], -1).astype(np.float32)
    out[: GROUND_WH[1] // 2] = np.nan
    return torch.from_numpy(out)


def make_item(i):
    uv_gt = np.array([30.0 + i, 34.0])
    yaw = GT_YAWS[i]
    return {
        "name": f"s{i}",
        "ground": torch.rand(
            3, GROUND_WH[1], GROUND_WH[0], generator=torch.Generator().manual_seed(i)
        ),
        "satellite": torch.zeros(3, 64, 64),
        "camera_model": "pinhole",
        "K": torch.tensor([[FOCAL, 0, CX], [0, FOCAL, CY], [0, 0, 1]]),
        "world_to_cam": torch.tensor(extrinsics(uv_gt, yaw), dtype=torch.float32),
        "camera_height_m": torch.tensor(HEIGHT_M),
        "m_per_px": torch.tensor(M_PER_PX),
        "sat_center_uv": torch.tensor(CENTER_UV),
        "camera_uv_gt": torch.tensor(uv_gt, dtype=torch.float32),
        "yaw_deg_gt": torch.tensor(yaw),
        "camera_uv_prior": torch.tensor(uv_gt + np.array([2.0, -1.0]), dtype=torch.float32),
        "yaw_deg_prior": torch.tensor(yaw + 3.0),
        "shift_range_m": torch.tensor(10.0),
        "yaw_range_deg": torch.tensor(10.0),
        "gt_sat_uv_grd": gt_map(),
    }


def hand_matches(uv_prior, yaw_prior):
    """(src satellite uv, ground pixel) of EGO_MATCHES, by plain pinhole math."""
    forward, right = heading_axes(yaw_prior)
    src, ground = [], []
    for x, z in EGO_MATCHES:
        src.append(to_uv(to_xy(uv_prior) + x * right + z * forward))
        ground.append((FOCAL * x / z + CX, FOCAL * HEIGHT_M / z + CY))
    return np.array(src), np.array(ground)


class StubModel(nn.Module):
    """Returns the GT pose moved by ERRORS, flows off by FLOW_ERROR, matches off by
    MATCH_ERRORS_PX (plus one top-scored match behind the camera, which has no GT)."""

    def forward(self, batch):
        xy, yaw, src_all, dst_all = [], [], [], []
        for b, name in enumerate(batch["name"]):
            lat, lon, dyaw = ERRORS[name]
            forward, right = heading_axes(batch["yaw_deg_gt"][b].item())
            xy.append(to_xy(batch["camera_uv_gt"][b].numpy()) + lat * right + lon * forward)
            yaw.append(batch["yaw_deg_gt"][b].item() + dyaw)
            uv_prior = batch["camera_uv_prior"][b].double().numpy()
            yaw_prior = batch["yaw_deg_prior"][b].item()
            src, ground = hand_matches(uv_prior, yaw_prior)
            dst = np.stack([1000.0 + np.rint(ground[:, 0]), 2000.0 + np.rint(ground[:, 1])], -1)
            dst[:, 0] += MATCH_ERRORS_PX
            fwd_prior, _ = heading_axes(yaw_prior)
            behind = to_uv(to_xy(uv_prior) - 5.0 * fwd_prior)
            src_all.append(np.concatenate([src, behind[None]]))
            dst_all.append(np.concatenate([dst, behind[None]]))
        flow = flow_from_pose(
            (64, 64),
            batch["sat_center_uv"],
            batch["m_per_px"],
            batch["camera_uv_prior"],
            batch["yaw_deg_prior"],
            batch["camera_uv_gt"],
            batch["yaw_deg_gt"],
        )
        flow += torch.tensor([FLOW_ERROR.get(n, (0.0, 0.0)) for n in batch["name"]])[
            ..., None, None
        ]
        valid = torch.zeros(len(flow), 1, 64, 64)
        valid[..., :32] = 1.0
        xy_t = torch.tensor(np.array(xy), dtype=torch.float32)
        return {
            "camera_xy_pred": xy_t,
            "camera_uv_pred": torch.tensor(np.array([to_uv(p) for p in xy])),
            "yaw_deg_pred": torch.tensor(yaw),
            "flow_iters": [torch.zeros_like(flow), flow],
            "bev_valid": valid,
            "match_src_uv": torch.tensor(np.array(src_all), dtype=torch.float32),
            "match_dst_uv": torch.tensor(np.array(dst_all), dtype=torch.float32),
            "match_weight": torch.tensor([[4.0, 3.0, 2.0, 1.0, 9.0]] * len(flow)),
        }


EXPECTED = {
    "num_samples": 4,
    "location_mean_m": (0.5 + 2.0 + math.hypot(4.0, 2.5) + 0.0) / 4,
    "location_median_m": 1.25,
    "lateral_mean_m": 1.125,
    "lateral_median_m": 0.25,
    "longitudinal_mean_m": 1.125,
    "longitudinal_median_m": 1.0,
    "lateral_recall_1m": 0.75,
    "lateral_recall_3m": 0.75,
    "lateral_recall_5m": 1.0,
    "longitudinal_recall_1m": 0.5,
    "longitudinal_recall_3m": 1.0,
    "longitudinal_recall_5m": 1.0,
    "yaw_mean_deg": 3.125,
    "yaw_median_deg": 1.25,
    "yaw_recall_1deg": 0.5,
    "yaw_recall_3deg": 0.75,
    "yaw_recall_5deg": 0.75,
    "flow_epe_px": 1.25,
    "flow_epe_lt_5px": 0.75,
    "flow_epe_lt_15px": 1.0,
    "flow_epe_lt_25px": 1.0,
    "flow_epe_lt_50px": 1.0,
    "match_precision_5px": 0.25,
    "match_precision_10px": 0.5,
    "match_precision_15px": 0.75,
    "match_valid_fraction": 0.8,
}


@pytest.mark.parametrize("batch_size", [1, 3])
def test_evaluate_metrics_of_known_predictions(batch_size, tmp_path):
    dataset = [make_item(i) for i in range(4)]
    weights = tmp_path / "x.pt"
    weights.write_bytes(b"weights of the stub")
    result = evaluate(
        StubModel(),
        dataset,
        batch_size=batch_size,
        progress=False,
        method="stub",
        checkpoint=str(weights),
    )
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value, abs=1e-5), key
    assert result["method"] == "stub" and result["checkpoint"] == str(weights)
    # The result names the exact bytes it was computed with.
    assert result["checkpoint_sha256"] == hashlib.sha256(b"weights of the stub").hexdigest()
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        evaluate(StubModel(), dataset, progress=False, checkpoint=str(tmp_path / "missing.pt"))
    rows = evaluate(StubModel(), dataset, batch_size, progress=False, per_sample=True)
    per_sample = rows["per_sample"]
    assert per_sample["name"] == [item["name"] for item in dataset]
    # The per-pair errors reproduce the aggregate metrics.
    assert np.median(per_sample["location_error_m"]) == pytest.approx(
        result["location_median_m"], abs=1e-9
    )
    assert np.mean(per_sample["yaw_error_deg"]) == pytest.approx(result["yaw_mean_deg"], abs=1e-9)
    assert result["match_num_samples"] == 4
    assert 0.0 <= result["seconds_per_pair"] < 1.0
    json.dumps(result)  # plain JSON numbers and strings


def test_evaluate_defaults_and_pose_only_models():
    class PoseOnly(nn.Module):
        def forward(self, batch):
            return {
                "camera_xy_pred": torch.zeros(len(batch["name"]), 2),
                "yaw_deg_pred": batch["yaw_deg_gt"],
            }

    result = evaluate(PoseOnly(), [make_item(0)], progress=False)
    assert result["method"] == "PoseOnly" and result["checkpoint"] is None
    assert result["checkpoint_sha256"] is None
    assert "per_sample" not in result
    assert not any(k.startswith(("flow_", "match_")) for k in result)
    assert result["yaw_mean_deg"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        evaluate(PoseOnly(), [], progress=False)


# ---------------------------------------------------------------------------------------------
# Lifting matches to ground pixels, against independent projections.


def test_lift_matches_flat_ground_matches_hand_projection():
    item = make_item(2)
    uv_prior, yaw_prior = item["camera_uv_prior"].double().numpy(), item["yaw_deg_prior"].item()
    src, ground = hand_matches(uv_prior, yaw_prior)
    uv, valid = lift_matches_to_ground(
        torch.tensor(src)[None],
        item["sat_center_uv"][None],
        item["m_per_px"][None],
        item["camera_uv_prior"][None],
        item["yaw_deg_prior"][None],
        item["camera_height_m"][None],
        "pinhole",
        GROUND_WH,
        item["K"][None],
    )
    assert valid.all()
    np.testing.assert_allclose(uv[0].numpy(), ground, atol=1e-3)
    # gt_map is linear in the ground pixel: bilinear lookup is exact, nearest rounds.
    gt = gt_at_ground_pixels(item["gt_sat_uv_grd"][None], uv, valid)
    np.testing.assert_allclose(gt[0].numpy(), np.add(ground, [1000, 2000]), atol=1e-3)
    gt = gt_at_ground_pixels(item["gt_sat_uv_grd"][None], uv, valid, mode="nearest")
    np.testing.assert_array_equal(gt[0].numpy(), np.add(np.rint(ground), [1000, 2000]))


def test_gt_lookup_edges():
    grid = torch.full((1, 2, 4, 2), math.nan)
    grid[0, 0] = torch.tensor([[0.0, 0], [10, 0], [20, 0], [30, 0]])  # row 0 has GT, row 1 none
    uv = torch.tensor([[[0.5, 0.0], [3.25, 0.0], [-0.4, 0.0], [1.0, 0.5], [1.0, 0.2]]])
    valid = torch.tensor([[True, True, True, True, False]])
    gt = gt_at_ground_pixels(grid, uv, valid)[0, :, 0]
    assert gt[0] == 5.0 and gt[2] == 0.0  # interpolated; the border repeats
    assert gt[1] == 30.0  # past the last column: repeated ...
    assert math.isnan(gt[3]) and math.isnan(gt[4])  # a neighbour without GT; invalid
    pano = gt_at_ground_pixels(grid, uv, valid, panorama=True)[0, :, 0]
    assert pano[1] == pytest.approx(0.75 * 30.0 + 0.25 * 0.0)  # ... unless the columns wrap
    with pytest.raises(ValueError, match="mode"):
        gt_at_ground_pixels(grid, uv, valid, mode="cubic")


@pytest.mark.parametrize("camera_model", ["pinhole", "panorama"])
def test_lift_matches_per_match_height(camera_model):
    # Points at known heights in front of a camera, projected by hand.
    uv_prior, yaw = np.array([20.0, 40.0]), 35.0
    forward, right = heading_axes(yaw)
    ego = [(-1.0, 4.0, 0.0), (2.0, 7.0, 1.2), (0.5, 12.0, 3.0), (-3.0, -6.0, 0.5)]
    size = GROUND_WH if camera_model == "pinhole" else (128, 64)
    src, expected = [], []
    for x, z, h in ego:
        src.append(to_uv(to_xy(uv_prior) + x * right + z * forward))
        down = HEIGHT_M - h
        if camera_model == "pinhole":
            expected.append((FOCAL * x / z + CX, FOCAL * down / z + CY))
        else:
            az = math.degrees(math.atan2(x, z))
            el = math.degrees(math.atan2(-down, math.hypot(x, z)))
            expected.append(((az + 180) / 360 * size[0] - 0.5, (90 - el) / 180 * size[1] - 0.5))
    K = torch.tensor([[[FOCAL, 0, CX], [0, FOCAL, CY], [0, 0, 1]]], dtype=torch.float64)
    uv, valid = lift_matches_to_ground(
        torch.tensor(np.array(src))[None],
        torch.tensor([CENTER_UV], dtype=torch.float64),
        torch.tensor([M_PER_PX], dtype=torch.float64),
        torch.tensor(uv_prior)[None],
        torch.tensor([yaw], dtype=torch.float64),
        torch.tensor([HEIGHT_M], dtype=torch.float64),
        camera_model,
        size,
        K if camera_model == "pinhole" else None,
        heights_m=torch.tensor([[h for *_, h in ego]], dtype=torch.float64),
    )
    expected = np.array(expected)
    if camera_model == "pinhole":  # the last point is behind the camera
        assert valid[0].tolist() == [True, True, True, False]
        np.testing.assert_allclose(uv[0, :3].numpy(), expected[:3], atol=1e-6)
    else:
        assert valid.all()
        np.testing.assert_allclose(uv[0].numpy(), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The command line.


def write_pairs(root, n=2):
    for i in range(n):
        item = make_item(i)
        meta = {
            "camera_model": "pinhole",
            "K": item["K"].tolist(),
            "world_to_cam": item["world_to_cam"].tolist(),
            "m_per_px": M_PER_PX,
            "sat_center_uv": list(CENTER_UV),
            "camera_uv": item["camera_uv_gt"].tolist(),
            "yaw_deg": item["yaw_deg_gt"].item(),
            "camera_height_m": HEIGHT_M,
            "prior": {
                "camera_uv": item["camera_uv_prior"].tolist(),
                "yaw_deg": item["yaw_deg_prior"].item(),
            },
            "ground_size": list(GROUND_WH),
            "sat_size": [64, 64],
        }
        ground = np.zeros((GROUND_WH[1], GROUND_WH[0], 3), np.uint8)
        sat = np.zeros((64, 64, 3), np.uint8)
        uv = np.array([[3.0, 40.0]], np.float32)
        write_pair(
            root / "samples" / f"{i:06d}", ground, sat, meta, uv, uv, np.zeros(1, np.float32)
        )
    write_dataset_json(root, "test", "test", 0, n)


def test_cli_eval_prior_on_pairs_writes_json(tmp_path, capsys):
    write_pairs(tmp_path / "pairs")
    out = tmp_path / "out" / "m.json"
    assert (
        main(["eval", "--method", "prior", "--data", str(tmp_path / "pairs"), "--json", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "| prior |" in printed and "Lateral R@1m (%)" in printed
    metrics = json.loads(out.read_text())
    assert metrics["method"] == "prior" and metrics["checkpoint"] is None
    assert metrics["num_samples"] == 2
    # The prior is off by (2, -1) px = (1.0, 0.5) m and 3 degrees.
    assert metrics["location_mean_m"] == pytest.approx(math.hypot(1.0, 0.5), abs=1e-5)
    assert metrics["yaw_mean_deg"] == pytest.approx(3.0, abs=1e-5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--checkpoint", "no-such-weights", "--dataset", "synthetic"], "no-such-weights"),
        (["--checkpoint", "missing/best.pt", "--dataset", "synthetic"], "missing/best.pt"),
        (["--method", "prior", "--data", "{tmp}"], "dataset.json"),
        (["--method", "prior", "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--method", "prior", "--dataset", "kitti"], "'kitti' needs a root directory"),
        (["--method", "prior", "--dataset", "synthetic", "--preset", "x"], "unknown preset"),
        (["--method", "prior"], "--data --dataset is required"),
        (["--method", "prior", "--data", "{tmp}", "--limit", "0"], "--limit must be >= 1"),
        (["--method", "nope", "--data", "{tmp}"], "invalid choice: 'nope'"),
        (["--method", "prior", "--data", "{tmp}", "--refine-passes", "2"], "applies to a"),
        (["--method", "prior", "--data", "{tmp}", "--set", "a=1"], "--set applies to a"),
        (
            ["--checkpoint", "denseflow-synth-kitti-small", "--data", "{tmp}", "--set", "x.y=1"],
            "overrides ['x.y=1']",
        ),
    ],
)
def test_cli_eval_user_errors_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run_cli(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def run_cli(argv):
    """Exit status of the CLI, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_cli_eval_prior_on_synthetic_pairs(tmp_path, capsys):
    argv = [
        "eval",
        "--method",
        "prior",
        "--dataset",
        "synthetic",
        "--preset",
        "kitti-small",
        "--split",
        "test",
        "--area",
        "same",
        "--num",
        "2",
        "--seed",
        "0",
    ]
    runs = []
    for i in range(2):
        out = tmp_path / f"m{i}.json"
        assert main([*argv, "--json", str(out)]) == 0
        runs.append(json.loads(out.read_text()))
    assert "| prior |" in capsys.readouterr().out
    for metrics in runs:
        metrics.pop("seconds_per_pair")
    assert runs[0] == runs[1]  # generated on the fly, reproducibly
    assert runs[0]["num_samples"] == 2 and runs[0]["method"] == "prior"
    assert runs[0]["data"] == "synthetic kitti-small test/same seed 0"
    assert runs[0]["location_mean_m"] > 0.0


def test_cli_eval_checkpoint_with_overrides(tmp_path):
    # The shipped weights with one GRU iteration instead of six: recorded, and the
    # flow (hence the errors) differs from the stored config's run.
    base = ["eval", "--checkpoint", "denseflow-synth-kitti-small", "--dataset", "synthetic"]
    base += ["--preset", "kitti-small", "--num", "2", "--seed", "0"]
    runs = []
    for extra in ([], ["--set", "model.denseflow.iters=1"]):
        out = tmp_path / f"m{len(runs)}.json"
        assert main([*base, *extra, "--json", str(out)]) == 0
        runs.append(json.loads(out.read_text()))
    assert "config_overrides" not in runs[0]
    assert runs[1]["config_overrides"] == ["model.denseflow.iters=1"]
    assert runs[1]["checkpoint_sha256"] == runs[0]["checkpoint_sha256"]
    assert runs[1]["flow_epe_px"] != runs[0]["flow_epe_px"]


@pytest.mark.parametrize("preset", ["kitti-small", "vigor-small"])
def test_perfect_flow_matches_agree_with_generator_gt(preset):
    # The flow implied by the GT pose, lifted to the ground image on flat ground, must land
    # on the generator's pixel-level GT wherever the ground pixel sees the ground itself:
    # this ties the lifting, the prior camera and gt_sat_uv_grd to the same conventions.
    from cvloc.data.batch import collate
    from cvloc.data.synthetic.dataset import SyntheticDataset
    from cvloc.evaluate import batch_match_precision
    from cvloc.geometry.bev import satellite_grid_uv

    batch = collate([SyntheticDataset(preset, "test", "same", 1)[0]])
    H, W = batch["satellite"].shape[-2:]
    flow = flow_from_pose(
        (H, W),
        batch["sat_center_uv"],
        batch["m_per_px"],
        batch["camera_uv_prior"],
        batch["yaw_deg_prior"],
        batch["camera_uv_gt"],
        batch["yaw_deg_gt"],
    )
    src = satellite_grid_uv(H, W).reshape(1, -1, 2)
    dst = src + flow.flatten(2).transpose(1, 2)
    g = batch["ground"]
    uv, valid = lift_matches_to_ground(
        src,
        batch["sat_center_uv"],
        batch["m_per_px"],
        batch["camera_uv_prior"],
        batch["yaw_deg_prior"],
        batch["camera_height_m"],
        batch["camera_model"][0],
        (g.shape[-1], g.shape[-2]),
        batch["K"],
    )
    gt = gt_at_ground_pixels(
        batch["gt_sat_uv_grd"], uv, valid, panorama=batch["camera_model"][0] == "panorama"
    )[0]
    has_gt = torch.isfinite(gt).all(-1)
    ij = gt[has_gt].round().long().clamp(0, H - 1)
    on_ground = batch["sat_height_m"][0, ij[:, 1], ij[:, 0]].abs() < 0.05
    err = (dst[0][has_gt] - gt[has_gt]).norm(dim=-1)[on_ground]
    assert on_ground.sum() > 1000
    assert err.median() < 0.5  # pixels; nearest-pixel lookup alone costs 1.3 / 3.6 px
    pred = {"match_src_uv": src, "match_dst_uv": dst, "match_weight": torch.ones(1, H * W)}
    (precision,) = batch_match_precision(pred, batch)
    assert precision["match_num_evaluated"] == 30
