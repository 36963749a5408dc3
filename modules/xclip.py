"""X-CLIP (Ni et al., ECCV 2022) for video recognition, in the original's state-dict layout.

CLIP with a cross-frame image tower, a multi-frame integration transformer (`mit.*`) and a
video-specific prompt generator (`prompts_*`) that adapts the class-name text features to each video
(XCLIP_SPEC §1). Build it from OpenAI CLIP weights (`build_xclip`) to train, or from an X-CLIP
checkpoint (`build_xclip_from_checkpoint`, sizes inferred from the keys) to evaluate or resume.

    model = build_xclip_from_checkpoint(read_xclip_checkpoint(path), num_frames=8).eval()
    text_ids = tokenize_class_names(["abseiling", "playing guitar"])  # [K, 77]
    logits = model(video, text_ids)  # video [B, T, 3, H, W] -> [B, K]
"""
import collections
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from modules.checkpoint import CheckpointMismatch, mismatch_message
from modules.clip import CLIP, NON_WEIGHT_KEYS, CLIPConfig, LayerNorm, config_from_state_dict, saved_clip_config
from modules.tokenizer import SimpleTokenizer
from modules.xclip_parts import CrossFrameVisionTransformer, MultiFrameIntegrationTransformer, VideoSpecificPrompt

CONTEXT_LENGTH = 77  # class names always fill CLIP's whole context: [SOT] + BPE + [EOT], zero-padded

# The original saves its yacs config object in the checkpoint; read as an OrderedDict, it needs
# neither yacs nor code execution (XCLIP_SPEC §2).
RELEASED_CHECKPOINT_GLOBALS = [(collections.OrderedDict, "yacs.config.CfgNode")]


@dataclass
class XCLIPConfig:
    clip: CLIPConfig
    num_frames: int  # T, frames per view (--max_frames); the MIT's positional table has T rows
    mit_layers: int = 1
    prompts_layers: int = 2
    prompts_alpha: float = 0.1  # initial value of prompts_generator.alpha
    drop_path_rate: float = 0.0  # of the last vision block; rates rise linearly from 0 at the first
    cache_text: bool = True  # encode the class texts once per label list (frozen text tower, MODEL.FIX_TEXT)

    def drop_path_rates(self) -> list[float]:
        layers = self.clip.vision_layers
        if self.drop_path_rate <= 0.0:
            return [0.0] * layers
        return torch.linspace(0, self.drop_path_rate, layers).tolist()


class XCLIP(CLIP):
    """CLIP's text tower and keys, the cross-frame image tower (`visual.*`), MIT and prompts."""

    def __init__(self, config: XCLIPConfig):
        c = config.clip
        visual = CrossFrameVisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
                                             c.vision_heads, c.embed_dim, config.num_frames, config.drop_path_rates(),
                                             c.activation)
        super().__init__(c, visual=visual)
        self.xclip_config = config
        self.mit = MultiFrameIntegrationTransformer(config.num_frames, c.embed_dim, config.mit_layers)
        self.prompts_generator = VideoSpecificPrompt(c.embed_dim, config.prompts_layers, config.prompts_alpha)
        self.prompts_visual_ln = LayerNorm(c.vision_width)
        self.prompts_visual_proj = nn.Parameter(torch.randn(c.vision_width, c.embed_dim))
        self._text_cache = None  # (key, token ids [K, 77], features [K, D]); not part of the state dict
        self.register_load_state_dict_post_hook(clear_text_cache_after_load)

    @property
    def num_frames(self) -> int:
        return self.xclip_config.num_frames

    def encode_video(self, video):
        """video [B, T, 3, H, W] -> (video features [B, D] before normalisation, visual prompt
        tokens [B, n, D]: the projected patch tokens averaged over the T frames)."""
        B, T = video.shape[:2]
        if T != self.num_frames:
            raise ValueError(f"the model takes {self.num_frames} frames per video (--max_frames), got {T}")
        frame_features, patches = self.visual(video.flatten(0, 1))  # (B·T, D), (B·T, n, W)
        patches = self.prompts_visual_ln(patches) @ self.prompts_visual_proj  # (B·T, n, D)
        patches = patches.view(B, T, -1, patches.shape[-1]).mean(dim=1)  # (B, n, D)
        return self.mit(frame_features.view(B, T, -1)), patches

    def clear_text_cache(self):
        self._text_cache = None

    def class_text_features(self, text_ids):
        """text_ids [K, 77] -> class features [K, D] (not normalised).

        With `cache_text` the features are computed once, without gradients, and reused while the
        same token tensor comes back (same ids, device, autocast and inference-mode state: features
        made under inference mode cannot enter a training graph). Difference from the
        original (XCLIP_SPEC §1.6): its cache ignored the input, so a new label list got stale
        features, and it left the model in training mode; this one never changes `training`.
        """
        if not self.xclip_config.cache_text:
            return self.encode_text(text_ids)
        device = text_ids.device.type
        key = (text_ids.device, torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device),
               torch.is_inference_mode_enabled())
        cached = self._text_cache
        if cached is None or cached[0] != key or not torch.equal(cached[1], text_ids):
            with torch.no_grad():
                self._text_cache = (key, text_ids.clone(), self.encode_text(text_ids))
        return self._text_cache[2]

    def forward(self, video, text_ids):
        """video [B, T, 3, H, W], text_ids [K, 77] -> logits [B, K] = exp(logit_scale)·cos(v_b, t_bk)."""
        video_features, visual_prompts = self.encode_video(video)  # (B, D), (B, n, D)
        text = self.class_text_features(text_ids)  # (K, D)
        text = text.expand(video.shape[0], -1, -1)  # (B, K, D)
        text = text + self.prompts_generator(text, visual_prompts)  # (B, K, D)
        video_features = video_features / video_features.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return torch.einsum("bd,bkd->bk", video_features, self.logit_scale.exp() * text)


def clear_text_cache_after_load(model: XCLIP, incompatible_keys):
    """New weights make cached class features stale."""
    model.clear_text_cache()


def tokenize_class_names(names, tokenizer=None):
    """Class names (the labels CSV's `name` column, used as they are) -> token ids [K, 77]:
    [SOT] + BPE + [EOT], zero-padded. A name longer than 75 BPE tokens is an error, never truncated."""
    tokenizer = tokenizer or SimpleTokenizer()
    ids = torch.zeros(len(names), CONTEXT_LENGTH, dtype=torch.long)
    for row, name in enumerate(names):
        tokens = [tokenizer.sot_id, *tokenizer.encode(name), tokenizer.eot_id]
        if len(tokens) > CONTEXT_LENGTH:
            raise ValueError(f"class name {name!r} (class {row}) is {len(tokens) - 2} BPE tokens long; at most "
                             f"{CONTEXT_LENGTH - 2} fit in CLIP's {CONTEXT_LENGTH}-token context: shorten it in the "
                             "labels CSV")
        ids[row, :len(tokens)] = torch.tensor(tokens)
    return ids


def is_xclip_key(key: str) -> bool:
    """Whether a state-dict key belongs to a part X-CLIP adds to CLIP."""
    return key.startswith(("mit.", "prompts_generator.", "prompts_visual_")) or ".message_" in key


def build_xclip(clip_state_dict, num_frames: int, *, mit_layers: int = 1, prompts_layers: int = 2,
                prompts_alpha: float = 0.1, drop_path_rate: float = 0.0, cache_text: bool = True,
                seed: int | None = None, clip_config: CLIPConfig | None = None) -> XCLIP:
    """An fp32 X-CLIP to train from CLIP weights in OpenAI's layout (fp16 or fp32, TorchScript
    entries allowed): every CLIP tensor from the file, the new parts initialised as the original
    (XCLIP_SPEC §1.8), from `seed` if given (without touching the global RNG). `clip_config` comes
    with converted weights (activation, heads); by default it is inferred from the state dict."""
    state = {k: v for k, v in clip_state_dict.items() if k not in NON_WEIGHT_KEYS}
    if any(is_xclip_key(k) for k in state):
        raise ValueError("these are X-CLIP weights, not CLIP's: build the model with build_xclip_from_checkpoint")
    config = XCLIPConfig(clip_config or config_from_state_dict(state), num_frames, mit_layers=mit_layers,
                         prompts_layers=prompts_layers, prompts_alpha=prompts_alpha,
                         drop_path_rate=drop_path_rate, cache_text=cache_text)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = XCLIP(config)
    expected = {k for k in model.state_dict() if not is_xclip_key(k)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointMismatch(mismatch_message(missing, unexpected, []))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)  # new parts keep their init
    return model


def xclip_state_from_checkpoint(checkpoint: Mapping) -> dict:
    """The model's state dict from a released X-CLIP file's dict (`model`), a `state_dict` dict or a
    bare state dict, without DDP's leading `module.`."""
    state = checkpoint
    for field in ("model", "state_dict"):
        if isinstance(checkpoint.get(field), Mapping):
            state = checkpoint[field]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def xclip_config_from_state_dict(state_dict, *, drop_path_rate: float = 0.0, cache_text: bool = True,
                                 clip_config: CLIPConfig | None = None) -> XCLIPConfig:
    """Sizes of an X-CLIP from its state dict: CLIP's as in SPEC §1 (or `clip_config`, saved with
    checkpoints of converted weights), T from `mit.positional_embedding`, the MIT and
    prompt-generator depths from their block keys."""
    if "mit.positional_embedding" not in state_dict:
        raise ValueError("not an X-CLIP state dict (no mit.positional_embedding); for CLIP weights use build_xclip")
    mit_layers = {k.split(".")[2] for k in state_dict if k.startswith("mit.resblocks.")}
    prompts_layers = {k.split(".")[2] for k in state_dict if k.startswith("prompts_generator.decoder.")}
    return XCLIPConfig(clip_config or config_from_state_dict(state_dict), state_dict["mit.positional_embedding"].shape[1],
                       mit_layers=len(mit_layers), prompts_layers=len(prompts_layers),
                       drop_path_rate=drop_path_rate, cache_text=cache_text)


def load_xclip_weights(model: XCLIP, checkpoint: Mapping):
    """Load strictly (XCLIP_SPEC §2 FIX: the original loaded with strict=False and silently kept
    CLIP's init); on any difference raise CheckpointMismatch listing the keys."""
    state = xclip_state_from_checkpoint(checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointMismatch(mismatch_message(missing, unexpected, mismatched))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def build_xclip_from_checkpoint(checkpoint: Mapping, num_frames: int | None = None, *,
                                drop_path_rate: float = 0.0, cache_text: bool = True,
                                clip_config: CLIPConfig | None = None) -> XCLIP:
    """An fp32 X-CLIP with the sizes and weights of a checkpoint (see `xclip_state_from_checkpoint`;
    `clip_config`, or the one the checkpoint saved, gives what the keys cannot). A `num_frames`
    other than the checkpoint's T is refused: the MIT's positional table is per frame."""
    state = xclip_state_from_checkpoint(checkpoint)
    config = xclip_config_from_state_dict(state, drop_path_rate=drop_path_rate, cache_text=cache_text,
                                          clip_config=clip_config or saved_clip_config(checkpoint))
    if num_frames is not None and num_frames != config.num_frames:
        raise ValueError(f"the X-CLIP checkpoint was trained with {config.num_frames} frames per video "
                         f"(mit.positional_embedding has {config.num_frames} rows) but --max_frames is "
                         f"{num_frames}: pass --max_frames {config.num_frames}")
    model = XCLIP(config)
    load_xclip_weights(model, state)
    return model


def read_xclip_checkpoint(path) -> dict:
    """A released X-CLIP file `{'model', 'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch',
    'config'}` on the CPU, unpickled weights-only (no code runs); `config` comes back as nested
    OrderedDicts instead of yacs CfgNodes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"X-CLIP checkpoint {path} does not exist")
    with torch.serialization.safe_globals(RELEASED_CHECKPOINT_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)
