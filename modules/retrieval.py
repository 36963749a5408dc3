"""The CLIP4Clip/CenterCLIP retrieval model: text and video encoders, similarity heads, loss.

State-dict keys follow the original (SPEC §4): CLIP under `clip.`, then
`frame_position_embeddings`, `transformerClip` (seqTransf), `lstm_visual` (seqLSTM),
`cross.embeddings.position_embeddings`, `cross.transformer.resblocks.N.*`, `cross.pooler.*` and
`similarity_dense` (tightTransf, CLIP4Clip's layout). Sizes come from the CLIP weights, never fixed.
"""
import torch
from torch import nn

from modules.clip import LayerNorm, QuickGELU, Transformer
from modules.cluster.schedule import video_mask_after_clustering
from modules.distributed import all_gather_with_local_grad
from modules.losses import symmetric_infonce

SIM_HEADERS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")


def l2_normalize(x):
    """x / ‖x‖ over the last dim; an all-zero vector stays zero instead of becoming NaN."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def masked_mean(x, mask):
    """x [B, F, D], mask [B, F] -> [B, D]: mean over valid frames; a count of zero counts as one."""
    mask = mask.to(x.dtype).unsqueeze(-1)  # (B, F, 1)
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def key_padding_mask(mask, dtype):
    """mask [B, F] of 0/1 -> additive attention mask [B, 1, F, F]: -1e6 on padded keys."""
    mask = mask.to(dtype)
    return ((1.0 - mask) * -1000000.0)[:, None, None, :].expand(-1, 1, mask.shape[1], -1)


def autocast_off(tensor):
    """A context with autocast disabled on the tensor's device: the heads and the similarity run in
    fp32 even inside a training step's autocast, as the original's custom_fwd(cast_inputs=float32)."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class CrossModel(nn.Module):
    """CLIP4Clip's tight cross encoder: [text; frames] + position embeddings (no token-type table,
    CLIP4Clip's is commented out), dropout, CLIP blocks, then LayerNorm, the first token, Linear and
    QuickGELU (the pooled output)."""

    def __init__(self, width, layers, heads, max_positions, dropout=0.1):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.position_embeddings = nn.Embedding(max_positions, width)
        self.embeddings.dropout = nn.Dropout(dropout)
        self.transformer = Transformer(width, layers, heads)
        self.pooler = nn.Module()
        self.pooler.ln_pool = LayerNorm(width)
        self.pooler.dense = nn.Linear(width, width)
        self.pooler.activation = QuickGELU()

    def forward(self, features, mask):
        """features [N, L, W], mask [N, L] of 0/1 -> pooled [N, W]."""
        positions = torch.arange(features.shape[1], device=features.device)
        x = self.embeddings.dropout(features + self.embeddings.position_embeddings(positions))  # (N, L, W)
        x = self.transformer(x, key_padding_mask(mask, x.dtype))
        pooled = self.pooler.ln_pool(x)[:, 0]
        return self.pooler.activation(self.pooler.dense(pooled))


class RetrievalModel(nn.Module):
    """Encodes captions [B, 1, Lw] and videos [B, 1, T, 3, H, W]; scores every text-video pair.

    `clip` is a `modules.clip.CLIP` whose image tower may carry token-clustering hooks.
    `cross_dropout` is the tight head's embedding dropout (CLIP4Clip's cross-base config: 0.1).
    """

    def __init__(self, clip, sim_header="meanP", cross_num_hidden_layers=4, cross_dropout=0.1):
        super().__init__()
        if sim_header not in SIM_HEADERS:
            raise ValueError(f"--sim_header {sim_header} is unknown; choose one of {', '.join(SIM_HEADERS)}")
        cfg = clip.config
        if sim_header != "meanP" and cfg.embed_dim != cfg.transformer_width:
            raise ValueError(f"--sim_header {sim_header} is initialised from CLIP's text tower and needs its width "
                             f"({cfg.transformer_width}) to equal the embedding width ({cfg.embed_dim})")
        self.clip = clip
        self.sim_header = sim_header
        width, heads = cfg.transformer_width, cfg.transformer_heads
        if sim_header in ("seqLSTM", "seqTransf"):
            self.frame_position_embeddings = nn.Embedding(cfg.context_length, width)
        if sim_header == "seqTransf":
            self.transformerClip = Transformer(width, cross_num_hidden_layers, heads)
        if sim_header == "seqLSTM":
            self.lstm_visual = nn.LSTM(cfg.embed_dim, cfg.embed_dim, batch_first=True, num_layers=1)
        if sim_header == "tightTransf":
            self.cross = CrossModel(width, cross_num_hidden_layers, heads, cfg.context_length, cross_dropout)
            self.similarity_dense = nn.Linear(width, 1)
        for name, module in self.named_children():
            if name != "clip":
                module.apply(init_new_weights)
        self.freeze_unused_parameters()

    def freeze_unused_parameters(self):
        """Parameters the forward never uses get requires_grad False, so DDP needs no
        find_unused_parameters: tightTransf never scales by logit_scale, seqLSTM never reads
        frame_position_embeddings (CLIP4Clip creates it), `cluster_frame_embed` is never read, and
        with --linear_patch 3d conv1 is replaced by conv2. In the original they get no gradient and
        never change, so this changes no number."""
        unused = []
        if self.sim_header == "tightTransf":
            unused.append(self.clip.logit_scale)
        if self.sim_header == "seqLSTM":
            unused.extend(self.frame_position_embeddings.parameters())
        if self.clip.visual.linear_patch == "3d":
            unused.append(self.clip.visual.conv1.weight)
        unused.extend(p for name, p in self.clip.named_parameters() if name.endswith(".cluster_frame_embed"))
        for param in unused:
            param.requires_grad_(False)

    def init_heads_from_clip(self, clip_state_dict):
        """As CLIP4Clip: the frame position table (seqLSTM, seqTransf) and the cross encoder's position
        table (tightTransf) from CLIP's text positional embedding, the seqTransf blocks and the cross
        encoder's blocks from the first text blocks."""
        positional = clip_state_dict["positional_embedding"]
        if hasattr(self, "frame_position_embeddings"):
            self.frame_position_embeddings.weight.data.copy_(positional)
        if hasattr(self, "transformerClip"):
            layers = len(self.transformerClip.resblocks)
            self.transformerClip.load_state_dict(first_text_blocks(clip_state_dict, layers), strict=True)
        if hasattr(self, "cross"):
            self.cross.embeddings.position_embeddings.weight.data.copy_(positional)
            layers = len(self.cross.transformer.resblocks)
            self.cross.transformer.load_state_dict(first_text_blocks(clip_state_dict, layers), strict=True)

    def encode_text(self, input_ids):
        """input_ids [B, 1, Lw] -> [B, 1, D] fp32."""
        ids = input_ids.view(-1, input_ids.shape[-1])  # (B, Lw)
        return self.clip.encode_text(ids).float().unsqueeze(1)

    def encode_video(self, video, video_mask):
        """video [B, 1, T, 3, H, W], mask [B, 1, T] -> features [B, f, D] fp32 and mask [B, f].

        f < T when clustering merged frames into segments; the mask then marks a segment valid when
        any of its frames is (`video_mask_after_clustering`).
        """
        B, T = video_mask.shape[0], video_mask.shape[-1]
        frames = video.reshape(-1, *video.shape[-3:])  # (B·T, 3, H, W)
        features = self.clip.encode_image(frames, video_frames=T).float()
        features = features.view(B, -1, features.shape[-1])  # (B, f, D)
        return features, video_mask_after_clustering(video_mask.view(B, T), features.shape[1])

    def video_embedding(self, visual, mask):
        """Loose heads: visual [B, f, D], mask [B, f] -> one normalised vector per video [B, D]."""
        if self.sim_header == "seqTransf":
            positions = torch.arange(visual.shape[1], device=visual.device)
            x = visual + self.frame_position_embeddings(positions)
            visual = self.transformerClip(x, key_padding_mask(mask, x.dtype)) + visual
        elif self.sim_header == "seqLSTM":
            visual = self.lstm_residual(visual, mask)
        return l2_normalize(masked_mean(l2_normalize(visual), mask))

    def lstm_residual(self, visual, mask):
        """CLIP4Clip's LSTM over the valid frames, zero after them, plus the input."""
        lengths = mask.sum(dim=-1).clamp_min(1).long().cpu()
        packed = nn.utils.rnn.pack_padded_sequence(visual, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm_visual(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=visual.shape[1])
        return out + visual

    def loose_logits(self, text, video):
        """Normalised text [Bt, D] and video vectors [Bv, D] -> exp(logit_scale) · cosines [Bt, Bv]."""
        return self.clip.logit_scale.exp() * (text @ video.T)

    def similarity(self, text, visual, video_mask):
        """text [Bt, 1, D], visual [Bv, f, D], video_mask [Bv, f] -> logits [Bt, Bv], in fp32."""
        with autocast_off(text):
            text, visual = text.float(), visual.float()
            if self.sim_header == "tightTransf":
                return self.tight_similarity(text, visual, video_mask)
            return self.loose_logits(l2_normalize(text.squeeze(1)), self.video_embedding(visual, video_mask))

    def tight_similarity(self, text, visual, video_mask):
        """Every pair through the cross encoder, text-major; the text is its end-of-text feature."""
        Bt, Bv = text.shape[0], visual.shape[0]
        pairs_text = text.repeat_interleave(Bv, dim=0)  # (Bt·Bv, 1, D)
        pairs_visual = visual.repeat(Bt, 1, 1)  # (Bt·Bv, f, D)
        features = torch.cat([pairs_text, pairs_visual], dim=1)  # (Bt·Bv, 1 + f, D)
        mask = torch.cat([torch.ones(Bt * Bv, 1, device=text.device), video_mask.float().repeat(Bt, 1)], dim=1)
        return self.similarity_dense(self.cross(features, mask)).view(Bt, Bv)

    def contrastive_loss(self, text, visual, mask):
        """Symmetric InfoNCE of this process's features text [B, 1, D], visual [B, f, D], mask [B, f],
        in fp32 with autocast off.

        Loose heads, as the original: the head runs on this process's videos, then the text and video
        vectors of all ranks are gathered (the local slice keeps its gradient), so the contrastive
        batch is world size x B and each rank's head gradient comes from its own videos.
        tightTransf, as CLIP4Clip: the local B x B pairs only, nothing is gathered.
        """
        with autocast_off(text):
            text, visual = text.float(), visual.float()
            if self.sim_header == "tightTransf":
                return symmetric_infonce(self.tight_similarity(text, visual, mask))
            text = all_gather_with_local_grad(l2_normalize(text.squeeze(1)))  # (world·B, D)
            video = all_gather_with_local_grad(self.video_embedding(visual, mask))  # (world·B, D)
            return symmetric_infonce(self.loose_logits(text, video))

    def head_parameters(self):
        """Trainable parameters used after the encoders: the similarity head and logit_scale."""
        head = [p for name, p in self.named_parameters() if not name.startswith("clip.")]
        return [p for p in head + [self.clip.logit_scale] if p.requires_grad]

    def forward(self, input_ids, input_mask, segment_ids, video, video_mask, cached_grads=None):
        """The training loss of a batch. With `cached_grads` (see modules/accumulation.py) it returns
        instead a surrogate whose gradient is the cached one: sum(text * g_text) + sum(visual *
        g_visual) (+ sum(p * g_p) over `head_parameters` when `cached_grads.heads` is given)."""
        text = self.encode_text(input_ids)
        visual, mask = self.encode_video(video, video_mask)
        if cached_grads is None:
            return self.contrastive_loss(text, visual, mask)
        surrogate = (text * cached_grads.text).sum() + (visual * cached_grads.visual).sum()
        for param, grad in zip(self.head_parameters(), cached_grads.heads or ()):
            surrogate = surrogate + (param * grad).sum()
        return surrogate


def first_text_blocks(clip_state_dict, layers):
    """CLIP's text blocks 0 .. layers-1 as a Transformer state dict (`resblocks.N.*`)."""
    prefix = "transformer.resblocks."
    return {k[len("transformer."):]: v for k, v in clip_state_dict.items()
            if k.startswith(prefix) and int(k.split(".")[2]) < layers}


def init_new_weights(module):
    """CLIP4Clip's init of modules that do not come from CLIP: normal(0, 0.02), zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
