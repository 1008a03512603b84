"""A Ray cluster of several nodes on this machine, nodes on a loopback address: to try `--runner ray --address` on one
machine before a real cluster, and for tinyae's tests and benchmarks of the Ray runner.

    with local_cluster(nodes=2, cpus_per_node=1) as address:
        encode_dataset("photos/", "latents/", runner="ray", address=address, workers=2, threads=1)

Each node is a `ray start --block` process this starts with `--node-ip-address=127.0.0.2`: a loopback address
(all of 127.0.0.0/8 is loopback on Linux) that Ray keeps, where it rewrites 127.0.0.1 and localhost to the
machine's network address (`ray start` resolves them with `resolve_ip_for_localhost`, Ray 2.60), so the nodes
register and reach each other on loopback. (Ray's gRPC servers still listen on every interface: 2.60 has no
setting for their bind address.) Leaving the block stops exactly those processes (SIGTERM to their ids), not
`ray stop`, which would stop every Ray cluster of this user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping


LOOPBACK = "127.0.0.2"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1, object_store_bytes: int = 80_000_000,
                  env: Mapping[str, str] | None = None, timeout: float = 300.0, host: str = LOOPBACK
                  ) -> Iterator[str]:
    """Start a head and `nodes - 1` nodes joining it on `host`, wait until every node registered, and yield the
    address ("127.0.0.2:PORT"). `env`: the nodes' environment (their workers import tinyae: PYTHONPATH), default
    this process's. Ray 2.60 turns token authentication on by itself when ~/.ray/auth_token exists (any earlier
    ray.init() of this user writes one); this loopback cluster runs without it, and RAY_AUTH_MODE=disabled is set
    in this process too while the block runs, for its clients."""
    ray = str(Path(sys.executable).with_name("ray"))
    # a short --temp-dir: Ray's socket paths below it must fit AF_UNIX's 107 bytes (pytest's tmp paths do not)
    port, tmp = _free_port(host), Path(tempfile.mkdtemp(prefix="tinyae-ray-", dir="/tmp"))
    env = {**(env if env is not None else os.environ), "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    common = [f"--num-cpus={cpus_per_node}", f"--object-store-memory={object_store_bytes}", "--memory=1000000000",
              f"--node-ip-address={host}", "--disable-usage-stats", "--block"]
    address = f"{host}:{port}"
    saved_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    procs: list[subprocess.Popen] = []

    def start(args: list[str]) -> None:
        procs.append(subprocess.Popen([ray, "start", *args, *common], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))

    try:
        start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}"])
        time.sleep(8)
        for _ in range(nodes - 1):
            start([f"--address={address}"])
        # a node can take minutes to register on a loaded 2-core machine
        want = nodes * cpus_per_node
        check = (f"import ray, time\nray.init(address={address!r})\nt = time.time() + {timeout}\n"
                 f"while ray.cluster_resources().get('CPU', 0) < {want} and time.time() < t: time.sleep(1)\n"
                 "print(sorted({n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']}), "
                 "len([n for n in ray.nodes() if n['Alive']]), ray.cluster_resources().get('CPU'))")
        got = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                             timeout=timeout + 60)
        if got.stdout.split()[-3:] != [f"['{host}']", str(nodes), f"{float(want)}"]:
            raise RuntimeError(f"the local Ray cluster did not come up ({got.stdout.strip()[-200:]!r}): "
                               f"{got.stderr.strip()[-1000:]}")
        yield address
    finally:
        if saved_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_mode
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
