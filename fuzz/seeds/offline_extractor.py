#!/usr/bin/env python3
"""Turns chat conversations (JSON lines: role, text) into inputs of the `offline_extractor` fuzz
target: 25 messages per input, one per line (`A:` for the assistant), two existing memories (`M:`)
first, and a leading byte that picks the batch's day.

Usage: offline_extractor.py OUT_DIR PREFIX CONVERSATION.jsonl...
"""
import json
import pathlib
import sys

CHUNK = 25
EXISTING = ["M:User said: I live in Pune with my dog Bruno", "M:User said: I work at Infosys as a tester"]


def main() -> None:
    out, prefix, files = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in files:
        rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
        for start in range(0, len(rows), CHUNK):
            lines = list(EXISTING)
            for row in rows[start : start + CHUNK]:
                text = " ".join(row["text"].splitlines())
                lines.append(("A:" if row["role"] == "assistant" else "") + text)
            day = bytes([(n * 37) % 256])
            (out / f"{prefix}-{n:03}").write_bytes(day + "\n".join(lines).encode("utf-8"))
            n += 1
    print(f"{n} inputs in {out}")


if __name__ == "__main__":
    main()
