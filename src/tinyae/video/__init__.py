"""Video Tiny AutoEncoders (madebyollin's TAEHV family): Wan 2.1/2.2, HunyuanVideo 1/1.5, LTX-2, CogVideoX,
Open-Sora 1.3, MiniMax H3; parallel or streamed frame by frame. See docs/video.md."""

from .config import VideoConfig
from .model import AutoencoderTinyVideo, StreamingDecoder, StreamingEncoder
from .variants import FAMILIES, VIDEO_VARIANTS, FrameRule, VideoFamily, VideoVariant, get_video_variant

__all__ = ["AutoencoderTinyVideo", "FAMILIES", "FrameRule", "StreamingDecoder", "StreamingEncoder", "VIDEO_VARIANTS",
           "VideoConfig", "VideoFamily", "VideoVariant", "get_video_variant"]
