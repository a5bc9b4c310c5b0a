/**
 * Test support: a real recall-publisher child process on loopback, a consumer of its RabbitMQ
 * shard queues, the recall topology names (for clean-up), and a capture of everything written
 * to stdout/stderr (where the firebase-functions logger writes).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import * as amqp from "amqplib";

export const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
/** recall's defaults: RECALL_SHARDS=8, RECALL_RETRY_DELAYS=5,30,300. */
export const SHARDS = 8;
const RETRY_TIERS = 3;

/** The publisher binary: $RECALL_PUBLISHER_BIN, else the workspace's debug build. */
export function publisherBin(): string {
  if (process.env.RECALL_PUBLISHER_BIN) return process.env.RECALL_PUBLISHER_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? resolve(__dirname, "../../../../target");
  return join(target, "debug", "recall-publisher");
}

/** A random hex string (secrets and unique names are made per run, never stored). */
export const randomHex = (bytes = 16) => randomBytes(bytes).toString("hex");

/** A loopback port nothing listens on (bound, then released). */
export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => ok(port));
    });
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The shard recall routes a pair to: first 8 bytes of SHA-256(user, 0, character) mod K. */
export function shardOf(userId: string, characterName: string, shards = SHARDS): number {
  const digest = createHash("sha256").update(userId).update(Buffer.from([0])).update(characterName).digest();
  return Number(digest.readBigUInt64BE(0) % BigInt(shards));
}

/** Every queue and exchange recall declares for `prefix` (defaults), for clean-up. */
export function topologyNames(prefix: string): { queues: string[]; exchanges: string[] } {
  const queues = [`${prefix}.parking`, `${prefix}.batches`];
  for (let i = 0; i < SHARDS; i++) queues.push(`${prefix}.events.${i}`);
  for (let n = 0; n < RETRY_TIERS; n++) queues.push(`${prefix}.batches.retry.${n}`);
  return { queues, exchanges: [`${prefix}.events`, `${prefix}.dlx`] };
}

/** Deletes the topology of `prefix` (each on its own channel: a missing one closes a channel). */
export async function deleteTopology(url: string, prefix: string): Promise<void> {
  const conn = await amqp.connect(url);
  try {
    const { queues, exchanges } = topologyNames(prefix);
    for (const q of queues) {
      const ch = await conn.createChannel();
      await ch.deleteQueue(q).catch(() => undefined);
      await ch.close().catch(() => undefined);
    }
    for (const x of exchanges) {
      const ch = await conn.createChannel();
      await ch.deleteExchange(x).catch(() => undefined);
      await ch.close().catch(() => undefined);
    }
  } finally {
    await conn.close().catch(() => undefined);
  }
}

/** Fails fast, with a clear message, when the broker the tests need is not there. */
export async function checkBroker(url: string): Promise<void> {
  const shown = url.replace(/\/\/([^:@/]+):[^@/]*@/, "//$1:***@");
  try {
    const conn = await amqp.connect(url, { timeout: 5000 });
    await conn.close();
  } catch (e) {
    throw new Error(`RabbitMQ is not reachable at ${shown} (set AMQP_URL): ${(e as Error).message}`);
  }
}

/** A running recall-publisher. */
export interface Publisher {
  url: string;
  output(): string;
  /** Value of `recall_http_requests_total` for the webhook route and `status` (0 if absent). */
  webhookRequests(status: number): Promise<number>;
  stop(): Promise<void>;
}

/**
 * Starts recall-publisher on a free loopback port with embedded stores in a temporary folder
 * (embeddings configured as OpenAI-compatible and never called, so no model is loaded), and
 * waits for `/healthz`; with `ready`, also for `/readyz` (the broker answered, topology declared).
 */
export async function startPublisher(opts: {
  prefix: string;
  secret: string;
  amqpUrl: string;
  ready: boolean;
}): Promise<Publisher> {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "recall-fn-test-"));
  const child: ChildProcess = spawn(publisherBin(), [], {
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      RECALL_LISTEN: `127.0.0.1:${port}`,
      RECALL_DATA_DIR: dataDir,
      RECALL_WEBHOOK_SECRET: opts.secret,
      RECALL_API_KEY: randomHex(),
      AMQP_URL: opts.amqpUrl,
      RECALL_AMQP_PREFIX: opts.prefix,
      RECALL_CONFIRM_TIMEOUT_MS: "2000",
      RECALL_EMBEDDER: "openai",
      OPENAI_BASE_URL: "http://127.0.0.1:9/v1",
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d) => (out += d));
  child.stderr?.on("data", (d) => (out += d));
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(killer);
    }
    rmSync(dataDir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 60_000;
  for (const path of opts.ready ? ["/healthz", "/readyz"] : ["/healthz"]) {
    for (;;) {
      if (child.exitCode !== null) {
        await stop();
        throw new Error(`recall-publisher exited with ${child.exitCode}:\n${out}`);
      }
      const ok = await fetch(url + path).then((r) => r.ok, () => false);
      if (ok) break;
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`recall-publisher: ${path} not ready within 60 s:\n${out}`);
      }
      await sleep(100);
    }
  }
  return {
    url,
    output: () => out,
    async webhookRequests(status: number) {
      const text = await (await fetch(`${url}/metrics`)).text();
      let total = 0;
      for (const line of text.split("\n")) {
        if (!line.startsWith("recall_http_requests_total{")) continue;
        if (line.includes('route="/firebase/message-created"') && line.includes(`status="${status}"`)) {
          total += Number(line.trim().split(/\s+/).pop());
        }
      }
      return total;
    },
    stop,
  };
}

/** One message taken from a shard queue. */
export interface Received {
  queue: string;
  exchange: string;
  routingKey: string;
  persistent: boolean;
  contentType?: string;
  body: { user_id: string; character_name: string; message_id?: string };
}

/** Consumes every shard queue of `prefix` (the publisher declared them) and keeps what arrives. */
export async function watchShards(url: string, prefix: string) {
  const conn = await amqp.connect(url);
  const ch = await conn.createChannel();
  const received: Received[] = [];
  for (let i = 0; i < SHARDS; i++) {
    const queue = `${prefix}.events.${i}`;
    await ch.consume(queue, (msg) => {
      if (!msg) return;
      received.push({
        queue,
        exchange: msg.fields.exchange,
        routingKey: msg.fields.routingKey,
        persistent: msg.properties.deliveryMode === 2,
        contentType: msg.properties.contentType,
        body: JSON.parse(msg.content.toString("utf8")),
      });
      ch.ack(msg);
    });
  }
  return {
    received,
    /** Waits until a message with this `message_id` arrived; all copies of it. */
    async waitFor(messageId: string, timeoutMs = 10_000): Promise<Received[]> {
      const until = Date.now() + timeoutMs;
      while (Date.now() < until) {
        const found = received.filter((r) => r.body.message_id === messageId);
        if (found.length > 0) {
          await sleep(300); // let a duplicate, if any, arrive too
          return received.filter((r) => r.body.message_id === messageId);
        }
        await sleep(50);
      }
      throw new Error(`no AMQP message with message_id ${messageId} within ${timeoutMs} ms`);
    },
    async close() {
      await ch.close().catch(() => undefined);
      await conn.close().catch(() => undefined);
    },
  };
}

/** Records everything written to stdout and stderr (still passing it through). */
export function captureOutput() {
  let text = "";
  const originals = { out: process.stdout.write, err: process.stderr.write };
  const tap =
    (original: typeof process.stdout.write, stream: NodeJS.WriteStream) =>
    (chunk: unknown, ...rest: unknown[]): boolean => {
      text += typeof chunk === "string" ? chunk : Buffer.from(chunk as Uint8Array).toString("utf8");
      return (original as (...a: unknown[]) => boolean).call(stream, chunk, ...rest);
    };
  process.stdout.write = tap(originals.out, process.stdout) as typeof process.stdout.write;
  process.stderr.write = tap(originals.err, process.stderr) as typeof process.stderr.write;
  return {
    text: () => text,
    /** Parsed structured log entries (the firebase-functions logger writes one JSON per line). */
    entries: (): Array<Record<string, unknown>> =>
      text.split("\n").flatMap((line) => {
        // The test runner's own framing may share a line with a log entry: parse from the `{`.
        const start = line.indexOf('{"');
        if (start < 0) return [];
        try {
          return [JSON.parse(line.slice(start)) as Record<string, unknown>];
        } catch {
          return [];
        }
      }),
    restore() {
      process.stdout.write = originals.out;
      process.stderr.write = originals.err;
    },
  };
}
