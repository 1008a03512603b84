"""Weights I/O: files (atomic writes, sha256, tensors), key layouts and architecture inference, the hub, load and
save. Imports tinyae.nets."""
