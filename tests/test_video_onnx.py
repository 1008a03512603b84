"""ONNX export of the video TAEs in streaming form (temporal state as explicit inputs/outputs), run in
onnxruntime: equal to the torch model (itself equal to the reference) for the frame rules of each kind."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from test_video import TOL
from tinyae.video.execute import FrameStream
from tinyae.video.onnx import FILES, OnnxVideoAutoencoder, export_video_onnx


@pytest.mark.parametrize("name", ["taew2_1", "taeh3", "taecvx", "taew2_2_super"])
def test_onnx_streaming_graphs_equal_torch(name, models, tmp_path):
    m = models[name]
    written = export_video_onnx(m, tmp_path)
    assert sorted(p.name for p in written) == ["config.json", FILES["decoder"], FILES["encoder"]]
    onnx_model = OnnxVideoAutoencoder(tmp_path)
    f = m.config.encoder_space_factor
    x = torch.rand(1, 18 if name == "taeh3" else 9, 3, 3 * f, 2 * f, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = m.encode_video(x)
        y = m.decode_video(z)
        y_even = m.decode_video(z[:, :2])  # taecvx keeps every frame for an even count
    torch.testing.assert_close(onnx_model.encode_video(x), z, atol=TOL, rtol=0)
    torch.testing.assert_close(onnx_model.decode_video(z), y, atol=TOL, rtol=0)
    torch.testing.assert_close(onnx_model.decode_video(z[:, :2]), y_even, atol=TOL, rtol=0)


def test_decoder_state_is_explicit(models, tmp_path):
    """Drive the raw decoder graph by hand: zeros in, each step's next_i fed back as past_i."""
    m = models["taew2_1"]
    export_video_onnx(m, tmp_path)
    sess = ort.InferenceSession(str(tmp_path / FILES["decoder"]), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names[0] == "latents" and names[1:] == [f"past_{i}" for i in range(9)]  # 9 MemBlocks
    assert [o.name for o in sess.get_outputs()] == ["frames"] + [f"next_{i}" for i in range(9)]
    z = torch.randn(1, 4, 16, 3, 5, generator=torch.Generator().manual_seed(2))
    stream = FrameStream(m.decoder)
    state = None
    for k in range(4):
        with torch.no_grad():
            want = torch.stack(stream.push(z[:, k]), 1)
        if state is None:
            state = [np.zeros_like(t.numpy()) for t in stream.get_state()]
        out = sess.run(None, {"latents": z[:, k].numpy(), **{f"past_{i}": s for i, s in enumerate(state)}})
        state = out[1:]
        assert out[0].shape == (1, 4, 3, 24, 40)
        np.testing.assert_allclose(out[0], want.numpy(), atol=TOL, rtol=0)
        for got, ref in zip(state, stream.get_state()):
            np.testing.assert_allclose(got, ref.numpy(), atol=TOL, rtol=0)


def test_export_refusals(models, tmp_path):
    m = models["taehv"]
    export_video_onnx(m, tmp_path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        export_video_onnx(m, tmp_path)
    export_video_onnx(m.optimize("fp32"), tmp_path, overwrite=True)  # an optimized copy exports its source
    with pytest.raises(ValueError, match="opset must be"):
        export_video_onnx(m, tmp_path / "b", opset=11)
    with pytest.raises(ValueError, match="expects a tinyae AutoencoderTinyVideo"):
        export_video_onnx(torch.nn.Conv2d(1, 1, 1), tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text('{"latent_channels": 16}')
    with pytest.raises(ValueError, match="not a tinyae video ONNX export"):
        OnnxVideoAutoencoder(tmp_path / "d")
