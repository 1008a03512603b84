"""Weight formats, hub downloads and integrity, kept apart from the model.

Accepted sources (`load`):
- a variant name ("taesd", "taesdxl", "taesd3", "taef1", "taef2", "taesana", or an alias): downloaded from its hub
  repository (huggingface_hub cache, offline mode, HF_ENDPOINT), pinned sha256 checked where known;
- a folder in diffusers layout (config.json + diffusion_pytorch_model.safetensors or .bin);
- a folder holding the original pair `<name>_encoder.<ext>` / `<name>_decoder.<ext>` (either may be absent);
- a pair of files `(encoder_path, decoder_path)` (either may be None);
- a single file: one half in the original layout, diffusers-keyed (`encoder.layers.N...`), or combined with
  ComfyUI's `taesd_encoder.` / `taesd_decoder.` prefixes;
- a hub repo id ("owner/name"): diffusers layout, an original pair, or one weights file; offline (HF_HUB_OFFLINE,
  local_files_only) or with the hub unreachable, from the cached snapshot. See docs/weights.md.

The architecture is inferred from the tensors (never from file names). Loading is strict: any missing, unexpected
or mis-shaped tensor, an unreadable file or a sha256 mismatch raises `WeightsError`, never a half-loaded model.
Pickled files are read with `torch.load(weights_only=True)`: nothing in a file is executed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import pickle
import re
import socket
import threading
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import torch

from ..nets.config import DEFAULTS, IMAGE_CHANNELS, TinyConfig
from ..nets.model import AutoencoderTinyBase
from ..nets.variants import KNOWN_SHA256, Variant, closest_names, get_variant, is_variant


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
COMFY_PREFIXES = {"taesd_encoder.": "encoder", "taesd_decoder.": "decoder"}
COMFY_SCALARS = ("vae_scale", "vae_shift")


class WeightsError(ValueError):
    """Weights that cannot be loaded as they are: names the file and the problem."""


# ---------------------------------------------------------------------------------------------- files
def first_line(e: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` of an exception, for one-line errors (also when the message is empty)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__


# float dtypes a weights file may hold (fp8 and other exotic dtypes are refused: they have no arithmetic on CPU)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: str | os.PathLike, expected: str | None) -> None:
    if expected and sha256_file(path) != expected.lower():
        raise WeightsError(f"{path}: sha256 mismatch (expected {expected}, got {sha256_file(path)}); "
                           "the file is corrupt or not the one asked for")


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file (.safetensors, or a pickled .pth/.pt/.bin/.ckpt read with weights_only=True)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, expected a weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, not a weights file, or a pickle asking to run code
        if isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e):
            raise WeightsError(
                f"{path}: cannot read weights: the file contains code or Python objects, which tinyae never loads "
                "(only tensors). If you "
                "trust its origin, convert it once in a throw-away environment to a state dict of tensors saved "
                "with safetensors.torch.save_file, and load that") from None
        raise WeightsError(f"{path}: cannot read weights ({first_line(e)})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise WeightsError(f"{path}: holds no tensors (found {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: entries that are not tensors: {bad[:5]}")
    for k, v in sd.items():
        if v.layout != torch.strided:
            raise WeightsError(f"{path}: tensor {k} is {str(v.layout).replace('torch.', '')}; only dense tensors "
                               "are supported")
        if v.dtype not in FLOAT_DTYPES:
            raise WeightsError(f"{path}: tensor {k} has dtype {str(v.dtype).replace('torch.', '')}; expected "
                               "float16, bfloat16, float32 or float64")
    return sd


def _owner_tag() -> str:
    """`host-pid` of this process: what makes a temporary file's name its own."""
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())}-{os.getpid()}"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write through `write(tmp_path)` to a temporary file beside `path`, fsync it, then rename over `path`.

    The temporary file is `.<name>.<host>-<pid>.<random>.tmp`: owned by this process (see `remove_stale_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give the usual mode (or keep the replaced file's)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


_TEMP_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files `atomic_write` left beside `path` in a process that has died (killed -9).

    Only provably stale files go: written on this host by a process id that no longer runs. Another live run's
    temporary file, or one of unknown origin, is left alone. Returns the removed paths."""
    path = Path(path)
    host = _owner_tag().rsplit("-", 1)[0]
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        m = _TEMP_OWNER.search(tmp.name[len(path.name) + 1:])
        if not m or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _file_mode(path: Path) -> int:
    """The mode a new file gets (0666 less the umask), or the existing file's mode."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# ---------------------------------------------------------------------------------------------- key layouts
_NUM = re.compile(r"^(\d+)\.(.+)$")


def _half_to_diffusers(sd: dict[str, torch.Tensor], part: str, original: bool) -> dict[str, torch.Tensor]:
    """Keys `N.rest` of one half -> `part.layers.M.rest`; the original decoder counts its Clamp as layer 0."""
    out = {}
    for k, v in sd.items():
        m = _NUM.match(k)
        if not m:
            raise WeightsError(f"unexpected tensor {k!r} in the {part}")
        idx = int(m.group(1)) - (1 if part == "decoder" and original else 0)
        if idx < 0:
            raise WeightsError(f"unexpected tensor {k!r} in the {part}")
        out[f"{part}.layers.{idx}.{m.group(2)}"] = v
    return out


def _guess_half(sd: dict[str, torch.Tensor]) -> str:
    """An original-layout half: the encoder's first conv is layer 0; the decoder's layer 0 is its (empty) Clamp."""
    return "encoder" if any(k.startswith("0.") for k in sd) else "decoder"


def to_diffusers_keys(sd: dict[str, torch.Tensor], part: str | None = None) -> dict[str, torch.Tensor]:
    """Any known layout -> diffusers' keys (`encoder.layers.N...`, `decoder.layers.N...`).

    `part` forces which half an original-layout file is ("encoder"/"decoder"); otherwise it is read from the keys.
    ComfyUI's `vae_scale`/`vae_shift` scalars are dropped (tinyae keeps latents raw; see docs/formats.md).
    """
    sd = {k: v for k, v in sd.items() if k not in COMFY_SCALARS}
    for prefix in ("first_stage_model.", "vae.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in sd):
        bad = [k for k in sd if not k.startswith(("encoder.layers.", "decoder.layers."))]
        if bad:
            raise WeightsError(f"unexpected tensors {bad[:5]}")
        return dict(sd)
    if any(k.startswith(tuple(COMFY_PREFIXES)) for k in sd):
        out: dict[str, torch.Tensor] = {}
        for prefix, half in COMFY_PREFIXES.items():
            sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            out.update(_half_to_diffusers(sub, half, original=True))
        bad = [k for k in sd if not k.startswith(tuple(COMFY_PREFIXES))]
        if bad:
            raise WeightsError(f"unexpected tensors {bad[:5]}")
        return out
    if any(k.startswith(("encoder.", "decoder.")) for k in sd):  # original Sequential under a module name
        out = {}
        for half in ("encoder", "decoder"):
            sub = {k[len(half) + 1:]: v for k, v in sd.items() if k.startswith(half + ".")}
            out.update(_half_to_diffusers(sub, half, original=True))
        bad = [k for k in sd if not k.startswith(("encoder.", "decoder."))]
        if bad:
            raise WeightsError(f"unexpected tensors {bad[:5]}")
        return out
    return _half_to_diffusers(sd, part or _guess_half(sd), original=True)


def to_original_keys(sd: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """diffusers' keys of one half -> the original script's Sequential keys."""
    prefix, shift = f"{part}.layers.", (1 if part == "decoder" else 0)
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            idx, rest = k[len(prefix):].split(".", 1)
            out[f"{int(idx) + shift}.{rest}"] = v
    return out


# ---------------------------------------------------------------------------------------------- architecture
def _layers(sd: dict[str, torch.Tensor], part: str) -> dict[int, dict[str, torch.Tensor]]:
    layers: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    prefix = f"{part}.layers."
    for k, v in sd.items():
        if k.startswith(prefix):
            m = _NUM.match(k[len(prefix):])
            if not m:
                raise WeightsError(f"unexpected tensor {k!r} (expected {prefix}<number>.<name>)")
            layers[int(m.group(1))][m.group(2)] = v
    return dict(layers)


def _conv_shape(entry: dict[str, torch.Tensor], what: str) -> tuple[int, int]:
    w = entry.get("weight")
    if w is None or w.dim() != 4:
        raise WeightsError(f"cannot read the architecture: {what} is not a convolution")
    return int(w.shape[1]), int(w.shape[0])


def infer_config(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """AutoencoderTiny parameters (plus has_encoder/has_decoder) read off diffusers-keyed tensors."""
    enc, dec = _layers(sd, "encoder"), _layers(sd, "decoder")
    if not enc and not dec:
        raise WeightsError("no encoder or decoder tensors found")
    p: dict[str, Any] = {"has_encoder": bool(enc), "has_decoder": bool(dec)}
    midblock = set()
    if enc:
        idx = sorted(enc)
        stem, i = [], 0
        # leading plain convs: one conv directly followed by a block = standard; convs with gaps (ReLUs) = stem
        while i < len(idx) and "conv.0.weight" not in enc[idx[i]]:
            stem.append(idx[i])
            i += 1
        if not stem:
            raise WeightsError("cannot read the architecture: the encoder does not start with a convolution")
        n_in = _conv_shape(enc[stem[0]], f"encoder layer {stem[0]}")[0]
        if stem[0] > 0:  # F16: a parameter-free PixelUnshuffle before the first conv (and a ReLU after it)
            if stem[0] != 1 or len(stem) != 1 or (i < len(idx) and idx[i] != 3):
                raise WeightsError("cannot read the architecture: the encoder does not start with a convolution")
            p["in_channels"], p["patch_size"] = _patchified(n_in, "encoder's first convolution")
        else:
            p["in_channels"], p["patch_size"] = n_in, 1
        if len(stem) > 1 or (i < len(idx) and idx[i] != stem[0] + 1 and stem[0] == 0):
            p["encoder_stem_channels"] = tuple(_conv_shape(enc[s], f"encoder layer {s}")[1] for s in stem)
        channels, counts = [], []
        for j in idx[i:-1]:
            e = enc[j]
            if "conv.0.weight" in e:
                if not counts:
                    channels.append(int(e["conv.0.weight"].shape[0]))
                    counts.append(0)
                counts[-1] += 1
                if "pool.0.weight" in e:
                    midblock.add(("encoder", len(counts) - 1))
            else:  # stride-2 conv opening a new stage
                channels.append(_conv_shape(e, f"encoder layer {j}")[1])
                counts.append(0)
        p["encoder_block_out_channels"], p["num_encoder_blocks"] = tuple(channels), tuple(counts)
        p["latent_channels"] = _conv_shape(enc[idx[-1]], f"encoder layer {idx[-1]}")[1]
        if midblock and midblock != {("encoder", len(counts) - 1)}:
            raise WeightsError("unsupported architecture: GroupNorm branch outside the encoder's last stage")
    if dec:
        idx = sorted(dec)
        lat, ch0 = _conv_shape(dec[idx[0]], "decoder layer 0")
        if "latent_channels" in p and p["latent_channels"] != lat:
            raise WeightsError(f"encoder and decoder disagree: {p['latent_channels']} vs {lat} latent channels")
        p["latent_channels"] = lat
        channels, counts = [ch0], [0]
        for j in idx[1:-1]:
            e = dec[j]
            if "conv.0.weight" in e:
                counts[-1] += 1
                if "pool.0.weight" in e:
                    midblock.add(("decoder", len(counts) - 1))
            else:  # conv after an upsample: opens the next stage
                channels.append(_conv_shape(e, f"decoder layer {j}")[1])
                counts.append(0)
        p["decoder_block_out_channels"], p["num_decoder_blocks"] = tuple(channels), tuple(counts)
        n_out = _conv_shape(dec[idx[-1]], f"decoder layer {idx[-1]}")[1]
        out, patch = (n_out, 1) if n_out in IMAGE_CHANNELS else _patchified(n_out, "decoder's last convolution")
        if p.setdefault("patch_size", patch) != patch or p.setdefault("in_channels", out) != out:
            raise WeightsError(f"encoder and decoder disagree: {p['in_channels']} image channels in "
                               f"{p['patch_size']}x{p['patch_size']} patches vs {out} in {patch}x{patch}")
        p["out_channels"] = out
        dec_mid = {m for m in midblock if m[0] == "decoder"}
        if dec_mid and dec_mid != {("decoder", 0)}:
            raise WeightsError("unsupported architecture: GroupNorm branch outside the decoder's first stage")
    p["use_midblock_gn"] = bool(midblock)
    p.setdefault("out_channels", p.get("in_channels"))
    return p


def _patchified(channels: int, what: str) -> tuple[int, int]:
    """(image channels, patch size) of a convolution side with image_channels * patch**2 channels (F16: 12 or 16)."""
    for image in IMAGE_CHANNELS:
        patch = math.isqrt(channels // image)
        if patch > 1 and image * patch * patch == channels:
            return image, patch
    raise WeightsError(f"cannot read the architecture: the {what} has {channels} channels, not 3 or 4 image "
                       "channels (RGB, RGBA) in square patches")


def _describe_mismatch(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> str | None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(sd)) if own[k].shape != sd[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensor(s), e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    if shapes:
        parts.append(f"{len(shapes)} wrong shape(s), e.g. {shapes[:2]}")
    return "; ".join(parts) or None


def build(sd: dict[str, torch.Tensor], config: dict[str, Any] | None = None, source: str = "weights",
          model_class: type[AutoencoderTinyBase] | None = None) -> AutoencoderTinyBase:
    """A model from diffusers-keyed tensors: architecture from `config` if given, else inferred; strict load.
    `model_class`: the class to build (default the bare network; tinyae.AutoencoderTiny passes itself)."""
    model_class = model_class or AutoencoderTinyBase

    try:
        inferred = infer_config(sd)
    except WeightsError as e:
        raise WeightsError(f"{source}: {e}") from None
    has = {"has_encoder": inferred.pop("has_encoder"), "has_decoder": inferred.pop("has_decoder")}
    if has["has_encoder"]:
        inferred.setdefault("encoder_stem_channels", ())
    try:
        params = TinyConfig.from_dict(config if config is not None else {**DEFAULTS, **inferred}).init_kwargs()
    except ValueError as e:
        raise WeightsError(f"{source}: config: {e}") from None
    # The architecture the tensors imply must be the config's before anything is allocated: a config asking for
    # 100000 channels must not build a 100000-channel network to find out.
    differ = [f"{k} {params[k]!r} (the tensors have {v!r})" for k, v in inferred.items() if params.get(k) != v]
    if differ:
        raise WeightsError(f"{source}: the config does not match the tensors (wrong shapes): "
                           f"{'; '.join(differ[:3])}")
    try:
        model = model_class(**params, **has)
    except ValueError as e:
        raise WeightsError(f"{source}: {e}") from None
    problem = _describe_mismatch(model, sd)
    if problem:
        raise WeightsError(f"{source}: tensors do not fit the architecture: {problem}")
    for k, v in sd.items():
        if v.dtype not in FLOAT_DTYPES or v.layout != torch.strided:
            raise WeightsError(f"{source}: tensor {k} is {v.dtype} {v.layout}, expected dense floating point")
        if not torch.isfinite(v).all():
            raise WeightsError(f"{source}: tensor {k} holds NaN or infinite values")
    model.load_state_dict(sd, strict=True)  # float32 model; from_pretrained(torch_dtype=...) casts after
    return model.eval()


# ---------------------------------------------------------------------------------------------- hub
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_SHA1_NAME = re.compile(r"[0-9a-f]{40}")
DOWNLOAD_DEADLINE_ENV = "TINYAE_DOWNLOAD_TIMEOUT"
DOWNLOAD_DEADLINE = 300.0  # seconds for one file, all retries included


class WeightsNotCachedError(WeightsError):
    """A hub file that is not in the cache while the hub cannot be reached (or offline mode is on)."""


class _HubAnswered(WeightsNotCachedError):
    """Not cached, and the hub answered with an HTTP error (it is reachable but failing)."""


class _NotOnHub(WeightsError):
    """The hub says the repository has no such file."""


def _hub_settings(cache_dir: str | os.PathLike | None, local_files_only: bool | None) -> dict[str, Any]:
    """endpoint, cache_dir and offline mode from HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE as they are
    now: huggingface_hub reads them once, when it is imported, so a later `os.environ[...] = ...` would be ignored."""
    from huggingface_hub import constants

    env = os.environ
    endpoint = env.get("HF_ENDPOINT", "").strip().rstrip("/") or None
    if cache_dir is None:
        home = env.get("HF_HOME")
        cache_dir = (env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
                     or (os.path.join(os.path.expanduser(home), "hub") if home else None))
    offline = (bool(local_files_only) or constants.HF_HUB_OFFLINE
               or env.get("HF_HUB_OFFLINE", "").strip().upper() in constants.ENV_VARS_TRUE_VALUES)
    return {"endpoint": endpoint, "cache_dir": cache_dir, "local_files_only": offline}


def _not_cached(where: str, offline: bool) -> WeightsNotCachedError:
    why = ("offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True)" if offline
           else "the hub cannot be reached")
    return WeightsNotCachedError(f"{where}: not in the local huggingface_hub cache and {why}. Download it once with network "
                      "access (HF_ENDPOINT may point to a mirror), or pass local weights instead: a folder, a "
                      "weights file, or a pair (encoder_path, decoder_path)")


def hub_download(repo_id: str, filename: str, *, sha256: str | None = None, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                 subfolder: str | None = None, token: str | bool | None = None) -> str:
    """Download one file through huggingface_hub (its cache, HF_HUB_OFFLINE, HF_ENDPOINT) and check its sha256.

    Returns the path of the file in the cache. Raises WeightsError: the file is not in the repository, not cached
    while offline or unreachable, unknown repository or revision, an interrupted or short transfer, a sha256
    mismatch (see `_verify`).
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        from huggingface_hub.errors import RemoteEntryNotFoundError
    except ImportError:  # huggingface_hub < 1.0: one EntryNotFoundError (LocalEntryNotFoundError is caught first)
        from huggingface_hub.errors import EntryNotFoundError as RemoteEntryNotFoundError

    from .._version import __version__

    settings = _hub_settings(cache_dir, local_files_only)
    where = f"{repo_id}/{subfolder + '/' if subfolder else ''}{filename}"
    deadline = _download_deadline()
    try:
        path = _with_deadline(lambda: hf_hub_download(
            repo_id, filename, subfolder=subfolder, revision=revision, token=token, library_name="tinyae",
            library_version=__version__, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT, **settings), deadline)
    except TimeoutError:
        raise WeightsError(f"{where}: the download did not finish within {deadline:g} s (the hub answers too slowly "
                           f"or not at all); nothing was cached. Try again later, or allow more time with "
                           f"${DOWNLOAD_DEADLINE_ENV}=SECONDS") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        answer = _hub_answer(e)
        if answer and not settings["local_files_only"]:
            raise _HubAnswered(f"{where}: not in the local huggingface_hub cache and the hub answered "
                                        f"{answer}; try again later, or pass local weights instead") from None
        raise _not_cached(where, settings["local_files_only"]) from None
    except RemoteEntryNotFoundError:
        raise _NotOnHub(f"{where}: no such file in the repository"
                        f"{f' at revision {revision!r}' if revision else ''}") from None
    except GatedRepoError:
        raise WeightsError(f"{where}: the repository is gated; accept its terms on the hub and pass token=...") \
            from None
    except RepositoryNotFoundError:
        raise WeightsError(f"{repo_id}: no such repository on the hub (or it is private: pass token=...)") from None
    except RevisionNotFoundError:
        raise WeightsError(f"{repo_id}: revision {revision!r} not found on the hub") from None
    except Exception as e:  # interrupted or short transfer, server error, ...: huggingface_hub keeps no partial file
        raise WeightsError(f"{where}: download failed ({first_line(e)}); nothing was cached, try again") from None
    _verify(path, sha256, where)
    return path


def _download_deadline() -> float:
    """Seconds one hub file may take in all (${DOWNLOAD_DEADLINE_ENV}, default 300): huggingface_hub's own timeouts
    bound each read (HF_HUB_DOWNLOAD_TIMEOUT) and retry, but a trickling answer never ends."""
    text = os.environ.get(DOWNLOAD_DEADLINE_ENV, "").strip()
    try:
        value = float(text) if text else DOWNLOAD_DEADLINE
    except ValueError:
        raise WeightsError(f"${DOWNLOAD_DEADLINE_ENV}={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise WeightsError(f"${DOWNLOAD_DEADLINE_ENV}={text!r}: expected a positive number of seconds")
    return value


def _with_deadline(call, seconds: float):
    """`call()` in a daemon thread; TimeoutError when it has not returned after `seconds`. huggingface_hub writes a
    download to `.incomplete` and renames it when complete, so an abandoned transfer never becomes a cached file."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name="tinyae-download", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(seconds)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _hub_answer(e: BaseException) -> str | None:
    """'HTTP 500 (...)' when huggingface_hub gave up because the hub answered with an error (not unreachable)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and status >= 400:
            reason = getattr(response, "reason_phrase", None) or getattr(response, "reason", None) or ""
            return f"HTTP {status}" + (f" ({reason})" if reason else "")
        e = e.__cause__ or e.__context__
    return None


def _verify(path: str, sha256: str | None, where: str) -> None:
    """Check a cached hub file against the pinned sha256 and against the hub's own: an LFS file's cache blob is
    named by the sha256 the hub announced (its ETag). A file that fails is evicted, so no later run trusts it."""
    blob = os.path.basename(os.path.realpath(path))
    checks = [("pinned", sha256.lower())] if sha256 else []
    if _SHA256_NAME.fullmatch(blob):
        checks.append(("announced by the hub", blob))
    elif _SHA1_NAME.fullmatch(blob):  # a small (non-LFS) file: its blob is named by its ETag, the git blob sha1
        actual = _git_blob_sha1(path)
        if actual != blob:
            _evict(path, blob)
            raise WeightsError(f"{where}: git sha1 mismatch (expected {blob}, announced by the hub; got {actual}): "
                               "the file is corrupt. It was removed from the cache, so the next run downloads it "
                               "again")
    if not checks:
        return
    actual = sha256_file(path)
    for what, expected in checks:
        if actual != expected:
            _evict(path, expected)
            raise WeightsError(f"{where}: sha256 mismatch (expected {expected}, {what}; got {actual}): the file is "
                               "corrupt or not the one asked for. It was removed from the cache, so the next run "
                               "downloads it again")


def _git_blob_sha1(path: str) -> str:
    """The git blob sha1 of a file: what the hub announces as the ETag of a file stored in git (not LFS)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _evict(path: str, expected: str) -> None:
    """Remove a cached file: its snapshot entry, the blob it links to, and a blob named by the expected sha256
    (where the cache copies files instead of linking them)."""
    entry = Path(path)
    targets = {entry, Path(os.path.realpath(entry))}
    storage = next((p.parent for p in entry.parents if p.name == "snapshots"), None)
    if storage is not None:
        targets.add(storage / "blobs" / expected)
    for p in targets:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _hub_config(path: str, where: str) -> dict[str, Any]:
    """A cached hub config.json, read and validated; one that fails is evicted (the next run downloads it again)."""
    try:
        return _read_config(path)
    except WeightsError as e:
        _evict(path, os.path.basename(os.path.realpath(path)))
        raise WeightsError(f"{where}: {str(e).split(': ', 1)[-1]}. It was removed from the cache, so the next "
                           "run downloads it again") from None


def _variant_files(v: Variant, **hub: Any) -> dict[str, Any]:
    if v.layout == "diffusers":
        cfg_path = hub_download(v.repo_id, "config.json", **hub)
        w = hub_download(v.repo_id, v.files[1], sha256=v.sha256.get(v.files[1]), **hub)
        return {"config": _hub_config(cfg_path, f"{v.repo_id}/config.json"), "files": [(w, None)]}
    files: list[tuple[str, str]] = []
    try:
        for f in v.files:
            part = "encoder" if "_encoder" in f else "decoder"
            files.append((hub_download(v.repo_id, f, sha256=v.sha256.get(f), **hub), part))
    except (_NotOnHub, WeightsNotCachedError) as e:
        if files:  # one half is there, the other is not: never a half model
            raise
        # The registry names the GitHub release's files (pinned); the hub repository may hold the weights under
        # other names (e.g. one combined file): read it like any repo id, checked against the hub's sha256.
        if isinstance(e, _NotOnHub):
            return _repo_files(v.repo_id, **hub)
        subfolder = hub.pop("subfolder", None)
        try:
            return _cached_repo_files(v.repo_id, subfolder, **hub)
        except WeightsNotCachedError:
            if isinstance(e, _HubAnswered):
                raise e from None
            raise
    return {"config": None, "files": files}


def _repo_files(repo_id: str, *, subfolder: str | None = None, **hub: Any) -> dict[str, Any]:
    """A hub repo in diffusers layout, or with an original encoder/decoder pair (found by listing the repo).

    Offline, or when the hub cannot be reached, the repo's cached snapshot is used as a local folder.
    """
    from huggingface_hub import HfApi

    settings = _hub_settings(hub.get("cache_dir"), hub.get("local_files_only"))
    if settings["local_files_only"]:
        return _cached_repo_files(repo_id, subfolder, **hub)
    try:
        cfg_path = hub_download(repo_id, "config.json", subfolder=subfolder, **hub)
    except _NotOnHub:
        cfg_path = None
    except WeightsNotCachedError as e:
        try:
            return _cached_repo_files(repo_id, subfolder, **hub)
        except WeightsNotCachedError:
            if isinstance(e, _HubAnswered):
                raise e from None  # what the hub answered, not only that the cache is empty
            raise
    if cfg_path is not None:
        for name in DIFFUSERS_WEIGHTS:
            try:
                w = hub_download(repo_id, name, subfolder=subfolder, **hub)
            except _NotOnHub:
                continue
            return {"config": _hub_config(cfg_path, f"{repo_id}/config.json"), "files": [(w, None)]}
        raise WeightsError(f"{repo_id}: has config.json but no {' or '.join(DIFFUSERS_WEIGHTS)}")
    try:
        names = HfApi(endpoint=settings["endpoint"]).list_repo_files(repo_id, revision=hub.get("revision"),
                                                                     token=hub.get("token"))
    except Exception as e:
        raise WeightsError(f"{repo_id}: cannot list the repository ({first_line(e)})") from None
    if subfolder:
        prefix = subfolder.strip("/") + "/"
        names = [n[len(prefix):] for n in names if n.startswith(prefix)]
    pair = _find_pair(names, repo_id)
    if not pair:  # else one weights file (combined, or diffusers-keyed without config.json), as in a local folder
        singles = [n for n in names if "/" not in n and n.endswith(WEIGHT_SUFFIXES)]
        if len(singles) != 1:
            raise WeightsError(f"{repo_id}: no diffusers layout (config.json + {DIFFUSERS_WEIGHTS[0]}), no "
                               f"<name>_encoder/<name>_decoder weights and not exactly one weights file "
                               f"(files: {sorted(names)[:8]})")
        pair = [(singles[0], None)]
    return {"config": None, "files": [(hub_download(repo_id, f, subfolder=subfolder, **hub), part)
                                      for f, part in pair]}


def _cached_repo_files(repo_id: str, subfolder: str | None, *, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                       token: str | bool | None = None) -> dict[str, Any]:
    """What the cache holds of a hub repo (its snapshot folder for `revision`), read like a local folder."""
    from huggingface_hub import snapshot_download

    settings = _hub_settings(cache_dir, local_files_only)
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=settings["cache_dir"],
                                   local_files_only=True)
    except Exception:
        raise _not_cached(repo_id, settings["local_files_only"]) from None
    folder = Path(folder) / subfolder if subfolder else Path(folder)
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    if not names:
        raise _not_cached(repo_id, settings["local_files_only"])
    incomplete = (f"{repo_id}: the cached copy is incomplete (a download may have failed; files: {names[:8]}). "
                  "Download it again with network access, or pass local weights instead")
    if "config.json" in names:
        try:
            found = _local_files(folder, None)
        except WeightsError:
            raise WeightsError(incomplete) from None
    else:
        # Both halves: offline, a missing half cannot be told from one whose download failed (a repo with only an
        # encoder can still be loaded offline by passing the cached file's path).
        pair = _find_pair(names, repo_id)
        if len(pair) == 1:
            raise WeightsError(incomplete)
        if pair:
            found = {"config": None, "files": [(str(folder / f), part) for f, part in pair]}
        else:  # one weights file, as online
            try:
                found = _local_files(folder, None)
            except WeightsError:
                raise WeightsError(incomplete) from None
    for path, _ in found["files"]:
        _verify(path, None, f"{repo_id}/{os.path.basename(path)}")
    if "config.json" in names:
        _verify(str(folder / "config.json"), None, f"{repo_id}/config.json")
    return found


# ---------------------------------------------------------------------------------------------- local
def _read_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read config ({first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: config is not a JSON object")
    try:
        TinyConfig.from_dict(cfg)
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{path}: bad config ({e})") from None
    return cfg


def _find_pair(names: Iterable[str], where: str = "") -> list[tuple[str, str]]:
    """Pick `<name>_encoder.<ext>` / `<name>_decoder.<ext>` from file names, preferring safetensors.

    Several different `<name>`s are ambiguous: WeightsError (pass the files as a pair instead).
    """
    rank = {s: i for i, s in enumerate(WEIGHT_SUFFIXES)}
    found: dict[str, dict[str, tuple[int, str]]] = defaultdict(dict)
    for n in names:
        if "/" in n:
            continue
        stem, suffix = os.path.splitext(n)
        for part in ("encoder", "decoder"):
            if suffix in rank and stem.endswith("_" + part):
                best = found[stem[: -len(part) - 1]]
                if part not in best or rank[suffix] < best[part][0]:
                    best[part] = (rank[suffix], n)
    if len(found) > 1:
        raise WeightsError(f"{where}: weights of several models ({', '.join(sorted(found))}); pass the files as "
                           "a pair (encoder_path, decoder_path) instead")
    if not found:
        return []
    best = next(iter(found.values()))
    return [(best[p][1], p) for p in ("encoder", "decoder") if p in best]


def _local_files(path: Path, subfolder: str | None) -> dict[str, Any]:
    if subfolder:
        path = path / subfolder
    if path.is_file():
        return {"config": None, "files": [(str(path), None)]}
    if (path / "config.json").exists():
        for name in DIFFUSERS_WEIGHTS:
            if (path / name).exists():
                return {"config": _read_config(path / "config.json"), "files": [(str(path / name), None)]}
        raise WeightsError(f"{path}: config.json found but no {' or '.join(DIFFUSERS_WEIGHTS)}")
    names = sorted(os.listdir(path))
    pair = _find_pair(names, str(path))
    if pair:
        return {"config": None, "files": [(str(path / f), part) for f, part in pair]}
    singles = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    if len(singles) == 1:
        return {"config": None, "files": [(str(path / singles[0]), None)]}
    raise WeightsError(f"{path}: no weights found (expected diffusers layout, <name>_encoder/<name>_decoder "
                       f"files, or one weights file; found {names[:8]})")


# ---------------------------------------------------------------------------------------------- load/save
def load(source: Any, *, sha256: str | dict[str, str] | None = None, revision: str | None = None,
         cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
         subfolder: str | None = None, token: str | bool | None = None,
         model_class: type[AutoencoderTinyBase] | None = None, **ignored: Any) -> AutoencoderTinyBase:
    """Load a model of `model_class` (default the bare network, `tinyae.nets.model.AutoencoderTinyBase`;
    `tinyae.AutoencoderTiny.from_pretrained` passes tinyae.AutoencoderTiny) from any source (see the module
    docstring). Raises WeightsError.

    `sha256`: expected sha256 of a single file, or {file name: sha256} for several.
    Unknown keywords that diffusers' from_pretrained accepts (variant, use_safetensors, ...) are ignored.
    """
    hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
    if isinstance(source, (tuple, list)):
        if len(source) != 2 or all(s is None for s in source):
            raise WeightsError("a pair of files must be (encoder_path, decoder_path), one of them may be None")
        found = {"config": None, "files": [(str(s), p) for s, p in zip(source, ("encoder", "decoder"))
                                           if s is not None]}
        label = " + ".join(str(s) for s in source if s is not None)
    elif isinstance(source, (str, os.PathLike)) and Path(source).exists():
        found, label = _local_files(Path(source), subfolder), str(source)
    elif isinstance(source, str) and is_variant(source):
        v = get_variant(source)
        found, label = _variant_files(v, subfolder=subfolder, **hub), f"{v.name} ({v.repo_id})"
        if found["config"] is None:
            found["config"] = {**DEFAULTS, **v.config}
    elif isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        found, label = _repo_files(source, subfolder=subfolder, **hub), source
    else:
        close = closest_names(str(source))
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise WeightsError(f"{source!r}: not a known variant, an existing file or folder, or a hub repo id.{hint}")

    sd: dict[str, torch.Tensor] = {}
    for path, part in found["files"]:
        expected = sha256.get(os.path.basename(path)) if isinstance(sha256, dict) else sha256
        check_sha256(path, expected)
        try:
            tensors = to_diffusers_keys(read_tensors(path), part)
        except WeightsError as e:
            msg = str(e)
            raise WeightsError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        clash = set(tensors) & set(sd)
        if clash:
            raise WeightsError(f"{path}: tensors already given by another file, e.g. {sorted(clash)[:3]}")
        sd.update(tensors)
    try:
        return build(sd, found["config"], source=label, model_class=model_class)
    except WeightsError:
        raise
    except Exception as e:  # a tensor layout the checks above did not foresee: still one WeightsError
        raise WeightsError(f"{label}: cannot build a model from these tensors ({first_line(e)})") from None


def state_dict_of(model: AutoencoderTinyBase, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_diffusers(model: AutoencoderTinyBase, folder: str | os.PathLike, safe_serialization: bool = True) -> None:
    """config.json + diffusion_pytorch_model.safetensors (or .bin), each written atomically."""
    folder = Path(folder)
    cfg = model.config.to_dict()
    try:
        import diffusers

        cfg["_diffusers_version"] = diffusers.__version__
    except ImportError:
        cfg["_diffusers_version"] = "0.30.0"
    from .._version import __version__

    cfg["_tinyae_version"] = __version__
    if not model.config.diffusers_compatible:
        cfg["_tinyae_note"] = "diffusers' AutoencoderTiny cannot express this architecture; load it with tinyae"
    sd = state_dict_of(model)
    if safe_serialization:
        from safetensors.torch import save_file

        atomic_write(folder / DIFFUSERS_WEIGHTS[0], lambda p: save_file(sd, p, metadata={"format": "pt"}))
    else:
        atomic_write(folder / DIFFUSERS_WEIGHTS[1], lambda p: torch.save(sd, p))
    atomic_write(folder / "config.json", lambda p: Path(p).write_text(json.dumps(cfg, indent=2, sort_keys=True)))


def save_original(model: AutoencoderTinyBase, folder: str | os.PathLike, name: str, format: str = "safetensors"
                  ) -> list[str]:
    """`<name>_encoder.<ext>` / `<name>_decoder.<ext>` with the original script's keys; returns the paths."""
    if format not in ("safetensors", "pth"):
        raise ValueError(f"format must be 'safetensors' or 'pth', got {format!r}")
    sd, written = state_dict_of(model), []
    for part in ("encoder", "decoder"):
        if getattr(model, part) is None:
            continue
        half = to_original_keys(sd, part)
        path = Path(folder) / f"{name}_{part}.{format}"
        if format == "safetensors":
            from safetensors.torch import save_file

            atomic_write(path, lambda p, h=half: save_file(h, p, metadata={"format": "pt"}))
        else:
            atomic_write(path, lambda p, h=half: torch.save(h, p))
        written.append(str(path))
    return written


def save_comfyui(model: AutoencoderTinyBase, path: str | os.PathLike) -> str:
    """One safetensors file with `taesd_encoder.` / `taesd_decoder.` prefixes (ComfyUI's vae_approx / vae folder)."""
    sd, out = state_dict_of(model), {}
    for part in ("encoder", "decoder"):
        out.update({f"taesd_{part}.{k}": v for k, v in to_original_keys(sd, part).items()})
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file(out, p, metadata={"format": "pt"}))
    return str(path)


def identify(path: str | os.PathLike) -> str | None:
    """The released file a weights file is byte-identical to, if known."""
    return KNOWN_SHA256.get(sha256_file(path))
