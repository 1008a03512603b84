"""Loading by variant name and hub repo id through huggingface_hub, against a local imitation of the hub.

tests/hubserver.py serves the hub's file endpoints on 127.0.0.1 (nothing leaves the machine). The fixture points
huggingface_hub's endpoint at it and its cache at tmp_path (`point_hub`: its constants, which tinyae uses instead of
reading the environment itself), and the tests check that the server (not huggingface.co) saw the requests.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import IMAGES, TAEF2, TAESANA_ENCODER, load_photo
from hubserver import HubServer, point_hub
from tinyae import AutoencoderTiny, WeightsError
from tinyae.nets.variants import get_variant, variant_config
from tinyae.io.files import sha256_file

TAEF2_REPO = "madebyollin/taef2"
TAEF2_FILES = {"taef2_encoder.pth": TAEF2[0], "taef2_decoder.pth": TAEF2[1], "README.md": b"# taef2\n"}
# A small architecture: random weights of a few hundred kB keep the fault tests fast.
TINY = {"encoder_block_out_channels": (8, 8, 8, 8), "decoder_block_out_channels": (8, 8, 8, 8),
        "latent_channels": 4}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running imitation hub, with huggingface_hub pointed at it and its cache at tmp_path (`point_hub`)."""
    home = tmp_path / "hf"
    # huggingface_hub waits 1 s before each of its retries of an interrupted transfer or an unreachable host:
    # same behaviour, without the waiting.
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with HubServer() as server:
        point_hub(monkeypatch, endpoint=server.endpoint, home=home)
        server.cache = home / "hub"  # type: ignore[attr-defined]
        yield server


def offline(monkeypatch) -> None:
    point_hub(monkeypatch, offline=True)


def cache_files(cache: Path) -> dict[str, bytes]:
    """Every file the cache would hand out: snapshot entries (resolved) and blobs; {relative path: bytes}."""
    out = {}
    for p in cache.rglob("*"):
        if p.is_file() and {"snapshots", "blobs"} & set(p.relative_to(cache).parts):
            out[p.relative_to(cache).as_posix()] = p.read_bytes()
    return out


def assert_cache_trustworthy(cache: Path, served: dict[str, bytes]) -> None:
    """No partial download, and every cached file is byte-identical to one the hub serves."""
    good = {hashlib.sha256(d).hexdigest() for d in served.values()}
    assert not [p for p in cache.rglob("*") if p.name.endswith(".incomplete")]
    for rel, data in cache_files(cache).items():
        assert hashlib.sha256(data).hexdigest() in good, f"untrustworthy file left in the cache: {rel}"


def tiny_model(seed: int = 0) -> AutoencoderTiny:
    torch.manual_seed(seed)
    model = AutoencoderTiny(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def diffusers_files(model: AutoencoderTiny, folder: Path) -> dict[str, bytes]:
    model.save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def pair_files(model: AutoencoderTiny, folder: Path, name: str = "tiny") -> dict[str, bytes]:
    return {Path(p).name: Path(p).read_bytes() for p in model.save_original(folder, name)}


def same_weights(a: AutoencoderTiny, b: AutoencoderTiny) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fetched(server: HubServer) -> list[str]:
    """Paths whose bytes were transferred (GET on the resolve endpoint or the CDN)."""
    return [p for m, p in server.requests if m == "GET" and not p.startswith("/api/")]


# ---------------------------------------------------------------------------------------------- variants
def test_variant_name_downloads_pinned_release_and_matches_local_files(hub, taef2):
    hub.add_repo(TAEF2_REPO, TAEF2_FILES)
    model = AutoencoderTiny.from_pretrained("taef2")
    assert same_weights(model, taef2)
    x = load_photo(IMAGES / "astronaut.png")[..., 200:264, 200:264]
    with torch.no_grad():
        z = model.encode(x).latents
        assert torch.equal(z, taef2.encode(x).latents)
        assert torch.equal(model.decode(z).sample, taef2.decode(z).sample)
    # the requests went to the imitation hub, and the files were checked against the pinned sha256
    assert ("HEAD", f"/{TAEF2_REPO}/resolve/main/taef2_encoder.pth") in hub.requests
    pins = get_variant("taef2").sha256
    blobs = {p.name for p in (hub.cache / "models--madebyollin--taef2" / "blobs").iterdir()}
    assert set(pins.values()) <= blobs
    # an alias, again: from the cache, nothing transferred a second time
    hub.requests.clear()
    assert same_weights(AutoencoderTiny.from_pretrained("flux2"), taef2)
    assert fetched(hub) == []


def test_variant_repo_holding_one_combined_file_instead_of_the_release_pair(hub, tmp_path, monkeypatch, taef2):
    # Third-party code downloads madebyollin/taef2 as one diffusers-keyed "taef2.safetensors" (no config.json):
    # the registry's (pinned) release names are tried first, then the repo is read like any repo id.
    from safetensors.torch import save_file

    save_file({k: v.half() for k, v in taef2.state_dict().items()}, tmp_path / "taef2.safetensors")
    hub.add_repo(TAEF2_REPO, {"taef2.safetensors": tmp_path / "taef2.safetensors", "README.md": b"# taef2"})
    model = AutoencoderTiny.from_pretrained("taef2")
    assert same_weights(model, taef2) and model.config.use_midblock_gn
    assert ("HEAD", f"/{TAEF2_REPO}/resolve/main/taef2_encoder.pth") in hub.requests
    assert ("GET", f"/api/models/{TAEF2_REPO}/tree/main") in hub.requests
    with monkeypatch.context() as m:
        offline(m)
        assert same_weights(AutoencoderTiny.from_pretrained("taef2"), taef2)


def test_diffusers_layout_variant(hub, tmp_path):
    model = AutoencoderTiny(**variant_config("taesd"))
    hub.add_repo("madebyollin/taesd", diffusers_files(model, tmp_path / "taesd"))
    loaded = AutoencoderTiny.from_pretrained("taesd")
    assert same_weights(loaded, model)
    assert loaded.config.to_dict() == model.config.to_dict()


def test_variant_file_that_differs_from_the_pinned_release_is_refused_and_evicted(hub, taef2):
    # the hub's own checksum is fine (the transfer is intact) but the file is not the release tinyae pins
    hub.add_repo(TAEF2_REPO, {**TAEF2_FILES, "taef2_encoder.pth": TAESANA_ENCODER})
    with pytest.raises(WeightsError, match="sha256 mismatch.*pinned"):
        AutoencoderTiny.from_pretrained("taef2")
    assert sha256_file(TAESANA_ENCODER) not in {hashlib.sha256(d).hexdigest()
                                                 for d in cache_files(hub.cache).values()}


def test_unknown_variant_like_name_suggests_the_closest(hub):
    with pytest.raises(WeightsError, match="Did you mean.*taef2"):
        AutoencoderTiny.from_pretrained("taef3")
    assert hub.requests == []


# ---------------------------------------------------------------------------------------------- repo ids
def test_diffusers_layout_repo_id(hub, tmp_path):
    model = tiny_model()
    hub.add_repo("someone/tiny-vae", diffusers_files(model, tmp_path / "m"))
    loaded = AutoencoderTiny.from_pretrained("someone/tiny-vae")
    assert same_weights(loaded, model)
    assert loaded.config.to_dict() == model.config.to_dict()
    assert not [p for m, p in hub.requests if p.startswith("/api/")]  # config.json was enough: no listing


def test_original_pair_repo_id_found_by_listing(hub, tmp_path):
    model = tiny_model()
    hub.add_repo("someone/tiny-pair", {**pair_files(model, tmp_path), "README.md": b"hi"})
    assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-pair"), model)
    assert ("GET", "/api/models/someone/tiny-pair/tree/main") in hub.requests


def test_original_pair_in_a_subfolder(hub, tmp_path):
    model = tiny_model()
    files = {f"weights/{n}": d for n, d in pair_files(model, tmp_path).items()}
    hub.add_repo("someone/nested", {**files, "other_encoder.pth": b"not this one"})
    assert same_weights(AutoencoderTiny.from_pretrained("someone/nested", subfolder="weights"), model)


def test_revision_is_passed_through(hub, tmp_path):
    model = tiny_model()
    repo = hub.add_repo("someone/tiny-vae", diffusers_files(model, tmp_path / "m"))
    assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-vae", revision=repo.commit), model)
    with pytest.raises(WeightsError, match="revision 'v9' not found"):
        AutoencoderTiny.from_pretrained("someone/tiny-vae", revision="v9")


def test_unknown_repo(hub):
    with pytest.raises(WeightsError, match="someone/nothing: no such repository"):
        AutoencoderTiny.from_pretrained("someone/nothing")
    assert hub.requests  # asked the imitation hub


def test_repo_without_weights(hub, tmp_path):
    hub.add_repo("someone/docs", {"README.md": b"hi", "notes.txt": b"none"})
    with pytest.raises(WeightsError, match="no diffusers layout.*README.md"):
        AutoencoderTiny.from_pretrained("someone/docs")
    hub.add_repo("someone/config-only", {"config.json": b"{}"})
    with pytest.raises(WeightsError, match="has config.json but no diffusion_pytorch_model"):
        AutoencoderTiny.from_pretrained("someone/config-only")


def test_listed_file_that_the_hub_then_refuses(hub, tmp_path):
    hub.add_repo("someone/tiny-pair", pair_files(tiny_model(), tmp_path))
    hub.fault("someone/tiny-pair", "tiny_decoder.safetensors", "missing")
    with pytest.raises(WeightsError, match="tiny_decoder.safetensors: no such file"):
        AutoencoderTiny.from_pretrained("someone/tiny-pair")


def test_explicit_sha256(hub, tmp_path):
    model = tiny_model()
    files = pair_files(model, tmp_path)
    hub.add_repo("someone/tiny-pair", files)
    right = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-pair", sha256=right), model)
    wrong = {**right, "tiny_decoder.safetensors": "0" * 64}
    with pytest.raises(WeightsError, match="tiny_decoder.safetensors: sha256 mismatch"):
        AutoencoderTiny.from_pretrained("someone/tiny-pair", sha256=wrong)
    # one string: the sha256 of a single-file source
    files = diffusers_files(model, tmp_path / "m")
    hub.add_repo("someone/tiny-vae", files)
    one = hashlib.sha256(files["diffusion_pytorch_model.safetensors"]).hexdigest()
    assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-vae", sha256=one), model)
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors: sha256 mismatch"):
        AutoencoderTiny.from_pretrained("someone/tiny-vae", sha256="f" * 64)


# ---------------------------------------------------------------------------------------------- cache, offline
@pytest.mark.parametrize("kind", ["variant", "diffusers", "pair"])
def test_second_load_works_offline_and_when_the_hub_is_unreachable(hub, tmp_path, monkeypatch, taef2, kind):
    if kind == "variant":
        hub.add_repo(TAEF2_REPO, TAEF2_FILES)
        source, expected = "taef2", taef2
    else:
        expected = tiny_model()
        files = diffusers_files(expected, tmp_path / "m") if kind == "diffusers" else pair_files(expected, tmp_path)
        source = "someone/tiny"
        hub.add_repo(source, files)
    assert same_weights(AutoencoderTiny.from_pretrained(source), expected)
    hub.requests.clear()
    with monkeypatch.context() as m:
        offline(m)
        assert same_weights(AutoencoderTiny.from_pretrained(source), expected)
        assert same_weights(AutoencoderTiny.from_pretrained(source, local_files_only=True), expected)
    assert hub.requests == []  # offline means no request at all
    hub.stop()
    assert same_weights(AutoencoderTiny.from_pretrained(source), expected)


@pytest.mark.parametrize("source", ["taef2", "someone/tiny"])
def test_offline_with_an_empty_cache_says_how_to_provide_weights(hub, monkeypatch, source):
    offline(monkeypatch)
    with pytest.raises(WeightsError, match=r"offline mode is on.*pass local weights instead.*encoder_path"):
        AutoencoderTiny.from_pretrained(source)
    assert hub.requests == []


def test_unreachable_hub_with_an_empty_cache(hub):
    hub.stop()
    with pytest.raises(WeightsError, match="hub cannot be reached.*pass local weights"):
        AutoencoderTiny.from_pretrained("taef2")
    with pytest.raises(WeightsError, match="hub cannot be reached"):
        AutoencoderTiny.from_pretrained("someone/tiny")


def test_cache_dir_argument(hub, tmp_path):
    hub.add_repo("someone/tiny-pair", pair_files(tiny_model(), tmp_path))
    AutoencoderTiny.from_pretrained("someone/tiny-pair", cache_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "models--someone--tiny-pair").is_dir()
    assert not hub.cache.exists()


# ---------------------------------------------------------------------------------------------- faults
def test_corrupted_transfer_of_a_pinned_file(hub, monkeypatch, taef2):
    hub.add_repo(TAEF2_REPO, TAEF2_FILES)
    hub.fault(TAEF2_REPO, "taef2_encoder.pth", "corrupt")
    with pytest.raises(WeightsError, match=r"taef2_encoder.pth: sha256 mismatch.*removed from the cache"):
        AutoencoderTiny.from_pretrained("taef2")
    assert_cache_trustworthy(hub.cache, hub.repos[TAEF2_REPO].files)
    with monkeypatch.context() as m:  # a later offline run does not find (let alone load) the corrupt file
        offline(m)
        with pytest.raises(WeightsError, match="not in the local huggingface_hub cache"):
            AutoencoderTiny.from_pretrained("taef2")
    hub.heal()  # a later run with a healthy hub downloads it again
    assert same_weights(AutoencoderTiny.from_pretrained("taef2"), taef2)


def test_corrupted_transfer_of_an_unpinned_file_is_caught_by_the_hubs_sha256(hub, tmp_path):
    model = tiny_model()
    hub.add_repo("someone/tiny-vae", diffusers_files(model, tmp_path / "m"))
    hub.fault("someone/tiny-vae", "diffusion_pytorch_model.safetensors", "corrupt")
    with pytest.raises(WeightsError, match="sha256 mismatch.*announced by the hub"):
        AutoencoderTiny.from_pretrained("someone/tiny-vae")
    assert_cache_trustworthy(hub.cache, hub.repos["someone/tiny-vae"].files)
    hub.heal()
    assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-vae"), model)


@pytest.mark.parametrize("mode", ["cut", "short"])
def test_truncated_transfer_leaves_nothing_trusted(hub, monkeypatch, taef2, mode):
    hub.add_repo(TAEF2_REPO, TAEF2_FILES)
    hub.fault(TAEF2_REPO, "taef2_decoder.pth", mode)
    with pytest.raises(WeightsError, match="taef2_decoder.pth: download failed"):
        AutoencoderTiny.from_pretrained("taef2")
    assert_cache_trustworthy(hub.cache, hub.repos[TAEF2_REPO].files)
    assert not list(hub.cache.rglob("snapshots/*/taef2_decoder.pth"))
    with monkeypatch.context() as m:
        offline(m)
        with pytest.raises(WeightsError, match="taef2_decoder.pth: not in the local huggingface_hub cache"):
            AutoencoderTiny.from_pretrained("taef2")
    hub.heal()
    assert same_weights(AutoencoderTiny.from_pretrained("taef2"), taef2)


def test_interrupted_transfer_is_resumed(hub, tmp_path):
    model = tiny_model()
    files = pair_files(model, tmp_path)
    hub.add_repo("someone/tiny-pair", files)
    hub.fault("someone/tiny-pair", "tiny_decoder.safetensors", "cut", times=1)
    assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-pair"), model)
    sha = hashlib.sha256(files["tiny_decoder.safetensors"]).hexdigest()
    assert len([p for p in fetched(hub) if p.endswith(sha)]) == 2  # the cut transfer and its resumption


def test_half_cached_pair_repo_is_not_loaded_as_an_encoder_only_model(hub, monkeypatch, tmp_path):
    hub.add_repo("someone/tiny-pair", pair_files(tiny_model(), tmp_path))
    hub.fault("someone/tiny-pair", "tiny_decoder.safetensors", "corrupt")
    with pytest.raises(WeightsError, match="tiny_decoder.safetensors: sha256 mismatch"):
        AutoencoderTiny.from_pretrained("someone/tiny-pair")
    assert list(hub.cache.rglob("snapshots/*/tiny_encoder.safetensors"))  # the good half stays cached
    with monkeypatch.context() as m:
        offline(m)
        with pytest.raises(WeightsError, match="someone/tiny-pair: the cached copy is incomplete"):
            AutoencoderTiny.from_pretrained("someone/tiny-pair")
    hub.stop()
    with pytest.raises(WeightsError, match="the cached copy is incomplete"):
        AutoencoderTiny.from_pretrained("someone/tiny-pair")


def test_file_corrupted_in_the_cache_later_is_evicted(hub, monkeypatch, tmp_path):
    model = tiny_model()
    hub.add_repo("someone/tiny-pair", pair_files(model, tmp_path))
    AutoencoderTiny.from_pretrained("someone/tiny-pair")
    (blob,) = [p for p in hub.cache.rglob("blobs/*")
               if p.read_bytes() == hub.repos["someone/tiny-pair"].files["tiny_encoder.safetensors"]]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))  # bit rot, or another tool's bad write
    with monkeypatch.context() as m:
        offline(m)
        with pytest.raises(WeightsError, match="sha256 mismatch.*removed from the cache"):
            AutoencoderTiny.from_pretrained("someone/tiny-pair")
    assert not blob.exists()
    assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-pair"), model)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["diffusers", "pair"]), which=st.integers(0, 1),
       mode=st.sampled_from(["corrupt", "cut", "short", "missing"]), times=st.sampled_from([None, 1, 2]),
       seed=st.integers(0, 2**16))
def test_any_fault_gives_the_exact_model_or_a_weights_error_and_a_clean_cache(
        hub, tmp_path_factory, layout, which, mode, times, seed):
    """Whatever goes wrong: either the exact weights load, or WeightsError and nothing untrustworthy is cached;
    then a healthy hub loads the exact weights."""
    model = tiny_model(seed)
    folder = tmp_path_factory.mktemp("m")
    files = diffusers_files(model, folder) if layout == "diffusers" else pair_files(model, folder)
    repo_id = f"prop/{layout}-{seed}-{which}-{mode}-{times}"
    hub.add_repo(repo_id, files)
    victim = sorted(n for n in files if not n.endswith(".json"))[which % (1 if layout == "diffusers" else 2)]
    hub.fault(repo_id, victim, mode, times)
    cache = tmp_path_factory.mktemp("cache")
    try:
        loaded = AutoencoderTiny.from_pretrained(repo_id, cache_dir=cache)
    except WeightsError as e:
        event(f"{mode} x{times}: WeightsError")
        assert victim in str(e)
    else:
        event(f"{mode} x{times}: loaded")
        assert same_weights(loaded, model)
    assert_cache_trustworthy(cache, files)
    hub.heal()
    assert same_weights(AutoencoderTiny.from_pretrained(repo_id, cache_dir=cache), model)
