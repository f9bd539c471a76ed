"""Slowloris against a running stepwell server: how many slow connections it keeps, and how
fast a normal client is answered meanwhile.

    stepwell serve --db sqlite:///tmp/s.db --port 8288 &
    .venv/bin/python bench/slowloris.py --url http://127.0.0.1:8288 --sockets 1000

Opens `--sockets` connections that send a request head one byte every `--interval` seconds
(never finishing it), for `--duration` seconds; every second a normal `GET /health` is timed
on a fresh connection. Prints one JSON object: the slow connections the server closed (and
when), and the normal requests' latencies (or failures). Loopback only; stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000


async def slow_client(host: str, port: int, interval: float, stop: float,
                      closed_at: list[float], t0: float) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        closed_at.append(-1.0)          # refused outright
        return
    try:
        for byte in HEAD:
            if time.monotonic() > stop:
                return
            writer.write(bytes([byte]))
            await writer.drain()
            try:                        # anything from the server (408/503) or EOF ends it
                await asyncio.wait_for(reader.read(1024), timeout=interval)
            except TimeoutError:
                continue
            closed_at.append(time.monotonic() - t0)
            return
    except OSError:
        closed_at.append(time.monotonic() - t0)
    finally:
        writer.close()


async def normal_request(host: str, port: int, timeout: float) -> float | str:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
    except (OSError, TimeoutError) as exc:
        return f"failed: {type(exc).__name__}"
    if not status.startswith(b"HTTP/1.1 200"):
        return f"answered {status.decode(errors='replace').strip()}"
    return round(time.monotonic() - started, 4)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8288")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    t0 = time.monotonic()
    stop = t0 + args.duration
    closed_at: list[float] = []
    slow = [asyncio.create_task(slow_client(host, port, args.interval, stop, closed_at, t0))
            for _ in range(args.sockets)]
    latencies: list[float | str] = []
    while time.monotonic() < stop:
        await asyncio.sleep(1.0)
        latencies.append(await normal_request(host, port, timeout=5.0))
    await asyncio.gather(*slow)
    answered = [x for x in latencies if isinstance(x, float)]
    print(json.dumps({
        "sockets": args.sockets, "duration_s": args.duration,
        "slow_closed_by_server": len([c for c in closed_at if c >= 0]),
        "slow_refused": len([c for c in closed_at if c < 0]),
        "first_close_s": round(min((c for c in closed_at if c >= 0), default=-1), 2),
        "normal_requests": len(latencies), "normal_answered": len(answered),
        "normal_max_s": max(answered, default=None),
        "normal_failures": [x for x in latencies if isinstance(x, str)][:5]}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
