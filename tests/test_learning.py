"""A few hundred steps on a learnable tiny dataset lift retrieval far above chance."""
import csv
import json
import os

import main as main_module
from tests.tiny_datasets import caption_of, write_msrvtt, write_tiny_clip

NUM_VIDEOS = 16


def test_training_lifts_r1_far_above_chance(tmp_path):
    write_tiny_clip(str(tmp_path / "pretrained"), seed=7)
    flags = write_msrvtt(str(tmp_path / "msrvtt"), num_train=NUM_VIDEOS, num_test=0, frames=6)
    # Evaluate on the training videos with their first caption: the task is to learn these 16 pairs.
    test_csv = tmp_path / "msrvtt" / "test.csv"
    with open(test_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerows([[f"ret{i}", f"msr{i}", f"video{i}", caption_of(i)] for i in range(NUM_VIDEOS)])
    out = tmp_path / "out"
    main_module.main(["--output_dir", str(out), "--pretrained_dir", str(tmp_path / "pretrained"), *flags,
                      "--expand_msrvtt_sentences", "--do_train", "1", "--epochs", "12", "--batch_size", "8",
                      "--batch_size_val", "16", "--max_words", "16", "--max_frames", "4", "--optim", "AdamW",
                      "--lr", "1e-4", "--coef_lr", "1", "--wd", "0.01", "--freeze_layer_num", "-1",
                      "--num_thread_reader", "1", "--n_display", "50", "--cluster_inter", "1",
                      "--cluster_num_blocks", *["49"] * 6, *["16"] * 6,
                      "--target_frames_blocks", *["4"] * 6, *["2"] * 6])
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 12  # 2 captions x 16 videos / 8 = 4 steps per epoch: 48 steps
    chance = 100 / NUM_VIDEOS
    assert results[0]["t2v"]["R1"] < 4 * chance
    assert results[-1]["t2v"]["R1"] >= 6 * chance
