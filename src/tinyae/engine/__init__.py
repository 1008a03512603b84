"""Executors of the networks: tiled/streamed row bands, the fused kernels of `optimize()`, ONNX export and the
onnxruntime/OpenVINO backends. Imports tinyae.nets, tinyae.io (atomic_write, one-line errors) and tinyae.data."""
