"""preprocess/folder2lmdb.py packs the videos of a folder, and only them: not the failure list
that compress_video.py leaves in its output folder, nor notes beside the videos."""
import os

import lmdb
import pytest

from preprocess.compress_video import main as compress_main
from preprocess.folder2lmdb import folder_to_lmdb, main
from tests.video_factory import write_corrupt_file, write_video


def keys(path):
    with lmdb.open(path, readonly=True, lock=False) as env, env.begin() as txn:
        return [key.decode() for key, _ in txn.cursor()]


def test_packs_only_the_videos_of_a_compressed_folder(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "videos"
    (raw / "sub").mkdir(parents=True)
    write_video(str(raw / "a.avi"), num_frames=3, width=32, height=32)
    write_video(str(raw / "sub" / "B.MKV"), num_frames=3, width=32, height=32, seed=1)
    write_corrupt_file(str(raw / "broken.mp4"))
    compress_main(["--input_root", str(raw), "--output_root", str(out), "--workers", "1", "--size", "32",
                   "--naming", "keep"])
    (out / "notes.txt").write_text("where these came from")
    assert (out / "compress_failures.txt").exists()

    assert main(["--video_folder", str(out), "--lmdb_path", str(tmp_path / "v.lmdb")]) == 2
    assert keys(str(tmp_path / "v.lmdb")) == ["B.MKV", "a.avi"]
    with open(out / "sub" / "B.MKV", "rb") as f, lmdb.open(str(tmp_path / "v.lmdb"), readonly=True) as env:
        assert env.begin().get(b"B.MKV") == f.read()
    assert "wrote 2 videos" in capsys.readouterr().out
    main(["--video_folder", str(out), "--lmdb_path", str(tmp_path / "all.lmdb"), "--all_files"])
    assert keys(str(tmp_path / "all.lmdb")) == ["B.MKV", "a.avi", "compress_failures.txt", "notes.txt"]


def test_a_folder_without_videos_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no video here")
    with pytest.raises(ValueError, match="holds no video .*--all_files"):
        folder_to_lmdb(str(tmp_path), str(tmp_path / "x.lmdb"), progress=False)
    with pytest.raises(SystemExit, match="holds no video"):
        main(["--video_folder", str(tmp_path), "--lmdb_path", str(tmp_path / "x.lmdb")])
    assert not os.path.exists(tmp_path / "x.lmdb")
