"""Broken video LMDBs fail early with a message naming them (a truncated one used to kill the
process with SIGBUS, exit 135), a corrupt page is a broken video, and the start-up check of a
split's video folder or LMDB."""
import logging
import os
import shutil
import struct
import subprocess
import sys

import lmdb
import pytest

from dataloaders import video_reader
from dataloaders.sources import check_video_source
from dataloaders.video_reader import BrokenLmdbError, VideoReader, check_lmdb, lmdb_keys
from preprocess.folder2lmdb import folder_to_lmdb
from tests import video_factory as vf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["a.mp4", "b.mp4", "c.mp4"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A folder of three real videos and their LMDB."""
    root = tmp_path_factory.mktemp("lmdb_check")
    os.makedirs(root / "videos")
    for seed, name in enumerate(NAMES):
        vf.write_video(str(root / "videos" / name), num_frames=60, width=160, height=120, seed=seed)
    folder_to_lmdb(str(root / "videos"), str(root / "videos.lmdb"), progress=False)
    return root


def broken_copy(videos, tmp_path, damage):
    """A copy of the LMDB whose data.mdb went through ``damage(path)``."""
    copy = tmp_path / "copy.lmdb"
    shutil.copytree(videos / "videos.lmdb", copy)
    damage(str(copy / "data.mdb"))
    return str(copy)


def truncate_half(path):
    os.truncate(path, os.path.getsize(path) // 2)


def zero_fill(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(bytes(size))


def test_valid_lmdb(videos):
    assert check_lmdb(str(videos / "videos.lmdb")) == 3


def test_truncated_lmdb_is_named_not_a_bus_error(videos, tmp_path):
    path = broken_copy(videos, tmp_path, truncate_half)
    with pytest.raises(BrokenLmdbError, match=f"LMDB {path} is truncated: .*data.mdb has \\d+ bytes, its "
                                              "header says \\d+; rebuild it with preprocess/folder2lmdb.py"):
        check_lmdb(path)
    # As a run meets it: the reader of a split, in a process of its own (a SIGBUS would kill it).
    code = (f"import sys; sys.path.insert(0, {REPO!r})\n"
            f"from dataloaders.video_reader import VideoReader\n"
            f"VideoReader(4, False, lmdb_path={path!r})('x/c.mp4')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1, (result.returncode, result.stderr[-500:])
    assert f"BrokenLmdbError: LMDB {path} is truncated" in result.stderr


def test_zero_filled_lmdb_is_named(videos, tmp_path):
    path = broken_copy(videos, tmp_path, zero_fill)
    with pytest.raises(BrokenLmdbError, match=f"LMDB {path} cannot be opened .*not an LMDB file"):
        check_lmdb(path)
    with pytest.raises(BrokenLmdbError, match=path):
        lmdb_keys(path)


def test_missing_lmdb_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--lmdb_dataset {tmp_path / 'none.lmdb'} does not exist"):
        VideoReader(4, False, lmdb_path=str(tmp_path / "none.lmdb"))


def leaf_page_holding(data_file, key):
    """The page number of the B-tree leaf of a data.mdb holding ``key``: a page header starts with
    its own page number (8 bytes) and has the flag P_LEAF (0x02) at byte 10."""
    with open(data_file, "rb") as f:
        data = f.read()
    size = 4096
    leaf, = [p for p in range(2, len(data) // size)
             if struct.unpack_from("<Q", data, p * size)[0] == p and struct.unpack_from("<H", data, p * size + 10)[0] & 2
             and key in data[p * size:(p + 1) * size]]
    return leaf


def test_corrupt_page_is_a_broken_video_not_a_traceback(videos, tmp_path, caplog):
    # Enough small entries after the videos for several leaves; the leaf of the last one is zeroed.
    path = str(tmp_path / "many.lmdb")
    folder_to_lmdb(str(videos / "videos"), path, progress=False)
    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(400):
            txn.put(f"zz_filler_{i:04d}.mp4".encode(), b"x" * 100)
    env.close()
    leaf = leaf_page_holding(os.path.join(path, "data.mdb"), b"zz_filler_0399.mp4")
    with open(os.path.join(path, "data.mdb"), "r+b") as f:
        f.seek(leaf * 4096)
        f.write(bytes(4096))
    video_reader._close_environments()
    assert check_lmdb(path) == 403  # the first entry still reads
    reader = VideoReader(4, False, lmdb_path=path)
    with caplog.at_level(logging.WARNING):
        video, mask = reader("x/zz_filler_0399.mp4")
        assert not mask.any() and not video.any()
        assert reader("x/a.mp4")[1].all()
    assert any("many.lmdb" in r.getMessage() and "MDB_" in r.getMessage() for r in caplog.records)


def test_video_source_in_a_folder(videos, tmp_path, caplog):
    paths = [str(videos / "videos" / n) for n in NAMES]
    assert check_video_source(paths + paths) == 3
    with pytest.raises(FileNotFoundError) as err:
        check_video_source([str(tmp_path / "elsewhere" / n) for n in NAMES])
    assert str(err.value).startswith(f"none of the first 3 videos of the split is in --features_path: "
                                     f"{tmp_path / 'elsewhere' / 'a.mp4'} does not exist (nor does ")
    with caplog.at_level(logging.WARNING):
        assert check_video_source([str(tmp_path / "gone.mp4")] + paths, sample=2) == 1
    assert "gone.mp4" in caplog.text and "--features_path" in caplog.text


def test_video_source_in_an_lmdb(videos, tmp_path):
    lmdb_path = str(videos / "videos.lmdb")
    assert check_video_source([f"/data/{n}" for n in NAMES], lmdb_path=lmdb_path) == 3
    with pytest.raises(FileNotFoundError, match=f"in --lmdb_dataset: --lmdb_dataset {lmdb_path} has no key "
                                                "'x.avi' \\(for /data/x.avi\\)"):
        check_video_source(["/data/x.avi", "/data/y.avi"], lmdb_path=lmdb_path)
    with pytest.raises(BrokenLmdbError, match="truncated"):
        check_video_source(["/data/a.mp4"], lmdb_path=broken_copy(videos, tmp_path, truncate_half))
