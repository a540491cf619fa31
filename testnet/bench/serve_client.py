#!/usr/bin/env python3
"""Streams N concurrent /v1/completions requests to an OpenAI-compatible server and reports, per
request, the time to the first content chunk and the decode rate after it, as one JSON line.

usage: serve_client.py URL MODEL CONCURRENCY MAX_TOKENS PROMPT

Standard library only, so it runs on a fresh machine against Sunswarm and llama-server alike.
"""
import json
import sys
import threading
import time
import urllib.request


def one(url, model, max_tokens, prompt, out, i):
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0, "stream": True,
    }).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    text = ""
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            msg = json.loads(data)
            piece = "".join(c.get("text") or "" for c in msg.get("choices", []))
            if piece:
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
                text += piece
    out[i] = {"ttft_ms": (first - t0) * 1e3 if first else None,
              "first_at": first, "last_at": last,
              "decode_s": (last - first) if first else None,
              "chunks": chunks, "text": text}


def main():
    url, model, n, max_tokens, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    out = [None] * n
    threads = [threading.Thread(target=one, args=(url, model, max_tokens, prompt, out, i)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    # Tokens after the first, over the time after the first: one chunk is one token for both
    # servers on this prompt (checked by the caller through the chunk count).
    per = [(r["chunks"] - 1) / r["decode_s"] for r in out if r and r["decode_s"]]
    print(json.dumps({
        "concurrency": n,
        "ttft_ms": sorted(r["ttft_ms"] for r in out if r and r["ttft_ms"]),
        "decode_tok_s_each": sorted(per),
        "decode_tok_s_sum": sum(per),
        # All streams' tokens after their first over the span in which any stream decoded: the
        # sum above overstates a server that runs the streams in turns rather than together.
        "decode_tok_s_span": sum(r["chunks"] - 1 for r in out if r and r["first_at"])
        / (max(r["last_at"] for r in out if r and r["last_at"])
           - min(r["first_at"] for r in out if r and r["first_at"])),
        "chunks": [r["chunks"] for r in out],
        "wall_s": wall,
        "texts_identical": len({r["text"] for r in out}) == 1,
        "text": out[0]["text"],
    }))


if __name__ == "__main__":
    main()
