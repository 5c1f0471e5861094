"""Bounded loopback load test: N clients x M predictions through gradio_client against a local app.

Starts ``python app.py`` on 127.0.0.1 (a free port), sends every request to it only, and stops by itself.
All clients send the same photo and taxonomy, so every answer must be the same: any difference is cross-talk.

    python benchmarks/load.py --clients 20 --requests 10 --backbone embedded
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(backbone: str, adapters: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, HIERDEMO_BACKBONE=backbone, HIERDEMO_ADAPTERS=str(adapters), GRADIO_SERVER_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False", HIERDEMO_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the app exited during start-up") from None
            time.sleep(1)
    proc.kill()
    raise RuntimeError("the app did not start in 300 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=10, help="predictions per client")
    ap.add_argument("--backbone", default="embedded")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/load.json"))
    args = ap.parse_args(argv)
    from gradio_client import Client, handle_file

    image = str(ROOT / "assets" / "examples" / "sneaker.png")
    taxonomy = (ROOT / "assets" / "example_taxonomy.txt").read_text()
    proc, url = start_app(args.backbone, Path(tempfile.mkdtemp(prefix="hierdemo-load-")))
    try:
        def client_run(_: int) -> tuple[list[float], list[str], int]:
            client = Client(url, verbose=False)
            latencies, answers, errors = [], [], 0
            for _ in range(args.requests):
                t0 = time.perf_counter()
                try:
                    job = client.submit(handle_file(image), "zero-shot", taxonomy, "consistent", 0.0, "tree", False,
                                        api_name="/predict")
                    answers.append(job.result(timeout=args.timeout)[2])
                    latencies.append(time.perf_counter() - t0)
                except Exception:
                    errors += 1
            return latencies, answers, errors

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(client_run, range(args.clients)))
        wall = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    latencies = sorted(x for r in results for x in r[0])
    answers = [a for r in results for a in r[1]]
    errors = sum(r[2] for r in results)
    out = {
        "clients": args.clients, "requests_per_client": args.requests, "backbone": args.backbone,
        "ok": len(latencies), "errors": errors, "distinct_answers": len(set(answers)), "wall_s": wall,
        "throughput_per_s": len(latencies) / wall,
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p95_s": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
        "latency_max_s": latencies[-1] if latencies else None,
        "machine": f"{os.cpu_count()} CPU cores",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    for k, v in out.items():
        print(f"{k:<20} {v:.3f}" if isinstance(v, float) else f"{k:<20} {v}")
    return 0 if errors == 0 and len(set(answers)) <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
