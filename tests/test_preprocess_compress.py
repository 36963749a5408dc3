"""preprocess/compress_video.py on real H.264 files: sizes, frame choice by timestamp (FFmpeg's
fps filter against a plain reference of its rule), keyframes, folder mirroring, skipping finished
outputs, leftovers of interrupted runs, failures."""
import math
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from preprocess.compress_video import (EncodeOptions, compress_file, compress_folder, converted, frame_ticks,
                                       main, output_name, output_size)
from tests.video_factory import write_corrupt_file, write_empty_file, write_truncated_video, write_video


def grey_frames(levels, width=64, height=48):
    """Uniform frames whose grey level identifies the input frame after lossy coding."""
    return np.stack([np.full((height, width, 3), level, np.uint8) for level in levels])


def frame_levels(path):
    """Mean grey level of every frame."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        return [float(f.to_ndarray(format="rgb24").mean()) for f in container.decode(stream)]


def stream_facts(path):
    """Frame count, rate, size, codec and the keyframe flag of every frame in display order."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        keyframes = [p.is_keyframe for p in sorted((p for p in container.demux(stream) if p.size),
                                                    key=lambda p: p.pts)]
        ctx = stream.codec_context
        return {"frames": stream.frames, "rate": stream.average_rate, "size": (ctx.width, ctx.height),
                "codec": ctx.name, "pix_fmt": ctx.pix_fmt, "keyframes": keyframes}


@pytest.mark.parametrize("width,height,expected", [
    (320, 240, (298, 224)),  # 320 * 224 / 240 = 298.67 -> truncated to even
    (240, 320, (224, 298)),  # portrait keeps its shape
    (1920, 1080, (398, 224)),
    (224, 224, (224, 224)),
    (100, 50, (448, 224)),  # small videos are scaled up: the shorter side is always --size
])
def test_output_size(width, height, expected):
    assert output_size(width, height, 224) == expected


def test_output_names():
    assert output_name("clip.avi", "replace") == "clip.mp4"
    assert output_name("x.3gp", "append") == "x.3gp.mp4"
    assert output_name("movie.avi", "keep") == "movie.avi"


def chosen(ticks, time_base, input_rate, fps):
    """Input frame index behind each output frame of ``converted`` (the filter graph), for
    frames shown at ``ticks`` (in ``time_base``); the index rides along in ``frame.opaque``."""
    def frames():
        for index in range(len(ticks)):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").reformat(
                format="yuv420p")
            frame.opaque = index
            yield frame
    outputs = list(converted(frames(), list(ticks), time_base, input_rate, EncodeOptions(fps=fps), (8, 8)))
    assert [frame.pts for frame in outputs] == list(range(len(outputs)))
    return [frame.opaque for frame in outputs]


def fps_filter_reference(ticks, time_base, input_rate, fps):
    """FFmpeg's fps filter rule, written plainly (the earlier hand port's): input frame i at
    t_i seconds from the first frame rounds to slot floor(t_i * fps + 1/2); output frame k is
    the last input frame with slot <= k; there are round((t_last + 1 / input_rate) * fps)
    output frames, at least one."""
    slots = [math.floor((t - ticks[0]) * time_base * fps + Fraction(1, 2)) for t in ticks]
    end = (ticks[-1] - ticks[0]) * time_base + 1 / input_rate
    total = max(1, math.floor(end * fps + Fraction(1, 2)))
    return [max(i for i, slot in enumerate(slots) if slot <= k) for k in range(total)]


def test_filter_graph_rounds_timestamps_to_the_nearest_slot():
    # The hand port's outputs, kept as literals. Frames at 0.0, 0.1, 0.2, 0.5, 1.2 s (time base
    # 1/10) at 3 fps: t * 3 = 0, .3, .6, 1.5 (half way: the later slot), 3.6; the end 1.3 s gives
    # round(3.9) = 4 output frames.
    tenth = Fraction(1, 10)
    assert chosen([0, 1, 2, 5, 12], tenth, Fraction(10), Fraction(3)) == [1, 2, 3, 3]
    # A later start time is the origin; a slower input repeats frames (2 s -> 6 output frames).
    assert chosen([5, 6], Fraction(1), Fraction(1), Fraction(3)) == [0, 0, 0, 1, 1, 1]
    # 1.4 s at 25 fps -> round(4.2) = 4 output frames.
    assert len(chosen(range(35), Fraction(1, 25), Fraction(25), Fraction(3))) == 4
    # 85 frames at 30 fps in milliseconds end at 2.8 + 1/30 s, i.e. 8.5 output periods: a tie, 9 frames
    # (exact only in a time base where 1/30 s is a whole number of ticks).
    assert len(chosen([round(i * 1000 / 30) for i in range(85)], Fraction(1, 1000), Fraction(30), Fraction(3))) == 9
    # One frame of 1/30 s: fps alone gives no frame (0.1 rounds to 0 slots); we keep one.
    assert chosen([0], Fraction(1, 30), Fraction(30), Fraction(3)) == [0]
    assert chosen([], Fraction(1, 30), Fraction(30), Fraction(3)) == []


@pytest.mark.parametrize("time_base,input_rate,fps", [
    (Fraction(1, 1000), Fraction(30), Fraction(3)),
    (Fraction(1, 90000), Fraction(30000, 1001), Fraction(30000, 1001)),
    (Fraction(1, 10), Fraction(5), Fraction(5, 2)),
    (Fraction(1, 1000), Fraction(30000, 1001), Fraction(3)),
])
def test_filter_graph_matches_the_fps_rule_on_irregular_timestamps(time_base, input_rate, fps):
    rng = np.random.default_rng(7)
    period, half_slot = 1 / (input_rate * time_base), 1 / (2 * fps * time_base)  # in ticks
    # Steps between frames: repeated timestamps, a half and whole input periods, gaps longer than
    # an output period, and half an output period (exactly representable in 1/10: ties).
    choices = [0, period / 2, period, 2 * period, 4 * period, half_slot, 3 * half_slot]
    for _ in range(20):
        steps = [round(choices[c]) for c in rng.integers(0, len(choices), size=int(rng.integers(1, 60)))]
        start = int(rng.integers(0, 1000))  # the first frame's time is the origin
        ticks = [start + sum(steps[:i]) for i in range(len(steps))]
        assert chosen(ticks, time_base, input_rate, fps) == \
            fps_filter_reference(ticks, time_base, input_rate, fps)


def test_frame_times_fall_back_to_the_frame_rate():
    period = Fraction(10, 3)  # ticks per input frame
    assert [frame_ticks([7, 9], i, period) for i in range(4)] == [0, 2, 5, 9]
    assert [frame_ticks(None, i, period) for i in range(4)] == [0, 3, 7, 10]


def test_avi_with_b_frames_keeps_display_times(tmp_path):
    # AVI stores no presentation times: decoded B-frame timestamps come out scrambled, the
    # packets' (one per frame) are in order once sorted.
    levels = [20 + 8 * i for i in range(12)]
    source = write_video(str(tmp_path / "b.avi"), frames=grey_frames(levels), fps=6, container_format="avi")
    target = str(tmp_path / "b.mp4")
    assert compress_file(source, target, EncodeOptions(size=48, crf=0)) == 6  # 2 s at 3 fps
    # Frame i at i / 6 s has i * 3 / 6 = i / 2, so slot k takes the last frame with i / 2 < k + 1/2:
    # frame 2 k (frame 2 k + 1 lies exactly half way and goes to slot k + 1).
    decoded = frame_levels(source)
    assert np.allclose(frame_levels(target), [decoded[2 * k] for k in range(6)], atol=1.0)


def test_compress_file_rate_size_keyframes_and_frame_choice(tmp_path):
    # 45 frames at 15 fps = 3 s; frame i has grey level 20 + 4 i.
    levels = [20 + 4 * i for i in range(45)]
    source = write_video(str(tmp_path / "in.mkv"), frames=grey_frames(levels, 320, 240), fps=15)
    target = str(tmp_path / "out" / "in.mp4")
    count = compress_file(source, target, EncodeOptions(fps=Fraction(3), size=224, keyint=3, crf=0))
    facts = stream_facts(target)
    assert count == 9 and facts["frames"] == 9
    assert facts["rate"] == 3 and facts["size"] == (298, 224)
    assert (facts["codec"], facts["pix_fmt"]) == ("h264", "yuv420p")
    # libx264 may place a keyframe early (scene cuts), never later than --keyint frames apart.
    keyframes = [i for i, key in enumerate(facts["keyframes"]) if key]
    assert keyframes[0] == 0 and max(np.diff(keyframes + [9])) <= 3
    # Input frame i rounds to slot floor(i / 5 + 1/2): output frame k is input frame 5 k + 2.
    # (Input frames are 4 grey levels apart; compare with the decoded input.)
    decoded = frame_levels(source)
    assert np.allclose(frame_levels(target), [decoded[5 * k + 2] for k in range(9)], atol=1.0)
    assert not os.path.exists(target + ".part")


def test_variable_frame_rate_input(tmp_path):
    # Timestamps in tenths of a second with gaps: 0.0 0.1 0.2 0.5 0.6 1.2 1.3 2.0.
    pts = [0, 1, 2, 5, 6, 12, 13, 20]
    levels = [30 + 25 * i for i in range(len(pts))]
    source = write_video(str(tmp_path / "vfr.mp4"), frames=grey_frames(levels), fps=10, frame_pts=pts)
    with av.open(source) as container:
        rate = Fraction(container.streams.video[0].average_rate)
    target = str(tmp_path / "vfr_out.mp4")
    compress_file(source, target, EncodeOptions(fps=Fraction(3), size=48, keyint=6, crf=0))
    times = [Fraction(p, 10) for p in pts]
    slots = int((times[-1] + 1 / rate) * 3 + Fraction(1, 2))
    expected = [max(i for i, t in enumerate(times) if t * 3 < k + Fraction(1, 2)) for k in range(slots)]
    assert expected[:7] == [1, 2, 4, 4, 6, 6, 7]  # t * 3 = 0 .3 .6 1.5 1.8 3.6 3.9 6
    decoded = frame_levels(source)
    assert np.allclose(frame_levels(target), [decoded[i] for i in expected], atol=1.0)


def test_folder_mirrors_skips_and_lists_failures(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    (raw / "movie_a").mkdir(parents=True)
    (raw / "movie_b" / "deep").mkdir(parents=True)
    write_video(str(raw / "movie_a" / "c1.avi"), num_frames=12, width=160, height=120, fps=6)
    write_video(str(raw / "movie_b" / "deep" / "c2.mp4"), num_frames=9, width=120, height=160, fps=3)
    write_video(str(raw / "movie_b" / "done.mp4"), num_frames=6, width=120, height=160, fps=3)
    write_video(str(raw / "movie_b" / "stale.mp4"), num_frames=6, width=120, height=160, fps=3)
    write_corrupt_file(str(raw / "movie_a" / "bad.mp4"))
    write_empty_file(str(raw / "movie_a" / "empty.mp4"))
    write_truncated_video(str(raw / "cut.mp4"), num_frames=30, width=160, height=120)
    (raw / "notes.txt").write_text("not a video")
    # A finished output from an earlier run (kept as it is) and a half-written one (redone).
    (out / "movie_b").mkdir(parents=True)
    (out / "movie_b" / "done.mp4").write_bytes(b"finished earlier")
    (out / "movie_b" / "stale.mp4.part").write_bytes(b"interrupted")
    failures = tmp_path / "failed.txt"

    result = compress_folder(str(raw), str(out), EncodeOptions(size=64), workers=2, failures_path=str(failures),
                             progress=False)

    assert result["skipped"] == 1
    assert result["done"] == sorted(str(out / p) for p in ("movie_a/c1.mp4", "movie_b/deep/c2.mp4",
                                                            "movie_b/stale.mp4"))
    assert (out / "movie_b" / "done.mp4").read_bytes() == b"finished earlier"
    assert not (out / "movie_b" / "stale.mp4.part").exists()
    assert stream_facts(str(out / "movie_a" / "c1.mp4"))["frames"] == 6  # 2 s at 3 fps
    assert stream_facts(str(out / "movie_b" / "deep" / "c2.mp4"))["size"] == (64, 84)
    failed = {os.path.relpath(path, raw) for path, _ in result["failed"]}
    assert failed == {"movie_a/bad.mp4", "movie_a/empty.mp4", "cut.mp4"}
    assert dict(result["failed"])[str(raw / "cut.mp4")].startswith("InputError: packet")
    lines = failures.read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(path for path, _ in result["failed"])
    assert not any(name.endswith(".part") for _, _, names in os.walk(out) for name in names)
    assert not (out / "notes.mp4").exists() and not (out / "movie_a" / "bad.mp4").exists()


def test_cli_rerun_and_errors(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    write_video(str(raw / "v.webm.mkv"), num_frames=6, width=96, height=64, fps=3)
    write_video(str(raw / "x.3gp"), num_frames=6, width=96, height=64, fps=3, container_format="mp4")
    argv = ["--input_root", str(raw), "--output_root", str(out), "--workers", "1", "--naming", "append",
            "--size", "32"]
    first = main(argv)
    assert sorted(os.listdir(out)) == ["v.webm.mkv.mp4", "x.3gp.mp4"]  # no failure list: nothing failed
    assert first["failed"] == []
    assert main(argv)["skipped"] == 2
    assert "skipped 2 finished" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--size must be even"):
        main(argv + ["--size", "223"])
    with pytest.raises(SystemExit, match="--output_root must differ"):
        main(["--input_root", str(raw), "--output_root", str(raw)])
    with pytest.raises(SystemExit, match="not a directory"):
        main(["--input_root", str(tmp_path / "missing"), "--output_root", str(out)])


def test_output_folder_inside_the_input_folder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_video(str(raw / "a.avi"), num_frames=3, width=32, height=32)
    for _ in range(2):  # the second run must not take the first run's output as an input
        result = compress_folder(str(raw), str(raw / "small"), EncodeOptions(size=32), progress=False)
    assert (result["skipped"], result["done"], result["failed"]) == (1, [], [])
    assert sorted(os.listdir(raw / "small")) == ["a.mp4"]


def test_name_collision_is_refused(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.avi", "a.mkv"):
        write_video(str(raw / name), num_frames=3, width=32, height=32)
    with pytest.raises(ValueError, match="--naming append"):
        compress_folder(str(raw), str(tmp_path / "out"), progress=False)


def test_failure_list_only_when_something_failed(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    write_video(str(raw / "good.mp4"), num_frames=3, width=32, height=32)
    write_corrupt_file(str(raw / "bad.mp4"))
    argv = ["--input_root", str(raw), "--output_root", str(out), "--workers", "1", "--size", "32"]
    assert len(main(argv)["failed"]) == 1
    failures = out / "compress_failures.txt"
    assert failures.read_text().startswith(f"{raw / 'bad.mp4'}\t")
    assert f"failed 1 (listed in {failures})" in capsys.readouterr().out
    # The bad input is replaced by a good one: the rerun redoes it and the old list goes.
    write_video(str(raw / "bad.mp4"), num_frames=3, width=32, height=32)
    assert main(argv)["failed"] == []
    assert sorted(os.listdir(out)) == ["bad.mp4", "good.mp4"]
    assert "failed 0\n" in capsys.readouterr().out
