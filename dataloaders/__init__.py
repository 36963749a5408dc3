"""Video decoding, frame sampling, transforms, the retrieval datasets (SPEC §5) and the
recognition data (XCLIP_SPEC §3)."""
from .registry import DATALOADERS, RECOGNITION_EVAL_LOADERS, RECOGNITION_TRAIN_LOADERS, register
from .video_reader import VideoReader, count_broken_videos

__all__ = ["DATALOADERS", "RECOGNITION_EVAL_LOADERS", "RECOGNITION_TRAIN_LOADERS", "register", "VideoReader",
           "count_broken_videos"]
