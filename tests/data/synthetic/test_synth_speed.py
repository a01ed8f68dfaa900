"""A loose guard against speed regressions of the generator (the real figure, about
10 pairs/s per core at kitti-small, is measured by benchmarks, not asserted here)."""

import time

import torch

from cvloc.data.synthetic import generate_pair


def test_kitti_small_is_fast_enough():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate_pair("kitti-small", "train", "same", 0)  # warm caches (noise table, rays)
        start = time.process_time()
        for i in range(4):
            generate_pair("kitti-small", "train", "cross" if i % 2 else "same", 10 + i)
        per_pair = (time.process_time() - start) / 4
    finally:
        torch.set_num_threads(threads)
    assert per_pair < 0.5, f"{per_pair:.3f} s per pair"
