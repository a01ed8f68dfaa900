import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cvloc.metrics import (
    aggregate_match_precision,
    format_metrics_table,
    localization_errors,
    localization_metrics,
    match_precision,
)

# Four samples worked out by hand. f_gt = (sin yaw, cos yaw): yaw 0 -> (0, 1), yaw 90 -> (1, 0).
#   s1: e = (1, 0),  f = (0, 1): lat |1*1 - 0*0| = 1, lon 0, loc 1; yaw |0.5 - 0| = 0.5
#   s2: e = (0, 3),  f = (1, 0): lat |0*0 - 3*1| = 3, lon 0, loc 3; yaw |93 - 90| = 3
#   s3: e = (-3, 4), f = (0, 1): lat |-3*1 - 4*0| = 3, lon 4, loc 5; yaw |-1 - 0| = 1
#   s4: e = (0, 0): all 0; yaw |wrap(179 - (-179))| = |wrap(358)| = 2
# loc [1, 3, 5, 0]: mean 2.25, median (1 + 3) / 2 = 2, R@1 1/4 (0), R@3 2/4, R@5 3/4 (5 !< 5)
# lat [1, 3, 3, 0]: mean 1.75, median 2, R@1 1/4, R@3 2/4 (3 !< 3), R@5 4/4
# lon [0, 0, 4, 0]: mean 1, median 0, R@1 3/4, R@3 3/4, R@5 4/4
# yaw [0.5, 3, 1, 2]: mean 1.625, median 1.5, R@1 1/4 (1 !< 1), R@3 3/4 (3 !< 3), R@5 4/4
GT_XY = [[0.0, 0.0], [10.0, 10.0], [-5.0, 2.0], [0.0, 0.0]]
PRED_XY = [[1.0, 0.0], [10.0, 13.0], [-8.0, 6.0], [0.0, 0.0]]
GT_YAW = [0.0, 90.0, 0.0, -179.0]
PRED_YAW = [0.5, 93.0, -1.0, 179.0]
EXPECTED = {
    "num_samples": 4,
    "location_mean_m": 2.25,
    "location_median_m": 2.0,
    "location_recall_1m": 0.25,
    "location_recall_3m": 0.5,
    "location_recall_5m": 0.75,
    "lateral_mean_m": 1.75,
    "lateral_median_m": 2.0,
    "lateral_recall_1m": 0.25,
    "lateral_recall_3m": 0.5,
    "lateral_recall_5m": 1.0,
    "longitudinal_mean_m": 1.0,
    "longitudinal_median_m": 0.0,
    "longitudinal_recall_1m": 0.75,
    "longitudinal_recall_3m": 0.75,
    "longitudinal_recall_5m": 1.0,
    "yaw_mean_deg": 1.625,
    "yaw_median_deg": 1.5,
    "yaw_recall_1deg": 0.25,
    "yaw_recall_3deg": 0.75,
    "yaw_recall_5deg": 1.0,
}


def ccvpe_split(e_xy: np.ndarray, heading_deg: float) -> tuple[float, float]:
    """The biased CCVPE decomposition (protocols.md 4.2), for comparison only.

    On the satellite image du = e_x (east), dv = -e_y (south); phi = atan2(|du|, |dv|),
    alpha = |heading - phi|, lon = |cos alpha| d, lat = |sin alpha| d.
    """
    du, dv = e_xy[0], -e_xy[1]
    d = math.hypot(du, dv)
    phi = math.degrees(math.atan2(abs(du), abs(dv)))
    alpha = math.radians(abs(heading_deg - phi))
    return abs(math.sin(alpha)) * d, abs(math.cos(alpha)) * d  # lat, lon


class TestLocalizationMetrics:
    def test_hand_computed(self):
        metrics = localization_metrics(PRED_XY, GT_XY, PRED_YAW, GT_YAW)
        assert metrics.keys() == EXPECTED.keys()
        for key, value in EXPECTED.items():
            assert metrics[key] == pytest.approx(value, abs=1e-12), key

    def test_plain_json_types(self):
        metrics = localization_metrics(
            torch.tensor(PRED_XY, requires_grad=True), np.array(GT_XY), PRED_YAW, GT_YAW
        )
        assert type(metrics["num_samples"]) is int
        assert all(type(v) is float for k, v in metrics.items() if k != "num_samples")
        assert json.loads(json.dumps(metrics)) == metrics

    def test_strict_below_threshold(self):
        # Errors exactly at 1, 3, 5 (m and deg) are not counted; just below they are.
        e = np.array([1.0, 3.0, 5.0, np.nextafter(1.0, 0.0)])
        zeros = np.zeros(4)
        pred = np.stack([e, zeros], -1)  # east offsets, heading north: purely lateral
        metrics = localization_metrics(pred, np.zeros((4, 2)), e, zeros)
        for name, unit in (("lateral", "m"), ("location", "m"), ("yaw", "deg")):
            assert metrics[f"{name}_recall_1{unit}"] == 0.25
            assert metrics[f"{name}_recall_3{unit}"] == 0.5
            assert metrics[f"{name}_recall_5{unit}"] == 0.75
        assert metrics["longitudinal_recall_1m"] == 1.0

    @pytest.mark.parametrize(
        ("pred", "gt", "expected"),
        [(179.0, -179.0, 2.0), (-179.0, 179.0, 2.0), (0.0, 180.0, 180.0), (-90.0, 450.0, 180.0),
         (370.0, 5.0, 5.0), (10.0, -10.0, 20.0)],
    )  # fmt: skip
    def test_yaw_wrap(self, pred, gt, expected):
        err = localization_errors([[0.0, 0.0]], [[0.0, 0.0]], [pred], [gt])["yaw_deg"]
        assert err[0] == pytest.approx(expected, abs=1e-12)

    def test_45_degree_heading_differs_from_ccvpe(self):
        # GT heading 45 deg (north-east); the prediction is 1 m east and 1 m south of the GT,
        # i.e. e = (1, -1): perpendicular to the heading. Ours: lon = |e . f| =
        # |(1 - 1) / sqrt 2| = 0, lat = |e_x f_y - e_y f_x| = (1 + 1) / sqrt 2 = sqrt 2.
        # CCVPE folds (du, dv) = (1, 1) to phi = atan2(1, 1) = 45 deg = the heading, so
        # alpha = 0: lon = sqrt 2, lat = 0, the split swapped.
        e = np.array([1.0, -1.0])
        errors = localization_errors([e], [[0.0, 0.0]], [45.0], [45.0])
        assert errors["lateral_m"][0] == pytest.approx(math.sqrt(2), abs=1e-12)
        assert errors["longitudinal_m"][0] == pytest.approx(0.0, abs=1e-12)
        lat_ccvpe, lon_ccvpe = ccvpe_split(e, 45.0)
        assert lat_ccvpe == pytest.approx(0.0, abs=1e-12)
        assert lon_ccvpe == pytest.approx(math.sqrt(2), abs=1e-12)
        metrics = localization_metrics([e], [[0.0, 0.0]], [45.0], [45.0])
        assert metrics["lateral_recall_1m"] == 0.0  # CCVPE would report 1.0
        assert metrics["longitudinal_recall_1m"] == 1.0  # CCVPE would report 0.0
        # Along the heading, e = (1, 1), both agree: lon sqrt 2, lat 0.
        ours = localization_errors([[1.0, 1.0]], [[0.0, 0.0]], [45.0], [45.0])
        assert ccvpe_split(np.array([1.0, 1.0]), 45.0) == pytest.approx(
            (ours["lateral_m"][0], ours["longitudinal_m"][0]), abs=1e-12
        )

    @settings(max_examples=50, deadline=None)
    @given(
        ex=st.floats(-50, 50),
        ey=st.floats(-50, 50),
        yaw=st.floats(-180, 180),
        turn=st.floats(-180, 180),
    )
    def test_property_heading_frame_projection(self, ex, ey, yaw, turn):
        # lat and lon are the coordinates of e in the heading frame: they satisfy
        # lat^2 + lon^2 = d^2 and do not change when e and the heading turn together.
        errors = localization_errors([[ex, ey]], [[0.0, 0.0]], [0.0], [yaw])
        lat, lon = errors["lateral_m"][0], errors["longitudinal_m"][0]
        assert lat**2 + lon**2 == pytest.approx(ex**2 + ey**2, abs=1e-9)
        c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
        e_turned = [[c * ex + s * ey, -s * ex + c * ey]]  # clockwise by `turn`, as yaw
        turned = localization_errors(e_turned, [[0.0, 0.0]], [0.0], [yaw + turn])
        assert turned["lateral_m"][0] == pytest.approx(lat, abs=1e-9)
        assert turned["longitudinal_m"][0] == pytest.approx(lon, abs=1e-9)

    def test_exceptions(self):
        xy, yaw = np.zeros((3, 2)), np.zeros(3)
        with pytest.raises(ValueError, match="pred_xy_m"):
            localization_metrics(np.zeros((3, 3)), xy, yaw, yaw)
        with pytest.raises(ValueError, match="gt_yaw_deg"):
            localization_metrics(xy, xy, yaw, np.zeros((3, 1)))
        with pytest.raises(ValueError, match="sample counts differ"):
            localization_metrics(xy, np.zeros((2, 2)), yaw, yaw)
        with pytest.raises(ValueError, match="at least one sample"):
            localization_metrics(np.zeros((0, 2)), np.zeros((0, 2)), [], [])
        bad = xy.copy()
        bad[1, 0] = np.nan
        with pytest.raises(ValueError, match="gt_xy_m: 1 non-finite"):
            localization_metrics(xy, bad, yaw, yaw)
        with pytest.raises(ValueError, match="pred_yaw_deg: 1 non-finite"):
            localization_metrics(xy, xy, [0.0, np.inf, 0.0], yaw)


class TestMatchPrecision:
    # Matches by score: #1 (0.95, no GT), #0 (0.9, err |(3, 4)| = 5), #2 (0.8, err 10),
    # #3 (0.7, err 12), #4 (0.6, err 20), #5 (0.1, err 0).
    PRED = ((100, 100), (50, 50), (10, 10), (0, 0), (0, 0), (0, 0))
    GT = ((103, 104), (np.nan, np.nan), (20, 10), (12, 0), (0, 20), (0, 0))
    SCORES = (0.9, 0.95, 0.8, 0.7, 0.6, 0.1)

    def test_hand_case_top4(self):
        # #1 has no GT and is dropped before ranking: judged #0, #2, #3, #4, errors
        # 5, 10, 12, 20: P@5 = 1/4 (5 <= 5 counts), P@10 = 2/4, P@15 = 3/4. Of the top 4 of
        # all matches (#1, #0, #2, #3), 3 have a GT. The confident ones (score >= 0.5) with
        # a GT are #0, #2, #3, #4: the same errors.
        out = match_precision(self.PRED, self.GT, self.SCORES, top_k=4)
        assert out == {
            "match_precision_5px": 0.25,
            "match_precision_10px": 0.5,
            "match_precision_15px": 0.75,
            "match_precision_confident_5px": 0.25,
            "match_precision_confident_10px": 0.5,
            "match_precision_confident_15px": 0.75,
            "match_valid_fraction": 0.75,
            "match_num_evaluated": 4,
            "match_num_confident": 4,
        }

    def test_hand_case_default_top30(self):
        # All 5 matches with GT, errors 5, 10, 12, 20, 0: 2/5, 3/5, 4/5; 5 of 6 have GT.
        out = match_precision(np.array(self.PRED), torch.tensor(self.GT), self.SCORES)
        assert out["match_precision_5px"] == pytest.approx(0.4)
        assert out["match_precision_10px"] == pytest.approx(0.6)
        assert out["match_precision_15px"] == pytest.approx(0.8)
        assert out["match_valid_fraction"] == pytest.approx(5 / 6)
        assert out["match_num_evaluated"] == 5
        # The confident set does not depend on k: #5 (err 0, score 0.1) is not confident.
        assert out["match_precision_confident_5px"] == pytest.approx(0.25)
        assert out["match_num_confident"] == 4
        # A stricter confidence keeps #1 (no GT) and #0 (err 5) only.
        strict = match_precision(self.PRED, self.GT, self.SCORES, confident_score=0.85)
        assert strict["match_precision_confident_5px"] == 1.0
        assert strict["match_num_confident"] == 1
        none = match_precision(self.PRED, self.GT, self.SCORES, confident_score=0.99)
        assert math.isnan(none["match_precision_confident_15px"])
        assert none["match_num_confident"] == 0

    def test_custom_thresholds_and_ties(self):
        # Equal scores keep the input order: top-1 is #0 (err 1), not #1 (err 0).
        out = match_precision([[1, 0], [0, 0]], [[0, 0], [0, 0]], [0.5, 0.5], 1, (0.5, 2.5))
        assert out["match_precision_0.5px"] == 0.0
        assert out["match_precision_2.5px"] == 1.0

    def test_no_judgeable_match_is_nan(self):
        out = match_precision([[0, 0]], [[np.nan, np.nan]], [1.0])
        assert math.isnan(out["match_precision_5px"])
        assert out["match_valid_fraction"] == 0.0
        assert out["match_num_evaluated"] == 0
        empty = match_precision(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
        assert math.isnan(empty["match_valid_fraction"])

    def test_aggregate(self):
        # Means over the two judgeable samples: P@5 (0.25 + 0.4) / 2 = 0.325,
        # P@10 (0.5 + 0.6) / 2 = 0.55, P@15 (0.75 + 0.8) / 2 = 0.775,
        # the third sample (no GT at all) is left out; the valid fraction counts it as 0:
        # (0.75 + 5/6 + 0) / 3.
        samples = [
            match_precision(self.PRED, self.GT, self.SCORES, top_k=4),
            match_precision(self.PRED, self.GT, self.SCORES),
            match_precision([[0, 0]], [[np.nan, np.nan]], [1.0]),
        ]
        samples.append(match_precision(self.PRED, self.GT, self.SCORES, confident_score=0.85))
        out = aggregate_match_precision(samples[:3])
        assert list(out) == [
            "match_precision_5px",
            "match_precision_10px",
            "match_precision_15px",
            "match_valid_fraction",
            "match_precision_confident_5px",
            "match_precision_confident_10px",
            "match_precision_confident_15px",
            "match_num_samples",
            "match_num_confident",
        ]
        assert out["match_precision_5px"] == pytest.approx(0.325)
        assert out["match_precision_10px"] == pytest.approx(0.55)
        assert out["match_precision_15px"] == pytest.approx(0.775)
        assert out["match_valid_fraction"] == pytest.approx((0.75 + 5 / 6) / 3)
        assert out["match_num_samples"] == 2
        # Confident matches pool: 4 + 4 + 0 matches, P@5 (1 + 1) / 8.
        assert out["match_precision_confident_5px"] == pytest.approx(0.25)
        assert out["match_num_confident"] == pytest.approx(8 / 3)
        # With the strict sample's single (correct) match: P@5 (1 + 1 + 1) / 9.
        mixed = aggregate_match_precision(samples)
        assert mixed["match_precision_confident_5px"] == pytest.approx(3 / 9)
        assert mixed["match_precision_5px"] == pytest.approx((0.25 + 0.4 + 0.4) / 3)
        nothing = aggregate_match_precision(samples[2:3])
        assert math.isnan(nothing["match_precision_5px"]) and nothing["match_num_samples"] == 0

    def test_exceptions(self):
        with pytest.raises(ValueError, match="pred_sat_uv"):
            match_precision(np.zeros((3, 3)), np.zeros((3, 2)), np.zeros(3))
        with pytest.raises(ValueError, match="rows"):
            match_precision(np.zeros((3, 2)), np.zeros((2, 2)), np.zeros(3))
        with pytest.raises(ValueError, match="scores: 1 non-finite"):
            match_precision(np.zeros((2, 2)), np.zeros((2, 2)), [0.0, np.nan])
        with pytest.raises(ValueError, match="pred_sat_uv: 1 non-finite"):
            match_precision([[0.0, np.nan]], np.zeros((1, 2)), [1.0])
        with pytest.raises(ValueError, match="top_k"):
            match_precision(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros(2), top_k=0)
        with pytest.raises(ValueError, match="thresholds_px"):
            match_precision(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros(2), thresholds_px=(0,))
        with pytest.raises(ValueError, match="at least one sample"):
            aggregate_match_precision([])


class TestFormatMetricsTable:
    def test_localization_table(self):
        metrics = localization_metrics(PRED_XY, GT_XY, PRED_YAW, GT_YAW)
        text = format_metrics_table(
            {"Ours": metrics, "Partial | v2": {"location_mean_m": 12.345}}, title="KITTI test1"
        )
        lines = text.splitlines()
        assert lines[0] == "**KITTI test1**"
        assert lines[2].startswith("| Method | Location mean (m) | Location median (m) |")
        assert "Lateral R@1m (%)" in lines[2] and "Azimuth R@5deg (%)" in lines[2]
        assert lines[3] == "|:--|" + "--:|" * 13
        # 1.625 -> "1.62": Python rounds the exact binary half to even.
        assert lines[4] == (
            "| Ours | 2.25 | 2.00 | 25.00 | 50.00 | 100.00 | 75.00 | 75.00 | 100.00 "
            "| 1.62 | 1.50 | 25.00 | 75.00 | 100.00 |"
        )
        assert lines[5] == "| Partial \\| v2 | 12.35 |" + " - |" * 12
        assert len(lines) == 6 and "P@5px" not in text

    def test_match_table(self):
        a = {"location_mean_m": 1.0, "match_precision_10px": 0.5, "match_precision_5px": 0.25}
        b = {"location_mean_m": float("nan"), "match_valid_fraction": 0.9}
        results = [("A", a), ("B", b)]
        text = format_metrics_table(results)
        tables = text.strip().split("\n\n")
        assert len(tables) == 2
        assert tables[0].splitlines()[3].startswith("| B | - | - |")
        match_lines = tables[1].splitlines()
        assert match_lines[0] == "| Method | P@5px (%) | P@10px (%) | Top-k with GT (%) |"
        assert match_lines[2] == "| A | 25.00 | 50.00 | - |"
        assert match_lines[3] == "| B | - | - | 90.00 |"
        c = {**a, "match_precision_confident_5px": 0.5, "match_num_confident": 12.5}
        header, _, row = format_metrics_table({"C": c}).strip().split("\n\n")[1].splitlines()
        assert header == (
            "| Method | P@5px (%) | P@10px (%) | confident P@5px (%) | Confident per pair |"
        )
        assert row == "| C | 25.00 | 50.00 | 50.00 | 12.50 |"


def test_metrics_to_json_is_strict():
    import json

    from cvloc.metrics import metrics_to_json

    text = metrics_to_json({"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": 2}})
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": {"d": 2}}
    assert "NaN" not in text and text.endswith("\n")
