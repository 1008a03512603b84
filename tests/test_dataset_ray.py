"""The Ray runner on a real local Ray cluster this test starts (a head and a second node joining it, 1 CPU each):
a worker actor is killed with SIGKILL mid-job, the job still finishes with every row exactly once, and the shards
are byte for byte the ones the local runner writes; each runner resumes the other's job.

The cluster (tinyae.dataset.ray_local.local_cluster) is stopped through the `ray start --block` processes it
started (SIGTERM to their ids), not `ray stop`, which would stop every Ray cluster of this user on a shared
machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinyae.dataset import encode_dataset
from tinyae.dataset.ray_local import local_cluster

from test_dataset import PRE, child_env, make_images, rows_by_key, tiny_model

pytestmark = pytest.mark.slow


def ray_processes(title: str) -> list[int]:
    """Ids of this user's Ray worker processes whose title (command line) names `title` (Ray Data titles its
    actors "ray::MapWorker(MapBatches(<class>))")."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == os.getuid() and title.encode() in (d / "cmdline").read_bytes() \
                        and (d / "cmdline").read_bytes().startswith(b"ray::"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(nodes=2, cpus_per_node=1, env=child_env()) as address:  # both nodes on 127.0.0.2
        yield address


def test_ray_cluster_worker_killed_mid_job_every_row_once(cluster, tmp_path):
    src, model = tmp_path / "src", tmp_path / "model"
    make_images(src, 24)
    tiny_model(channels=16).save_pretrained(model)
    args = [sys.executable, "-m", "tinyae", "encode-dataset", str(src), "-o", str(tmp_path / "ray"), "-m",
            str(model), "--crop", "buckets", "--size", "32", "--flip", "both", "--shard-size", "2",
            "--batch-size", "2", "--threads", "1", "--runner", "ray", "--address", cluster, "--workers", "2",
            "--json"]
    job = subprocess.Popen(args, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = tmp_path / "ray" / "shards"
    deadline, killed, done_at_kill = time.time() + 240, None, None
    while job.poll() is None and time.time() < deadline and killed is None:
        actors = ray_processes("_ShardEncoder")
        done = len(list(shards.glob("*.done.json"))) if shards.exists() else 0
        if actors and done >= 1:
            killed, done_at_kill = actors[0], done
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    out, err = job.communicate(timeout=max(10, deadline - time.time()))
    assert job.returncode == 0, err[-3000:]
    assert killed is not None and done_at_kill < 12, "the job ended before a worker could be killed"
    summary = json.loads(out[out.find("{\n"):])  # Ray's driver prints the worker's death on stdout first
    assert (summary["images"], summary["shards"], summary["rows"]) == (24, 12, 48)
    ray_rows = rows_by_key(tmp_path / "ray")
    assert len(ray_rows) == 48

    local = tmp_path / "local"  # the local runner writes the very same files
    encode_dataset(src, local, str(model), preprocess=PRE, shard_size=2, batch_size=2, threads=1)
    for m in sorted(shards.glob("*.done.json")):
        a, b = json.loads(m.read_text()), json.loads((local / "shards" / m.name).read_text())
        assert (a["sha256"], a["inputs"]) == (b["sha256"], b["inputs"]), m.name

    for m in list(shards.glob("0000[3-5].done.json")):  # runners resume each other's jobs
        m.unlink()
    s = encode_dataset(src, tmp_path / "ray", str(model), preprocess=PRE, shard_size=2, batch_size=2, threads=1)
    assert (s["shards_todo"], s["rows"]) == (3, 48)
    for m in list((local / "shards").glob("0000[0-1].done.json")):
        m.unlink()
    s = encode_dataset(src, local, str(model), preprocess=PRE, shard_size=2, batch_size=2, threads=1,
                       runner="ray", address=cluster, workers=1)
    assert (s["shards_todo"], s["rows"]) == (2, 48)
    assert rows_by_key(local).keys() == ray_rows.keys()


def test_ray_reads_every_source_kind_like_the_local_runner(cluster, tmp_path):
    """Ray's readers bring the bytes of every kind: a list with a missing file (an error row, not a failed Ray
    read; its shard has no readable file at all) through read_binary_files, Parquet image bytes (Hugging Face's
    struct, default keys, rows across row groups) through read_parquet's row hash, WebDataset members (beside
    other members, of two suffixes) through read_webdataset. Same markers and shard files as the local runner."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from tinyae.dataset import open_source
    from tinyae.dataset.ray_runner import reader_of

    files = make_images(tmp_path / "src", 5)
    model = tmp_path / "model"
    tiny_model().save_pretrained(model)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*map(str, files), "src/im00.png", "zz-missing.png"]) + "\n")  # im00 listed twice
    pq.write_table(pa.table({"image": [{"bytes": p.read_bytes(), "path": p.name} for p in files]}),
                   tmp_path / "bytes.parquet", row_group_size=2)
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:  # .png and .jpg samples, each with a .txt
        for i, p in enumerate(files):
            data = p.read_bytes()
            if i % 2:
                jpg = io.BytesIO()
                Image.open(p).convert("RGB").save(jpg, "JPEG")
                data = jpg.getvalue()
            for name, b in ((f"s/{i:04d}.{'jpg' if i % 2 else 'png'}", data), (f"s/{i:04d}.txt", b"cat")):
                info = tarfile.TarInfo(name)
                info.size = len(b)
                tar.addfile(info, io.BytesIO(b))
    sources = {"list": open_source([str(lst)]), "parquet": open_source([str(tmp_path / "bytes.parquet")]),
               "webdataset": open_source([str(tmp_path / "shard-0.tar")])}
    assert [reader_of(s) for s in sources.values()] == ["binary_files", "parquet", "webdataset"]
    for name, src in sources.items():
        runs = {}
        for runner in ("ray", "local"):
            out = tmp_path / f"{name}-{runner}"
            runs[runner] = encode_dataset(src, out, str(model), preprocess=PRE, shard_size=2, batch_size=2,
                                          threads=1, runner=runner, address=cluster, workers=2)
        assert runs["ray"]["rows"] == runs["local"]["rows"] == 10 + 2 * (name == "list"), name
        assert runs["ray"]["errors"] == (name == "list"), name
        assert runs["ray"]["fetched_by_workers"] == (name == "list"), name  # only the missing file
        for m in sorted((tmp_path / f"{name}-local" / "shards").glob("*.done.json")):
            a = json.loads((tmp_path / f"{name}-ray" / "shards" / m.name).read_text())
            assert a == json.loads(m.read_text()), (name, m.name)


def test_row_of_hash_inverts_rays_parquet_row_hash():
    from ray.data._internal.datasource_v2.common.synthesized_columns import _compute_row_hashes

    from tinyae.dataset.ray_runner import row_of_hash

    for path in ("/data/a.parquet", "/tmp/x y/ü.parquet"):
        for start in (0, 4097, 2 ** 40):
            hashes = _compute_row_hashes(path, start, 64)
            assert [row_of_hash(path, h) for h in hashes.tolist()] == list(range(start, start + 64))
