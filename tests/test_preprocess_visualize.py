"""preprocess/visualize_clusters.py on a tiny CLIP and a real video: the medoids it draws equal
a reference clustering of the captured block input, traced back to patches through earlier
clustering blocks, and the PNG keeps medoid patches and dims the others; and
TokenCluster.medoid_indices, which the tool relies on."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import params
from dataloaders.decode import read_frames
from dataloaders.transforms import frames_to_clip
from modules.checkpoint import save_checkpoint
from modules.cluster.kmedoids import batch_kmedoids
from modules.cluster.schedule import build_cluster_specs
from modules.cluster.token_cluster import TokenCluster
from modules.factory import create_model
from preprocess.visualize_clusters import main
from tests.tiny_clip import make_tiny_clip_state_dict
from tests.video_factory import write_corrupt_file, write_video

GRID, N, S = 7, 49, 224  # tiny CLIP: patch 32 at 224 pixels
ONE_CLUSTERING = ["--max_frames", "4", "--cluster_inter", "1",
                  "--cluster_num_blocks", *["49"] * 6, *["10"] * 6, "--target_frames_blocks", *["4"] * 6, *["2"] * 6]
TWO_CLUSTERINGS = ["--max_frames", "4", "--cluster_inter", "1", "--cluster_num_blocks", *["49"] * 6,
                   *["10"] * 3, *["6"] * 3, "--target_frames_blocks", *["4"] * 6, *["2"] * 3, *["1"] * 3]


@pytest.fixture
def setup(tmp_path):
    """A tiny CLIP as ViT-B-32.pt in a pretrained folder, and a 256x224 video of 16 frames."""
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    torch.save(make_tiny_clip_state_dict(seed=3), pretrained / "ViT-B-32.pt")
    video = write_video(str(tmp_path / "clip.mp4"), num_frames=16, width=256, height=224, seed=5)
    return tmp_path, str(pretrained), video


def reference_kmedoids(model, pixels, block, frames_out, k):
    """Medoids (frames_out, K) of a block, from its input captured here and clustered by the
    plain batch_kmedoids on the frame-major segment tokens (one video, one chunk)."""
    captured = {}
    blocks = model.clip.visual.transformer.resblocks
    hook = blocks[block].register_forward_pre_hook(lambda m, inputs: captured.setdefault("x", inputs[0]))
    with torch.no_grad():
        model.clip.visual(pixels)
    hook.remove()
    x = captured["x"][:, 1:]  # (f_in, n, W)
    tokens = x.reshape(frames_out, -1, x.shape[-1])  # (f_out, d * n, W)
    spec = blocks[block].tokencluster_inter.spec
    _, medoids = batch_kmedoids(tokens, k, distance=spec.distance, norm_p=spec.norm_p, threshold=spec.threshold,
                                iter_limit=spec.iter_limit)
    return medoids.numpy()


def model_and_pixels(flags, pretrained, video, output_dir, checkpoint_state=None):
    args = params.get_args(flags + ["--output_dir", str(output_dir), "--pretrained_dir", pretrained])
    model = create_model(args, checkpoint_state or make_tiny_clip_state_dict(seed=3)).eval()
    frames, _ = read_frames(video, 4, train=False)
    return model, frames_to_clip(frames, S), frames


def test_first_clustering_block_png_and_indices(setup):
    tmp_path, pretrained, video = setup
    out, indices = tmp_path / "fig" / "medoids.png", tmp_path / "medoids.json"
    block, medoids = main(["--video", video, "--out", str(out), "--indices_json", str(indices),
                           "--pretrained_dir", pretrained, *ONE_CLUSTERING])

    model, pixels, frames = model_and_pixels(ONE_CLUSTERING, pretrained, video, tmp_path)
    expected = reference_kmedoids(model, pixels, 6, frames_out=2, k=10)  # (2, 10) into 2 x 49 tokens
    assert block == 7
    assert medoids.tolist() == [(s * 2 * N + expected[s]).tolist() for s in range(2)]  # segment s: frames 2s, 2s+1
    saved = json.loads(indices.read_text())
    assert saved["block"] == 7 and saved["grid"] == GRID
    assert saved["segments"] == [[[int(m) // N, int(m) % N // GRID, int(m) % GRID] for m in seg] for seg in medoids]

    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (2 * S + 4, 2 * S + 4, 3)  # 2 segments x 2 frames, 4-pixel gaps
    crop = frames[:, :, 16:240]  # 256 wide -> centre 224 columns; no resize at 224 high
    kept = {int(m) for m in medoids.ravel()}
    veil = np.array([192, 192, 192])
    for t in range(4):
        row, column = divmod(t, 2)
        tile = image[row * (S + 4):row * (S + 4) + S, column * (S + 4):column * (S + 4) + S].astype(int)
        for p in range(N):
            r, c = divmod(p, GRID)
            patch = tile[32 * r:32 * r + 32, 32 * c:32 * c + 32]
            source = crop[t, 32 * r:32 * r + 32, 32 * c:32 * c + 32].astype(int)
            if t * N + p in kept:
                assert np.array_equal(patch, source)  # medoid patches keep their pixels
            else:
                dimmed = np.rint((1 - 170 / 255) * source + 170 / 255 * veil)
                assert np.abs(patch - dimmed).max() <= 1
    assert 0 < len(kept) < 4 * N


def test_later_block_traced_through_the_first(setup):
    tmp_path, pretrained, video = setup
    # The model comes from a checkpoint only: no CLIP file in this pretrained folder.
    state = make_tiny_clip_state_dict(seed=8)
    model, pixels, _ = model_and_pixels(TWO_CLUSTERINGS, pretrained, video, tmp_path, state)
    checkpoint = tmp_path / "ckpt.best.pth.tar"
    save_checkpoint({"epoch": 1, "state_dict": model.state_dict()}, str(checkpoint))
    empty = tmp_path / "no_clip"
    empty.mkdir()
    out = tmp_path / "block10.png"

    block, medoids = main(["--video", video, "--out", str(out), "--checkpoint", str(checkpoint), "--block", "10",
                           "--pretrained_dir", str(empty), *TWO_CLUSTERINGS])

    first = reference_kmedoids(model, pixels, 6, frames_out=2, k=10)  # segment s of frames 2s, 2s+1
    second = reference_kmedoids(model, pixels, 9, frames_out=1, k=6)  # one segment of the 2 x 10 tokens
    traced = []
    for j in second[0]:
        segment, slot = divmod(int(j), 10)
        m = int(first[segment][slot])
        traced.append((2 * segment + m // N) * N + m % N)
    assert block == 10 and medoids.tolist() == [traced]
    assert Image.open(out).size == (4 * S + 3 * 4, S)  # one segment of 4 frames


@pytest.mark.parametrize("extra,message", [
    (["--block", "3"], "--block 3 has no k-medoids/spectral module; choose one of 7"),
    (["--cluster_algo", "pooling"], "no block clusters tokens into medoids"),
])
def test_unusable_blocks_are_refused(setup, extra, message):
    tmp_path, pretrained, video = setup
    with pytest.raises(SystemExit, match=message):
        main(["--video", video, "--out", str(tmp_path / "x.png"), "--pretrained_dir", pretrained,
              *ONE_CLUSTERING, *extra])
    assert not (tmp_path / "x.png").exists()


def test_bad_inputs_exit_with_a_message(setup):
    tmp_path, pretrained, video = setup
    corrupt = write_corrupt_file(str(tmp_path / "corrupt.mp4"))
    with pytest.raises(SystemExit, match="corrupt.mp4"):
        main(["--video", corrupt, "--out", str(tmp_path / "x.png"), "--pretrained_dir", pretrained, *ONE_CLUSTERING])
    with pytest.raises(SystemExit, match="not found at .*ViT-B-32.pt"):
        main(["--video", video, "--out", str(tmp_path / "x.png"), "--pretrained_dir", str(tmp_path / "none"),
              *ONE_CLUSTERING])
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("algorithm", ["kmediods++", "spectral"])
def test_medoid_indices_are_the_tokens_the_forward_pass_keeps(algorithm):
    """TokenCluster.medoid_indices against the forward pass: 9 videos give 18 segments, so the
    16-segment chunks of the segment-major layout are crossed."""
    specs = build_cluster_specs([49] * 6 + [10] * 6, [4] * 6 + [2] * 6, 4, True, algorithm, width=64,
                                num_patches=N, chunk_size=16)
    module = TokenCluster(specs[6]).eval()
    x = torch.randn(9 * 4, 1 + N, 64, generator=torch.Generator().manual_seed(0))  # (B·f_in, 1 + n, W)
    out = module(x)  # (B·f_out, 1 + K, W)
    medoids = module.medoid_indices(x)
    assert medoids.shape == (9, 2, 10) and medoids.dtype == torch.int64
    for b in range(9):
        for s in range(2):
            segment = x[4 * b + 2 * s:4 * b + 2 * s + 2, 1:].reshape(2 * N, 64)  # frame-major d·n tokens
            assert torch.equal(out[2 * b + s, 1:], segment[medoids[b, s]])
    with pytest.raises(ValueError, match="pooling has no medoids"):
        TokenCluster(build_cluster_specs([49] * 6 + [10] * 6, [4] * 6 + [2] * 6, 4, True, "pooling", width=64,
                                         num_patches=N, chunk_size=16)[6]).medoid_indices(x)
