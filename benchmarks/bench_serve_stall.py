"""Does one huge request hold up edge-serve's event loop? /health latency while a large text is
being tokenized.

    python benchmarks/bench_serve_stall.py ARTIFACT_DIR [--sentences 60000] [--rounds 3] \
        [--json benchmarks/results/serve_stall.json]

Starts edge-serve (httptools/uvloop, then uvicorn's h11/asyncio stack) on 127.0.0.1, sends one
POST /embed holding a single text of --sentences sentences (60,000: a 1.9 MB body; the server
tokenizes it on a worker thread, then truncates it to the model's length) and, while that
request is in flight, GET /health on a second connection, then 20 ms of sleep, again. Per round:
the huge request's time and the slowest /health answer. A server whose tokenizer holds Python's lock
answers /health only once the tokenization is over: its slowest /health is about the huge
request's time. The CPU and its ISA flags are recorded; times on a shared machine are noise, the
comparison is the slowest /health against the huge request's time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import ROOT, Server, _cpu  # noqa: E402  (a script beside this one)

STACKS = {"httptools-uvloop": [], "h11-asyncio": ["--http", "h11", "--loop", "asyncio"]}


def _round(port: int, body: bytes) -> dict:
    """One huge request, /health polled until it is answered."""
    result: dict = {}

    def huge() -> None:
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", "/embed", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        result["status"] = response.status
        result["huge_request_s"] = round(time.perf_counter() - started, 3)

    worker = threading.Thread(target=huge)
    health = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    worker.start()
    slowest, polls = 0.0, 0
    while worker.is_alive():
        started = time.perf_counter()
        health.request("GET", "/health")
        health.getresponse().read()
        slowest = max(slowest, time.perf_counter() - started)
        polls += 1
        time.sleep(0.02)
    worker.join()
    return {**result, "health_polls": polls, "slowest_health_s": round(slowest, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--sentences", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    text = " ".join(["hello world, this is a sentence"] * args.sentences)
    body = json.dumps({"inputs": [text], "truncate": True}).encode()
    import tokenizers

    def git(*words: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *words], capture_output=True, text=True).stdout.strip()

    # The served code: the commit, and whether edge_runtime/ differs from it (results files do not count).
    commit = (git("rev-parse", "--short", "HEAD") or "unknown") + (
        " + uncommitted edge_runtime/ changes" if git("status", "--porcelain", "--", "edge_runtime") else "")
    report = {"cpu": _cpu(), "commit": commit, "tokenizers": tokenizers.__version__,
              "artifacts": str(args.artifacts), "served": "load()'s choice", "body_mb": round(len(body) / 1e6, 2),
              "health_poll": "GET /health, then 20 ms of sleep, while the huge request is in flight",
              "command": " ".join(["python", *sys.argv]), "stacks": {}}
    print(f"CPU {report['cpu']['model']} {report['cpu']['flags']}; code {commit}, tokenizers "
          f"{report['tokenizers']}; body {report['body_mb']} MB")
    for stack, flags in STACKS.items():
        server = Server(stack, args.artifacts, flags)
        try:
            server.wait_ready()
            rounds = [_round(server.port, body) for _ in range(args.rounds)]
        finally:
            server.stop()
        report["stacks"][stack] = rounds
        for number, row in enumerate(rounds, 1):
            print(f"{stack:17s} round {number}: HTTP {row['status']}, huge request "
                  f"{row['huge_request_s']:.2f} s, slowest /health {row['slowest_health_s']:.3f} s "
                  f"({row['health_polls']} polls)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
