"""The model of a trained checkpoint as two encoders into one space: captions and video windows.

The checkpoint describes itself: its `hparams` give the model-defining flags, adopted the way
main.py adopts them on --resume (params.get_args); modules/factory.py builds the model from the
checkpoint's own CLIP weights (no CLIP file is looked for: the index must use exactly the
checkpoint's model), then the checkpoint's weights load strictly. Frames are sampled and
transformed by the reader an evaluation of that model uses (make_reader).
"""
import contextlib
import io
import os
import tempfile

import numpy as np
import torch

from dataloaders.loaders import make_reader
from modules.checkpoint import load_model_weights, read_checkpoint, read_hparams
from modules.factory import create_model, retrieval_clip_weights, set_frame_flags
from modules.integrity import read_sidecar, sha256_file, sidecar_path
from modules.retrieval import l2_normalize
from modules.tokenizer import SimpleTokenizer, tokenize_caption


def checkpoint_sha256(path):
    """The checkpoint's SHA-256: its `.sha256` sidecar when it has one (verified when the model is
    loaded), else the file's bytes hashed."""
    return read_sidecar(sidecar_path(path)) or sha256_file(path)


def checkpoint_args(checkpoint):
    """main.py's arguments for evaluating `checkpoint`, its model flags taken from its `hparams`.

    Raises:
        FileNotFoundError, ValueError naming the file: not a checkpoint of this project, not a
        retrieval model, or flags that cannot run.
    """
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
    hparams = read_hparams(checkpoint)
    if hparams is None:
        raise ValueError(f"--checkpoint {checkpoint} is not a checkpoint of this project (it carries no hparams); "
                         "pass a trained model such as <output_dir>/ckpt.best.pth.tar")
    task = hparams.get("task_type", "retrieval")
    if task != "retrieval":
        raise ValueError(f"--checkpoint {checkpoint} is a {task} model; search needs a text-video retrieval "
                         "model (--task_type retrieval): X-CLIP conditions its text features on each video "
                         "(prompt generator), so a caption has no embedding to compare with an index")
    if hparams.get("sim_header") == "tightTransf":
        raise ValueError(f"--checkpoint {checkpoint} scores pairs with --sim_header tightTransf (a cross encoder), "
                         "which gives no video embedding to index; use a meanP, seqLSTM or seqTransf model")
    import params  # the flags' definitions and checks, shared with main.py

    messages = io.StringIO()
    try:
        # --output_dir is required but unused: only a start-up error would be logged there.
        with tempfile.TemporaryDirectory() as unused, contextlib.redirect_stderr(messages):
            return params.get_args(["--output_dir", unused, "--resume", checkpoint, "--do_train", "0",
                                    "--do_eval", "1"])
    except SystemExit:
        reason = messages.getvalue().strip().splitlines()[-1:] or ["bad flags"]
        raise ValueError(f"--checkpoint {checkpoint}: {reason[0]}") from None


class SearchModel:
    """Encoders of a retrieval checkpoint, in eval mode on the CPU.

    Attributes:
        args: the checkpoint's flags (main.py's namespace).
        model: the `RetrievalModel`.
        sha256: the checkpoint's SHA-256, which the index records.
        dim: D, the embedding width.
    """

    def __init__(self, checkpoint):
        self.checkpoint = os.path.abspath(checkpoint)
        self.args = checkpoint_args(checkpoint)
        self.sha256 = checkpoint_sha256(checkpoint)
        state = read_checkpoint(checkpoint, unsafe=False)  # verified against its .sha256 sidecar
        clip = retrieval_clip_weights(state)  # with its saved clip_config (activation, image statistics)
        self.model = create_model(self.args, clip.state_dict, clip.config)
        load_model_weights(self.model, state)
        self.model.eval()
        set_frame_flags(self.args, self.model.clip.config)
        self.dim = self.model.clip.config.embed_dim
        self.tokenizer = SimpleTokenizer()

    @property
    def name(self):
        return self.args.pretrained_clip_name

    def reader(self, lmdb_path=None):
        """The evaluation reader of this model (its --max_frames, uniform sampling, its frame size),
        on files or on the LMDB at `lmdb_path`."""
        self.args.lmdb_dataset = lmdb_path
        return make_reader(self.args, train=False)

    @torch.no_grad()
    def encode_text(self, texts):
        """list of N captions -> float32 [N, D], unit norm."""
        ids = np.stack([tokenize_caption(self.tokenizer, text, self.args.max_words)[0] for text in texts])
        features = self.model.encode_text(torch.from_numpy(ids)[:, None])  # (N, 1, D)
        return l2_normalize(features[:, 0]).numpy().astype(np.float32)

    @torch.no_grad()
    def encode_clips(self, video, video_mask):
        """video [B, 1, T, 3, S, S], video_mask [B, 1, T] -> float32 [B, D], unit norm (the head's
        video embedding)."""
        visual, mask = self.model.encode_video(video, torch.as_tensor(video_mask))  # (B, f, D), (B, f)
        return self.model.video_embedding(visual, mask).numpy().astype(np.float32)
