import json
from pathlib import Path

import pytest
import torch

from cvloc.cli import main
from cvloc.data.pairs import FORMAT, META_KEYS, SAMPLE_FILES, PairsDataset
from cvloc.data.synthetic import PRESETS
from cvloc.data.synthetic.dataset import SyntheticDataset

PRESET_MODELS = {"kitti-small": "pinhole", "vigor-small": "panorama"}


def synth(out: Path, preset: str = "kitti-small", *extra: str) -> int:
    argv = ["synth", "--preset", preset, "--split", "test", "--area", "same", "--num", "2"]
    return main([*argv, "--seed", "3", "--out", str(out), *extra])


@pytest.fixture(scope="module", params=sorted(PRESET_MODELS))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp(request.param) / "pairs"
    assert synth(out, request.param, "--start", "5") == 0
    return request.param, out


def assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
        else:
            assert a[key] == b[key], key


class TestWrite:
    def test_dataset_json(self, written) -> None:
        preset, out = written
        info = json.loads((out / "dataset.json").read_text())
        assert info["format"] == FORMAT
        assert (info["preset"], info["split"], info["seed"], info["num"]) == (preset, "test", 3, 2)
        assert (info["area"], info["start"]) == ("same", 5)
        assert info["camera_model"] == PRESET_MODELS[preset]

    def test_files_and_meta(self, written) -> None:
        preset, out = written
        samples = sorted(p.name for p in (out / "samples").iterdir())
        assert samples == ["000005", "000006"]
        for name in samples:
            assert sorted(p.name for p in (out / "samples" / name).iterdir()) == sorted(
                SAMPLE_FILES
            )
            meta = json.loads((out / "samples" / name / "meta.json").read_text())
            assert set(META_KEYS) <= meta.keys()
            assert meta["camera_model"] == PRESET_MODELS[preset]
            assert ("K" in meta) == (meta["camera_model"] == "pinhole")
            assert (meta["preset"], meta["index"], meta["seed"]) == (preset, int(name), 3)

    def test_reads_back_as_synthetic_items(self, written) -> None:
        preset, out = written
        on_disk = PairsDataset(out)
        on_the_fly = SyntheticDataset(preset, "test", "same", num=2, seed=3, start=5)
        assert len(on_disk) == len(on_the_fly) == 2
        for i in range(2):
            assert_items_equal(on_disk[i], on_the_fly[i])
            assert "gt_sat_uv_grd" in on_disk[i] and "sat_height_m" in on_disk[i]

    def test_refuses_non_empty_directory(self, written, capsys) -> None:
        preset, out = written
        before = (out / "dataset.json").read_bytes()
        assert synth(out, preset) == 2
        assert "not empty; pass --overwrite" in capsys.readouterr().err
        assert (out / "dataset.json").read_bytes() == before


def test_overwrite_replaces_pairs(tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    assert synth(out, "kitti-small", "--start", "7", "--num", "1") == 0
    (out / "notes.txt").write_text("kept")
    assert synth(out, "kitti-small", "--overwrite", "--num", "1") == 0
    assert [p.name for p in (out / "samples").iterdir()] == ["000000"]
    assert (out / "notes.txt").read_text() == "kept"
    assert len(PairsDataset(out)) == 1


@pytest.mark.parametrize("num", ["1", "2"])
def test_preview(tmp_path: Path, num: str) -> None:
    preview = tmp_path / "prev.png"
    argv = ["synth", "--preset", "kitti-small", "--num", num, "--out", str(tmp_path / "p")]
    assert main([*argv, "--preview", str(preview)]) == 0
    expected = ["prev.png"] if num == "1" else ["prev_000000.png", "prev_000001.png"]
    assert sorted(p.name for p in tmp_path.glob("prev*.png")) == expected
    assert all((tmp_path / name).stat().st_size > 50_000 for name in expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "invalid choice: 'nope'"),
        (["--num", "0"], "must be a positive integer"),
        (["--num", "-3"], "must be a positive integer"),
        (["--num", "two"], "expected an integer, got 'two'"),
        (["--split", "dev"], "argument --split: invalid choice"),
        (["--area", "other"], "argument --area: invalid choice"),
        (["--start", "-1"], "must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    argv = ["synth", "--preset", "kitti-small", "--num", "1", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        main([*argv, *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "nope" in args:
        assert all(name in err for name in PRESETS)
    assert not (tmp_path / "o").exists()


def test_out_is_a_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    assert synth(out) == 2
    assert "is not a directory" in capsys.readouterr().err
