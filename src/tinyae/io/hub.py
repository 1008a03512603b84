"""Hub access: downloads with a deadline, pinned sha256 and eviction of bad cache entries, repo and cached-snapshot
listings, through huggingface_hub."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

from ..nets.variants import Variant
from .files import WeightsError, first_line, sha256_file
from .layouts import DIFFUSERS_WEIGHTS, WEIGHT_SUFFIXES
from .local import _find_pair, _local_files, _read_config


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
    """cache_dir and offline mode for huggingface_hub's calls. The endpoint, the cache folder and offline mode are
    huggingface_hub's own (`huggingface_hub.constants`: HF_ENDPOINT, HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE as
    they were when it was imported); tinyae does not read the environment itself. `local_files_only=True` turns
    offline mode on for one call."""
    from huggingface_hub import constants

    return {"cache_dir": cache_dir, "local_files_only": bool(local_files_only) or bool(constants.HF_HUB_OFFLINE)}


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
        names = HfApi().list_repo_files(repo_id, revision=hub.get("revision"), token=hub.get("token"))
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

