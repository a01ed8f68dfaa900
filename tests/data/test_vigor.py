import numpy as np
import pytest
import torch
from fakes import make_vigor
from PIL import Image

from cvloc.data.batch import check_item
from cvloc.data.protocols import SplitFormatError
from cvloc.data.vigor import (
    CITY_M_PER_PX,
    VigorDataset,
    from_protocol,
    parse_label_file,
    roll_columns,
    to_protocol,
)
from cvloc.geometry.geo import latlon_to_pixel

LABELS = "same_area_balanced_test__corrected.txt"
# Real lines of the corrected Chicago labels (tudelft-iv/SliceMatch, Apache-2.0).
REAL = [
    "L-1poX8YZAmBZVLMqBu-4w,41.877949,-87.689396,.jpg "
    "satellite_41.877971796211014_-87.68943505304125.png 23.0 -29.0 "
    "satellite_41.877971796211014_-87.68899446364951.png 20.0 300.0 "
    "satellite_41.877643723758375_-87.68943505304125.png -304.0 -32.0 "
    "satellite_41.877643723758375_-87.68899446364951.png -307.0 297.0",
    "fdbS6SU2YFJSxwxwbNI0CQ,41.882558,-87.686052,.jpg "
    "satellite_41.88256481054794_-87.68591033790726.png 6.0 106.0 "
    "satellite_41.88256481054794_-87.68635092729902.png 9.0 -223.0 "
    "satellite_41.8822367380953_-87.68591033790726.png -321.0 103.0 "
    "satellite_41.8822367380953_-87.68635092729902.png -319.0 -225.0",
]


def _tree(root, lines=REAL, area="same"):
    cities = ("NewYork", "Seattle", "SanFrancisco") if area == "same" else ("SanFrancisco",)
    name = LABELS if area == "same" else "pano_label_balanced__corrected.txt"
    for city in cities:  # empty lists for the other cities of the split
        (root / "splits__corrected" / city).mkdir(parents=True, exist_ok=True)
        (root / "splits__corrected" / city / name).write_text("")
    return make_vigor(root, "Chicago", lines, name)


def test_real_chicago_labels_parse_and_match_gps(shared_datasets):
    samples = parse_label_file(shared_datasets / "vigor/Chicago" / LABELS, "Chicago")
    assert len(samples) == 300 and all(len(s.tiles) == 4 for s in samples)
    errors = []
    for s in samples:
        _, lat, lon, _ = s.pano.split(",")
        tile, d0, d1 = s.tiles[0]
        tlat, tlon = (float(x) for x in tile[len("satellite_") : -len(".png")].split("_"))
        uv = latlon_to_pixel(
            torch.tensor([float(lat), float(lon)], dtype=torch.float64),
            torch.tensor([tlat, tlon], dtype=torch.float64),
            torch.tensor([320.0, 320.0], dtype=torch.float64),
            zoom=20,
        ).numpy()
        errors.append(np.abs(uv - from_protocol(d0, d1, 640)).max())
    assert np.mean(errors) < 1.0 and np.max(errors) < 3.0  # labels are whole pixels
    sats = (shared_datasets / "vigor/Chicago/satellite_list.txt").read_text().split()
    assert len(sats) == 300 and all(s.startswith("satellite_") for s in sats)


def test_protocol_round_trip():
    rng = np.random.default_rng(0)
    d = rng.uniform(-160, 160, (50, 2))
    for size in (640, 512, 333):
        uv = from_protocol(d[:, 0], d[:, 1], size)
        np.testing.assert_allclose(to_protocol(uv, size), d, atol=1e-9)
    # 640 -> 512 keeps the tile's extent: the centre pixel 320 maps to 255.9.
    np.testing.assert_allclose(from_protocol(0.0, 0.0, 512), [255.9, 255.9])


def test_known_orientation_item(tmp_path):
    _tree(tmp_path)
    ds = VigorDataset(tmp_path, "test", ground_size=(64, 32), sat_size=32)
    assert len(ds) == 2
    item = ds[0]
    check_item(item)
    assert item["camera_model"] == "panorama" and item["ground"].shape == (3, 32, 64)
    m = CITY_M_PER_PX["Chicago"] * 640 / 32
    assert float(item["m_per_px"]) == pytest.approx(m)
    np.testing.assert_allclose(item["camera_uv_gt"], from_protocol(23.0, -29.0, 32), atol=1e-5)
    np.testing.assert_allclose(item["camera_uv_prior"], item["sat_center_uv"])
    assert float(item["yaw_deg_gt"]) == 0.0 == float(item["yaw_deg_prior"])
    assert float(item["shift_range_m"]) == pytest.approx(32 / 4 * m)  # the central region
    assert float(item["camera_height_m"]) == 2.0


def test_unknown_orientation_rolls_the_panorama(tmp_path):
    _tree(tmp_path)
    pano = tmp_path / "Chicago/panorama" / REAL[0].split()[0]
    w = 72
    ramp = np.tile(np.arange(w, dtype=np.uint8)[None, :, None] * 3, (36, 1, 3))
    Image.fromarray(ramp).save(pano, format="PNG")  # lossless, whatever the suffix
    kw = {"ground_size": (w, 36), "sat_size": 32, "yaw_range_deg": 180, "seed": 1}
    item = VigorDataset(tmp_path, "test", **kw)[0]
    yaw = float(item["yaw_deg_gt"])
    assert yaw == pytest.approx(-360 * -32 / w)  # seed 1 rolls sample 0 by -32 columns
    assert float(item["yaw_range_deg"]) == 180.0 and float(item["yaw_deg_prior"]) == 0.0
    # Rolled column w/2 shows stored column j, whose compass azimuth (north-aligned) is
    # its relative azimuth in the rolled panorama plus the heading.
    j = round(float(item["ground"][0, 0, w // 2]) * 255 / 3)
    azimuth_j = (j + 0.5) / w * 360 - 180
    relative = (w // 2 + 0.5) / w * 360 - 180
    assert (azimuth_j - relative - yaw + 180) % 360 - 180 == pytest.approx(0.0, abs=1e-6)
    assert float(VigorDataset(tmp_path, "test", **kw)[0]["yaw_deg_gt"]) == yaw  # fixed


def test_ccvpe_orientation_file(tmp_path):
    _tree(tmp_path)
    angles = tmp_path / "samearea_orientation_test.npy"
    np.save(angles, np.array([90.0, 359.0]))
    ds = VigorDataset(tmp_path, "test", ground_size=(64, 32), sat_size=32, orientation_file=angles)
    assert roll_columns(90.0, 64) == 16
    assert float(ds[0]["yaw_deg_gt"]) == pytest.approx(-90.0)  # anticlockwise 90 = west
    assert float(ds[1]["yaw_deg_gt"]) == pytest.approx(0.0)  # 359 deg rounds to 0 columns
    np.save(angles, np.array([90.0]))
    with pytest.raises(ValueError, match="1 angles for 2"):
        VigorDataset(tmp_path, "test", orientation_file=angles)


def test_cross_area_train_val_split(tmp_path):
    lines = [REAL[i % 2].replace(".jpg", f"{i}.jpg", 1) for i in range(10)]
    for city in ("NewYork", "Seattle"):
        make_vigor(tmp_path, city, lines, "pano_label_balanced__corrected.txt")
    train = VigorDataset(tmp_path, "train", area="cross")
    val = VigorDataset(tmp_path, "val", area="cross")
    assert (len(train), len(val)) == (16, 4)
    names = {(s.city, s.pano) for s in train.samples}
    assert not names & {(s.city, s.pano) for s in val.samples}
    assert [s.pano for s in VigorDataset(tmp_path, "val", area="cross").samples] == [
        s.pano for s in val.samples
    ]
    semi = VigorDataset(
        tmp_path, "train", area="cross", positives_only=False, ground_size=(64, 32), sat_size=32
    )
    item = semi[0]
    assert (np.abs(item["camera_uv_gt"].numpy() - 15.5) < 16).all()


def test_malformed_label_and_missing_tile(tmp_path):
    path = _tree(tmp_path) / "splits__corrected/Chicago" / LABELS
    path.write_text(REAL[0] + "\n" + REAL[1].replace("106.0", "x") + "\n")
    with pytest.raises(SplitFormatError, match=r"__corrected\.txt:2"):
        parse_label_file(path, "Chicago")
    path.write_text("\n".join(REAL) + "\n")
    tile = tmp_path / "Chicago/satellite" / REAL[1].split()[1]
    tile.unlink()
    ds = VigorDataset(tmp_path, "test", ground_size=(64, 32), sat_size=32, skip_bad_samples=True)
    assert ds[1]["name"].startswith("Chicago/L-1poX8")  # index 1 is bad: wraps to 0
    assert ds.bad_samples == 1 and ds.bad_sample_files == [str(tile)]
