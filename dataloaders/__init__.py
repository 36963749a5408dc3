"""Video decoding, frame sampling, transforms and the retrieval datasets (SPEC §5)."""
from .registry import DATALOADERS, register
from .video_reader import VideoReader, count_broken_videos

__all__ = ["DATALOADERS", "register", "VideoReader", "count_broken_videos"]
