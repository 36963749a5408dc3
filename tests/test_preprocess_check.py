"""preprocess/check_video.py: folder and LMDB scans with good, corrupt, empty, truncated and
frameless videos; the broken list and the CSV/JSON report, where they go, the exit status."""
import csv
import json
import os
import subprocess
import sys

import av
import pytest

from preprocess.check_video import check_one, main, scan
from preprocess.folder2lmdb import folder_to_lmdb
from tests.video_factory import (write_corrupt_file, write_empty_file, write_truncated_video, write_video,
                                 write_video_without_frame_count)


@pytest.fixture
def videos(tmp_path):
    """A folder with two good videos (one in a sub-folder, one without a header frame count)
    and four broken ones; returns the folder."""
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    write_video(str(folder / "good.mp4"), num_frames=14, width=96, height=64)
    write_video_without_frame_count(str(folder / "sub" / "fragmented.mp4"), num_frames=9, width=64, height=96)
    write_corrupt_file(str(folder / "corrupt.mp4"))
    write_empty_file(str(folder / "empty.avi"))
    write_truncated_video(str(folder / "truncated.mp4"), num_frames=30, width=96, height=64)
    write_without_keyframe(str(folder / "no_frames.mkv"), str(tmp_path / "source.mkv"))
    (folder / "readme.txt").write_text("not a video")
    return folder


def write_without_keyframe(path, scratch):
    """A readable container whose H.264 stream lost its only keyframe: it decodes to no frame."""
    write_video(scratch, num_frames=12, width=64, height=64, keyint=100)
    with av.open(scratch) as source, av.open(path, "w") as output:
        stream = source.streams.video[0]
        copy = output.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.size and not packet.is_keyframe:
                packet.stream = copy
                output.mux(packet)
    return path


EXPECTED = {  # base name -> (status, frames)
    "good.mp4": ("ok", 14),
    "fragmented.mp4": ("ok", 9),
    "corrupt.mp4": ("undecodable", 0),
    "empty.avi": ("empty", 0),
    "truncated.mp4": ("undecodable", 0),
    "no_frames.mkv": ("empty", 0),
}


def by_name(rows):
    return {row["video"].split("/")[-1]: row for row in rows}


@pytest.mark.parametrize("full", [True, False])
def test_folder_scan(videos, full):
    rows = by_name(scan(video_folder=str(videos), workers=2, full=full, progress=False))
    assert {name: (row["status"], row["frames"]) for name, row in rows.items()} == EXPECTED
    good = rows["good.mp4"]
    assert (good["header_frames"], good["width"], good["height"]) == (14, 96, 64)
    assert rows["fragmented.mp4"]["header_frames"] == 0  # the decoded count is what training uses
    assert rows["good.mp4"]["fps"] == 3.0
    assert "truncated" in rows["truncated.mp4"]["error"]
    assert rows["corrupt.mp4"]["error"].startswith("InvalidDataError")


def test_lmdb_scan_and_outputs(videos, tmp_path, capsys):
    lmdb_path = str(tmp_path / "videos.lmdb")
    folder_to_lmdb(str(videos), lmdb_path, map_size_gb=0.05, progress=False, extensions=None)
    broken, report = tmp_path / "out" / "broken.txt", tmp_path / "out" / "report.json"
    rows = main(["--lmdb", lmdb_path, "--workers", "2", "--broken_list", str(broken), "--report", str(report)])
    expected = {**EXPECTED, "readme.txt": ("undecodable", 0)}  # an LMDB key is checked whatever its name
    assert {row["video"]: (row["status"], row["frames"]) for row in rows} == expected
    assert sorted(broken.read_text().splitlines()) == sorted(k for k, (s, _) in expected.items() if s != "ok")
    assert json.loads(report.read_text()) == rows
    out = capsys.readouterr().out
    assert "7 videos: 2 ok, 2 empty, 3 undecodable; frames min 9, median 11.5, max 14" in out


def test_folder_cli_writes_csv_and_paths(videos, tmp_path):
    broken, report = tmp_path / "broken.txt", tmp_path / "report.csv"
    main(["--video_folder", str(videos), "--workers", "1", "--broken_list", str(broken), "--report", str(report)])
    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["video"] for row in rows] == sorted(str(videos / p) for p in (
        "good.mp4", "sub/fragmented.mp4", "corrupt.mp4", "empty.avi", "truncated.mp4", "no_frames.mkv"))
    assert {row["video"].split("/")[-1]: int(row["frames"]) for row in rows} == \
        {name: frames for name, (_, frames) in EXPECTED.items()}
    assert sorted(broken.read_text().splitlines()) == sorted(
        str(videos / name) for name, (status, _) in EXPECTED.items() if status != "ok")
    assert not list(tmp_path.glob("*.part"))


def test_bytes_and_missing_sources():
    assert check_one(b"", "key")["status"] == "empty"
    assert check_one(None, "gone")["status"] == "empty"
    assert check_one(b"\x00" * 100, "junk")["status"] == "undecodable"


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["--video_folder", str(tmp_path), "--lmdb", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a directory"):
        main(["--video_folder", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--lmdb", str(tmp_path / "missing.lmdb")])


def run_tool(*args, cwd):
    """preprocess/check_video.py as the README runs it, as a script, from ``cwd``."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "preprocess", "check_video.py")
    return subprocess.run([sys.executable, script, *args, "--workers", "1"], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_reports_beside_the_input_and_exit_status(videos, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_tool("--video_folder", str(videos) + "/", cwd=elsewhere)
    assert result.returncode == 1, result.stderr  # broken videos found
    assert os.listdir(elsewhere) == []  # nothing in the working folder
    broken = (tmp_path / "videos.broken.txt").read_text().splitlines()
    assert sorted(broken) == sorted(str(videos / n) for n, (status, _) in EXPECTED.items() if status != "ok")
    with open(tmp_path / "videos.report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(EXPECTED)
    good = tmp_path / "good"
    good.mkdir()
    write_video(str(good / "fine.mp4"), num_frames=4, width=64, height=48)
    result = run_tool("--video_folder", "good", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "good.broken.txt").read_text() == ""
    assert "1 videos: 1 ok, 0 empty, 0 undecodable" in result.stdout


def test_reports_in_the_output_folder(videos, tmp_path):
    lmdb_path = str(tmp_path / "videos.lmdb")
    folder_to_lmdb(str(videos), lmdb_path, map_size_gb=0.05, progress=False)
    out = tmp_path / "reports"
    main(["--lmdb", lmdb_path, "--workers", "1", "--output", str(out), "--report", str(tmp_path / "r.json")])
    assert sorted(os.listdir(out)) == ["broken_videos.txt"]  # --report names its own file
    assert len(json.loads((tmp_path / "r.json").read_text())) == len(EXPECTED)
    assert len((out / "broken_videos.txt").read_text().splitlines()) == 4


def test_a_folder_without_videos_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no video here")
    with pytest.raises(SystemExit, match="holds no video"):
        main(["--video_folder", str(tmp_path)])
