"""The shared job runner of the batch commands: collect inputs, plan outputs (never over an input), resume/force,
run in batches with progress, report (text or --json)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .common import CliError, PIL_FORMATS, _one_line
from .models import Runner


# ---------------------------------------------------------------------------------------------- output
class Reporter:
    """Human lines on stdout (or one JSON document with --json), failures on stderr, a progress bar on a tty."""

    def __init__(self, as_json: bool):
        from rich.console import Console

        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def line(self, text: str) -> None:
        if not self.as_json:
            self.out.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.err.print(f"tinyae: warning: {text}", markup=False)

    def fail(self, text: str) -> None:
        self.err.print(f"tinyae: failed: {text}", markup=False)

    def emit(self, doc: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
            sys.stdout.flush()

    def progress(self, total: int, what: str) -> "_Progress":
        return _Progress(self, total, what)


class _Progress:
    def __init__(self, reporter: Reporter, total: int, what: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        enabled = total > 1 and reporter.err.is_terminal
        self.bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=reporter.err, transient=True, disable=not enabled)
        self.task = self.bar.add_task(what, total=total)

    def __enter__(self) -> "_Progress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def advance(self) -> None:
        self.bar.advance(self.task)


# ---------------------------------------------------------------------------------------------- files
@dataclass
class Job:
    """One input and where its output goes; status "todo" | "skipped" | "ok" | "failed"."""

    input: Path
    output: Path | None = None
    status: str = "todo"
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    index: int | None = None  # which latents of a file holding a batch (B, C, h, w)
    also: list[Path] = field(default_factory=list)  # further outputs (roundtrip's decoded image)

    @property
    def outputs(self) -> list[Path]:
        return ([self.output] if self.output is not None else []) + self.also

    def as_dict(self) -> dict[str, Any]:
        d = {"input": str(self.input), "output": str(self.output) if self.output else None, "status": self.status}
        if self.index is not None:
            d["index"] = self.index
        if self.also:
            d["also"] = [str(p) for p in self.also]
        if self.error:
            d["error"] = self.error
        return {**d, **self.info}


def collect(paths: Sequence[str], accept: Callable[[Path], bool], what: str) -> list[Job]:
    """Files as given, plus the accepted files (sorted, not hidden) of each folder; missing paths become failures."""
    jobs: list[Job] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and accept(f))
            if not found:
                jobs.append(Job(p, status="failed", error=f"{p}: no {what} in this folder"))
            jobs.extend(Job(f) for f in found)
        elif p.exists():
            jobs.append(Job(p))
        else:
            jobs.append(Job(p, status="failed", error=f"{p}: no such file or folder"))
    return jobs


def plan_outputs(jobs: list[Job], out: Path, name: Callable[[Job], str], suffixes: Sequence[str],
                 extra: Callable[[Job], list[str]] | None = None) -> Path:
    """Set each job's outputs: OUT is a folder, or the file itself when one input and OUT ends in a known suffix.

    Every file the command will write is checked: no two jobs share one, and none is one of the command's own
    inputs (not even with --force). Returns the folder the outputs go to."""
    todo = [j for j in jobs if j.status == "todo"]
    single = len(jobs) == 1 and str(out).lower().endswith(tuple(suffixes)) and not out.is_dir()
    for j in todo:
        j.output = out if single else out / name(j)
        j.also = [j.output.with_name(n) for n in extra(j)] if extra else []
    inputs = {_same_file_key(j.input): j.input for j in jobs}
    seen: dict[Path, Path] = {}
    for j in todo:
        for o in j.outputs:
            key = _same_file_key(o)
            if key in inputs:
                raise CliError(f"{o} is one of the inputs ({inputs[key]}); tinyae never writes over its own "
                               "inputs (not even with --force): write to another folder or file")
            if key in seen:
                raise CliError(f"{seen[key]} and {j.input} would both be written to {o}; "
                               "write them to different folders (one command each)")
            seen[key] = j.input
    return out.parent if single else out


def _same_file_key(p: Path) -> Any:
    """What identifies a file: (device, inode) when it exists (links, `./a` vs `a`), else its resolved path."""
    try:
        st = p.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return p.resolve()


def check_output_folder(folder: Path) -> None:
    """Create the folder and prove it writable (a probe file), or raise CliError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tinyae-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CliError(f"{folder}: cannot write to the output folder ({e.strerror or e})") from None


def handle_existing(jobs: list[Job], force: bool, resume: bool,
                    trust: Callable[[Job, Path], str | None] | None = None) -> None:
    """Existing outputs: kept and skipped with --resume, overwritten with --force, else an error (nothing done).

    Outputs are written atomically, so one that exists is complete; with --resume it must also be this command's:
    `trust(job, path)` says why not (another model, format or source), which is an error unless --force. Call it
    once the model is validated: afterwards the stale temporary files of killed runs are removed (see
    `tinyae.io.files.remove_stale_temps`; a live run's are kept).
    """
    from ..io.files import remove_stale_temps

    existing = [j for j in jobs if j.status == "todo" and any(o.exists() for o in j.outputs)]
    if existing and not force and not resume:
        names = ", ".join(str(o) for j in existing[:3] for o in j.outputs if o.exists()) + (
            " ..." if len(existing) > 3 else "")
        raise CliError(f"{len(existing)} output(s) already exist ({names}); pass --resume to skip them or "
                       "--force to overwrite")
    if resume and not force:
        for j in existing:
            for o in j.outputs:
                why = trust(j, o) if trust and o.exists() else None
                if why:
                    raise CliError(f"{o}: exists but is not what this command writes ({why}); --resume keeps "
                                   "only its own outputs: pass --force to overwrite it, or write elsewhere")
            if all(o.exists() for o in j.outputs):
                j.status = "skipped"
    for j in jobs:
        if j.status == "todo":
            for o in j.outputs:
                remove_stale_temps(o)


def finish(rep: Reporter, command: str, jobs: list[Job], started: float, extra: dict[str, Any] | None = None
           ) -> int:
    counts = {s: sum(j.status == s for j in jobs) for s in ("ok", "skipped", "failed")}
    doc = {"command": command, **(extra or {}), "files": [j.as_dict() for j in jobs], **counts,
           "seconds": round(time.perf_counter() - started, 3)}
    rep.emit(doc)
    skipped = f", {counts['skipped']} skipped (already done)" if counts["skipped"] else ""
    rep.line(f"{command}: {counts['ok']} done{skipped}, {counts['failed']} failed in {doc['seconds']:.1f} s")
    return 1 if counts["failed"] else 0


def _run_jobs(rep: Reporter, jobs: list[Job], what: str, batch_size: int,
              work: Callable[[list[Job]], None]) -> None:
    """Run `work` on batches of pending jobs; a failing batch is retried one job at a time to isolate the culprit."""
    for j in jobs:
        if j.status == "failed":
            rep.fail(j.error or str(j.input))
    todo = [j for j in jobs if j.status == "todo"]
    with rep.progress(len(todo), what) as bar:
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            try:
                work(chunk)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception:
                for j in chunk:
                    if j.status == "todo":
                        try:
                            work([j])
                        except (KeyboardInterrupt, SystemExit):
                            raise
                        except Exception as e:
                            text = _one_line(e)
                            j.status = "failed"
                            j.error = text if text.startswith(str(j.input)) else f"{j.input}: {text}"
                            rep.fail(j.error)
            for _ in chunk:
                bar.advance()


def _read_each(rep: Reporter, chunk: list[Job], read: Callable[[Job], Any]) -> tuple[list[Job], list[Any]]:
    """`read(job)` for each pending job; a ValueError (bad input) fails that job alone. Returns (jobs, results)."""
    live, results = [], []
    for j in chunk:
        if j.status != "todo":
            continue
        try:
            results.append(read(j))
            live.append(j)
        except ValueError as e:
            j.status, j.error = "failed", _one_line(e)
            rep.fail(j.error)
    return live, results


def _same_count(jobs: list[Job], results: Sequence[Any]) -> None:
    """Outputs are paired with inputs by position: never let one shift onto another's name."""
    if len(jobs) != len(results):
        raise RuntimeError(f"{len(results)} results for {len(jobs)} inputs; nothing of this batch was written")


def _trust_latents(j: Job, path: Path, runner: Runner | None, fmt: str) -> str | None:
    """Why an existing latent file is not what this encode would write (None: it is)."""
    from ..data.codec import LatentFileError, load_latents

    with open(path, "rb") as f:
        is_png = f.read(8) == b"\x89PNG\r\n\x1a\n"
    if is_png != (fmt == "png"):
        return f"not a {fmt} latent file"
    try:
        meta = load_latents(path).metadata
    except LatentFileError as e:
        return str(e).split(": ", 1)[-1]
    if runner is not None and meta.get("model") != runner.fingerprint:
        return f"written by another model ({meta.get('model') or meta.get('variant') or 'unknown'})"
    if meta.get("source") != j.input.name:
        return f"encodes {meta.get('source')!r}, not {j.input.name!r}"
    return None


def _trust_image(j: Job, path: Path, runner: Runner | None) -> str | None:
    """Why an existing decoded image is not what this command would write (None: it is)."""
    from PIL import Image

    want = PIL_FORMATS.get(path.suffix.lower(), "PNG")
    try:
        with Image.open(path) as im:
            im.load()
            found, text = im.format, dict(getattr(im, "text", {}) or {})
    except Exception as e:
        return f"unreadable ({_one_line(e)})"
    if found != want:
        return f"a {found} file, not {want}"
    if want == "PNG":
        try:
            meta = json.loads(text.get("tinyae", "{}"))
        except ValueError:
            meta = {}
        if runner is not None and meta.get("model") != runner.fingerprint:
            return "written by another model" if meta.get("model") else "not written by tinyae"
        if meta.get("source") != _source_name(j):
            return f"decodes {meta.get('source')!r}, not {_source_name(j)!r}"
    return None


def _source_name(j: Job) -> str:
    return j.input.name + (f"[{j.index}]" if j.index is not None else "")


def save_image(im: Any, path: Path, fmt: str, quality: int = 95, meta: dict[str, Any] | None = None) -> None:
    """Write an image atomically; JPEG has no alpha (dropped), WebP and PNG keep it. PNG: `meta` goes into a
    `tinyae` text chunk (model fingerprint and source: what --resume checks)."""
    from PIL import PngImagePlugin

    from ..io.files import atomic_write

    if fmt == "jpg" and im.mode in ("RGBA", "LA"):
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    options: dict[str, Any] = {"png": {"format": "PNG"}, "jpg": {"format": "JPEG", "quality": quality},
                               "webp": {"format": "WEBP", "quality": quality}}[fmt]
    if fmt == "png" and meta:
        info = PngImagePlugin.PngInfo()
        info.add_text("tinyae", json.dumps(meta, sort_keys=True))
        options["pnginfo"] = info
    atomic_write(path, lambda p: im.save(p, **options))
