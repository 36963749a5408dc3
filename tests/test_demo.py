"""The demo: procedural videos with captions, and a shortened run of scripts/demo.sh's command."""
import json
import os
import subprocess

import numpy as np
import pytest

import main as main_module
from dataloaders import demo
from tests.video_factory import decode_all_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo_data")
    demo.ensure_generated(str(data_dir))
    return data_dir


def test_generated_once_with_unique_scenes(demo_dir):
    root = demo_dir / "demo"
    annotations = json.loads((root / "annotations.json").read_text())
    assert len(annotations["train"]) == demo.NUM_VIDEOS - demo.NUM_TEST and len(annotations["test"]) == demo.NUM_TEST
    captions = [item["caption"] for split in ("train", "test") for item in annotations[split]]
    assert len(set(captions)) == len(captions)  # every video its own combination
    frames = decode_all_frames(root / "videos" / annotations["test"][0]["video"])
    assert len(frames) == demo.FRAMES and frames[0].shape == (demo.SIZE, demo.SIZE, 3)
    assert not np.array_equal(frames[0], frames[-1]) or "stays still" in annotations["test"][0]["caption"]
    before = os.path.getmtime(root / "annotations.json")
    demo.ensure_generated(str(demo_dir))
    assert os.path.getmtime(root / "annotations.json") == before
    assert [p for p in os.listdir(demo_dir) if p != "demo"] == []  # no temporary folder left


def test_scene_shows_its_caption():
    rng = np.random.default_rng(0)
    frames = demo.scene_frames("red", "square", "moves right", "dark", rng)
    red = np.all(frames == demo.COLOURS["red"], axis=-1)  # (T, H, W)
    columns = [np.nonzero(red[t].any(axis=0))[0].mean() for t in (0, demo.FRAMES - 1)]
    assert columns[1] > columns[0] + 50  # it moved right
    assert frames[0][~red[0]].mean() < 80  # on a dark background


def test_shortened_demo_learns(demo_dir, tmp_path):
    command = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**os.environ, "DRY_RUN": "1"}).stdout.split()
    argv = command[2:]  # drop the interpreter and main.py
    argv[argv.index("--data_dir") + 1] = str(demo_dir)
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "out")
    argv[argv.index("--epochs") + 1] = "2"
    main_module.main(argv)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["t2v"]["R1"] >= 5 * 100 / demo.NUM_TEST
