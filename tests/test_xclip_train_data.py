"""X-CLIP training data (XCLIP_SPEC §3.3-3.4) against the original pipeline, the training loader,
and the few-shot / zero-shot protocols (§5).

The reference comes from ``tests/reference/make_xclip_train_data_reference.py`` (run by hand on the
original code): the original's training pipeline on the committed videos with
``random.seed(s); np.random.seed(s); torch.manual_seed(s)`` before each video. The tests seed the
same way, so equal SHA-256 digests mean float32 bit-exactness of the whole chain, ColorJitter
included (torchvision and PIL are the same libraries on both sides).
"""
import hashlib
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from dataloaders import RECOGNITION_TRAIN_LOADERS
from dataloaders.protocols import (few_shot_subset, novel_classes, sample_class_splits,
                                   write_zero_shot_splits, zero_shot_pairs, zero_shot_summary)
from dataloaders.recognition_augment import (MultiScaleCropper, augment_clip, crop_candidates,
                                             multi_scale_crop_box)
from dataloaders.recognition_train import TrainViews, seed_worker
from dataloaders.recognition_transforms import normalise_views
from dataloaders.resize import resize_linear
from dataloaders.sampling import xclip_train_indices
from dataloaders.video_list import LABEL_CSVS, LabelledVideo, read_class_names, read_video_list
from preprocess import zero_shot_splits
from tests import video_factory as vf

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "xclip")
with open(os.path.join(REFERENCE_DIR, "train_data_reference.json")) as _f:
    REFERENCE = json.load(_f)
SAMPLES = np.load(os.path.join(REFERENCE_DIR, "train_data_reference.npz"))


def sha256(array):
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return hashlib.sha256(data.tobytes()).hexdigest()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_loader(root, list_path, *, input_size=224, batch_size=1, color_jitter=0.8, gray_scale=0.2,
                 num_workers=0, **kwargs):
    return RECOGNITION_TRAIN_LOADERS["video_list"](
        list_path=list_path, root=str(root), labels_csv=os.path.join(REFERENCE_DIR, "labels.csv"),
        lmdb_path=None, num_frames=8, input_size=input_size, batch_size=batch_size,
        num_workers=num_workers, color_jitter=color_jitter, gray_scale=gray_scale, **kwargs)


# ---- the original's training pipeline on the committed videos ----

@pytest.mark.parametrize("setting", sorted(REFERENCE["settings"]))
def test_training_clips_equal_the_original_bit_for_bit(setting):
    expected = REFERENCE["settings"][setting]
    loader, names, sampler = train_loader(REFERENCE_DIR, os.path.join(REFERENCE_DIR, "val_list.txt"),
                                          color_jitter=expected["color_jitter"],
                                          gray_scale=expected["gray_scale"])
    dataset = loader.dataset
    assert sampler is None and len(names) == 6
    position = {os.path.relpath(v.path, REFERENCE_DIR): k for k, v in enumerate(dataset.videos)}
    for i, entry in enumerate(expected["entries"]):
        seed_everything(entry["seed"])
        video, label, valid = dataset[position[entry["video"]]]
        assert int(valid) == 1 and video.shape == (8, 3, 224, 224) and video.dtype == torch.float32
        assert int(label) == dataset.videos[position[entry["video"]]].label
        got = video.numpy()
        assert sha256(got) == entry["sha256"], (
            f"{entry['video']} seed {entry['seed']}: max |diff| on the stored sample "
            f"{np.abs(got.reshape(-1)[::REFERENCE['stride']] - SAMPLES[f'{setting}/{i}']).max()}")


@pytest.mark.parametrize("setting", ["default", "both"])
def test_every_recorded_draw_replays_in_the_original_order(setting):
    """Frame indices and flip from numpy, crop box then jitter/gray decisions from ``random``."""
    expected = REFERENCE["settings"][setting]
    for entry in expected["entries"]:
        seed_everything(entry["seed"])
        assert xclip_train_indices(entry["total_frames"], 8).tolist() == entry["indices"]
        assert bool(np.random.rand() < 0.5) == entry["flip"]
        left, top, crop_w, crop_h = multi_scale_crop_box(*entry["resized_hw"], 224)
        assert [left, top, left + crop_w, top + crop_h] == entry["crop_box"]
        assert bool(random.random() < expected["color_jitter"]) == entry["jitter"]
        assert bool(random.random() < expected["gray_scale"]) == entry["gray"]


def test_reference_covers_the_branches():
    entries = [e for s in REFERENCE["settings"].values() for e in s["entries"]]
    assert len(entries) == 60 and {e["flip"] for e in entries} == {True, False}
    assert len({tuple(e["crop_box"]) for e in entries}) >= 8
    assert any(e["total_frames"] < 8 for e in entries)  # the deterministic short-video rule
    defaults = REFERENCE["settings"]["default"]["entries"]
    assert {(e["jitter"], e["gray"]) for e in defaults} == {(True, False), (False, False), (True, True)}
    digests = [e["sha256"] for s in ("plain", "jitter", "gray", "both")
               for e in REFERENCE["settings"][s]["entries"]]
    assert len(set(digests)) == len(digests)


# ---- the augmentation steps ----

def test_crop_candidates_pair_neighbouring_scale_levels():
    assert crop_candidates(256, 341) == [(256, 256), (224, 256), (256, 224), (224, 224), (192, 224),
                                         (224, 192), (192, 192), (168, 192), (192, 168), (168, 168)]
    assert crop_candidates(457, 256)[0] == (256, 256)  # the short side, not the height


class ScriptedChoice:
    """An rng whose ``choice`` returns scripted positions and keeps the candidate lists."""

    def __init__(self, *positions):
        self.positions, self.seen = list(positions), []

    def choice(self, options):
        self.seen.append(list(options))
        return options[self.positions.pop(0)]


def test_crop_sides_snap_to_the_input_size_and_offsets_are_the_five_fixed_ones():
    rng = ScriptedChoice(3, 2)  # (w, h) = (222, 222) -> snapped to 224 x 224; offset 2
    assert multi_scale_crop_box(254, 300, 224, rng) == (0, 4 * 7, 224, 224)
    sizes, offsets = rng.seen
    assert sizes[3] == (222, 222) and (254, 222) in sizes and (190, 167) in sizes
    assert offsets == [(0, 0), (4 * 19, 0), (0, 4 * 7), (4 * 19, 4 * 7), (2 * 19, 2 * 7)]
    assert multi_scale_crop_box(254, 300, 224, ScriptedChoice(8, 4)) == (2 * 27, 2 * 21, 190, 167)  # kept


def test_crop_draws_are_uniform_over_sizes_and_offsets():
    rng = random.Random(0)
    counts = {}
    for _ in range(5000):
        box = multi_scale_crop_box(256, 341, 224, rng)
        counts[box[2:]] = counts.get(box[2:], 0) + 1
    assert set(counts) == set(crop_candidates(256, 341))
    assert all(abs(c - 500) < 100 for c in counts.values())
    lefts = [multi_scale_crop_box(256, 341, 224, rng)[0] for _ in range(2000)]
    assert len(set(lefts)) > 5  # 3 distinct offsets per size, several sizes


def test_cropper_draws_once_and_chains_opencv_resizes():
    frame = vf.procedural_frames(1, 320, 240, seed=3)[0]  # (240, 320, 3)
    random.seed(7)
    box = multi_scale_crop_box(256, 341, 224)
    after_one_draw = random.random()
    random.seed(7)
    cropper = MultiScaleCropper(224)
    outputs = [cropper(frame), cropper(frame[:, ::-1].copy())]
    assert random.random() == after_one_draw and cropper.box == box
    left, top, w, h = box
    expected = resize_linear(resize_linear(frame, 341, 256)[top:top + h, left:left + w], 224, 224)
    assert outputs[0].shape == (224, 224, 3) and np.array_equal(outputs[0], expected)
    assert not np.array_equal(outputs[0], outputs[1])


def test_flip_follows_numpy_and_jitter_is_drawn_per_frame():
    frame = vf.procedural_frames(1, 48, 48, seed=5)[0]
    frames = [frame] * 4  # a short video repeats one decoded frame object
    np.random.seed(1)
    flip = np.random.rand() < 0.5
    np.random.seed(1)
    random.seed(0)
    plain = augment_clip(frames, 0.0, 0.0)
    expected = normalise_views(np.stack([frame[:, ::-1] if flip else frame] * 4))
    assert torch.equal(plain, expected) and plain.shape == (4, 3, 48, 48)
    random.seed(0)
    random.random(), random.random()
    state = random.getstate()
    random.seed(0)
    augment_clip(frames, 0.0, 0.0)
    assert random.getstate() == state  # both decisions are drawn even with probability 0
    jittered = augment_clip(frames, 1.0, 0.0)
    assert all(not torch.equal(jittered[0], jittered[t]) for t in range(1, 4))  # own factors
    assert np.array_equal(frames[0], vf.procedural_frames(1, 48, 48, seed=5)[0])  # input untouched


def test_grayscale_makes_equal_channels_on_every_frame():
    frames = list(vf.procedural_frames(3, 40, 40, seed=2))
    gray = augment_clip(frames, 0.0, 1.0)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    pixels = torch.round(gray * std + mean)  # back to 0..255
    assert torch.equal(pixels[:, 0], pixels[:, 1]) and torch.equal(pixels[:, 1], pixels[:, 2])
    assert pixels.std() > 10


@pytest.mark.parametrize("flag,kwargs", [("--color_jitter", {"color_jitter": 1.5}),
                                         ("--gray_scale", {"gray_scale": -0.1})])
def test_probabilities_outside_zero_one_are_refused(flag, kwargs):
    with pytest.raises(ValueError, match=flag):
        TrainViews(**{"num_frames": 8, "input_size": 224, "color_jitter": 0.8, "gray_scale": 0.2,
                      **kwargs})


# ---- the training loader ----

@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    """The committed videos and a corrupt one; a list of 5 (the corrupt one labelled 5)."""
    root = tmp_path_factory.mktemp("train")
    shutil.copytree(os.path.join(REFERENCE_DIR, "videos"), root / "videos")
    vf.write_corrupt_file(str(root / "videos" / "corrupt.mp4"))
    with open(os.path.join(REFERENCE_DIR, "val_list.txt")) as f:
        lines = f.read()
    (root / "train.txt").write_text(lines + "videos/corrupt.mp4 5\n")
    return root


def test_loader_batches_drop_the_last_and_blank_broken_videos(train_root):
    torch.manual_seed(0)
    loader, names, sampler = train_loader(train_root, str(train_root / "train.txt"), input_size=64,
                                          batch_size=2)
    assert sampler is None and loader.drop_last and loader.worker_init_fn is seed_worker
    batches = list(loader)
    assert len(batches) == 2  # 5 videos, batch 2: the incomplete batch is dropped
    for video, label, valid in batches:
        assert video.shape == (2, 8, 3, 64, 64) and video.dtype == torch.float32
        assert label.dtype == valid.dtype == torch.int64
    seen = {}
    for _ in range(4):  # over epochs every video comes, the corrupt one as a blank clip
        for video, label, valid in loader:
            for v, y, ok in zip(video, label, valid):
                seen[int(y)] = (int(ok), float(v.abs().sum()))
    assert seen[5] == (0, 0.0) and all(seen[y][0] == 1 and seen[y][1] > 0 for y in (0, 1, 2, 4))


def test_loader_refuses_a_list_without_one_full_batch(train_root):
    with pytest.raises(ValueError, match="fewer than --batch_size 8"):
        train_loader(train_root, str(train_root / "train.txt"), batch_size=8)


def test_distributed_runs_get_a_seeded_distributed_sampler(train_root, tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}",
                                         rank=0, world_size=1)
    try:
        loader, _, sampler = train_loader(train_root, str(train_root / "train.txt"), batch_size=2,
                                          seed=11)
    finally:
        torch.distributed.destroy_process_group()
    assert isinstance(sampler, DistributedSampler) and loader.sampler is sampler
    assert sampler.shuffle and sampler.seed == 11 and len(loader) == 2


class WorkerDraws(Dataset):
    """Per item: the worker's torch seed and id, and one draw of numpy, random and torch."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        info = torch.utils.data.get_worker_info()
        return (torch.initial_seed(), info.id, int(np.random.randint(2 ** 31)),
                random.random(), int(torch.randint(2 ** 31, ())))


def test_workers_get_their_own_numpy_and_python_streams():
    def draws(seed):
        torch.manual_seed(seed)
        loader = DataLoader(WorkerDraws(), batch_size=None, num_workers=2, worker_init_fn=seed_worker)
        return [tuple(item) for item in loader]
    first, again, other = draws(0), draws(0), draws(1)
    assert first == again and first != other
    by_worker = {}
    for worker_seed, worker_id, numpy_draw, python_draw, _ in first:
        by_worker.setdefault(worker_id, []).append((worker_seed, numpy_draw, python_draw))
    assert len(by_worker) == 2
    for worker_id, items in by_worker.items():
        worker_seed = items[0][0]
        state = np.random.SeedSequence([worker_seed, worker_id]).generate_state(4)
        numpy_rng, python_rng = np.random.RandomState(state), random.Random(worker_seed)
        assert [(n, p) for _, n, p in items] == [(int(numpy_rng.randint(2 ** 31)), python_rng.random())
                                                  for _ in items]
    assert by_worker[0][0][1] != by_worker[1][0][1]


# ---- few-shot ----

def labelled(counts):
    """Videos ``c{label}_{i}.mp4`` interleaved across classes; ``counts[k]`` videos of class k."""
    videos = [LabelledVideo(f"c{k}_{i}.mp4", k) for i in range(max(counts))
              for k, n in enumerate(counts) if i < n]
    return videos, [f"class {k}" for k in range(len(counts))]


def test_few_shot_rule_is_a_seeded_sample_per_class_in_list_order():
    videos, names = labelled([5, 3, 7])
    subset = few_shot_subset(videos, class_names=names, shots=2, seed=4)
    rng = random.Random(4)
    expected = []
    for k in range(3):
        expected += rng.sample([p for p, v in enumerate(videos) if v.label == k], 2)
    assert subset == [videos[p] for p in sorted(expected)]
    assert [v.label for v in subset].count(0) == 2 and len(subset) == 6
    assert few_shot_subset(videos, class_names=names, shots=2, seed=4) == subset
    assert few_shot_subset(videos, class_names=names, shots=2, seed=5) != subset
    assert few_shot_subset(videos, class_names=names, shots=3, seed=0)[0].label in (0, 1, 2)


def test_few_shot_names_a_class_that_is_too_small():
    videos, names = labelled([5, 3, 7])
    with pytest.raises(ValueError, match=r"class 1 \('class 1'\) has only 3"):
        few_shot_subset(videos, class_names=names, shots=4, seed=0)
    with pytest.raises(ValueError, match=r"class 3 \('class 3'\) has only 0"):
        few_shot_subset(videos, class_names=names + ["class 3"], shots=1, seed=0)


def test_loader_trains_on_the_few_shot_subset_and_writes_it(tmp_path):
    lines = [f"clips/v{i}.mp4 {i % 6}" for i in range(24)]
    list_path = tmp_path / "train.txt"
    list_path.write_text("\n".join(lines) + "\n")
    subset_path = tmp_path / "out" / "few_shot_list.txt"
    loader, _, _ = train_loader("/data", str(list_path), batch_size=2, shots=2, seed=3,
                                subset_path=str(subset_path))
    written = read_video_list(str(subset_path), "", 6)
    assert len(written) == 12 and [v.path for v in written][0].startswith("clips/v")
    assert [v.label for v in written].count(5) == 2
    assert loader.dataset.videos == [LabelledVideo(os.path.join("/data", v.path), v.label) for v in written]
    assert subset_path.read_text().splitlines()[0] == f"{written[0].path} {written[0].label}"
    all_videos = read_video_list(str(list_path), "", 6)
    assert written == few_shot_subset(all_videos, class_names=[str(k) for k in range(6)], shots=2, seed=3)


# ---- zero-shot ----

def test_zero_shot_lists_pair_with_one_or_one_each_labels_csv():
    assert zero_shot_pairs(["a", "b", "c"], ["x.csv"]) == [("a", "x.csv"), ("b", "x.csv"), ("c", "x.csv")]
    assert zero_shot_pairs(["a", "b"], ["x", "y"]) == [("a", "x"), ("b", "y")]
    with pytest.raises(ValueError, match="2 CSVs for 3 --zero_shot_lists"):
        zero_shot_pairs(["a", "b", "c"], ["x", "y"])
    with pytest.raises(ValueError, match="needs --zero_shot_labels"):
        zero_shot_pairs(["a"], None)
    with pytest.raises(ValueError, match="names no list"):
        zero_shot_pairs([], ["x"])


def test_zero_shot_summary_is_mean_and_population_std():
    mean, std = zero_shot_summary([40.0, 44.0, 50.0])
    assert mean == pytest.approx(44.666666666) and std == pytest.approx(4.1096093353)  # ddof 0
    assert zero_shot_summary([65.2]) == (65.2, 0.0)
    with pytest.raises(ValueError):
        zero_shot_summary([])


def test_kinetics600_has_232_classes_whose_exact_name_is_not_a_kinetics400_class():
    k600, k400 = read_class_names(LABEL_CSVS["kinetics600"]), read_class_names(LABEL_CSVS["kinetics400"])
    novel = novel_classes(k600, k400)
    assert len(novel) == 232  # the paper's 220 also counts 12 renamed K400 classes as seen
    assert k600.index("acting in play") in novel and k600.index("abseiling") not in novel
    assert k600.index("dyeing hair") in novel  # K400 spells it "dying hair"
    splits = sample_class_splits(novel, n_splits=3, split_size=160, seed=0)
    assert [len(s) for s in splits] == [160] * 3 and all(set(s) <= set(novel) for s in splits)
    assert all(s == sorted(s) for s in splits) and splits[0] != splits[1]
    with pytest.raises(ValueError, match="cannot draw 233"):
        sample_class_splits(novel, n_splits=1, split_size=233, seed=0)


def test_zero_shot_split_files_relabel_to_the_split_rows(tmp_path):
    k600 = read_class_names(LABEL_CSVS["kinetics600"])
    list_path = tmp_path / "k600_val.txt"
    list_path.write_text("".join(f"val/{k}_{i}.mp4 {k}\n" for i in range(2) for k in range(600)))
    result = write_zero_shot_splits(labels_csv=LABEL_CSVS["kinetics600"],
                                    seen_labels_csv=LABEL_CSVS["kinetics400"], list_path=str(list_path),
                                    out_dir=str(tmp_path / "splits"), n_splits=3, seed=0)
    assert result["novel"] == 232 and len(result["splits"]) == 3
    novel = novel_classes(k600, read_class_names(LABEL_CSVS["kinetics400"]))
    for (csv_path, split_list), classes in zip(result["splits"],
                                              sample_class_splits(novel, n_splits=3, split_size=160, seed=0)):
        names = read_class_names(csv_path)
        assert names == [k600[k] for k in classes]
        videos = read_video_list(split_list, "", len(names))
        assert len(videos) == 320
        for video in videos:  # the path names the K600 class, the label the split's row
            assert k600[int(video.path.split("/")[1].split("_")[0])] == names[video.label]
    with open(result["splits"][0][0]) as f:
        assert f.readline() == "id,name\n" and f.readline().startswith("0,")


def test_zero_shot_split_command_line(tmp_path, capsys):
    list_path = tmp_path / "k600_val.txt"
    list_path.write_text("".join(f"val/{k}.mp4 {k}\n" for k in range(600)))
    result = zero_shot_splits.main(["--list", str(list_path), "--out", str(tmp_path / "out"),
                                    "--splits", "2", "--classes", "5", "--seed", "9"])
    assert capsys.readouterr().out.startswith("232 classes of ")
    assert [len(read_class_names(csv_path)) for csv_path, _ in result["splits"]] == [5, 5]
    assert sorted(os.listdir(tmp_path / "out")) == ["zero_shot_split1.txt", "zero_shot_split1_labels.csv",
                                                    "zero_shot_split2.txt", "zero_shot_split2_labels.csv"]
    with pytest.raises(SystemExit):
        zero_shot_splits.main(["--list", str(list_path), "--out", str(tmp_path / "x"), "--classes", "300"])
    assert "cannot draw 300 classes" in capsys.readouterr().err
