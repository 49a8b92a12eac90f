"""A bounded loopback load test: N simulated sales reps practising at once against `serve` (or the web app).

Each rep sends `--requests` messages one after another (its own opener, streamed, `--max_tokens` tokens,
its own seed) and waits for each whole reply; the reps of a level start together. For 1, 2, 4 and 8
concurrent reps it reports the median and 95th-percentile latency (request to last token), the time to
first token and the aggregate generated tokens per second (all replies' tokens / the level's wall time),
and, against the lone rep, the ratios the serving target reads: p95 at 8 reps over a lone rep's, and
aggregate tokens/s at 8 reps over a lone rep's.

    python bench/load_test.py --model smollm2                    # starts `serve` itself on a free port
    python bench/load_test.py --url http://127.0.0.1:8000/v1     # a server already running (loopback only)
    python bench/load_test.py --model smollm2 --target web       # the Gradio web app (`train.py web`), before
    python bench/load_test.py --model smollm2 --threads 1        # one torch thread: steadier on a shared machine

It talks only to 127.0.0.1, sends at most levels x reps x --requests requests, and stops by itself after
--max_seconds whatever is left (the unfinished level is reported as such).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_generation import OPENERS, PERSONA  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(args, port: int) -> subprocess.Popen:
    """`serve` or `web` on the model, on loopback, waiting until it answers."""
    verb = ["serve", "--max_batch", "8"] if args.target == "serve" else ["web"]
    command = [sys.executable, str(ROOT / "train.py"), *verb, "--model", args.model, "--port", str(port),
               "--max_new_tokens", str(args.max_tokens)] + (["--cache_dir", args.cache_dir] if args.cache_dir else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)} | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    health = f"http://127.0.0.1:{port}/" + ("health" if args.target == "serve" else "")
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the {args.target} process exited with {process.returncode}: {' '.join(command)}")
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(1)
    process.kill()
    raise SystemExit(f"the {args.target} process did not answer within 300 s")


def ask_serve(url: str, rep: int, turn: int, max_tokens: int) -> tuple[float, float, int]:
    """(latency, time to first token, tokens) of one streamed reply."""
    body = {"messages": [{"role": "system", "content": PERSONA},
                         {"role": "user", "content": OPENERS[(rep + turn) % len(OPENERS)]}],
            "max_tokens": max_tokens, "seed": 1000 * rep + turn, "stream": True,
            "stream_options": {"include_usage": True}}
    started, first, tokens = time.monotonic(), None, 0
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if any(c["delta"].get("content") for c in chunk["choices"]):
                first = first or time.monotonic()
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    ended = time.monotonic()
    return ended - started, (first or ended) - started, tokens


def ask_web(url: str, rep: int, turn: int, max_tokens: int, client_cache: dict) -> tuple[float, float, int]:
    """The same through the web app's send event (gradio_client), streamed: its updates are the reply growing."""
    from gradio_client import Client
    client = client_cache.setdefault(threading.get_ident(), Client(url, verbose=False))
    started, first = time.monotonic(), None
    job = client.submit(OPENERS[(rep + turn) % len(OPENERS)], [], [], PERSONA, client_cache["model"], "(none)",
                        api_name="/send")
    for update in job:
        if update[0] and update[0][-1]["role"] == "assistant" and update[0][-1]["content"]:
            first = first or time.monotonic()
    history = job.result()[0]
    ended = time.monotonic()
    reply = history[-1]["content"] if history and history[-1]["role"] == "assistant" else ""
    reply = reply if isinstance(reply, str) else "".join(p.get("text", "") for p in reply if isinstance(p, dict))
    return ended - started, (first or ended) - started, len(client_cache["tokenizer"](reply)["input_ids"])


def level(args, url: str, reps: int, deadline: float, cache: dict) -> dict:
    results, errors = [], []

    def rep_loop(rep: int) -> None:
        for turn in range(args.requests):
            if time.time() > deadline:
                return
            try:
                results.append(ask_serve(url, rep, turn, args.max_tokens) if args.target == "serve"
                               else ask_web(url, rep, turn, args.max_tokens, cache))
            except Exception as err:  # noqa: BLE001 - a failed request is counted, not fatal
                errors.append(f"{type(err).__name__}: {err}")
    started = time.monotonic()
    threads = [threading.Thread(target=rep_loop, args=(r,)) for r in range(reps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    latencies = sorted(r[0] for r in results)
    firsts = sorted(r[1] for r in results)

    def p95(values):
        return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))] if values else float("nan")
    return {"reps": reps, "requests": len(results), "errors": len(errors), "first_error": errors[:1],
            "complete": len(results) == reps * args.requests, "wall_s": wall,
            "p50_s": statistics.median(latencies) if latencies else float("nan"), "p95_s": p95(latencies),
            "ttft_p50_s": statistics.median(firsts) if firsts else float("nan"), "ttft_p95_s": p95(firsts),
            "tokens": sum(r[2] for r in results), "tokens_per_s": sum(r[2] for r in results) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="the model `serve` (or `web`) loads when --url is not given")
    parser.add_argument("--url", default="", help="a running server's base URL (loopback only); else one is started")
    parser.add_argument("--target", choices=("serve", "web"), default="serve")
    parser.add_argument("--levels", default="1,2,4,8", help="concurrent reps per level")
    parser.add_argument("--requests", type=int, default=2, help="messages each rep sends, one after another")
    parser.add_argument("--max_tokens", type=int, default=48, help="tokens per reply (web: --max_new_tokens)")
    parser.add_argument("--max_seconds", type=float, default=1800, help="stop after this long, whatever is left")
    parser.add_argument("--cache_dir", default="", help="passed to the server it starts (where smollm2 is converted)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the server it starts (0: torch's "
                        "default); 1 is steadier on a machine shared with others")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    process = None
    if args.url:
        if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--url must be a loopback address: this load test never leaves the machine")
        url = args.url.rstrip("/")
    else:
        port = free_port()
        process = start(args, port)
        url = f"http://127.0.0.1:{port}" + ("/v1" if args.target == "serve" else "/")
    cache = {"model": args.model}
    if args.target == "web":  # the app reports no token counts: its replies are counted with the model's tokenizer
        from core.model.load import load_tokenizer
        cache["tokenizer"] = load_tokenizer(args.model, args.cache_dir, False)
    deadline = time.time() + args.max_seconds
    rows = []
    try:
        # warm-up: the first request pays for lazy initialisation
        ask_serve(url, 99, 0, 4) if args.target == "serve" else ask_web(url, 99, 0, 4, cache)
        for reps in map(int, args.levels.split(",")):
            rows.append(level(args, url, reps, deadline, cache))
            row = rows[-1]
            print(f"{args.target} {reps} reps: p50 {row['p50_s']:.1f} s, p95 {row['p95_s']:.1f} s, first token p50 "
                  f"{row['ttft_p50_s']:.1f} s, {row['tokens_per_s']:.1f} tokens/s aggregate "
                  f"({row['requests']} replies, {row['errors']} errors{'' if row['complete'] else ', cut short'})",
                  flush=True)
            if time.time() > deadline:
                break
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
    lone = rows[0] if rows and rows[0]["reps"] == 1 else None
    most = rows[-1] if rows else None
    if lone and most and most is not lone:
        print(f"at {most['reps']} reps: p95 latency {most['p95_s'] / lone['p95_s']:.2f}x a lone rep's (target <= 2.5), "
              f"aggregate tokens/s {most['tokens_per_s'] / lone['tokens_per_s']:.2f}x (target >= 3)")
    print("\n| reps | replies | p50 latency | p95 latency | first token p50 | first token p95 | tokens/s (all) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['reps']} | {row['requests']} | {row['p50_s']:.1f} s | {row['p95_s']:.1f} s | "
              f"{row['ttft_p50_s']:.1f} s | {row['ttft_p95_s']:.1f} s | {row['tokens_per_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"target": args.target, "model": args.model, "levels": rows}, indent=2))


if __name__ == "__main__":
    main()
