"""Training on a real-benchmark layout: the engine reads the loader's train/val splits."""

from __future__ import annotations

from fakes import make_kitti

from cvloc.config import load_config
from cvloc.engine.data import build_datasets
from cvloc.train import train

DRIVE = "2011_09_26/2011_09_26_drive_0001_sync"


def kitti_tree(tmp_path, frames=12):
    lines = [f"{DRIVE}/{i:010d}.png" for i in range(frames)]
    return make_kitti(tmp_path / "KITTI", lines, split_file="train_files.txt", sat_size=64)


def kitti_config(root, out_dir, *overrides):
    return load_config(
        "overfit",
        [
            "data.dataset=kitti",
            f"data.root={root}",
            "data.options={ground_size: [64, 16], val_fraction: 0.25}",
            "data.cache_train=false",
            "data.cache_val=false",
            "data.num_val=3",
            f"train.out_dir={out_dir}",
            "train.epochs=1",
            *overrides,
        ],
    )


def test_kitti_train_and_val_splits_are_disjoint(tmp_path):
    root = kitti_tree(tmp_path)
    train_set, val_set = build_datasets(kitti_config(root, tmp_path / "run").data)
    train_names = {train_set[i]["name"] for i in range(len(train_set))}
    val_names = {val_set[i]["name"] for i in range(len(val_set))}
    assert len(train_names) == 9 and len(val_names) == 3
    assert not train_names & val_names


def test_training_skips_a_corrupt_image(tmp_path, caplog):
    root = kitti_tree(tmp_path)
    # A truncated PNG in the training split: the epoch must go on, skipping it.
    bad = root / "raw_data" / DRIVE / "image_02" / "data" / f"{1:010d}.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with caplog.at_level("WARNING", logger="cvloc.data.registry"):
        result = train(kitti_config(root, tmp_path / "run"))
    assert result.state.step == 4  # 9 training pairs at batch 2: 4 full batches
    assert (tmp_path / "run" / "last.pt").is_file()
    skipped = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert skipped and str(bad) in skipped[0]
