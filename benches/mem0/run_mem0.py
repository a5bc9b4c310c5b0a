#!/usr/bin/env python3
"""Ingests every conversation of a data folder through mem0 (open-source `mem0.Memory`).

One `Memory.add()` per exchange: a run of user messages and the assistant messages that answer
it, in file order (almost always one user and one assistant message), with
user_id=<user>, agent_id=<character> (so memories are scoped to the pair, like recall's) and
the message ids in metadata. LLM and embedder are mem0's `openai` providers pointed at
--base-url with --api-key; the vector store is Qdrant in local (embedded, on-disk) mode and
the history database is SQLite, both inside --workdir. Nothing leaves loopback.

Prints one line per conversation and a JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from importlib.metadata import version


def exchanges(messages: list[dict]) -> list[list[dict]]:
    """Splits a conversation into exchanges: user messages, then the assistant's answers."""
    out: list[list[dict]] = []
    for m in messages:
        starts = not out or (m["role"] == "user" and out[-1][-1]["role"] == "assistant")
        if starts:
            out.append([])
        out[-1].append(m)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder of <user>__<character>.jsonl files")
    ap.add_argument("--base-url", required=True, help="OpenAI-compatible base URL (with /v1)")
    ap.add_argument("--api-key", default="sk-mem0")
    ap.add_argument("--workdir", required=True, help="scratch folder for Qdrant and history")
    ap.add_argument("--dims", type=int, default=1536, help="embedding dimensions")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--embedding-model", default="text-embedding-3-small")
    args = ap.parse_args()

    if os.environ.get("MEM0_TELEMETRY", "").lower() not in ("false", "0", "no"):
        print("run_mem0: set MEM0_TELEMETRY=False (no telemetry may leave)", file=sys.stderr)
        return 2
    os.environ.setdefault("MEM0_DIR", os.path.join(args.workdir, "mem0-home"))
    from mem0 import Memory  # after MEM0_DIR is set: mem0 reads it at import

    config = {
        "llm": {
            "provider": "openai",
            "config": {
                "model": args.model,
                "api_key": args.api_key,
                "openai_base_url": args.base_url,
            },
        },
        "embedder": {
            "provider": "openai",
            "config": {
                "model": args.embedding_model,
                "api_key": args.api_key,
                "openai_base_url": args.base_url,
                "embedding_dims": args.dims,
            },
        },
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "collection_name": "recall_bench",
                "path": os.path.join(args.workdir, "qdrant"),
                "on_disk": True,
                "embedding_model_dims": args.dims,
            },
        },
        "history_db_path": os.path.join(args.workdir, "history.db"),
    }
    memory = Memory.from_config(config)

    files = sorted(glob.glob(os.path.join(args.data, "*__*.jsonl")))
    if not files:
        print(f"run_mem0: no <user>__<character>.jsonl in {args.data}", file=sys.stderr)
        return 2
    total = {"messages": 0, "exchanges": 0, "adds_with_memories": 0, "memories": 0}
    started = time.monotonic()
    for path in files:
        with open(path, encoding="utf-8") as f:
            messages = [json.loads(line) for line in f if line.strip()]
        pair_memories = 0
        turns = exchanges(messages)
        for turn in turns:
            first = turn[0]
            result = memory.add(
                [{"role": m["role"], "content": m["text"]} for m in turn],
                user_id=first["user_id"],
                agent_id=first["character_name"],
                metadata={"message_ids": [m["message_id"] for m in turn]},
            )
            added = [r for r in result.get("results", []) if r.get("event") == "ADD"]
            pair_memories += len(added)
            total["adds_with_memories"] += 1 if added else 0
        total["messages"] += len(messages)
        total["exchanges"] += len(turns)
        total["memories"] += pair_memories
        print(f"  mem0 {os.path.basename(path)}: {len(messages)} messages, "
              f"{len(turns)} add() calls, {pair_memories} memories", file=sys.stderr, flush=True)
    total["seconds"] = round(time.monotonic() - started, 1)
    total["mem0_version"] = version("mem0ai")
    print(json.dumps(total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
