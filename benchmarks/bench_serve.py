"""edge-serve under load (issue 12): dynamic batching vs batch-size-1 serving, and overload.

    python benchmarks/bench_serve.py ARTIFACT_DIR [--artifact onnx-int8] [--threads 2] \
        [--clients 16] [--requests 10000] [--rounds 10] [--overload-clients 64] \
        [--overload-queue 16] [--overload-requests 3200] \
        [--json benchmarks/results/serve_x86_avx2.json]

Starts one edge-serve process per serving mode on 127.0.0.1 (loopback only), all loaded before
any is measured, and sends single sentences (benchmarks/data/heldout_en.txt, cycled) from
--clients closed-loop clients (threads, one keep-alive connection each) in --rounds interleaved
rounds, so a change of machine load hits every mode alike. Modes:

- batch1: --max-batch-requests 1, every request is its own backend call (batch-size-1 serving);
- dynamic: the defaults: requests batched; a batch-dependent artifact (dynamic INT8) still runs
  each input alone inside the batch (batch invariance, a vector never depends on its neighbours),
  on THREADS single-threaded lanes side by side;
- dynamic-nolanes: the defaults without lanes (--no-lanes: a batch's inputs one after another);
- dynamic-batched: --no-batch-invariant: inputs of a batch share padded backend calls;
- dynamic-batched-wait10 / -wait0: the same with --max-batch-wait-ms 10 (fuller batches, more
  wait) / 0 (a batch is what queued while the previous one ran);
- dynamic-workers: the defaults plus --workers THREADS --threads 1: batch-invariant, inputs alone,
  THREADS of them at a time, each on one thread;
- dynamic-batched-workers: --no-batch-invariant --workers THREADS --threads 1;
- MODE-h11: any of these on uvicorn's pure-Python HTTP parser and asyncio loop (--http h11
  --loop asyncio) instead of httptools/uvloop.

Then, in-process and without HTTP, the same sentences through the server's batch code (Served.
execute), alone vs --clients at a time: what batching can give on this CPU at all.

Per mode: requests/s, p50/p99 latency, status counts, the server's RSS every 1,000 requests. Then
overload: --overload-clients clients against --max-concurrent-requests --overload-queue: status
counts (only 200 and 429 expected) and RSS. The CPU, its ISA flags and the load average are
recorded; the figures are ratios within one run, times on a shared machine are noise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    flags = sorted(
        {
            f
            for f in ("avx2", "avx512_vnni", "avx512bw", "fma")
            if f" {f} " in text or f" {f}\n" in text
        }
    )
    return {"model": model, "flags": flags, "cores": os.cpu_count()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, name: str, directory: Path, flags: list[str]):
        self.name, self.port = name, _free_port()
        # This checkout first; a PYTHONPATH the caller set stays after it (A/B shims, run AE).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_runtime.serve",
                str(directory),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--golden-interval",
                "0",
                *flags,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited: {self.proc.stderr.read().decode()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not start")

    def rss_mb(self) -> float:
        return round(self.ps.memory_info().rss / 2**20, 1)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def _drive(
    port: int, texts: list[str], clients: int, requests: int
) -> tuple[list[float], Counter, float]:
    """`requests` POST /embed of one sentence each from `clients` closed-loop clients: latencies
    (s) of 2xx answers, status counts, wall time."""
    lock = threading.Lock()
    counter = iter(range(requests))
    latencies: list[float] = []
    statuses: Counter = Counter()

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        local_lat, local_status = [], Counter()
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            body = json.dumps({"inputs": texts[(index * 7 + worker) % len(texts)]})
            started = time.perf_counter()
            try:
                conn.request("POST", "/embed", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = f"connection error: {type(exc).__name__}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - started
            local_status[status] += 1
            if status == 200:
                local_lat.append(elapsed)
        conn.close()
        with lock:
            latencies.extend(local_lat)
            statuses.update(local_status)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses, time.perf_counter() - started


def _batch_stats(port: int) -> dict:
    """Inputs per batch and per backend call, from the server's /metrics (warm-up included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    values = {}
    for line in conn.getresponse().read().decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    inputs = values.get("te_batch_next_size_sum", 0)
    return {
        "inputs_per_batch": round(inputs / max(1, values.get("te_batch_next_size_count", 0)), 2),
        "inputs_per_backend_call": round(
            inputs / max(1, values.get("edge_backend_calls_total", 0)), 2
        ),
        "padding_share": round(
            values.get("edge_padding_tokens_total", 0)
            / max(
                1,
                values.get("te_batch_next_tokens_sum", 0)
                + values.get("edge_padding_tokens_total", 0),
            ),
            3,
        ),
    }


def _summary(latencies: list[float], statuses: Counter, seconds: float, rss: list) -> dict:
    lat = np.asarray(latencies) * 1000
    return {
        "requests": sum(statuses.values()),
        "seconds": round(seconds, 2),
        "requests_per_s": round(sum(statuses.values()) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "rss_mb": rss,
    }


def _ceiling(
    directory: Path, artifact: str, threads: int, texts: list[str], group: int, rounds: int
) -> dict:
    """What batching can give without HTTP: the same sentences run in-process through the server's
    own batch code (Served.execute), each alone vs `group` at a time (the clients' count), best of
    `rounds` interleaved rounds."""
    import edge_runtime
    from edge_runtime.serve._engine import Served

    served = Served(edge_runtime.load(directory, artifact=artifact, threads=threads), directory, 0)
    rows = served.tokenize((texts * 4)[: group * (len(texts) * 4 // group)], truncate=True)
    best = {"alone": float("inf"), "batched": float("inf"), "one_call": float("inf")}
    cut = Served.PADDING_WASTE
    try:
        for _ in range(rounds):
            for mode in ("alone", "batched", "one_call"):
                # batched: what --no-batch-invariant does with a batch of `group` (length-sorted
                # calls cut at PADDING_WASTE); one_call: the whole batch padded into one call
                Served.PADDING_WASTE = 1e9 if mode == "one_call" else cut
                started = time.perf_counter()
                for start in range(0, len(rows), group):
                    chunk = rows[start : start + group]
                    if mode == "alone":  # what --max-batch-requests 1 does
                        for row in chunk:
                            served.execute([row], batch_invariant=False, max_tokens=16384)
                    else:
                        served.execute(chunk, batch_invariant=False, max_tokens=16384)
                best[mode] = min(best[mode], time.perf_counter() - started)
    finally:
        Served.PADDING_WASTE = cut
    rates = {m: round(len(rows) / t, 1) for m, t in best.items()}
    return {
        "texts": len(rows),
        "group": group,
        "rounds": rounds,
        "padding_waste": cut,
        "texts_per_s": rates,
        "batched_vs_alone": round(rates["batched"] / rates["alone"], 2),
        "one_call_vs_alone": round(rates["one_call"] / rates["alone"], 2),
    }


def main() -> None:
    from edge_runtime._bench_config import DEFAULT_SHAPE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--artifact", default="onnx-int8")
    parser.add_argument("--threads", type=int, default=DEFAULT_SHAPE.threads)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=10000, help="per mode")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--overload-queue", type=int, default=16)
    parser.add_argument("--overload-requests", type=int, default=3200, help="each of 2 rounds")
    parser.add_argument(
        "--texts", type=Path, default=Path(__file__).parent / "data" / "heldout_en.txt"
    )
    parser.add_argument("--modes", default="batch1,dynamic,dynamic-batched,dynamic-batched-wait10")
    parser.add_argument(
        "--ceiling-rounds",
        type=int,
        default=5,
        help="in-process batched-vs-alone rounds without HTTP (0: skip)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    texts = [
        t
        for t in args.texts.read_text(encoding="utf-8").splitlines()
        if t.strip() and not t.startswith("#")
    ]
    common = ["--artifact", args.artifact, "--threads", str(args.threads)]
    flags = {
        "batch1": ["--max-batch-requests", "1"],
        "dynamic": [],
        "dynamic-nolanes": ["--no-lanes"],
        "dynamic-batched": ["--no-batch-invariant"],
        # batch-invariant, inputs alone, --threads of them at a time on one thread each
        "dynamic-workers": ["--workers", str(args.threads), "--threads", "1"],
        "dynamic-batched-wait10": ["--no-batch-invariant", "--max-batch-wait-ms", "10"],
        "dynamic-batched-wait0": ["--no-batch-invariant", "--max-batch-wait-ms", "0"],
        # shared padded calls, --threads of them at a time on one thread each
        "dynamic-batched-workers": ["--no-batch-invariant", "--workers", str(args.threads), "--threads", "1"],
    }
    # MODE-h11: MODE with uvicorn's pure-Python parser and asyncio (the stack without the
    # [serve] extra's httptools/uvloop), for an A/B in the same run
    flags |= {f"{mode}-h11": f + ["--http", "h11", "--loop", "asyncio"] for mode, f in list(flags.items())}
    modes = [m for m in args.modes.split(",") if m]
    servers = {m: Server(m, args.artifacts, common + flags[m]) for m in modes}
    for server in servers.values():
        server.wait_ready()
    load_before = os.getloadavg()
    results = {
        m: {"latencies": [], "statuses": Counter(), "seconds": 0.0, "rss": []} for m in modes
    }
    per_round = args.requests // max(1, args.rounds)
    for server in servers.values():  # warm-up: first calls allocate arenas and caches
        _drive(server.port, texts, args.clients, 200)
        results[server.name]["rss"].append([0, server.rss_mb()])
    for round_index in range(args.rounds if modes else 0):
        for mode in modes:
            lat, statuses, seconds = _drive(servers[mode].port, texts, args.clients, per_round)
            r = results[mode]
            r["latencies"] += lat
            r["statuses"].update(statuses)
            r["seconds"] += seconds
            done = (round_index + 1) * per_round
            if done % 1000 == 0 or round_index == args.rounds - 1:
                r["rss"].append([done, servers[mode].rss_mb()])
        print(
            f"round {round_index + 1}/{args.rounds}: "
            + ", ".join(
                f"{m} {len(results[m]['latencies']) / results[m]['seconds']:.0f}/s" for m in modes
            ),
            flush=True,
        )
    batching = {m: _batch_stats(s.port) for m, s in servers.items()}
    exit_codes = {m: s.stop() for m, s in servers.items()}
    summary = {
        m: _summary(r["latencies"], r["statuses"], r["seconds"], r["rss"])
        for m, r in results.items()
    }
    for m in modes:
        summary[m]["exit_code_after_sigterm"] = exit_codes[m]
        summary[m]["server"] = batching[m]
    base = summary.get("batch1", {}).get("requests_per_s")
    ratios = {
        m: round(summary[m]["requests_per_s"] / base, 2) for m in modes if base and m != "batch1"
    }

    overload = None
    if args.overload_requests:
        server = Server(
            "overload",
            args.artifacts,
            common + ["--max-concurrent-requests", str(args.overload_queue)],
        )
        server.wait_ready()
        rss_before = server.rss_mb()
        lat, statuses, seconds = _drive(
            server.port, texts, args.overload_clients, args.overload_requests
        )
        rss_mid = server.rss_mb()
        lat2, statuses2, seconds2 = _drive(
            server.port, texts, args.overload_clients, args.overload_requests
        )
        overload = _summary(
            lat + lat2,
            statuses + statuses2,
            seconds + seconds2,
            [
                [0, rss_before],
                [args.overload_requests, rss_mid],
                [2 * args.overload_requests, server.rss_mb()],
            ],
        )
        overload.update(
            clients=args.overload_clients,
            max_concurrent_requests=args.overload_queue,
            only_2xx_and_429=set(statuses + statuses2) <= {200, 429},
            exit_code_after_sigterm=server.stop(),
        )

    ceiling = None
    if args.ceiling_rounds:
        ceiling = _ceiling(
            args.artifacts, args.artifact, args.threads, texts, args.clients, args.ceiling_rounds
        )

    result = {
        "cpu": _cpu(),
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "artifact": args.artifact,
        "threads": args.threads,
        "clients": args.clients,
        "requests_per_mode": per_round * args.rounds,
        "rounds": args.rounds,
        "texts": f"{args.texts.name} ({len(texts)} single sentences, cycled)",
        "modes": summary,
        "throughput_vs_batch1": ratios,
        "overload": overload,
        "in_process_ceiling": ceiling,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
