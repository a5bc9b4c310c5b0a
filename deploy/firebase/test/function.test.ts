/**
 * The Cloud Function against a REAL recall-publisher on loopback and the REAL RabbitMQ broker
 * (AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2f), under a queue prefix unique to this
 * run; every queue and exchange of that prefix is deleted at the end.
 */
import assert from "node:assert/strict";
import { createServer as createHttpServer, request as httpRequest, type Server } from "node:http";
import { createServer as createTcpServer, type Socket } from "node:net";
import { join, sep } from "node:path";
import { after, before, describe, test } from "node:test";

import { initializeApp } from "firebase-admin/app";

import { handleMessageCreated, messageCreated, pairHash } from "../src/index";
import { NotifyError, notifyPublisher } from "../src/notify";
import {
  AMQP_URL,
  captureOutput,
  checkBroker,
  deleteTopology,
  freePort,
  type Publisher,
  randomHex,
  shardOf,
  startPublisher,
  watchShards,
} from "./support";

const PREFIX = `recall-fn-test-${process.pid}-${Date.now()}`;
/** The publisher's secret, made for this run only. */
const SECRET = randomHex(32);
/** Text of the fake message documents: must never appear in any log line. */
const CANARY = `canary-message-text-${randomHex(8)}`;
const PROJECT = "demo-recall";

type Watcher = Awaited<ReturnType<typeof watchShards>>;
let publisher: Publisher;
let watcher: Watcher;
const logs = captureOutput();

/** Points the function's parameters (read from the environment at run time) somewhere. */
function configure(url: string, secret: string, extra: Record<string, string> = {}) {
  process.env.RECALL_PUBLISHER_URL = url;
  process.env.RECALL_WEBHOOK_SECRET = secret;
  process.env.RECALL_WEBHOOK_ATTEMPTS = "2";
  process.env.RECALL_WEBHOOK_TIMEOUT_MS = "3000";
  process.env.RECALL_WEBHOOK_MAX_DELAY_MS = "200";
  Object.assign(process.env, extra);
}

/** A fake FirestoreEvent as firebase-functions hands it to the handler. */
function fakeEvent(userId: string, characterName: string, messageId: string) {
  const document = `users/${userId}/characters/${characterName}/messages/${messageId}`;
  const fields = { text: CANARY, role: "user", channel: "whatsapp", created_at: new Date(), sync: false };
  return {
    specversion: "1.0" as const,
    id: `evt-${randomHex(6)}`,
    source: `//firestore.googleapis.com/projects/${PROJECT}/databases/(default)`,
    type: "google.cloud.firestore.document.v1.created",
    time: new Date().toISOString(),
    location: "us-central1",
    project: PROJECT,
    database: "(default)",
    namespace: "(default)",
    document,
    params: { userId, characterName, messageId },
    data: { id: messageId, ref: { path: document }, exists: true, data: () => fields, get: (k: string) => (fields as Record<string, unknown>)[k] },
  };
}

/** The handler as firebase-functions exposes it for tests (`CloudFunction.run`). */
const run = (event: ReturnType<typeof fakeEvent>) =>
  (messageCreated as unknown as { run: (e: unknown) => Promise<unknown> }).run(event);

/** Log entries the function wrote, by message prefix. */
const logEntries = (message: string) =>
  logs
    .entries()
    // An ERROR entry's message is prefixed with "Error: " and followed by a stack trace.
    .filter((e) => typeof e.message === "string" && (e.message as string).replace(/^Error: /, "").startsWith(message));

before(async () => {
  await checkBroker(AMQP_URL);
  publisher = await startPublisher({ prefix: PREFIX, secret: SECRET, amqpUrl: AMQP_URL, ready: true });
  watcher = await watchShards(AMQP_URL, PREFIX);
});

after(async () => {
  await watcher?.close();
  await publisher?.stop();
  await deleteTopology(AMQP_URL, PREFIX);
  logs.restore();
});

describe("messageCreated against recall-publisher and RabbitMQ", () => {
  test("a created message is signed, accepted (202) and lands on its shard queue", async () => {
    configure(publisher.url, SECRET);
    const messageId = `m-${randomHex(6)}`;
    const before401 = await publisher.webhookRequests(401);
    const outcome = await run(fakeEvent("kabir", "meher", messageId));
    assert.deepEqual(outcome, { outcome: "delivered", status: 202, attempts: 1 });

    const got = await watcher.waitFor(messageId);
    assert.equal(got.length, 1, "exactly one AMQP message");
    const shard = shardOf("kabir", "meher");
    assert.deepEqual(got[0], {
      queue: `${PREFIX}.events.${shard}`,
      exchange: `${PREFIX}.events`,
      routingKey: `shard.${shard}`,
      persistent: true,
      contentType: "application/json",
      body: { user_id: "kabir", character_name: "meher", message_id: messageId },
    });
    assert.equal(await publisher.webhookRequests(202) >= 1, true);
    assert.equal(await publisher.webhookRequests(401), before401, "the HMAC was accepted first time");
    const info = logEntries("recall: message event delivered").at(-1);
    assert.equal(info?.severity, "INFO");
    assert.equal(info?.pair, pairHash("kabir", "meher"));
    assert.equal(info?.status, 202);
  });

  test("the deployed entry point decodes a raw protobuf CloudEvent and routes by the document path", async () => {
    configure(publisher.url, SECRET);
    initializeApp({ projectId: PROJECT }); // what the runtime provides; offline here
    // The protobuf Eventarc delivers for Firestore (firebase-functions' own compiled protos).
    const main = require.resolve("firebase-functions"); // <package>/lib/v2/index.js
    const protosPath = join(main.slice(0, main.lastIndexOf(`${sep}lib${sep}`)), "protos", "compiledFirestore.js");
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { google } = require(protosPath);
    const DocumentEventData = google.events.cloud.firestore.v1.DocumentEventData;
    const userId = `u-${randomHex(4)}`;
    const characterName = "Aarav_2";
    const messageId = `m-${randomHex(6)}`;
    const document = `users/${userId}/characters/${characterName}/messages/${messageId}`;
    const now = { seconds: Math.floor(Date.now() / 1000), nanos: 0 };
    const data = DocumentEventData.encode({
      value: {
        name: `projects/${PROJECT}/databases/(default)/documents/${document}`,
        fields: {
          text: { stringValue: CANARY },
          role: { stringValue: "user" },
          channel: { stringValue: "voice" },
          created_at: { timestampValue: now },
          sync: { booleanValue: false },
        },
        createTime: now,
        updateTime: now,
      },
    }).finish();
    const raw = {
      specversion: "1.0",
      id: `evt-raw-${randomHex(6)}`,
      source: `//firestore.googleapis.com/projects/${PROJECT}/databases/(default)`,
      type: "google.cloud.firestore.document.v1.created",
      time: new Date().toISOString(),
      datacontenttype: "application/protobuf",
      location: "us-central1",
      project: PROJECT,
      database: "(default)",
      namespace: "(default)",
      document,
      data: Buffer.from(data),
    };
    const outcome = await (messageCreated as unknown as (e: unknown) => Promise<unknown>)(raw);
    assert.deepEqual(outcome, { outcome: "delivered", status: 202, attempts: 1 });
    const got = await watcher.waitFor(messageId);
    assert.equal(got.length, 1);
    assert.equal(got[0].queue, `${PREFIX}.events.${shardOf(userId, characterName)}`);
    assert.deepEqual(got[0].body, { user_id: userId, character_name: characterName, message_id: messageId });
  });

  test("a bad signature is a 401 and a permanent failure: resolved (not retried), logged as an error", async () => {
    configure(publisher.url, randomHex(32)); // not the publisher's secret
    const messageId = `m-${randomHex(6)}`;
    const before401 = await publisher.webhookRequests(401);
    const outcome = await run(fakeEvent("kabir", "meher", messageId));
    assert.deepEqual(outcome, { outcome: "rejected", status: 401, code: "unauthorized", attempts: 1 });
    assert.equal(await publisher.webhookRequests(401), before401 + 1, "one request: a 4xx is not retried in-function");
    const error = logEntries("recall: publisher refused the event").at(-1);
    assert.equal(error?.severity, "ERROR");
    assert.equal(error?.status, 401);
    assert.equal(error?.code, "unauthorized");

    // The core call says so explicitly.
    await assert.rejects(
      notifyPublisher({ baseUrl: publisher.url, secret: "wrong" }, { user_id: "kabir", character_name: "meher", message_id: messageId }),
      (e: unknown) => e instanceof NotifyError && !e.retryable && e.status === 401 && e.name === "PermanentError",
    );
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(watcher.received.filter((r) => r.body.message_id === messageId).length, 0, "nothing published");
  });

  test("an invalid id is a 400 naming the field, permanent", async () => {
    configure(publisher.url, SECRET);
    const outcome = await run(fakeEvent("kabir", "Meher Ali", `m-${randomHex(6)}`));
    assert.deepEqual(outcome, { outcome: "rejected", status: 400, code: "invalid_request", attempts: 1 });
    assert.equal(logEntries("recall: publisher refused the event").at(-1)?.field, "character_name");
  });

  test("publisher down (connection refused) is retryable: retried in-function, then thrown", async () => {
    const closed = await freePort();
    configure(`http://127.0.0.1:${closed}`, SECRET);
    await assert.rejects(run(fakeEvent("kabir", "meher", `m-${randomHex(6)}`)), (e: unknown) => {
      assert.ok(e instanceof NotifyError);
      assert.equal(e.retryable, true);
      assert.equal(e.name, "RetryableError");
      assert.equal(e.code, "ECONNREFUSED");
      assert.equal(e.attempts, 2);
      return true;
    });
    const warn = logEntries("recall: publisher unavailable").at(-1);
    assert.equal(warn?.severity, "WARNING");
    assert.equal(warn?.code, "ECONNREFUSED");
  });

  test("broker down (publisher answers 503 + Retry-After) is retryable, each attempt reaching the publisher", async () => {
    const deadBroker = `amqp://guest:guest@127.0.0.1:${await freePort()}/%2f`;
    const lonely = await startPublisher({ prefix: `${PREFIX}-nobroker`, secret: SECRET, amqpUrl: deadBroker, ready: false });
    try {
      configure(lonely.url, SECRET);
      await assert.rejects(run(fakeEvent("kabir", "meher", `m-${randomHex(6)}`)), (e: unknown) => {
        assert.ok(e instanceof NotifyError);
        assert.equal(e.retryable, true);
        assert.equal(e.status, 503);
        assert.equal(e.code, "unavailable");
        assert.equal(e.attempts, 2);
        return true;
      });
      assert.equal(await lonely.webhookRequests(503), 2);
    } finally {
      await lonely.stop();
    }
  });

  test("a publisher that does not answer within the timeout is retryable", async () => {
    const sockets = new Set<Socket>();
    const silent = createTcpServer((s) => sockets.add(s)); // accepts, never answers
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", () => r()));
    try {
      const { port } = silent.address() as { port: number };
      configure(`http://127.0.0.1:${port}`, SECRET, { RECALL_WEBHOOK_TIMEOUT_MS: "300" });
      const started = Date.now();
      await assert.rejects(
        run(fakeEvent("kabir", "meher", `m-${randomHex(6)}`)),
        (e: unknown) => e instanceof NotifyError && e.retryable && e.code === "timeout" && e.attempts === 2,
      );
      assert.ok(Date.now() - started < 3000, "bounded by attempts x timeout + backoff");
      assert.equal(sockets.size, 2);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  test("a transient 503 is retried in-function with the same signed body, then delivered once", async () => {
    // A proxy in front of the real publisher: the first request gets 503, later ones pass through.
    let calls = 0;
    const bodies: string[] = [];
    const proxy: Server = createHttpServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        calls += 1;
        bodies.push(Buffer.concat(chunks).toString("utf8") + "|" + String(req.headers["x-recall-signature"]));
        if (calls === 1) {
          res.writeHead(503, { "content-type": "application/json", "retry-after": "0" });
          res.end(JSON.stringify({ error: { code: "unavailable", message: "try later", field: null } }));
          return;
        }
        const target = new URL(publisher.url);
        const fwd = httpRequest(
          { host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers },
          (up) => {
            res.writeHead(up.statusCode ?? 502, up.headers);
            up.pipe(res);
          },
        );
        fwd.end(Buffer.concat(chunks));
      });
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", () => r()));
    try {
      const { port } = proxy.address() as { port: number };
      configure(`http://127.0.0.1:${port}/`, SECRET);
      const messageId = `m-${randomHex(6)}`;
      const outcome = await handleMessageCreated(fakeEvent("kabir", "meher", messageId));
      assert.deepEqual(outcome, { outcome: "delivered", status: 202, attempts: 2 });
      assert.equal(calls, 2);
      assert.equal(bodies[0], bodies[1], "the retry sends the same bytes and signature");
      assert.equal((await watcher.waitFor(messageId)).length, 1);
    } finally {
      proxy.close();
    }
  });

  test("no log line carries the secret, the message text or the raw ids", () => {
    const text = logs.text();
    assert.ok(text.includes("recall: message event delivered"), "the function's logs were captured");
    assert.ok(!text.includes(SECRET), "secret in the logs");
    assert.ok(!text.includes(CANARY), "message text in the logs");
    const ours = logEntries("recall:");
    assert.ok(ours.length >= 8, `one entry per invocation, found ${ours.length}`);
    for (const entry of ours) {
      const line = JSON.stringify(entry);
      for (const id of ["kabir", "meher", "Aarav_2"]) assert.ok(!line.includes(id), `raw id ${id} in ${line}`);
    }
    assert.ok(!publisher.output().includes(SECRET), "secret in the publisher's output");
  });
});
