import math

import numpy as np
import pytest
from fakes import make_ford
from PIL import Image

from cvloc.data.batch import camera_xy, check_item
from cvloc.data.ford import (
    FORD_M_PER_PX,
    TEST_LOGS,
    TRAIN_LOGS,
    FordDataset,
    from_protocol,
    quaternion_yaw_deg,
    to_protocol,
)
from cvloc.data.images import CorruptFileError
from cvloc.data.protocols import SplitFormatError

S_LAT, S_LON = 42.2944247, -83.2239862
T_BODY_CAM = (1.5, -0.3, -0.6)


def _q(yaw_deg: float) -> list[float]:
    """Body quaternion (w, x, y, z) of a heading: a rotation about the down axis (NED)."""
    h = math.radians(yaw_deg) / 2
    return [math.cos(h), 0.0, 0.0, math.sin(h)]


def _gps(east_m: float, north_m: float) -> tuple[float, float]:
    """Lat / lon of a local offset, by HighlyAccurate's gps2utm (Mercator at lat0) inverted."""
    k = 6378137.0 * math.cos(math.radians(S_LAT))
    y0 = math.log(math.tan(math.pi * (90 + S_LAT) / 360))
    lat = math.degrees(2 * math.atan(math.exp(y0 + north_m / k))) - 90
    return lat, S_LON + math.degrees(east_m / k)


def _line(yaw_deg, east_m, north_m, noise=None, frame="1501859999.txt"):
    lat, lon = _gps(east_m, north_m)
    return [frame, *_q(yaw_deg), repr(lat), repr(lon), repr(S_LAT), repr(S_LON), *(noise or [])]


@pytest.mark.parametrize("yaw", [0.0, 35.0, 90.0, -120.0, 180.0])
def test_quaternion_yaw_is_compass(yaw):
    assert quaternion_yaw_deg(np.array(_q(yaw))) == pytest.approx(yaw if yaw != -180 else 180)


def test_test_log_item(tmp_path):
    noise = [0.5, -0.3, 0.2]  # su (lateral), sv (longitudinal), theta
    make_ford(
        tmp_path,
        TEST_LOGS[0],
        [_line(35.0, 10.0, -5.0, noise)],
        test=True,
        t_body_cam=T_BODY_CAM,
        sat_size=512,
    )
    item = FordDataset(tmp_path, "test", log=1, ground_size=(64, 16))[0]
    check_item(item)
    assert float(item["m_per_px"]) == pytest.approx(FORD_M_PER_PX)
    f = np.array([math.sin(math.radians(35)), math.cos(math.radians(35))])
    r = np.array([f[1], -f[0]])
    body = np.array([10.0, -5.0])
    cam = camera_xy(item, "gt").double().numpy()
    np.testing.assert_allclose(cam, body + 1.5 * f - 0.3 * r, atol=1e-3)
    assert float(item["yaw_deg_gt"]) == pytest.approx(35.0, abs=1e-4)  # a forward camera
    assert float(item["camera_height_m"]) == pytest.approx(1.0 + 0.6)  # ground 1 m below body
    # The prior body pose reproduces the file's noise.
    yaw_p = float(item["yaw_deg_prior"])
    fp = np.array([math.sin(math.radians(yaw_p)), math.cos(math.radians(yaw_p))])
    body_prior = (
        camera_xy(item, "prior").double().numpy() - 1.5 * fp + 0.3 * np.array([fp[1], -fp[0]])
    )
    got = to_protocol(body, 35.0, body_prior, yaw_p, 35.0)
    np.testing.assert_allclose(got, noise, atol=1e-4)


def _ha_ford_tile(tile, delta_uv, yaw_deg, noise, m_per_px):
    """HighlyAccurate's Ford test-time tile transform (protocols.md 2.1), with pillow:
    body to the centre, rotate by the compass yaw (heading -> up), shift by
    (su, sv) * 20 m, rotate by theta * 10 deg."""
    su, sv, theta = noise
    aff = Image.Transform.AFFINE
    bilinear = Image.Resampling.BILINEAR
    img = tile.transform(tile.size, aff, (1, 0, delta_uv[0], 0, 1, delta_uv[1]), bilinear)
    img = img.rotate(yaw_deg, resample=Image.Resampling.BILINEAR)
    p = 20.0 / m_per_px
    img = img.transform(img.size, aff, (1, 0, su * p, 0, 1, sv * p), Image.Resampling.BILINEAR)
    return img.rotate(theta * 10.0, resample=Image.Resampling.BILINEAR)


def _blob(uv, size=512):
    yy, xx = np.mgrid[0:size, 0:size]
    return Image.fromarray(
        np.exp(-((xx - uv[0]) ** 2 + (yy - uv[1]) ** 2) / 18.0).astype(np.float32), mode="F"
    )


def _centroid(img):
    a = np.asarray(img, dtype=np.float64)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    return np.array([(a * xx).sum(), (a * yy).sum()]) / a.sum()


@pytest.mark.parametrize("yaw", [35.0, -100.0])
def test_prior_matches_the_peer_tile_transform(yaw):
    m, c = FORD_M_PER_PX, np.array([255.5, 255.5])
    body = np.array([10.0, -5.0])
    noise = (0.5, -0.3, 0.7)
    prior_xy, prior_yaw = from_protocol(body, yaw, np.array(noise))

    def to_uv(xy):
        return c + np.array([xy[0], -xy[1]]) / m

    delta = to_uv(body) - c
    final = _ha_ford_tile(_blob(to_uv(prior_xy)), delta, yaw, noise, m)
    np.testing.assert_allclose(_centroid(final), c, atol=0.5)
    ahead = prior_xy + 12.0 * np.array(
        [math.sin(math.radians(prior_yaw)), math.cos(math.radians(prior_yaw))]
    )
    final = _ha_ford_tile(_blob(to_uv(ahead)), delta, yaw, noise, m)
    np.testing.assert_allclose(_centroid(final), c + np.array([0.0, -12.0 / m]), atol=0.5)


def test_train_val_split_and_errors(tmp_path):
    lines = [_line(10.0 * i, i, -i, frame=f"{1000 + i}.txt") for i in range(40)]
    make_ford(tmp_path, TRAIN_LOGS[2], lines, test=False, sat_size=32)  # log 3: lines 0-1499
    train = FordDataset(tmp_path, "train", log=3, ground_size=(32, 8))
    val = FordDataset(tmp_path, "val", log=3, ground_size=(32, 8))
    assert (len(train), len(val)) == (38, 2)
    assert val.lines[-1][0] == "1039.txt"
    a = train[0]["camera_uv_prior"]
    train.set_epoch(3)
    assert not np.allclose(a, train[0]["camera_uv_prior"])
    calib = tmp_path / "Calibration-V2/V2/cameraFrontLeft_body.yaml"
    calib.write_text("transform: {translation: {x: 1}}\n")
    with pytest.raises(CorruptFileError, match=r"cameraFrontLeft_body\.yaml"):
        FordDataset(tmp_path, "val", log=3, ground_size=(32, 8))[0]
    pose = tmp_path / TRAIN_LOGS[2] / "grd_sat_quaternion_latlon.txt"
    pose.write_text(pose.read_text() + "1040.txt 1 0 0\n")
    with pytest.raises(SplitFormatError, match=r"grd_sat_quaternion_latlon\.txt:41"):
        FordDataset(tmp_path, "train", log=3)
