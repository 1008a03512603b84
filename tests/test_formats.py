"""Every weight layout loads to the same model, and every writer round-trips."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TAEF2
from tinyae import AutoencoderTiny, WeightsError
from tinyae.nets.variants import VARIANTS, variant_config
from tinyae.io.layouts import to_original_keys
from tinyae.io.save import save_comfyui


def _same(a: AutoencoderTiny, b: AutoencoderTiny) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def ref():
    return AutoencoderTiny.from_pretrained(TAEF2)


def test_original_pair_in_a_folder_and_as_safetensors(ref, tmp_path):
    written = ref.save_original(tmp_path / "st", "taef2")
    assert [p.rsplit("/", 1)[1] for p in written] == ["taef2_encoder.safetensors", "taef2_decoder.safetensors"]
    assert _same(AutoencoderTiny.from_pretrained(tmp_path / "st"), ref)
    ref.save_original(tmp_path / "pth", "mine", format="pth")
    assert _same(AutoencoderTiny.from_pretrained(tmp_path / "pth"), ref)
    # the written .pth has the same keys as the released file
    assert set(torch.load(tmp_path / "pth" / "mine_encoder.pth", weights_only=True)) == \
           set(torch.load(TAEF2[0], weights_only=True))


def test_comfyui_combined_file(ref, tmp_path):
    path = save_comfyui(ref, tmp_path / "taef2.safetensors")
    keys = set(load_file(path))
    assert "taesd_encoder.0.weight" in keys and "taesd_decoder.1.weight" in keys
    assert _same(AutoencoderTiny.from_pretrained(path), ref)
    # ComfyUI's own files may carry vae_scale / vae_shift scalars: accepted and ignored
    sd = load_file(path)
    sd.update(vae_scale=torch.tensor(1.0), vae_shift=torch.tensor(0.0))
    save_file(sd, tmp_path / "with_scalars.safetensors")
    assert _same(AutoencoderTiny.from_pretrained(tmp_path / "with_scalars.safetensors"), ref)


def test_diffusers_keyed_single_file(ref, tmp_path):
    """A single safetensors with diffusers keys and no config.json (how the taef2 hub repo ships it)."""
    save_file({k: v.half() for k, v in ref.state_dict().items()}, tmp_path / "taef2.safetensors")
    loaded = AutoencoderTiny.from_pretrained(tmp_path / "taef2.safetensors")
    assert loaded.config.use_midblock_gn and loaded.dtype == torch.float32
    assert _same(loaded, ref)  # the released weights are fp16, so the fp16 round trip is exact


def test_module_prefixed_original_keys(ref, tmp_path):
    sd = ref.state_dict()
    both = {f"encoder.{k}": v for k, v in to_original_keys(sd, "encoder").items()}
    both.update({f"decoder.{k}": v for k, v in to_original_keys(sd, "decoder").items()})
    save_file(both, tmp_path / "model.safetensors")
    assert _same(AutoencoderTiny.from_pretrained(tmp_path / "model.safetensors"), ref)


def test_save_pretrained_for_a_variant_diffusers_cannot_express(ref, tmp_path):
    ref.save_pretrained(tmp_path)
    cfg = (tmp_path / "config.json").read_text()
    assert "use_midblock_gn" in cfg and "_tinyae_note" in cfg
    assert _same(AutoencoderTiny.from_pretrained(tmp_path), ref)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_config_builds_and_reloads(name, tmp_path):
    torch.manual_seed(0)
    model = AutoencoderTiny(**variant_config(name)).eval()
    f = model.spatial_scale_factor
    assert f == {"taesana": 32, "taeqi2_1": 16}.get(name, 8)
    x = torch.rand(1, model.config.image_channels, 2 * f, 3 * f) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).latents
        assert z.shape == (1, model.config.latent_channels, 2, 3)
        assert model.decode(z).sample.shape == x.shape
    model.save_original(tmp_path, name)
    again = AutoencoderTiny.from_pretrained(tmp_path)
    assert again.config.init_kwargs() == model.config.init_kwargs()  # inferred from the tensors alone
    assert _same(again, model)


def test_writes_are_atomic(ref, tmp_path, monkeypatch):
    """A failing write leaves the previous file untouched and no temporary files behind."""
    ref.save_original(tmp_path, "taef2")
    before = (tmp_path / "taef2_encoder.safetensors").read_bytes()
    import tinyae.io.save as w

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        w.save_original(ref, tmp_path, "taef2")
    assert (tmp_path / "taef2_encoder.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taef2_decoder.safetensors", "taef2_encoder.safetensors"]


def test_save_original_rejects_unknown_format(ref, tmp_path):
    with pytest.raises(ValueError, match="format"):
        ref.save_original(tmp_path, "x", format="ckpt")
    with pytest.raises(WeightsError):
        AutoencoderTiny.from_pretrained((None, None))
