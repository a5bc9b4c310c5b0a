#!/usr/bin/env python3
"""Replays every conversation of a data folder into a running `recall-worker standalone`.

Posts each message through the HTTP API as tests/e2e.rs and scripts/demo.sh do
(`POST /memory/messages/{user}/{character}` with message_id, role, text, created_at, channel and
the bearer key), pair after pair in file order, at chat pace: when a pair reaches the
25-message threshold, the next message waits until that batch has run, as it would in a real
conversation, which is slower than a batch (posting faster makes batches of up to
BATCH_MAX_MESSAGES and fewer calls: a flood is not what is measured here). Then, like a bot checking a quiet conversation, it calls
`POST /memory/check-batch/{user}/{character}` for every pair: the data's timestamps are old, so
the idle rule applies and a tail of >= 5 unsynced messages gets its own batch; a tail of fewer
than 5 stays unsynced, as it would in production until more messages come.

"Settled" means: no batch in flight (`recall_batches_in_flight` on /metrics), no pair due, and
the fake's counters for --fake-key unchanged for three polls in a row. Fails after --timeout.
Prints one line per pair and a JSON summary as the last line. Stdlib only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
import urllib.request


class Api:
    def __init__(self, base: str, key: str | None):
        self.base, self.key = base.rstrip("/"), key

    def call(self, method: str, path: str, body=None, expect=(200,)):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            if r.status not in expect:
                raise RuntimeError(f"{method} {path}: {r.status}")
            raw = r.read()
            return json.loads(raw) if r.headers.get("content-type", "").startswith(
                "application/json") else raw.decode()


def metric(text: str, name: str) -> float:
    """Sum of every series of a Prometheus metric."""
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{name}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def settle(api: Api, fake: Api, fake_key: str, pairs: list[str], below: int, deadline: float):
    """Waits until nothing is in flight, every pair has fewer than `below` unsynced messages and
    the fake saw no new call for three polls."""
    last, quiet = None, 0
    while True:
        stats = {p: api.call("GET", f"/memory/stats/{p}") for p in pairs}
        in_flight = metric(api.call("GET", "/metrics"), "recall_batches_in_flight")
        seen = fake.call("GET", "/stats")["keys"].get(fake_key)
        done = in_flight == 0 and all(s["messages"]["unsynced"] < below for s in stats.values())
        quiet = quiet + 1 if (done and seen == last) else 0
        last = seen
        if quiet >= 3:
            return stats
        if time.monotonic() > deadline:
            waiting = {p: s["messages"]["unsynced"] for p, s in stats.items()}
            raise SystemExit(f"run_recall: batches did not settle before the deadline "
                             f"(in flight {in_flight:g}, unsynced per pair {waiting})")
        time.sleep(0.5)


def wait_for_batch(api: Api, pair: str, threshold: int, deadline: float) -> int:
    """Chat pace: the pair reached the threshold, so its batch runs before the next message
    arrives (a real conversation is slower than a batch). Returns the pair's unsynced count."""
    while True:
        unsynced = api.call("GET", f"/memory/stats/{pair}")["messages"]["unsynced"]
        if unsynced < threshold:
            if metric(api.call("GET", "/metrics"), "recall_batches_in_flight") == 0:
                return unsynced
        if time.monotonic() > deadline:
            raise SystemExit(f"run_recall: {pair}'s batch did not run before the deadline "
                             f"({unsynced} unsynced)")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--base", required=True, help="recall's base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--key", default=os.environ.get("RECALL_API_KEY"))
    ap.add_argument("--fake", required=True, help="the fake's base URL (for its /stats)")
    ap.add_argument("--fake-key", default="sk-recall")
    ap.add_argument("--threshold", type=int, default=25)
    ap.add_argument("--idle-min", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the whole replay")
    args = ap.parse_args()
    deadline = time.monotonic() + args.timeout
    api, fake = Api(args.base, args.key), Api(args.fake, None)

    files = sorted(glob.glob(os.path.join(args.data, "*__*.jsonl")))
    if not files:
        print(f"run_recall: no <user>__<character>.jsonl in {args.data}", file=sys.stderr)
        return 2
    pairs, posted = [], 0
    started = time.monotonic()
    for path in files:
        with open(path, encoding="utf-8") as f:
            messages = [json.loads(line) for line in f if line.strip()]
        pair = f"{messages[0]['user_id']}/{messages[0]['character_name']}"
        pairs.append(pair)
        unsynced = 0
        for m in messages:
            body = {k: m[k] for k in ("message_id", "role", "text", "created_at", "channel")}
            api.call("POST", f"/memory/messages/{pair}", body, expect=(201,))
            posted += 1
            unsynced += 1
            if unsynced >= args.threshold:
                unsynced = wait_for_batch(api, pair, args.threshold, deadline)
    # Threshold batches first, then the idle tails the check-batch call flushes.
    settle(api, fake, args.fake_key, pairs, args.threshold, deadline)
    flushed = sum(1 for p in pairs
                  if api.call("POST", f"/memory/check-batch/{p}")["triggered"])
    stats = settle(api, fake, args.fake_key, pairs, args.idle_min, deadline)
    metrics = api.call("GET", "/metrics")

    total = {"messages": posted, "synced": 0, "unsynced": 0, "batches": 0, "batches_failed": 0,
             "memories": 0, "idle_flushes": flushed}
    for p, s in stats.items():
        total["synced"] += s["messages"]["synced"]
        total["unsynced"] += s["messages"]["unsynced"]
        total["batches"] += s["batches"]["done"]
        total["batches_failed"] += s["batches"]["failed"]
        total["memories"] += s["memories"]["current"]
        print(f"  recall {p}: {s['messages']['total']} messages, {s['messages']['synced']} "
              f"synced in {s['batches']['done']} batches, {s['memories']['current']} memories",
              file=sys.stderr, flush=True)
    total["retries"] = int(metric(metrics, "recall_retries_total"))
    total["extractor"] = next(iter(stats.values()))["extractor"]
    total["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
