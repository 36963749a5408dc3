"""VideoReader: clips, masks, LMDB vs folder, broken videos, DataLoader workers; folder2lmdb."""
import logging
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dataloaders import video_reader
from dataloaders.sampling import uniform_indices
from dataloaders.transforms import frames_to_clip
from dataloaders.video_reader import LmdbVideos, VideoReader, count_broken_videos, lmdb_keys
from preprocess.folder2lmdb import folder_to_lmdb, main as folder2lmdb_main
from tests import video_factory as vf

GOOD = {"wide.mp4": dict(num_frames=40, width=398, height=224),
        "tall.mp4": dict(num_frames=30, width=224, height=300),
        "short.mp4": dict(num_frames=5, width=320, height=240)}
BROKEN = ["empty.mp4", "corrupt.mp4", "truncated.mp4", "missing.mp4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    os.makedirs(root / "videos" / "sub")
    for seed, (name, kwargs) in enumerate(GOOD.items()):
        sub = "sub" if name == "tall.mp4" else ""
        vf.write_video(str(root / "videos" / sub / name), seed=seed, **kwargs)
    vf.write_empty_file(str(root / "videos" / "empty.mp4"))
    vf.write_corrupt_file(str(root / "videos" / "corrupt.mp4"))
    vf.write_truncated_video(str(root / "videos" / "truncated.mp4"), num_frames=30, keep_fraction=0.6)
    folder_to_lmdb(str(root / "videos"), str(root / "videos.lmdb"), progress=False)
    return root


def path_of(folder, name):
    sub = "sub" if name == "tall.mp4" else ""
    return str(folder / "videos" / sub / name)


def test_clip_equals_transformed_reference(folder):
    reader = VideoReader(max_frames=12, train=False)
    for name, kwargs in GOOD.items():
        video, mask = reader(path_of(folder, name))
        assert video.shape == (1, 12, 3, 224, 224) and video.dtype == torch.float32
        assert mask.shape == (1, 12) and mask.dtype == np.int64
        reference = vf.decode_all_frames(path_of(folder, name))
        indices = uniform_indices(len(reference), 12)
        expected = frames_to_clip(np.stack([reference[i] for i in indices]))
        assert torch.equal(video[0], expected)
        length = min(kwargs["num_frames"], 12)
        assert mask[0].tolist() == [1] * length + [0] * (12 - length)


def test_short_video_repeats_its_last_frame(folder):
    video, mask = VideoReader(max_frames=12, train=True)(path_of(folder, "short.mp4"))
    assert mask.sum() == 5
    assert all(torch.equal(video[0, t], video[0, 4]) for t in range(5, 12))
    assert not torch.equal(video[0, 3], video[0, 4])


def test_lmdb_and_folder_give_identical_tensors(folder):
    assert sorted(lmdb_keys(str(folder / "videos.lmdb"))) == sorted(
        list(GOOD) + ["empty.mp4", "corrupt.mp4", "truncated.mp4"])
    from_files = VideoReader(max_frames=8, train=True)
    from_lmdb = VideoReader(max_frames=8, train=True, lmdb_path=str(folder / "videos.lmdb"))
    for name in GOOD:
        np.random.seed(11)
        video_a, mask_a = from_files(path_of(folder, name))
        np.random.seed(11)
        # in LMDB mode only the base name matters
        video_b, mask_b = from_lmdb(os.path.join("/nowhere", name))
        assert torch.equal(video_a, video_b) and np.array_equal(mask_a, mask_b)


@pytest.mark.parametrize("name", BROKEN)
@pytest.mark.parametrize("use_lmdb", [False, True])
def test_broken_video_is_a_masked_zero_clip_logged_once(folder, caplog, name, use_lmdb):
    reader = VideoReader(max_frames=6, train=False,
                         lmdb_path=str(folder / "videos.lmdb") if use_lmdb else None)
    path = path_of(folder, name)
    with caplog.at_level(logging.WARNING, logger="dataloaders.video_reader"):
        for _ in range(3):
            video, mask = reader(path)
            assert video.shape == (1, 6, 3, 224, 224) and not video.any()
            assert mask.shape == (1, 6) and not mask.any()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and path in messages[0]
    if use_lmdb:
        assert "videos.lmdb" in messages[0]


def test_count_broken_videos():
    mask = torch.ones(5, 1, 12, dtype=torch.long)
    mask[1] = 0
    mask[3, 0, 1:] = 0
    mask[4] = 0
    assert count_broken_videos(mask) == 2
    assert count_broken_videos(mask.numpy()[:, 0]) == 2
    assert count_broken_videos(torch.ones(3, 1, 4)) == 0


class Clips(Dataset):
    """Clips of the given paths, read by the given reader."""

    def __init__(self, paths, reader):
        self.paths, self.reader = paths, reader

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.reader(self.paths[index])


@pytest.mark.parametrize("use_lmdb", [False, True])
def test_dataloader_epoch_survives_broken_videos(folder, use_lmdb):
    paths = [path_of(folder, n) for n in list(GOOD) + BROKEN] * 2
    reader = VideoReader(max_frames=4, train=True,
                         lmdb_path=str(folder / "videos.lmdb") if use_lmdb else None)
    # Reading here first leaves this process's LMDB environment open when the workers fork;
    # they must still open their own (py-lmdb refuses to reopen an inherited one).
    assert reader(paths[0])[1].any()
    loader = DataLoader(Clips(paths, reader), batch_size=3, num_workers=2)
    broken, seen = 0, 0
    for video, mask in loader:
        assert video.shape[1:] == (1, 4, 3, 224, 224) and torch.isfinite(video).all()
        broken += count_broken_videos(mask)
        seen += len(video)
    assert seen == len(paths) and broken == 2 * len(BROKEN)


class OpenedBy(Dataset):
    """Reads a video, then reports this process's pid and the pid that opened its LMDB."""

    def __init__(self, path, reader):
        self.path, self.reader = path, reader

    def __len__(self):
        return 4

    def __getitem__(self, index):
        assert self.reader(self.path)[1].any()
        (opener, _), = video_reader._open_environments.values()
        return os.getpid(), opener


def test_each_worker_opens_its_own_lmdb_environment(folder):
    reader = VideoReader(max_frames=2, train=False, lmdb_path=str(folder / "videos.lmdb"))
    path = path_of(folder, "wide.mp4")
    assert reader(path)[1].any()  # opened in this process before the workers fork
    pids = [(int(a), int(b)) for a, b in DataLoader(OpenedBy(path, reader), num_workers=2)]
    assert all(pid == opener != os.getpid() for pid, opener in pids)
    assert len({pid for pid, _ in pids}) == 2


def test_training_sampling_differs_between_workers_and_epochs(folder):
    long_path = str(folder / "long.mp4")
    if not os.path.exists(long_path):
        vf.write_video(long_path, num_frames=240, width=96, height=64, keyint=8)
    reader = VideoReader(max_frames=4, train=True, image_size=32)
    loader = DataLoader(Clips([long_path] * 4, reader), batch_size=1, num_workers=2)
    epochs = [torch.cat([video for video, _ in loader]) for _ in range(2)]
    clips = [clip for epoch in epochs for clip in epoch]
    # 240 frames in 4 segments of 60: two equal draws are a 1 in 60^4 event
    for i in range(len(clips)):
        for j in range(i):
            assert not torch.equal(clips[i], clips[j])


def test_folder2lmdb_keys_values_and_errors(folder, tmp_path):
    store = LmdbVideos(str(folder / "videos.lmdb"))
    for key in lmdb_keys(str(folder / "videos.lmdb")):
        with open(path_of(folder, key), "rb") as f:
            assert store.get(key) == f.read()
    assert store.get("missing.mp4") is None
    with pytest.raises(ValueError, match="--map_size_gb"):
        folder_to_lmdb(str(folder / "videos"), str(tmp_path / "small.lmdb"), map_size_gb=1e-4,
                       progress=False)
    os.makedirs(tmp_path / "dup" / "a")
    vf.write_empty_file(str(tmp_path / "dup" / "x.mp4"))
    vf.write_empty_file(str(tmp_path / "dup" / "a" / "x.mp4"))
    with pytest.raises(ValueError, match="x.mp4"):
        folder_to_lmdb(str(tmp_path / "dup"), str(tmp_path / "dup.lmdb"), progress=False)
    with pytest.raises(SystemExit, match="--map_size_gb"):
        folder2lmdb_main(["--video_folder", str(folder / "videos"),
                          "--lmdb_path", str(tmp_path / "cli.lmdb"), "--map_size_gb", "0.0001"])
    assert folder2lmdb_main(["--video_folder", str(folder / "videos"),
                             "--lmdb_path", str(tmp_path / "cli2.lmdb")]) == 6
