"""Dataset-scale encoding: image collections to latent shards, resumable and exactly once, locally or on Ray.

    from tinyae.dataset import encode_dataset, LatentDataset, Preprocess
    encode_dataset("photos/", "latents/", "taef2", preprocess=Preprocess(crop="buckets", size=512, flip="both"))
    for row in LatentDataset("latents/").shuffled(seed=0): row["latents"]  # (C, h, w)

See docs/dataset.md for the formats, the manifest and the resume semantics.
"""

from .encode import Encoder, model_sha256
from .job import encode_dataset
from .manifest import DatasetError
from .preprocess import Preprocess
from .reader import LatentBatches, LatentDataset, ShuffledLatents
from .shards import Shard
from .sources import Item, Source, SourceError, open_source

__all__ = ["encode_dataset", "LatentDataset", "ShuffledLatents", "LatentBatches", "Preprocess", "Source",
           "SourceError", "Item", "open_source", "Shard", "DatasetError", "Encoder", "model_sha256"]
