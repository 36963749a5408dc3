"""CLIP's image and text towers in OpenAI's state-dict key layout, built from a state dict.

Every size is inferred from the weights (`config_from_state_dict`), so ViT-B/32, ViT-B/16,
ViT-L/14 and tiny test models (width 64, one head) build the same way. What the weights cannot
tell (the MLP's activation, a head count other than width/64, the image statistics the model was
trained with) comes with the weights of other CLIPs (`modules/clip_sources.py`) in a CLIPConfig.
Tensors inside the towers are batch-first: `[rows, tokens, width]`.

Each residual block has an optional `tokencluster_inter` module (None by default): the image
tower's token-clustering hook. The block calls it on its input before attention and calls its
`post_attention` after the attention residual, in the block's `before_attention` /
`after_attention` steps, which per-block extensions (X-CLIP's cross-frame block) override.
"""
import hashlib
import math
import os
import urllib.request
import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from modules.recompute import then


OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the RGB statistics OpenAI's CLIPs were trained with
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPConfig:
    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int
    linear_patch: str = "2d"  # "3d": 3-D patches over 3 frames (`visual.conv2`), --linear_patch
    vision_heads: int | None = None  # None: width / 64, as every OpenAI CLIP
    activation: str = "quick_gelu"  # the MLPs' activation: OpenAI's QuickGELU, or "gelu" (many open_clip models)
    image_mean: tuple = OPENAI_IMAGE_MEAN  # RGB statistics the frames are normalised with
    image_std: tuple = OPENAI_IMAGE_STD

    def __post_init__(self):
        if self.vision_heads is None:
            self.vision_heads = self.vision_width // 64 or 1
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"CLIP activation {self.activation!r} is unknown; one of {', '.join(ACTIVATIONS)}")
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)


def config_from_state_dict(state_dict):
    """Infer every size of a ViT CLIP from its OpenAI-layout state dict (SPEC §1)."""
    if "visual.conv1.weight" not in state_dict or "visual.proj" not in state_dict:
        raise ValueError("not a ViT CLIP state dict in OpenAI's key layout (no visual.conv1.weight / "
                         "visual.proj); ResNet CLIP models are not supported")
    conv1 = state_dict["visual.conv1.weight"]  # [W, 3, P, P]
    vision_layers = len([k for k in state_dict if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_layers = {k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")}
    transformer_width = state_dict["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=conv1.shape[-1] * grid,
        vision_layers=vision_layers,
        vision_width=conv1.shape[0],
        vision_patch_size=conv1.shape[-1],
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=transformer_width // 64 or 1,
        transformer_layers=len(text_layers),
    )


def clip_config_from_dict(saved):
    """A CLIPConfig from the dict of its fields a checkpoint saved (`clip_config`), or None when
    there is none (OpenAI-convention weights, whose sizes the keys give)."""
    if not isinstance(saved, dict):
        return None
    names = {f.name for f in fields(CLIPConfig)}
    return CLIPConfig(**{k: v for k, v in saved.items() if k in names})


def saved_clip_config(checkpoint):
    """The CLIPConfig a checkpoint of this project saved, or None (see `clip_config_from_dict`)."""
    return clip_config_from_dict(checkpoint.get("clip_config") if isinstance(checkpoint, dict) else None)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so fp16 weights stay stable."""

    def forward(self, x):
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.type(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}  # CLIPConfig.activation -> module (erf GELU)


class Attention(nn.Module):
    """Multi-head self-attention with CLIP's fused in-projection (`attn.in_proj_weight` [3W, W])."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x, attn_mask=None):
        """x [B, L, W]; attn_mask additive, broadcastable to [B, heads, L, L]."""
        B, L, W = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(B, L, self.heads, W // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, L, hs)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, L, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, W))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, activation="quick_gelu"):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", ACTIVATIONS[activation]()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = LayerNorm(width)
        self.tokencluster_inter = None  # token-clustering hook, set by VisionTransformer.set_block_hooks
        self.drop_path = nn.Identity()  # stochastic depth on the residual branches (X-CLIP's blocks set it)
        self.lean_backward = True  # recompute cheap saved tensors in backward (modules/recompute.set_lean_backward)

    def before_attention(self, x):
        """Per-block extension point before attention (subclasses extend it): the clustering hook."""
        if self.tokencluster_inter is not None:
            x = self.tokencluster_inter(x)
        return x

    def after_attention(self, x):
        """Per-block extension point after the attention residual: the clustering hook's second half."""
        if self.tokencluster_inter is not None:
            x = self.tokencluster_inter.post_attention(x)
        return x

    def forward(self, x, attn_mask=None):
        """x [rows, tokens, W] -> [rows', tokens', W]; the extension points may change rows and tokens."""
        x = self.before_attention(x)
        # then(f, x, g) = g(f(x)); with lean_backward, f's outputs (ln_1, ln_2, the activation) are
        # recomputed in backward instead of kept (modules/recompute.py)
        x = x + self.drop_path(then(self.ln_1, x, lambda y: self.attn(y, attn_mask), self.lean_backward))
        x = self.after_attention(x)
        return x + self.drop_path(then(self.ln_2, x, self._mlp, self.lean_backward))

    def _mlp(self, x):
        """self.mlp(x), its activation under the block's lean backward."""
        return then(self.mlp.gelu, self.mlp.c_fc(x), self.mlp.c_proj, self.lean_backward)


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, activation="quick_gelu"):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, activation) for _ in range(layers)])

    def forward(self, x, attn_mask=None):
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, resolution, patch_size, width, layers, heads, output_dim, linear_patch="2d",
                 activation="quick_gelu"):
        super().__init__()
        scale = width ** -0.5
        self.patch_size = patch_size
        self.linear_patch = linear_patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        if linear_patch == "3d":  # CLIP4Clip's 3-D patches: 3 frames x P x P, stride 1 in time, padded
            self.conv2 = nn.Conv3d(3, width, kernel_size=(3, patch_size, patch_size),
                                   stride=(1, patch_size, patch_size), padding=(1, 0, 0), bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def set_block_hooks(self, hooks):
        """Install one token-clustering module (or None) per block, as `resblocks.N.tokencluster_inter`."""
        if len(hooks) != len(self.transformer.resblocks):
            raise ValueError(f"got {len(hooks)} block hooks for {len(self.transformer.resblocks)} blocks")
        for block, hook in zip(self.transformer.resblocks, hooks):
            block.tokencluster_inter = hook

    def patch_embedding(self, x, video_frames=None):
        """Frames [B·T, 3, H, W] -> patch features [B·T, W, g, g]. With linear_patch 3d the frames of
        each video (T = video_frames consecutive rows) go through conv2 together, zero-padded in time."""
        x = x.type(self.conv1.weight.dtype)
        if self.linear_patch == "2d":
            return self.conv1(x)
        if video_frames is None:
            raise ValueError("--linear_patch 3d needs the number of frames per video (video_frames)")
        x = x.view(-1, video_frames, *x.shape[1:]).transpose(1, 2)  # (B, 3, T, H, W)
        x = self.conv2(x).transpose(1, 2)  # (B, T, W, g, g)
        return x.reshape(-1, *x.shape[2:])  # (B·T, W, g, g)

    def embed(self, x, video_frames=None):
        """Frames [B·T, 3, H, W] -> the blocks' input [B·T, 1 + g², W]: patches, [CLS], positions, ln_pre.
        `video_frames` (T) is needed by linear_patch 3d only."""
        x = self.patch_embedding(x, video_frames)  # (B·T, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B·T, g², W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B·T, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B·T, 1 + g², W)
        return self.ln_pre(x)

    def forward(self, x, return_tokens=False, video_frames=None):
        """Frames [B·T, 3, H, W] -> features [rows, D] of token 0 (a frame, or a segment after
        clustering), and with `return_tokens` also every token after ln_post and proj [rows, n, D].
        `video_frames` (T) is needed by linear_patch 3d only."""
        x = self.transformer(self.embed(x, video_frames))  # (rows, 1 + n, W)
        if return_tokens:
            tokens = self.ln_post(x) @ self.proj  # (rows, 1 + n, D)
            return tokens[:, 0], tokens
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """OpenAI CLIP (ViT): `visual` image tower and, at the top level, the text tower."""

    def __init__(self, config: CLIPConfig, visual=None):
        """`visual` replaces the standard image tower (X-CLIP passes its cross-frame tower)."""
        super().__init__()
        self.config = config
        self.visual = visual if visual is not None else VisionTransformer(
            config.image_resolution, config.vision_patch_size, config.vision_width, config.vision_layers,
            config.vision_heads, config.embed_dim, linear_patch=config.linear_patch, activation=config.activation)
        self.transformer = Transformer(config.transformer_width, config.transformer_layers,
                                       config.transformer_heads, config.activation)
        self.token_embedding = nn.Embedding(config.vocab_size, config.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.transformer_width))
        self.ln_final = LayerNorm(config.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(config.transformer_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, frames, return_tokens=False, video_frames=None):
        return self.visual(frames, return_tokens=return_tokens, video_frames=video_frames)

    def encode_text(self, ids):
        """ids [B, Lt] (Lt <= context length) -> features [B, D] at the end-of-text token (largest id)."""
        B, L = ids.shape
        if L > self.config.context_length:
            raise ValueError(f"text of {L} tokens exceeds CLIP's context length {self.config.context_length}")
        x = self.token_embedding(ids).type(self.dtype) + self.positional_embedding[:L].type(self.dtype)
        causal = torch.full((L, L), float("-inf"), device=ids.device).triu(1)  # (L, L)
        x = self.ln_final(self.transformer(x, causal))  # (B, L, W)
        return x[torch.arange(B, device=ids.device), ids.argmax(dim=-1)] @ self.text_projection


# Sizes of the official models, for random-weight benchmarks, and of `demo-small`, a small CLIP
# trained from scratch by the demo (no weights file exists for it).
MODEL_CONFIGS = {
    "ViT-B/32": CLIPConfig(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": CLIPConfig(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": CLIPConfig(768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "ViT-L/14@336px": CLIPConfig(768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "demo-small": CLIPConfig(128, 224, 4, 128, 32, 77, 49408, 128, 2, 4),
}
SCRATCH_MODELS = ("demo-small",)


def initialize_parameters(model):
    """OpenAI CLIP's initialisation, for models trained from scratch and random-weight benchmarks."""
    cfg = model.config
    nn.init.normal_(model.token_embedding.weight, std=0.02)
    nn.init.normal_(model.positional_embedding, std=0.01)
    for transformer in (model.transformer, model.visual.transformer):
        width, layers = transformer.width, transformer.layers
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
    nn.init.normal_(model.text_projection, std=cfg.transformer_width ** -0.5)
    model.logit_scale.data.fill_(math.log(1 / 0.07))


def random_clip_state_dict(name, seed=0):
    """The state dict of a freshly initialised CLIP of a named size."""
    torch.manual_seed(seed)
    model = CLIP(MODEL_CONFIGS[name])
    initialize_parameters(model)
    return model.state_dict()


# Keys of OpenAI's TorchScript archives that are not weights.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


LINEAR_PATCHES = ("2d", "3d")  # --linear_patch: conv1 on each frame, or conv2 over 3 frames


def conv2_from_conv1(conv1, kernel_frames=3):
    """The original's initial 3-D patch weight: conv1 [W, 3, P, P] in the middle of the temporal
    kernel, zeros before and after -> [W, 3, kernel_frames, P, P]; a fresh 3d model computes the 2d one."""
    before = (kernel_frames - 1) // 2
    weight = torch.zeros(conv1.shape[0], conv1.shape[1], kernel_frames, *conv1.shape[2:], dtype=conv1.dtype)
    weight[:, :, before] = conv1
    return weight


def build_clip(state_dict, linear_patch="2d", config=None):
    """Build an fp32 CLIP from an OpenAI-layout state dict (fp16 or fp32), loading it strictly.
    `config` (activation, heads, image statistics of converted weights) defaults to the sizes
    inferred from the state dict with OpenAI's conventions. With linear_patch "3d",
    `visual.conv2.weight` comes from the state dict or, when absent, from conv1 (`conv2_from_conv1`)."""
    if linear_patch not in LINEAR_PATCHES:
        raise ValueError(f"--linear_patch {linear_patch} is unknown; choose one of {', '.join(LINEAR_PATCHES)}")
    weights = {k: v.float() for k, v in state_dict.items()}
    if linear_patch == "3d" and "visual.conv2.weight" not in weights:
        weights["visual.conv2.weight"] = conv2_from_conv1(weights["visual.conv1.weight"])
    if linear_patch == "2d" and "visual.conv2.weight" in weights:
        raise ValueError("the CLIP weights hold visual.conv2.weight, a 3-D patch embedding: pass --linear_patch 3d")
    model = CLIP(replace(config or config_from_state_dict(state_dict), linear_patch=linear_patch))
    model.load_state_dict(weights, strict=True)
    return model


# Official OpenAI URLs; the second-to-last path component is the file's SHA-256.
CLIP_URLS = {
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/"
                "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/"
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/"
                "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/"
                      "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}


def clip_weights_path(name, pretrained_dir):
    """`ViT-B/32` -> `<pretrained_dir>/ViT-B-32.pt` (the official file name)."""
    filename = os.path.basename(CLIP_URLS[name]) if name in CLIP_URLS else name.replace("/", "-") + ".pt"
    return os.path.join(os.path.expanduser(pretrained_dir), filename)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_weights(url, target):
    """Download `url` to `target` with a progress bar; the file only appears once its SHA-256 (the
    URL's second-to-last component) has been verified."""
    expected = url.split("/")[-2]
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    partial = target + ".part"
    with urllib.request.urlopen(url) as source, open(partial, "wb") as out:
        total = int(source.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="iB", unit_scale=True, desc=os.path.basename(target)) as bar:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    actual = sha256_of(partial)
    if actual != expected:
        os.remove(partial)
        raise RuntimeError(f"SHA-256 of the file downloaded from {url} is {actual}, expected {expected}; "
                           "nothing was written, try again")
    os.replace(partial, target)
    return target


def read_clip_state_dict(path):
    """OpenAI CLIP weights from a TorchScript archive or a plain state dict, without the
    archive's non-weight entries (input_resolution, context_length, vocab_size)."""
    try:
        with warnings.catch_warnings():  # OpenAI ships TorchScript, which torch now calls deprecated
            warnings.simplefilter("ignore", FutureWarning)
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:  # not a TorchScript archive
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state_dict.items() if k not in NON_WEIGHT_KEYS}


def load_clip_state_dict(name, pretrained_dir, download=False):
    """The state dict of CLIP `name` from `<pretrained_dir>`, downloading it first if asked."""
    path = clip_weights_path(name, pretrained_dir)
    if not os.path.isfile(path):
        url = CLIP_URLS.get(name)
        if download and url:
            download_weights(url, path)
        else:
            hint = f"download it from {url} or pass --download_clip 1" if url else "no official URL is known"
            raise FileNotFoundError(f"CLIP weights for --pretrained_clip_name {name} not found at {path} "
                                    f"(--pretrained_dir {pretrained_dir}); {hint}")
    return read_clip_state_dict(path)


def convert_weights_to_fp16(model):
    """CLIP4Clip's `fp16` precision: linear, conv and attention weights and the projections in
    half precision; LayerNorms and embedding tables stay fp32 (LayerNorm computes in fp32)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            module.half()
        if isinstance(module, Attention):
            module.in_proj_weight.data = module.in_proj_weight.data.half()
            module.in_proj_bias.data = module.in_proj_bias.data.half()
        for name in ("text_projection", "proj"):
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter):
                param.data = param.data.half()
