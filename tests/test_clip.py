import hashlib
import http.server
import os
import threading
from functools import partial

import pytest
import torch

from modules.clip import build_clip, clip_weights_path, config_from_state_dict, download_weights, \
    load_clip_state_dict
from modules.checkpoint import save_checkpoint
from modules.factory import pretrained_clip_weights
from tests.reference_clip import reference_image, reference_text
from tests.tiny_clip import make_tiny_clip_state_dict, save_torchscript_archive


def sample_inputs():
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(3, 3, 224, 224, generator=g)
    ids = torch.zeros(2, 20, dtype=torch.long)
    ids[0, :6] = torch.tensor([49406, 320, 1125, 539, 2368, 49407])
    ids[1, :3] = torch.tensor([49406, 2368, 49407])
    return frames, ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("archive", [True, False])
def test_tiny_clip_loads_and_matches_reference(tmp_path, dtype, archive):
    sd = make_tiny_clip_state_dict(dtype=dtype)
    path = tmp_path / "ViT-B-32.pt"
    if archive:
        save_torchscript_archive(sd, str(path))
    else:
        torch.save(sd, path)
    loaded = load_clip_state_dict("ViT-B/32", str(tmp_path))
    assert set(loaded) == set(sd)  # input_resolution & co. dropped
    model = build_clip(loaded).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref_sd = {k: v.float() for k, v in sd.items()}
    frames, ids = sample_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(frames), reference_image(ref_sd, frames), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(ids), reference_text(ref_sd, ids), atol=1e-5, rtol=0)


def test_config_inferred_from_state_dict():
    sd = make_tiny_clip_state_dict(width=128, layers=3, patch=16, resolution=64, text_width=64, text_layers=2,
                                   embed_dim=64, context=20, vocab=1000)
    cfg = config_from_state_dict(sd)
    assert (cfg.vision_width, cfg.vision_layers, cfg.vision_patch_size, cfg.image_resolution) == (128, 3, 16, 64)
    assert (cfg.vision_heads, cfg.transformer_heads) == (2, 1)
    assert (cfg.transformer_layers, cfg.context_length, cfg.vocab_size, cfg.embed_dim) == (2, 20, 1000, 64)
    model = build_clip(sd).eval()
    tokens_feature, tokens = model.encode_image(torch.randn(2, 3, 64, 64), return_tokens=True)
    assert tokens.shape == (2, 17, 64) and torch.equal(tokens_feature, tokens[:, 0])


def test_text_of_any_length_up_to_context(tmp_path):
    model = build_clip(make_tiny_clip_state_dict()).eval()
    ids = torch.tensor([[49406, 320, 49407] + [0] * 74])
    short = model.encode_text(ids[:, :3])
    full = model.encode_text(ids)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)  # causal mask: padding after EOT is invisible
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))


def test_missing_weights_name_path_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_clip_state_dict("ViT-B/16", str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "ViT-B-16.pt") in message
    assert "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt" in message
    assert "--download_clip" in message


def test_weights_path_uses_official_file_names():
    assert clip_weights_path("ViT-B/32", "/m") == "/m/ViT-B-32.pt"
    assert clip_weights_path("ViT-L/14@336px", "/m") == "/m/ViT-L-14-336px.pt"


@pytest.fixture()
def served_dir(tmp_path):
    """An HTTP server on loopback serving `tmp_path/served`."""
    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_sha256(tmp_path, served_dir):
    root, base = served_dir
    payload = tmp_path / "payload.pt"
    torch.save(make_tiny_clip_state_dict(layers=1, text_layers=1), payload)
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    (root / digest).mkdir()
    (root / digest / "ViT-B-32.pt").write_bytes(payload.read_bytes())
    target = tmp_path / "models" / "ViT-B-32.pt"
    download_weights(f"{base}/{digest}/ViT-B-32.pt", str(target))
    assert target.read_bytes() == payload.read_bytes()
    assert os.listdir(target.parent) == ["ViT-B-32.pt"]

    wrong = "0" * 64
    (root / wrong).mkdir()
    (root / wrong / "ViT-B-16.pt").write_bytes(payload.read_bytes())
    bad_target = tmp_path / "models" / "ViT-B-16.pt"
    with pytest.raises(RuntimeError, match="SHA-256"):
        download_weights(f"{base}/{wrong}/ViT-B-16.pt", str(bad_target))
    assert not bad_target.exists() and os.listdir(target.parent) == ["ViT-B-32.pt"]  # nothing half-written


def test_load_downloads_when_asked(tmp_path, served_dir, monkeypatch):
    root, base = served_dir
    payload = tmp_path / "payload.pt"
    sd = make_tiny_clip_state_dict(layers=1, text_layers=1)
    save_torchscript_archive(sd, str(payload))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    (root / digest).mkdir()
    (root / digest / "ViT-B-32.pt").write_bytes(payload.read_bytes())
    monkeypatch.setitem(__import__("modules.clip").clip.CLIP_URLS, "ViT-B/32", f"{base}/{digest}/ViT-B-32.pt")
    pretrained = tmp_path / "pretrained"
    with pytest.raises(FileNotFoundError):
        load_clip_state_dict("ViT-B/32", str(pretrained))
    loaded = load_clip_state_dict("ViT-B/32", str(pretrained), download=True)
    assert set(loaded) == set(sd) and torch.equal(loaded["visual.proj"], sd["visual.proj"])


def test_pretrained_reads_clip_files_and_a_retrieval_checkpoints_clip(tmp_path):
    """--pretrained: OpenAI's TorchScript archive or state dict as it is, or the fine-tuned CLIP
    inside a retrieval checkpoint (its clip.* weights, DDP prefix and cluster tables dropped)."""
    clip = make_tiny_clip_state_dict(layers=2, text_layers=1, vocab=1000, resolution=64)
    torch.save(clip, tmp_path / "plain.pt")
    save_torchscript_archive(clip, tmp_path / "jit.pt", resolution=64, vocab=1000)
    model_state = {"module.clip." + k: v + 1 for k, v in clip.items()}
    model_state["module.clip.visual.transformer.resblocks.0.tokencluster_inter.table"] = torch.zeros(3)
    model_state["module.head.weight"] = torch.zeros(2)
    save_checkpoint({"state_dict": model_state, "epoch": 3, "hparams": {"lr": 1e-4}}, str(tmp_path / "ckpt.pth.tar"))
    for name, expected in (("plain.pt", clip), ("jit.pt", clip),
                           ("ckpt.pth.tar", {k: v + 1 for k, v in clip.items()})):
        state = pretrained_clip_weights(str(tmp_path / name)).state_dict
        assert state.keys() == expected.keys(), name
        assert all(torch.equal(state[k], expected[k]) for k in expected), name
    torch.save({"state_dict": {"head.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt holds neither"):
        pretrained_clip_weights(str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="--pretrained .*absent.pt"):
        pretrained_clip_weights(str(tmp_path / "absent.pt"))
