"""Files: the one home of `atomic_write`, sha256, reading tensor files, stale temporary files, and one-line error
text (`first_line`, `WeightsError`)."""

from __future__ import annotations

import glob
import hashlib
import os
import pickle
import re
import socket
import tempfile
from pathlib import Path

import torch


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

