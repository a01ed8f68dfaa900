import pytest
from fakes import make_kitti, make_vigor

from cvloc.cli import main

LINES = [
    "2011_10_03/2011_10_03_drive_0042_sync/0000000939.png -0.3455326 -0.9653194 -0.0077375486",
    "2011_09_30/2011_09_30_drive_0018_sync/0000002310.png 0.37390798 0.36219868 -0.75242347",
]


def _check(*args):
    return main(["datasets", "check", *args])


def test_complete_tree_passes(tmp_path, capsys):
    make_kitti(tmp_path, LINES, sat_size=16)
    assert _check("--dataset", "kitti", "--root", str(tmp_path), "--split", "test1") == 0
    out = capsys.readouterr().out
    assert "test1: 2 samples" in out and "OK" in out
    assert (
        _check("--dataset", "kitti", "--root", str(tmp_path), "--split", "test1", "--decode") == 0
    )


def test_missing_and_corrupt_files_are_counted(tmp_path, capsys):
    make_kitti(tmp_path, LINES, sat_size=16)
    (tmp_path / "satmap" / LINES[0].split()[0]).unlink()
    image = tmp_path / "raw_data/2011_09_30/2011_09_30_drive_0018_sync/image_02/data"
    (image / "0000002310.png").write_bytes(b"not a png")
    assert _check("--dataset", "kitti", "--root", str(tmp_path), "--split", "test1") == 1
    out = capsys.readouterr().out
    assert "missing KITTI satellite tile: 1 (e.g." in out
    assert "corrupt KITTI image_02 frame: 1" in out and "0000002310.png" in out
    assert "FAILED: 2 problem(s)" in out


def test_missing_split_file_and_bad_line(tmp_path, capsys):
    make_kitti(tmp_path, LINES, sat_size=16)
    # No train_files.txt: train and val cannot be indexed; test1 is fine.
    assert _check("--dataset", "kitti", "--root", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "train: cannot index the split: 1" in out and "train_files.txt" in out
    (tmp_path / "test1_files.txt").write_text(LINES[0] + "\nbroken line\n")
    assert _check("--dataset", "kitti", "--root", str(tmp_path), "--split", "test1") == 1
    assert "test1_files.txt:2" in capsys.readouterr().out


def test_options_are_passed_and_validated(tmp_path, capsys):
    line = (
        "p1,41.877949,-87.689396,.jpg satellite_41.8_-87.6.png 23.0 -29.0 "
        "satellite_a.png 20.0 300.0 satellite_b.png -304.0 -32.0 satellite_c.png -307.0 297.0"
    )
    make_vigor(tmp_path, "SanFrancisco", [line], "pano_label_balanced__corrected.txt")
    make_vigor(tmp_path, "Chicago", [line], "pano_label_balanced__corrected.txt")
    (tmp_path / "SanFrancisco/satellite/satellite_a.png").unlink()  # a semi-positive
    args = ["--dataset", "vigor", "--root", str(tmp_path), "--split", "test"]
    assert _check(*args, "--opt", "area=cross") == 0
    assert "test: 2 samples" in capsys.readouterr().out
    assert _check(*args, "--opt", "area") == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert _check(*args, "--opt", "area=cross", "--opt", "positives_only=false") == 1
    assert "missing VIGOR satellite tile: 1" in capsys.readouterr().out


def test_usage_errors(tmp_path):
    with pytest.raises(SystemExit):
        _check("--dataset", "nope", "--root", str(tmp_path))
    assert _check("--dataset", "ford", "--root", str(tmp_path), "--split", "test1") == 2


def test_registry_builds_every_kind(tmp_path):
    from cvloc.data.kitti import KittiDataset
    from cvloc.data.registry import DATASET_NAMES, build_dataset
    from cvloc.data.synthetic.dataset import SyntheticDataset

    assert DATASET_NAMES == ("kitti", "ford", "vigor", "oxford", "synthetic", "pairs")
    make_kitti(tmp_path, LINES, sat_size=16)
    kitti = build_dataset("kitti", tmp_path, "test1", ground_size=(32, 8))
    assert isinstance(kitti, KittiDataset) and len(kitti) == 2
    synth = build_dataset("synthetic", None, "test", preset="kitti-small", num=2, seed=3)
    assert isinstance(synth, SyntheticDataset) and (synth.num, synth.seed) == (2, 3)
    with pytest.raises(ValueError, match="valid names: kitti, ford, vigor, oxford"):
        build_dataset("cvusa", tmp_path, "test")
    with pytest.raises(ValueError, match="needs a root"):
        build_dataset("vigor", None, "test")
    with pytest.raises(ValueError, match=r"options \['num'\]"):
        build_dataset("synthetic", None, "test", preset="kitti-small")
    with pytest.raises(FileNotFoundError, match=r"dataset\.json"):
        build_dataset("pairs", tmp_path, "test")


def test_image_helper_orientation_modes_and_errors(tmp_path):
    from PIL import Image

    from cvloc.data.images import CorruptFileError, load_rgb, verify_image

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 deg clockwise
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    rgb, raw_wh = load_rgb(tmp_path / "rot.jpg", "photo")
    assert rgb.shape == (40, 20, 3) and raw_wh == (20, 40)
    assert rgb[5, 10, 0] > 200 and rgb[35, 10, 2] > 200  # top red, bottom blue
    for mode in ("L", "RGBA", "P"):
        Image.new(mode, (8, 4)).save(tmp_path / f"{mode}.png")
        rgb, _ = load_rgb(tmp_path / f"{mode}.png", "image", size_wh=(4, 2))
        assert rgb.shape == (2, 4, 3) and rgb.dtype.name == "uint8"
    data = (tmp_path / "RGBA.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.png: cannot decode"):
        load_rgb(tmp_path / "cut.png", "KITTI satellite tile")
    with pytest.raises(CorruptFileError, match="expected: KITTI satellite tile"):
        verify_image(tmp_path / "cut.png", "KITTI satellite tile")
