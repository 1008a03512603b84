"""A small imitation of the Hugging Face Hub's file endpoints on 127.0.0.1, for tests (no network).

It answers what huggingface_hub 2.x asks for in `hf_hub_download`, `list_repo_files` and `snapshot_download`:

- HEAD/GET `/{repo_id}/resolve/{revision}/{path}`: every answer carries `X-Repo-Commit`. Plain files (config.json)
  are served directly with `ETag` = their git blob sha1 and `Content-Length`. Weight files are "LFS" files: a 302 to
  a second port (the "CDN", another origin, so huggingface_hub does not follow it on HEAD) with `X-Linked-Etag` =
  their sha256 and `X-Linked-Size`, like the hub.
- GET `/api/models/{repo_id}/tree/{revision}[/{path}]`: the file listing as JSON (`lfs: {oid, size, pointerSize}`
  for weight files); GET `/api/models/{repo_id}[/revision/{revision}]`: `{"id", "sha", "siblings"}`.
- HEAD/GET on the CDN port `/{repo_id}/{sha256}`: the bytes, honouring `Range: bytes=N-` (huggingface_hub resumes
  an interrupted transfer with it).

Errors follow the hub's headers: unknown repo -> 404 `X-Error-Code: RepoNotFound`, unknown revision -> 404
`RevisionNotFound`, unknown file -> 404 `EntryNotFound` (with `X-Repo-Commit`, which huggingface_hub caches).

Faults, switchable per (repo, file) with `HubServer.fault(repo_id, path, mode, times=None)`; `times` is how many
transfers are spoilt (None: all). They affect the transfer of the bytes (the GET), never the metadata:

- "corrupt": same length, different bytes;
- "cut": `Content-Length` says N, the body stops at the file's middle and the connection is closed (a resumed
  transfer, `Range: bytes=N-`, stops at the same place);
- "short": a complete response, but shorter than the size the metadata announced (a broken proxy or mirror);
- "missing": the file is listed, but HEAD/GET answer 404 EntryNotFound;
- "error": HEAD/GET of the file answer 500 Internal Server Error (the metadata too);
- "stall": the transfer trickles, one byte every 0.2 s (each read arrives in time, the whole never does).

The server binds 127.0.0.1 only, on free ports, and records every request in `requests` as (method, path).
Use it as a context manager, or `start()` / `stop()`.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".onnx")
FAULTS = ("corrupt", "cut", "short", "missing", "error", "stall")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = ""

    def __post_init__(self) -> None:
        listing = "".join(f"{p}\0{git_blob_sha1(d)}\n" for p, d in sorted(self.files.items()))
        self.commit = hashlib.sha1(listing.encode()).hexdigest()


@dataclass
class Fault:
    mode: str
    times: int | None  # transfers still to spoil; None: all


@dataclass
class HubServer:
    repos: dict[str, Repo] = field(default_factory=dict)
    faults: dict[tuple[str, str], Fault] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._connections: set = set()  # open sockets, closed by stop(): keep-alive must not outlive the server

    # ------------------------------------------------------------------------------------------ setup
    def add_repo(self, repo_id: str, files: dict[str, bytes | str | Path]) -> Repo:
        """Serve `repo_id` with {path in repo: bytes, or a local file to read}."""
        data = {p: (v if isinstance(v, bytes) else Path(v).read_bytes()) for p, v in files.items()}
        self.repos[repo_id] = Repo(data)
        return self.repos[repo_id]

    def fault(self, repo_id: str, path: str, mode: str, times: int | None = None) -> None:
        if mode not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {mode!r}")
        self.faults[(repo_id, path)] = Fault(mode, times)

    def heal(self) -> None:
        self.faults.clear()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> "HubServer":
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.hub, server.role = self, role  # type: ignore[attr-defined]
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Shut both ports down (idempotent): afterwards connections are refused, and kept-alive ones are closed,
        as with an unreachable hub."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ helpers
    def _take_fault(self, repo_id: str, path: str) -> str | None:
        """The fault to apply to this transfer of the bytes, counting it down."""
        with self._lock:
            f = self.faults.get((repo_id, path))
            if f is None or f.mode in ("missing", "error"):
                return None
            if f.times is not None:
                if f.times <= 0:
                    return None
                f.times -= 1
            return f.mode

    def _is_missing(self, repo_id: str, path: str, mode: str = "missing") -> bool:
        f = self.faults.get((repo_id, path))
        return f is not None and f.mode == mode

    def find_repo(self, parts: list[str]) -> tuple[str, Repo, list[str]] | None:
        """Split `owner/name/rest...` (or a one-part repo id) into a known repo and the rest."""
        for n in (2, 1):
            repo_id = "/".join(parts[:n])
            if len(parts) > n and repo_id in self.repos:
                return repo_id, self.repos[repo_id], parts[n:]
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        super().finish()

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:
        self._handle(body=False)

    def do_GET(self) -> None:
        self._handle(body=True)

    # ------------------------------------------------------------------------------------------ plumbing
    def _send(self, status: int, headers: dict[str, str], payload: bytes = b"", body: bool = True) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and payload:
            self.wfile.write(payload)

    def _error(self, status: int, code: str, body: bool, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": code, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, json.dumps({"error": code}).encode(), body)

    def _handle(self, body: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.hub.requests.append((self.command, path))
        parts = [p for p in path.split("/") if p]
        if self.server.role == "cdn":  # type: ignore[attr-defined]
            return self._cdn(parts, body)
        if parts[:2] == ["api", "models"]:
            return self._api(parts[2:], body)
        found = self.hub.find_repo(parts)
        if found is None:
            return self._error(404, "RepoNotFound", body)
        repo_id, repo, rest = found
        if len(rest) < 3 or rest[0] != "resolve":
            return self._error(404, "RepoNotFound", body)
        revision, file = rest[1], "/".join(rest[2:])
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", body)
        if file not in repo.files or self.hub._is_missing(repo_id, file):
            return self._error(404, "EntryNotFound", body, commit=repo.commit)
        if self.hub._is_missing(repo_id, file, "error"):
            return self._send(500, {"Content-Type": "text/plain"}, b"Internal Server Error", body)
        data = repo.files[file]
        if file.endswith(LFS_SUFFIXES):  # the hub redirects LFS files to its CDN
            sha = hashlib.sha256(data).hexdigest()
            return self._send(302, {
                "Location": f"{self.hub.cdn}/{repo_id}/{sha}?file={file}",
                "X-Repo-Commit": repo.commit,
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{git_blob_sha1(data)}"',
            }, body=body)
        self._bytes(repo_id, file, data, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_sha1(data)}"'}, body)

    def _cdn(self, parts: list[str], body: bool) -> None:
        found = self.hub.find_repo(parts)
        if found is None or len(found[2]) != 1:
            return self._send(404, {}, b"no such object", body)
        repo_id, repo, (sha,) = found
        names = [p for p, d in repo.files.items() if hashlib.sha256(d).hexdigest() == sha]
        if not names:
            return self._send(404, {}, b"no such object", body)
        self._bytes(repo_id, names[0], repo.files[names[0]], {"ETag": f'"{sha}"'}, body)

    def _bytes(self, repo_id: str, file: str, data: bytes, headers: dict[str, str], body: bool) -> None:
        """Serve a file's bytes (from a `Range: bytes=N-` offset if asked), spoilt by its fault if any."""
        fault = self.hub._take_fault(repo_id, file) if body else None
        if fault == "corrupt":
            mid = len(data) // 2
            data = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]
        start, status = 0, 200
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and rng.endswith("-") and rng[6:-1].isdigit():
            start, status = min(int(rng[6:-1]), len(data)), 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        payload = data[start:]
        headers = {**headers, "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if fault == "short":
            payload = payload[: len(payload) // 2]
            headers.pop("Content-Range", None)
        if fault == "stall":  # announce everything, then one byte every 0.2 s (until the client gives up)
            self._send(status, {**headers, "Content-Length": str(len(payload))}, b"", body=False)
            stop = threading.Event()
            try:
                for i in range(len(payload)):
                    self.wfile.write(payload[i:i + 1])
                    self.wfile.flush()
                    stop.wait(0.2)  # not time.sleep, which tests patch to skip huggingface_hub's retry waits
            except OSError:
                pass
            self.close_connection = True
            return
        if fault == "cut":  # announce everything, stop at the file's middle (also when resuming), hang up
            self._send(status, {**headers, "Content-Length": str(len(payload))}, b"", body=False)
            self.wfile.write(payload[: max(len(data) // 2 - start, 0)])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, headers, payload, body)

    def _api(self, parts: list[str], body: bool) -> None:
        found = self.hub.find_repo(parts + [""])  # a bare repo id has no rest
        if found is None:
            return self._error(404, "RepoNotFound", body)
        repo_id, repo, rest = found
        rest = [p for p in rest if p]
        revision = rest[1] if len(rest) >= 2 and rest[0] in ("tree", "revision") else "main"
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", body)
        if not rest or rest[0] == "revision":
            info = {"id": repo_id, "sha": repo.commit, "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
            return self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)
        if rest[0] != "tree":
            return self._error(404, "EntryNotFound", body)
        prefix = "/".join(rest[2:])
        entries = []
        for p, d in sorted(repo.files.items()):
            if prefix and not p.startswith(prefix + "/"):
                continue
            e: dict = {"type": "file", "path": p, "size": len(d), "oid": git_blob_sha1(d)}
            if p.endswith(LFS_SUFFIXES):
                e["lfs"] = {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}
            entries.append(e)
        self._send(200, {"Content-Type": "application/json"}, json.dumps(entries).encode(), body)


def point_hub(monkeypatch, *, endpoint: str | None = None, home: Path | str | None = None,
              offline: bool = False) -> None:
    """Point huggingface_hub at an endpoint, a cache home and offline mode after it was imported, as a user does by
    setting HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE before starting Python: huggingface_hub reads them once, at import,
    into `huggingface_hub.constants` (tinyae uses those, it does not read the environment itself). The environment is
    set too, for child processes."""
    from huggingface_hub import constants

    if endpoint is not None:
        endpoint = endpoint.rstrip("/")
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_HOME", endpoint + "/")
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    if home is not None:
        home = Path(home)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
        for name, value in {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HUGGINGFACE_HUB_CACHE": home / "hub",
                            "HF_ASSETS_CACHE": home / "assets", "HUGGINGFACE_ASSETS_CACHE": home / "assets",
                            "HF_XET_CACHE": home / "xet", "HF_TOKEN_PATH": home / "token",
                            "HF_STORED_TOKENS_PATH": home / "stored_tokens",
                            "AGENT_HARNESSES_PATH": home / ".agent_harnesses.json",
                            "CHECK_FOR_UPDATE_DONE_PATH": home / ".check_for_update_done",
                            "CHECK_FOR_SKILL_UPDATE_DONE_PATH": home / ".check_for_skill_update_done"}.items():
            if hasattr(constants, name):
                monkeypatch.setattr(constants, name, str(value))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    try:  # huggingface_hub >= 2 fetches an "agent harnesses" registry from the endpoint for its user agent, once a
        # day: not a request of tinyae's, so the imitation hub's request log stays tinyae's own
        from huggingface_hub.utils import _detect_agent
    except ImportError:
        pass
    else:
        monkeypatch.setattr(_detect_agent, "_registry", getattr(_detect_agent, "_EMPTY_REGISTRY", {}))
