/** The pure parts of the webhook call: body, signature, URL, classification, backoff. */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { describe, test } from "node:test";

import {
  backoffMs,
  DEFAULT_POLICY,
  isRetryableStatus,
  NotifyError,
  notifyPublisher,
  retryAfterMs,
  sign,
  webhookBody,
  webhookUrl,
} from "../src/notify";

describe("notify", () => {
  test("sign is HMAC-SHA256 in lowercase hex behind sha256= (RFC 4231 case 1)", () => {
    const key = Buffer.alloc(20, 0x0b);
    assert.equal(sign(key, "Hi There"), "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    const body = webhookBody({ user_id: "kabir", character_name: "meher", message_id: "m1" });
    assert.equal(sign("s", body), `sha256=${createHmac("sha256", "s").update(body).digest("hex")}`);
  });

  test("the body is the publisher's exact shape, message_id only when known", () => {
    assert.equal(
      webhookBody({ user_id: "kabir", character_name: "meher", message_id: "m1" }),
      '{"user_id":"kabir","character_name":"meher","message_id":"m1"}',
    );
    assert.equal(webhookBody({ user_id: "kabir", character_name: "meher" }), '{"user_id":"kabir","character_name":"meher"}');
  });

  test("webhookUrl keeps a base path and tolerates a trailing slash", () => {
    assert.equal(webhookUrl("https://r.example"), "https://r.example/firebase/message-created");
    assert.equal(webhookUrl("https://r.example/"), "https://r.example/firebase/message-created");
    assert.equal(webhookUrl("http://127.0.0.1:8080"), "http://127.0.0.1:8080/firebase/message-created");
    assert.equal(webhookUrl("https://gw.example/recall"), "https://gw.example/recall/firebase/message-created");
    assert.equal(webhookUrl("https://gw.example/recall/"), "https://gw.example/recall/firebase/message-created");
  });

  test("statuses: 408/425/429/5xx retry, other 4xx do not", () => {
    const table: Array<[number, boolean]> = [
      [400, false], [401, false], [403, false], [404, false], [413, false], [415, false],
      [408, true], [425, true], [429, true], [500, true], [502, true], [503, true], [504, true],
    ];
    for (const [status, retry] of table) assert.equal(isRetryableStatus(status), retry, String(status));
  });

  test("Retry-After: seconds or an HTTP date", () => {
    assert.equal(retryAfterMs("5"), 5000);
    assert.equal(retryAfterMs(null), undefined);
    assert.equal(retryAfterMs("soon"), undefined);
    const now = Date.parse("2025-01-01T00:00:00Z");
    assert.equal(retryAfterMs("Wed, 01 Jan 2025 00:00:03 GMT", now), 3000);
  });

  test("backoff doubles with full jitter, honours Retry-After, never exceeds the cap", () => {
    const p = { ...DEFAULT_POLICY, baseDelayMs: 100, maxDelayMs: 1000 };
    assert.equal(backoffMs(1, p, undefined, () => 0.999), 99);
    assert.equal(backoffMs(2, p, undefined, () => 0.999), 199);
    assert.equal(backoffMs(10, p, undefined, () => 0.999), 999);
    assert.equal(backoffMs(1, p, 500, () => 0), 500);
    assert.equal(backoffMs(1, p, 60_000, () => 0), 1000);
  });

  test("a missing secret or URL fails at once, permanently, without a request", async () => {
    const ev = { user_id: "kabir", character_name: "meher" };
    for (const target of [
      { baseUrl: "http://127.0.0.1:9", secret: "" },
      { baseUrl: "", secret: "s" },
      { baseUrl: "not a url", secret: "s" },
    ]) {
      await assert.rejects(notifyPublisher(target, ev), (e: unknown) => e instanceof NotifyError && !e.retryable && e.attempts === 0);
    }
  });
});
