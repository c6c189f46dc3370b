"""Feature browser latency: the feature page's server time, and a burst of concurrent requests.

    python benchmarks/browser_latency.py [--run runs/demo] [--pages 200] [--burst 2000] [--in-flight 50]

Starts ``monosemantic serve RUN`` (one uvicorn process, as a user runs it) on a free local port,
then, from this process:

1. requests ``--pages`` random feature pages of the largest SAE one at a time and reads the
   server's own time from each response's ``Server-Timing`` header (median and p95);
2. sends ``--burst`` requests with ``--in-flight`` of them open at once — a mix of feature pages,
   neuron pages, feature-list pages and token searches, plus 5% out-of-range ids that must be 404
   — and reports client-side latency percentiles, throughput and errors (any status other than the
   expected one, or a failed connection).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    """``monosemantic serve RUN`` in its own process (so the client does not share its GIL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "monosemantic", "serve", str(run), "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            httpx.get(f"{base}/api/overview", timeout=5)
            return server, base
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 120 s")


def server_ms(response: httpx.Response) -> float:
    return float(response.headers["Server-Timing"].split("dur=")[1])


def burst_requests(base: str, overview: dict, n: int, rng: random.Random) -> list[tuple[str, int]]:
    """(url, expected status) for a mix of the pages a user opens."""
    saes = [d for d in overview["dictionaries"] if d["unit_kind"] == "feature"]
    neurons = next(d for d in overview["dictionaries"] if d["unit_kind"] == "neuron")
    out = []
    for _ in range(n):
        sae, r = rng.choice(saes), rng.random()
        if r < 0.55:
            out.append((f"{base}/api/saes/{sae['name']}/features/{rng.randrange(sae['n_units'])}", 200))
        elif r < 0.70:
            out.append((f"{base}/api/neurons/{rng.randrange(neurons['n_units'])}", 200))
        elif r < 0.85:
            out.append(
                (
                    f"{base}/api/dicts/{sae['name']}/units?sort=density&offset={rng.randrange(0, sae['n_units'], 50)}",
                    200,
                )
            )
        elif r < 0.95:
            out.append((f"{base}/api/dicts/{sae['name']}/units?token={rng.choice([' the', ' God', ',', ' of'])}", 200))
        else:
            out.append((f"{base}/api/saes/{sae['name']}/features/{sae['n_units'] + rng.randrange(1000)}", 404))
    return out


async def burst(requests: list[tuple[str, int]], in_flight: int) -> tuple[list[float], list[str], float]:
    """Latencies (ms), the errors, and wall time of sending ``requests`` ``in_flight`` at a time."""
    gate, latencies, errors = asyncio.Semaphore(in_flight), [], []
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(url: str, expected: int) -> None:
            async with gate:
                start = time.perf_counter()
                try:
                    response = await client.get(url)
                    if response.status_code != expected:
                        errors.append(f"{response.status_code} on {url}: {response.text[:200]}")
                except httpx.HTTPError as err:
                    errors.append(f"{type(err).__name__} on {url}: {err}")
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(one(u, e) for u, e in requests))
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    server, base = start_server(args.run)
    with httpx.Client(timeout=60) as client:
        overview = client.get(f"{base}/api/overview").json()
        sae = max((d for d in overview["dictionaries"] if d["unit_kind"] == "feature"), key=lambda d: d["n_units"])
        client.get(f"{base}/api/saes/{sae['name']}/features/0")  # warm-up: connection, page cache
        page_ms = [
            server_ms(client.get(f"{base}/api/saes/{sae['name']}/features/{rng.randrange(sae['n_units'])}"))
            for _ in range(args.pages)
        ]
        neuron_ms = [server_ms(client.get(f"{base}/api/neurons/{rng.randrange(512)}")) for _ in range(args.pages // 4)]
    latencies, errors, wall = asyncio.run(burst(burst_requests(base, overview, args.burst, rng), args.in_flight))
    server.terminate()
    server.wait(timeout=30)
    p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731 — a one-line percentile
    print(f"Feature browser latency — run {args.run} ({sae['name']}: {sae['n_units']:,} features)\n")
    print("| measurement | n | median ms | p95 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| feature page, server time (Server-Timing) | {len(page_ms)} | {statistics.median(page_ms):.1f} | "
        f"{p(page_ms, 95):.1f} | {p(page_ms, 99):.1f} | 0 |"
    )
    print(
        f"| neuron page, server time | {len(neuron_ms)} | {statistics.median(neuron_ms):.1f} | "
        f"{p(neuron_ms, 95):.1f} | {p(neuron_ms, 99):.1f} | 0 |"
    )
    print(
        f"| burst, {args.in_flight} in flight, client latency | {len(latencies)} | {p(latencies, 50):.1f} | "
        f"{p(latencies, 95):.1f} | {p(latencies, 99):.1f} | {len(errors)} |"
    )
    print(f"\nburst: {len(latencies) / wall:,.0f} requests/s over {wall:.1f} s")
    for error in errors:
        print("error:", error)


if __name__ == "__main__":
    main()
