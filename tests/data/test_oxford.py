import numpy as np
import pytest
from fakes import make_oxford
from PIL import Image
from torch.utils.data import DataLoader

from cvloc.data.batch import check_item, collate
from cvloc.data.images import MissingFileError
from cvloc.data.oxford import (
    OxfordDataset,
    map_affine,
    map_m_per_px,
    map_px_to_utm,
    parse_split_file,
    utm_to_map_px,
    yaw_deg_to_rad,
    yaw_rad_to_deg,
)

E0, N0 = 619420.5, 5736160.25  # near the map's top-left control point (900, 900) px


def test_real_files_parse(shared_datasets, tmp_path):
    oxford = shared_datasets / "oxford"
    assert len(parse_split_file(oxford / "test1_j.txt")) == 1673
    assert len(parse_split_file(oxford / "validation.txt")) == 1698
    ds = OxfordDataset(tmp_path, "test1", split_dir=oxford)
    assert len(ds) == 1673 and ds.yaws[0] == pytest.approx(-0.2254744604434654)
    assert ds.lines[0][0].startswith("2015-08-14-14-54-57/ground/")


def test_map_resolution_verified_from_the_fit():
    linear = map_affine()[:2]  # [easting, northing] -> [col, row]
    scales = 1.0 / np.linalg.svd(linear, compute_uv=False)
    np.testing.assert_allclose(sorted(scales), [0.092341, 0.092582], atol=2e-6)
    assert map_m_per_px() == pytest.approx(0.0924613, abs=1e-7)
    assert map_m_per_px() == pytest.approx(0.09240351, rel=1e-3)  # CCVPE's comment
    assert abs(map_m_per_px() - 0.1235) > 0.03  # Boosting's loader comment disagrees
    # The map is rotated 1.37 deg clockwise from UTM grid north: Oxford's grid convergence,
    # so the map is true-north-up.
    east = linear[0]
    assert np.degrees(np.arctan2(east[1], east[0])) == pytest.approx(1.37, abs=0.01)


def test_round_trips():
    rng = np.random.default_rng(0)
    utm = np.stack([rng.uniform(619400, 620800, 20), rng.uniform(5734600, 5736200, 20)], -1)
    np.testing.assert_allclose(map_px_to_utm(utm_to_map_px(utm)), utm, atol=1e-6)
    yaw = rng.uniform(-np.pi, np.pi, 20)
    np.testing.assert_allclose(yaw_deg_to_rad(yaw_rad_to_deg(yaw)), yaw, atol=1e-12)
    assert yaw_rad_to_deg(np.pi / 2) == 0.0  # 0 rad = west, clockwise: pi / 2 = north


def test_yaw_convention_matches_direction_of_travel(shared_datasets):
    oxford = shared_datasets / "oxford"
    lines = parse_split_file(oxford / "test1_j.txt")
    px = utm_to_map_px(np.array([[e, n] for _, e, n in lines]))
    yaw = yaw_rad_to_deg(np.loadtxt(oxford / "test1_yaw.txt"))
    residuals = []
    for i in range(len(px)):
        d = np.linalg.norm(px - px[i], axis=1)
        d[i] = np.inf
        a, b = np.argsort(d)[:2]  # the neighbours along the road, either way
        du, dv = px[a] - px[b]
        travel = np.degrees(np.arctan2(du, -dv))  # compass bearing on the north-up map
        residuals.append((travel - yaw[i] + 90) % 180 - 90)  # modulo the travel sense
    assert np.median(np.abs(residuals)) < 1.0


def _blob_map(size, center, sigma=12.0):
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    g = np.exp(-((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / (2 * sigma**2))
    return Image.fromarray((np.stack([g] * 3, -1) * 255).astype(np.uint8))


def _centroid(sat):
    a = sat[0].double().numpy()
    a = np.where(a > 0.2, a, 0.0)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    return np.array([(a * xx).sum(), (a * yy).sum()]) / a.sum()


@pytest.mark.parametrize("split", ["test1", "train"])
def test_crop_puts_the_gt_on_the_map_position(tmp_path, split):
    lines = [f"2015-x/ground/{E0 + 30 * i}_{N0}.png x {E0 + 30 * i} {N0}" for i in range(2)]
    gt_px = utm_to_map_px(np.array([E0 + 30, N0]))
    make_oxford(tmp_path, lines, [0.3, 2.0], split=split, map_image=_blob_map((1600, 1500), gt_px))
    ds = OxfordDataset(tmp_path, split, ground_size=(30, 20), sat_size=160)
    item = ds[1]
    check_item(item)
    assert float(item["m_per_px"]) == pytest.approx(map_m_per_px() * 800 / 160)
    np.testing.assert_allclose(_centroid(item["satellite"]), item["camera_uv_gt"], atol=0.3)
    offset = np.abs(item["camera_uv_gt"].numpy() - 79.5) * 5  # in map pixels
    assert offset.max() <= (200 if split == "test1" else 283)
    assert float(item["yaw_deg_gt"]) == pytest.approx(np.degrees(2.0) - 90, abs=1e-4)
    assert float(item["yaw_deg_prior"]) == float(item["yaw_deg_gt"])  # known heading
    if split == "train":
        ds.set_epoch(1)
        assert not np.allclose(ds[1]["camera_uv_gt"], item["camera_uv_gt"])


def test_workers_and_missing_map(tmp_path):
    lines = [f"2015-x/ground/{E0}_{N0 - 5 * i}.png x {E0} {N0 - 5 * i}" for i in range(4)]
    make_oxford(tmp_path, lines, [0.1, 0.2, 0.3, 0.4])
    ds = OxfordDataset(tmp_path, "test1", ground_size=(30, 20), sat_size=64, yaw_range_deg=180)
    ds[0]  # loads the map in this process; workers must not receive it
    assert ds.__getstate__()["_map"] is None
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b["satellite"].shape for b in batches] == [(2, 3, 64, 64)] * 2
    assert (batches[0]["yaw_range_deg"] == 180).all()
    (tmp_path / "satellite_map_new.png").unlink()
    with pytest.raises(MissingFileError, match="stitched satellite map"):
        OxfordDataset(tmp_path, "test1", ground_size=(30, 20), sat_size=64)[0]
