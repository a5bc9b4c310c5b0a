#!/usr/bin/env python3
"""A counting fake of the OpenAI API for the recall-vs-mem0 usage benchmark (stdlib only).

Serves on 127.0.0.1 only:

  POST /v1/chat/completions, /chat/completions   an answer valid for the prompt it recognises
  POST /v1/embeddings, /embeddings               deterministic unit vectors
  GET  /stats                                    the counters, per API key, as JSON
  POST /reset                                    clears the counters
  GET  /health                                   "ok"

Counters are kept per API key (the bearer token; "(none)" without one): chat calls, embedding
calls, embedding inputs (texts), embedding input tokens, prompt tokens, completion tokens, and
chat calls whose prompt it did not recognise (answered with an empty JSON object).

Tokens are approximated the same way for every client, because tiktoken cannot fetch its BPE
files here: tokens(text) = ceil(utf-8 bytes / 4). Prompt tokens are the sum over the request's
messages of tokens(content) (text parts of a list content included); the request's other fields
(response_format and its JSON schema, model, ...) are not counted. Completion tokens are
tokens(answer content). Embedding tokens are the sum over inputs of tokens(input).

Prompts recognised (the answer is what the client's parser expects, so both pipelines run their
normal course):

- recall (shared/src/adapters/openai.rs): system prompt "You maintain the long-term memory of a
  companion character"; the batch is in <conversation>, one JSON object per line. Answer:
  {"memories": [...]} with one memory per user message that looks like a fact, naming that
  message as its source, plus "usage".
- mem0 >= 2 (ADDITIVE_EXTRACTION_PROMPT, "You are a Memory Extractor"): the turn is in the
  "## New Messages" section as "role: content" lines. Answer: {"memory": [{"id", "text",
  "attributed_to": "user", "linked_memory_ids": []}, ...]}, one per fact-like user message.
- mem0 1.x, for older pins: the fact-retrieval prompt ("Personal Information Organizer") gets
  {"facts": [...]}; the update prompt ("smart memory manager") gets {"memory": [...]} with every
  old memory as NONE and every new fact as ADD.

"Looks like a fact" is one rule for every client: a user message of at least 4 words with a
first-person word (English or Hinglish). The memory text is "User said: " + the message (first
300 characters, whitespace collapsed).
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import json
import math
import os
import random
import re
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_DIMENSIONS = 1536
COUNTERS = (
    "chat_calls",
    "embedding_calls",
    "embedding_inputs",
    "embedding_tokens",
    "prompt_tokens",
    "completion_tokens",
    "unrecognised_chat_calls",
)
FIRST_PERSON = {
    "i", "i'm", "im", "i've", "i'd", "i'll", "me", "my", "mine", "myself", "we", "we're", "our",
    "us", "main", "mera", "meri", "mere", "mujhe", "mujhko", "hum", "humara", "hamara", "apna",
}
MEMORY_TEXT_CHARS = 300

_lock = threading.Lock()
_stats: dict[str, dict[str, int]] = {}


def tokens(text: str) -> int:
    """The benchmark's token approximation: ceil(utf-8 bytes / 4)."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def count(key: str, **amounts: int) -> None:
    with _lock:
        row = _stats.setdefault(key, dict.fromkeys(COUNTERS, 0))
        for name, n in amounts.items():
            row[name] += n


def looks_like_fact(text: str) -> bool:
    words = re.findall(r"[\w']+", text.lower())
    return len(words) >= 4 and any(w in FIRST_PERSON for w in words)


def memory_text(text: str) -> str:
    return "User said: " + " ".join(text.split())[:MEMORY_TEXT_CHARS]


# --- embeddings ------------------------------------------------------------------------------


def vector(text: str, dims: int) -> list[float]:
    """A unit vector seeded by the text's hash: same text, same vector."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    v = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


def embeddings_answer(body: dict) -> tuple[dict, int, int]:
    raw = body.get("input", [])
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
        raw = [raw]
    texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in raw]
    dims = int(body.get("dimensions") or DEFAULT_DIMENSIONS)
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, t in enumerate(texts):
        v = vector(t, dims)
        emb = base64.b64encode(struct.pack(f"<{dims}f", *v)).decode() if b64 else v
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n_tokens = sum(tokens(t) for t in texts)
    answer = {
        "object": "list",
        "data": data,
        "model": body.get("model", "text-embedding-3-small"),
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
    return answer, len(texts), n_tokens


# --- chat ------------------------------------------------------------------------------------


def content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def answer_recall(user: str) -> dict:
    """recall's extraction: the <conversation> fence holds one JSON message per line."""
    fence = user.split("<conversation>", 1)[-1].split("</conversation>", 1)[0]
    memories = []
    for line in fence.splitlines():
        line = line.strip()
        if not line:
            continue
        m = json.loads(line)
        if m.get("role") == "user" and looks_like_fact(m.get("text", "")):
            memories.append({
                "text": memory_text(m["text"]),
                "category": "other",
                "importance": 3,
                "event_time": None,
                "source_message_ids": [m["id"]],
                "supersedes": [],
            })
    return {"memories": memories}


def role_lines(block: str) -> list[tuple[str, str]]:
    """"role: content" lines (mem0's parse_messages); other lines continue the previous one."""
    out: list[tuple[str, str]] = []
    for line in block.split("\n"):
        m = re.match(r"^(user|assistant|system): (.*)$", line)
        if m:
            out.append((m.group(1), m.group(2)))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
    return out


def user_facts(block: str) -> list[str]:
    return [memory_text(t) for r, t in role_lines(block) if r == "user" and looks_like_fact(t)]


def answer_mem0_additive(user: str) -> dict:
    block = user.split("## New Messages\n", 1)[-1].split("\n\n## Observation Date", 1)[0]
    facts = user_facts(block)
    return {"memory": [
        {"id": str(i), "text": f, "attributed_to": "user", "linked_memory_ids": []}
        for i, f in enumerate(facts)
    ]}


def answer_mem0_facts(user: str) -> dict:
    return {"facts": user_facts(user.split("Input:", 1)[-1])}


def answer_mem0_update(prompt: str) -> dict:
    """mem0 1.x update prompt: old memories (a Python list repr) and new facts, in ``` blocks."""
    blocks = re.findall(r"```\s*(.*?)\s*```", prompt, re.S)
    old, new = [], []
    try:
        if "current content of my memory" in prompt and len(blocks) >= 2:
            old, new = ast.literal_eval(blocks[-2]), ast.literal_eval(blocks[-1])
        elif blocks:
            new = ast.literal_eval(blocks[-1])
    except (ValueError, SyntaxError):
        pass
    memory = [{"id": str(o.get("id")), "text": o.get("text", ""), "event": "NONE"} for o in old]
    known = {o.get("text") for o in old}
    for f in new:
        if f not in known:
            memory.append({"id": str(len(memory)), "text": f, "event": "ADD"})
    return {"memory": memory}


def chat_answer(body: dict) -> tuple[dict, int, int, bool]:
    messages = body.get("messages", [])
    texts = [content_text(m.get("content")) for m in messages]
    prompt_tokens = sum(tokens(t) for t in texts)
    system = next((t for m, t in zip(messages, texts) if m.get("role") == "system"), "")
    user = next((t for m, t in zip(reversed(messages), reversed(texts))
                 if m.get("role") == "user"), "")
    recognised = True
    if "You maintain the long-term memory of a companion character" in system:
        answer = answer_recall(user)
    elif "You are a Memory Extractor" in system:
        answer = answer_mem0_additive(user)
    elif "Personal Information Organizer" in system:
        answer = answer_mem0_facts(user)
    elif "smart memory manager" in user or "smart memory manager" in system:
        answer = answer_mem0_update(user or system)
    else:
        answer, recognised = {}, False
    content = json.dumps(answer, ensure_ascii=False)
    completion_tokens = tokens(content)
    reply = {
        "id": "chatcmpl-fake-" + hashlib.sha256(content.encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "gpt-4o-mini"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return reply, prompt_tokens, completion_tokens, recognised


# --- HTTP ------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-openai/1"

    def log_message(self, *_args) -> None:  # quiet: the counters are the output
        pass

    def _key(self) -> str:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else "(none)"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, doc) -> None:
        raw = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _path(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        return path[3:] if path.startswith("/v1/") else path

    def do_GET(self) -> None:
        path = self._path()
        if path == "/stats":
            with _lock:
                self._send(200, {"keys": json.loads(json.dumps(_stats))})
        elif path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": {"message": f"no route {path}", "code": "not_found"}})

    def do_POST(self) -> None:
        path = self._path()
        body_raw = self._body()
        if path == "/reset":
            with _lock:
                _stats.clear()
            self._send(200, {"reset": True})
            return
        try:
            body = json.loads(body_raw or b"{}")
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "body is not JSON", "code": "bad_json"}})
            return
        key = self._key()
        try:
            if path == "/chat/completions":
                reply, p, c, ok = chat_answer(body)
                count(key, chat_calls=1, prompt_tokens=p, completion_tokens=c,
                      unrecognised_chat_calls=0 if ok else 1)
                if not ok:
                    print("fake_openai: unrecognised chat prompt", file=sys.stderr, flush=True)
                self._send(200, reply)
            elif path == "/embeddings":
                reply, n, t = embeddings_answer(body)
                count(key, embedding_calls=1, embedding_inputs=n, embedding_tokens=t)
                self._send(200, reply)
            else:
                self._send(404, {"error": {"message": f"no route {path}", "code": "not_found"}})
        except Exception as e:  # a bug here must show, not hang a client
            print(f"fake_openai: {path}: {e!r}", file=sys.stderr, flush=True)
            self._send(500, {"error": {"message": "fake failed", "code": "fake_error"}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: any free port")
    ap.add_argument("--port-file", help="write the bound port here once listening")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"fake_openai listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
