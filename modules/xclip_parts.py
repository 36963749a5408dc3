"""The parts X-CLIP adds to CLIP (XCLIP_SPEC §1.2–1.4, §1.8): the cross-frame image tower, the
multi-frame integration transformer (MIT) and the video-specific prompt generator.

Every module keeps the original's state-dict names (§1.7) and initialises its new weights as the
original does when training starts from CLIP (§1.8). Tensors are batch-first throughout.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from modules.clip import Attention, LayerNorm, QuickGELU, ResidualAttentionBlock, VisionTransformer
from modules.recompute import set_lean_backward


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of the rows of
    dim 0 and scale the kept rows by 1 / (1 - rate).

    Difference from the original (XCLIP_SPEC §1.2): its sequence-first tensors made the draw per
    token position shared by the whole batch; here it is per row of a batch-first tensor (per frame
    in the image tower, per video in the message attention). No released model uses drop path.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if not self.training:
            return x
        keep = 1.0 - self.rate
        mask = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device) < keep
        return x * mask / keep


def zero_attention_out_bias(attention: Attention):
    """nn.MultiheadAttention, the original's attention, starts with a zero out-projection bias."""
    nn.init.zeros_(attention.out_proj.bias)


class CrossFrameBlock(ResidualAttentionBlock):
    """A CLIP vision block with cross-frame communication (XCLIP_SPEC §1.2).

    Before attention, the [CLS] tokens of the T frames of a video become message tokens
    (`message_fc`), which attend to each other (`message_ln`, `message_attn`); each frame's message
    token joins that frame's sequence as its last token for the block's attention and is dropped
    after it. Rows are frames, video b's frame t at row b·T + t.
    """

    def __init__(self, width: int, heads: int, num_frames: int, drop_path: float = 0.0,
                 activation: str = "quick_gelu"):
        super().__init__(width, heads, activation)
        self.num_frames = num_frames
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width)
        self.message_attn = Attention(width, heads)
        zero_attention_out_bias(self.message_attn)
        if drop_path > 0.0:
            self.drop_path = DropPath(drop_path)

    def before_attention(self, x):
        """x [B·T, 1 + n, W] -> [B·T, 1 + n + 1, W] with each frame's message token appended."""
        x = super().before_attention(x)
        BT, _, W = x.shape
        messages = self.message_fc(x[:, 0]).view(BT // self.num_frames, self.num_frames, W)  # (B, T, W)
        messages = messages + self.drop_path(self.message_attn(self.message_ln(messages)))  # (B, T, W)
        return torch.cat([x, messages.reshape(BT, 1, W)], dim=1)  # (B·T, 1 + n + 1, W)

    def after_attention(self, x):
        """x [B·T, 1 + n + 1, W] -> [B·T, 1 + n, W]: the message token is dropped."""
        return super().after_attention(x[:, :-1])


class CrossFrameVisionTransformer(VisionTransformer):
    """CLIP's image tower (`visual.*` keys) whose blocks are `CrossFrameBlock`s.

    Returns the frame features `ln_post(x[:, 0]) @ proj` and the patch tokens of the last block
    without `ln_post` (the prompt generator's input).
    """

    def __init__(self, resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int,
                 num_frames: int, drop_path_rates: list[float], activation: str = "quick_gelu"):
        if len(drop_path_rates) != layers:
            raise ValueError(f"got {len(drop_path_rates)} drop-path rates for {layers} blocks")
        # The parent builds the stem and the head; its block list is filled with cross-frame blocks here.
        super().__init__(resolution, patch_size, width, 0, heads, output_dim)
        self.num_frames = num_frames
        self.transformer.resblocks.extend(CrossFrameBlock(width, heads, num_frames, rate, activation)
                                          for rate in drop_path_rates)
        self.transformer.layers = layers
        self.checkpoint_segments = 0  # see use_checkpoint

    def use_checkpoint(self, segments: int = 3):
        """TRAIN.USE_CHECKPOINT: in training, the blocks run as `segments` segments and every one but
        the last keeps only its input, its activations recomputed in backward (torch's
        checkpoint_sequential, as the original). The same numbers (drop path's draws are replayed).
        The blocks' lean backward is turned off: checkpointing already drops what it would. A tower
        of fewer blocks than segments has one block per segment."""
        self.checkpoint_segments = min(segments, len(self.transformer.resblocks))
        set_lean_backward(self.transformer, False)

    def forward(self, frames):
        """frames [B·T, 3, H, W] -> (frame features [B·T, D], patch tokens [B·T, n, W])."""
        if frames.shape[0] % self.num_frames:
            raise ValueError(f"{frames.shape[0]} frames is not a whole number of {self.num_frames}-frame videos")
        x = self.embed(frames)  # (B·T, 1 + n, W)
        if self.checkpoint_segments and torch.is_grad_enabled():
            x = checkpoint_sequential(self.transformer.resblocks, self.checkpoint_segments, x, use_reentrant=False)
        else:
            x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj, x[:, 1:]


def trunc_normal_linears_and_reset_norms(module: nn.Module):
    """The original's init of its new heads: every Linear trunc-normal(std 0.02, cut at ±2 absolute)
    with zero bias, every LayerNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MultiFrameIntegrationTransformer(nn.Module):
    """MIT (`mit.*`, XCLIP_SPEC §1.3): frame features [B, T, D] -> video feature [B, D]."""

    def __init__(self, num_frames: int, width: int, layers: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(1, num_frames, width))
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, width // 64 or 1) for _ in range(layers)])
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        trunc_normal_linears_and_reset_norms(self)  # the in-projections keep Attention's xavier init, zero bias

    def forward(self, frame_features):
        """frame_features [B, T, D] -> [B, D]; the outer residual adds the input without positions."""
        x = frame_features + self.positional_embedding  # (B, T, D)
        for block in self.resblocks:
            x = block(x)
        return (x + frame_features).mean(dim=1)


class PromptCrossAttention(nn.Module):
    """Multi-head attention of the class-text queries over the visual tokens: bias-free q/k/v
    projections, a biased output projection (`prompts_generator.decoder.N.cross_attn.*`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, queries, visual):
        """queries [B, K, D], visual [B, n, D] -> [B, K, D]."""
        B, K, D = queries.shape
        n, hs = visual.shape[1], D // self.heads
        q = self.q_proj(queries).view(B, K, self.heads, hs).transpose(1, 2)  # (B, h, K, hs)
        k = self.k_proj(visual).view(B, n, self.heads, hs).transpose(1, 2)  # (B, h, n, hs)
        v = self.v_proj(visual).view(B, n, self.heads, hs).transpose(1, 2)  # (B, h, n, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, K, hs)
        return self.proj(y.transpose(1, 2).reshape(B, K, D))


class PromptGeneratorLayer(nn.Module):
    """x = x + cross_attn(norm1(x), V); x = x + mlp(norm3(x)). Keys `norm1`, `norm3`, `mlp.0`, `mlp.3`."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.cross_attn = PromptCrossAttention(width, heads)
        self.norm1 = LayerNorm(width)
        self.norm3 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("0", nn.Linear(width, width * 4)),
            ("1", QuickGELU()),
            ("2", nn.Identity()),  # the original's dropout (rate 0) sat here; it fixes the key `mlp.3`
            ("3", nn.Linear(width * 4, width)),
        ]))

    def forward(self, x, visual):
        """x [B, K, D], visual [B, n, D] (already normalised) -> [B, K, D]."""
        x = x + self.cross_attn(self.norm1(x), visual)
        return x + self.mlp(self.norm3(x))


class VideoSpecificPrompt(nn.Module):
    """The video-specific prompt generator (`prompts_generator.*`, XCLIP_SPEC §1.4)."""

    def __init__(self, width: int, layers: int, alpha: float):
        super().__init__()
        self.norm = LayerNorm(width)
        self.decoder = nn.ModuleList([PromptGeneratorLayer(width, width // 64 or 1) for _ in range(layers)])
        self.alpha = nn.Parameter(torch.full((width,), float(alpha)))
        trunc_normal_linears_and_reset_norms(self)

    def forward(self, text, visual):
        """text [B, K, D] class features per video, visual [B, n, D] -> prompts alpha ⊙ x [B, K, D]."""
        visual = self.norm(visual)
        for layer in self.decoder:
            text = layer(text, visual)
        return self.alpha * text
