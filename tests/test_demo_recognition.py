"""The recognition demo's data: list files and labels CSVs in X-CLIP's formats, the documented classes
and split sizes, held-out classes that never occur in the seen training list, videos that show their
class, deterministic and atomic generation."""
import csv
import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest

from dataloaders import demo, demo_recognition
from dataloaders.video_list import read_class_names, read_video_list
from tests.video_factory import decode_all_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNSEEN = ["red turns green", "green turns blue", "blue turns yellow", "yellow turns white", "white turns red"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo_data")
    result = subprocess.run([sys.executable, "-m", "dataloaders.demo_recognition", "--data_dir", str(data_dir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(data_dir / "demo_recognition")
    return data_dir


def split(root, list_name, labels_name):
    """(class names, [(video base name, class name)]) of a list file read as the loaders read it."""
    names = read_class_names(os.path.join(root, labels_name))
    videos = read_video_list(os.path.join(root, list_name), os.path.join(root, "videos"), len(names))
    for video in videos:
        assert os.path.isfile(video.path)
    return names, [(os.path.basename(v.path), names[v.label]) for v in videos]


def counts(items):
    names, number = np.unique([name for _, name in items], return_counts=True)
    return dict(zip(names, number))


def test_classes_and_splits(data):
    root = data / "demo_recognition"
    names, train = split(root, "train.txt", "labels.csv")
    assert len(names) == 20 and names[:3] == ["red turns green", "red turns blue", "red turns yellow"]
    assert names[4:6] == ["green turns red", "green turns blue"] and len(set(names)) == 20
    _, val = split(root, "val.txt", "labels.csv")
    assert counts(train) == {name: 16 for name in names} and counts(val) == {name: 4 for name in names}
    assert not {v for v, _ in train} & {v for v, _ in val}  # validation videos are unseen in training
    assert len(os.listdir(root / "videos")) == 400


def test_zero_shot_variant(data):
    root = data / "demo_recognition"
    names = read_class_names(root / "labels.csv")
    seen, train_seen = split(root, "train_seen.txt", "labels_seen.csv")
    _, val_seen = split(root, "val_seen.txt", "labels_seen.csv")
    unseen, val_unseen = split(root, "val_unseen.txt", "labels_unseen.csv")
    assert unseen == UNSEEN
    assert seen == [name for name in names if name not in UNSEEN]  # labels.csv's order, renumbered
    assert counts(train_seen) == {name: 16 for name in seen} and counts(val_seen) == {name: 4 for name in seen}
    assert counts(val_unseen) == {name: 20 for name in unseen}  # every video of the held-out classes
    assert not set(UNSEEN) & {name for _, name in train_seen + val_seen}
    # The seen lists are the full lists without the held-out classes: same videos, same class names.
    _, train = split(root, "train.txt", "labels.csv")
    _, val = split(root, "val.txt", "labels.csv")
    assert train_seen == [item for item in train if item[1] not in UNSEEN]
    assert val_seen == [item for item in val if item[1] not in UNSEEN]
    assert sorted(val_unseen) == sorted(item for item in train + val if item[1] in UNSEEN)
    # Every colour of a held-out class is still trained, first and second, with other partners.
    trained = {name for _, name in train_seen}
    for colour in demo_recognition.COLOURS:
        assert sum(name.startswith(colour + " ") for name in trained) == 3
        assert sum(name.endswith(" " + colour) for name in trained) == 3


def test_shape_background_and_motion_vary_within_a_class(data):
    videos = list(csv.DictReader(open(data / "demo_recognition" / "videos.csv")))
    assert len(videos) == 400
    for name in {video["name"] for video in videos}:
        shown = [(v["shape"], v["background"], v["motion"], v["split"]) for v in videos if v["name"] == name]
        assert len({triple[:3] for triple in shown}) == 20  # all distinct
        for field in range(3):
            assert len({triple[field] for triple in shown}) >= 3
        assert [triple[3] for triple in shown].count("val") == 4
    _, val = split(data / "demo_recognition", "val.txt", "labels.csv")
    assert sorted(v for v, _ in val) == sorted(v["video"] for v in videos if v["split"] == "val")


def shape_pixels(frames, colour):
    return np.all(frames == demo.COLOURS[colour], axis=-1)  # (T, H, W)


@pytest.mark.parametrize("motion", demo.MOTIONS)
def test_videos_change_colour_half_way_and_nothing_else(motion):
    """The first half in the first colour, the second in the second, with the scene of the
    retrieval demo unchanged: same shape, same path, same background."""
    frames = demo_recognition.change_frames("red", "blue", "circle", motion, "light", [5])
    assert frames.shape == (demo.FRAMES, demo.SIZE, demo.SIZE, 3)
    half = demo_recognition.CHANGE_FRAME
    red, blue = shape_pixels(frames, "red"), shape_pixels(frames, "blue")
    assert red[:half].sum(axis=(1, 2)).min() > 1000 and not red[half:].any()
    assert blue[half:].sum(axis=(1, 2)).min() > 1000 and not blue[:half].any()
    scene = demo.scene_frames("red", "circle", motion, "light", np.random.default_rng([5]))
    assert np.array_equal(red | blue, shape_pixels(scene, "red"))
    assert np.array_equal(frames[~(red | blue)], scene[~shape_pixels(scene, "red")])
    reverse = demo_recognition.change_frames("blue", "red", "circle", motion, "light", [5])
    # the reversed change draws the same pixels, the two colours in the other order
    assert np.array_equal(shape_pixels(reverse, "blue"), red) and np.array_equal(shape_pixels(reverse, "red"), blue)


def test_videos_are_h264_of_the_documented_size(data):
    frames = decode_all_frames(data / "demo_recognition" / "videos" / "0000.mp4")
    assert len(frames) == demo.FRAMES and frames[0].shape == (demo.SIZE, demo.SIZE, 3)


def test_generation_is_deterministic(tmp_path):
    for name in ("a", "b"):
        demo_recognition.generate(str(tmp_path / name), seed=3, videos_per_class=3, val_per_class=1)
    for name in demo_recognition.FILES:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    videos = sorted(os.listdir(tmp_path / "a" / "videos"))
    assert len(videos) == 60 and videos == sorted(os.listdir(tmp_path / "b" / "videos"))
    for video in videos[::7]:
        assert np.array_equal(decode_all_frames(tmp_path / "a" / "videos" / video),
                              decode_all_frames(tmp_path / "b" / "videos" / video))
    demo_recognition.generate(str(tmp_path / "c"), seed=4, videos_per_class=3, val_per_class=1)
    assert not np.array_equal(decode_all_frames(tmp_path / "a" / "videos" / "0000.mp4"),
                              decode_all_frames(tmp_path / "c" / "videos" / "0000.mp4"))


def test_generated_once(data):
    root = data / "demo_recognition"
    before = os.path.getmtime(root / "labels.csv")
    assert demo_recognition.ensure_generated(str(data)) == str(root)
    assert os.path.getmtime(root / "labels.csv") == before
    assert os.listdir(data) == ["demo_recognition"]  # no temporary folder left


class Interrupted(Exception):
    pass


def small_generation(monkeypatch):
    """ensure_generated writes 3 videos per class (60 in all) instead of 20."""
    generate = demo_recognition.generate
    monkeypatch.setattr(demo_recognition, "generate",
                        lambda root, seed=0: generate(root, seed, videos_per_class=3, val_per_class=1))


def interrupt_after(monkeypatch, videos):
    """Video writing stops (an exception, as a Ctrl-C) once `videos` files are written."""
    write, written = demo.write_h264, []

    def write_some(path, frames):
        if len(written) == videos:
            raise Interrupted
        written.append(path)
        write(path, frames)
    monkeypatch.setattr(demo, "write_h264", write_some)
    return write


def test_interrupted_generation_is_redone(tmp_path, monkeypatch):
    small_generation(monkeypatch)
    write = interrupt_after(monkeypatch, 10)
    with pytest.raises(Interrupted):
        demo_recognition.ensure_generated(str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing half written is left, under the final name or another
    monkeypatch.setattr(demo, "write_h264", write)
    root = demo_recognition.ensure_generated(str(tmp_path))
    assert demo_recognition.is_complete(root) and len(os.listdir(os.path.join(root, "videos"))) == 60


def test_incomplete_folder_is_replaced(tmp_path, monkeypatch):
    small_generation(monkeypatch)
    root = tmp_path / "demo_recognition"
    (root / "videos").mkdir(parents=True)
    (root / "train.txt").write_text("0000.mp4 0\n")  # e.g. a copy that stopped half way
    demo_recognition.ensure_generated(str(tmp_path))
    assert demo_recognition.is_complete(str(root)) and len(os.listdir(root / "videos")) == 60
    assert len((root / "train.txt").read_text().splitlines()) == 40
