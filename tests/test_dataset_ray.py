"""The Ray runner on a real local Ray cluster this test starts (a head and a second node joining it, 1 CPU each):
a worker actor is killed with SIGKILL mid-job, the job still finishes with every row exactly once, and the shards
are byte for byte the ones the local runner writes; each runner resumes the other's job.

The cluster's processes are stopped through the `ray start --block` processes this test started (SIGTERM to
their ids), not `ray stop`, which would stop every Ray cluster of this user on a shared machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tinyae.dataset import encode_dataset

from test_dataset import PRE, child_env, make_images, rows_by_key, tiny_model

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
def cluster(tmp_path_factory):
    # a short --temp-dir: Ray's socket paths below it must fit AF_UNIX's 107 bytes (pytest-xdist's tmp paths do not)
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="tinyae-ray-", dir="/tmp"))
    common = ["--num-cpus=1", "--object-store-memory=80000000", "--memory=1000000000", "--disable-usage-stats",
              "--block"]
    env = {**child_env(), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    # Ray 2.60 turns token authentication on by itself when ~/.ray/auth_token exists (any earlier ray.init() of
    # this user writes one), and then every client needs the token: this 127.0.0.1 test cluster runs without it
    saved_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"] = "disabled"  # (read by child_env() and ray.init here)
    nodes = [subprocess.Popen([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                               "--include-dashboard=false", f"--temp-dir={tmp}", *common], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    address = f"127.0.0.1:{port}"
    try:
        time.sleep(8)
        nodes.append(subprocess.Popen([RAY, "start", f"--address={address}", "--node-ip-address=127.0.0.1",
                                       *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        # the second node can take minutes to register on a loaded 2-core machine (the rest of the suite runs beside)
        check = "import ray, time\nray.init(address='%s')\nfor _ in range(240):\n" \
                "    if ray.cluster_resources().get('CPU', 0) >= 2: break\n    time.sleep(1)\n" \
                "print(len(ray.nodes()), ray.cluster_resources().get('CPU'))" % address
        got = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
        assert got.stdout.split()[-2:] == ["2", "2.0"], got.stderr[-2000:]
        yield address
    finally:
        if saved_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_mode
        for p in reversed(nodes):
            p.send_signal(signal.SIGTERM)
        for p in reversed(nodes):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


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


def test_ray_reads_lists_and_container_rows_like_the_local_runner(cluster, tmp_path):
    """A list with a missing file (an error row, not a failed Ray read; its shard has no readable file at all)
    goes through Ray's file reader; Parquet image bytes through the actors' own fetch. Same markers as local."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tinyae.dataset import open_source
    from tinyae.dataset.ray_runner import ray_reads

    files = make_images(tmp_path / "src", 5)
    model = tmp_path / "model"
    tiny_model().save_pretrained(model)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*map(str, files), "src/im00.png", "zz-missing.png"]) + "\n")  # im00 listed twice
    pq.write_table(pa.table({"image": [p.read_bytes() for p in files]}), tmp_path / "bytes.parquet")
    sources = {"list": open_source([str(lst)]), "parquet": open_source([str(tmp_path / "bytes.parquet")])}
    assert [ray_reads(s) for s in sources.values()] == [True, False]
    for name, src in sources.items():
        runs = {}
        for runner in ("ray", "local"):
            out = tmp_path / f"{name}-{runner}"
            runs[runner] = encode_dataset(src, out, str(model), preprocess=PRE, shard_size=2, batch_size=2,
                                          threads=1, runner=runner, address=cluster, workers=2)
        assert runs["ray"]["rows"] == runs["local"]["rows"] == 10 + 2 * (name == "list"), name
        assert runs["ray"]["errors"] == (name == "list"), name
        for m in sorted((tmp_path / f"{name}-local" / "shards").glob("*.done.json")):
            a = json.loads((tmp_path / f"{name}-ray" / "shards" / m.name).read_text())
            assert a == json.loads(m.read_text()), (name, m.name)
