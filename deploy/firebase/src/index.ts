/**
 * recall's Firestore trigger: every document created under
 * `users/{userId}/characters/{characterName}/messages/{messageId}` is announced to
 * recall-publisher (`POST /firebase/message-created`, body signed with HMAC-SHA256), which
 * publishes it to RabbitMQ and answers 202 only once the broker confirmed it.
 *
 * Failure handling (see README.md, "Retries"):
 * - 5xx, 408/429, timeouts, refused connections: retried in this invocation (bounded, capped
 *   jittered backoff honouring `Retry-After`), then the handler THROWS, so Cloud Functions
 *   redelivers the event (`retry: true`; 2nd gen retries for up to 24 h, backoff 10-600 s).
 * - other 4xx (bad signature 401, invalid id 400, ...) and missing configuration: logged as an
 *   error and the handler RETURNS, because a redelivery would fail the same way. The workers'
 *   sweep (`RECALL_SWEEP_SECONDS`) still finds the unsynced message.
 *
 * Logs carry the event id, a short hash of the pair, statuses and error codes: never the secret,
 * the ids themselves, or the message text (the document's data is not even read).
 */
import { createHash } from "node:crypto";

import * as logger from "firebase-functions/logger";
import { defineInt, defineSecret, defineString } from "firebase-functions/params";
import { onDocumentCreated } from "firebase-functions/v2/firestore";

import { DEFAULT_POLICY, NotifyError, notifyPublisher, type RetryPolicy, type Target } from "./notify";

/** The messages collection the companion app writes (recall's `RECALL_FIRESTORE_MESSAGES_PATH`). */
export const MESSAGES_DOCUMENT = "users/{userId}/characters/{characterName}/messages/{messageId}";

/** Base URL of recall-publisher, e.g. `https://recall.example.com`. */
export const publisherUrl = defineString("RECALL_PUBLISHER_URL", {
  description: "Base URL of recall-publisher (the function POSTs to <url>/firebase/message-created)",
});
/** The publisher's `RECALL_WEBHOOK_SECRET`, from Secret Manager. */
export const webhookSecret = defineSecret("RECALL_WEBHOOK_SECRET");
const attempts = defineInt("RECALL_WEBHOOK_ATTEMPTS", {
  default: DEFAULT_POLICY.attempts,
  description: "HTTP attempts per invocation before the event is handed back to the platform",
});
const timeoutMs = defineInt("RECALL_WEBHOOK_TIMEOUT_MS", {
  default: DEFAULT_POLICY.timeoutMs,
  description: "Deadline of one HTTP attempt, in milliseconds",
});
const maxDelayMs = defineInt("RECALL_WEBHOOK_MAX_DELAY_MS", {
  default: DEFAULT_POLICY.maxDelayMs,
  description: "Longest wait between two attempts (Retry-After included), in milliseconds",
});
const region = defineString("RECALL_FUNCTION_REGION", {
  default: "us-central1",
  description: "Region of the function: the Firestore database's region",
});
const database = defineString("RECALL_FIRESTORE_DATABASE", {
  default: "(default)",
  description: "Firestore database id (recall's FIRESTORE_DATABASE_ID)",
});

/** The path wildcards of one created message. */
export interface MessageParams {
  userId: string;
  characterName: string;
  messageId: string;
}

/** What the handler did, for tests and for the platform's log of the invocation. */
export type Outcome =
  | { outcome: "delivered"; status: number; attempts: number }
  | { outcome: "rejected"; status?: number; code: string; attempts: number };

/** First 6 bytes of SHA-256(user_id, 0, character_name), hex: the same as recall's pair hash. */
export function pairHash(userId: string, characterName: string): string {
  const digest = createHash("sha256").update(userId).update(Buffer.from([0])).update(characterName);
  return digest.digest("hex").slice(0, 12);
}

/** A positive integer parameter, or the built-in default (an unset int param reads as 0). */
function positive(value: number, fallback: number): number {
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

/** The configuration of this invocation, read at run time (never at deploy time). */
function settings(): { target: Target; policy: RetryPolicy } {
  return {
    target: { baseUrl: publisherUrl.value(), secret: webhookSecret.value() },
    policy: {
      ...DEFAULT_POLICY,
      attempts: positive(attempts.value(), DEFAULT_POLICY.attempts),
      timeoutMs: positive(timeoutMs.value(), DEFAULT_POLICY.timeoutMs),
      maxDelayMs: positive(maxDelayMs.value(), DEFAULT_POLICY.maxDelayMs),
    },
  };
}

/**
 * Announces one created message. Resolves when delivered or refused for good; throws (so the
 * platform retries) when the publisher or its broker is unavailable.
 */
export async function handleMessageCreated(
  event: { id: string; params: MessageParams },
  config: { target: Target; policy: RetryPolicy } = settings(),
): Promise<Outcome> {
  const { userId, characterName, messageId } = event.params;
  const log = { eventId: event.id, pair: pairHash(userId, characterName) };
  const started = Date.now();
  try {
    const done = await notifyPublisher(
      config.target,
      { user_id: userId, character_name: characterName, message_id: messageId },
      config.policy,
    );
    logger.info("recall: message event delivered", {
      ...log,
      status: done.status,
      attempts: done.attempts,
      ms: Date.now() - started,
    });
    return { outcome: "delivered", status: done.status, attempts: done.attempts };
  } catch (e) {
    if (!(e instanceof NotifyError)) throw e; // a bug: let the platform retry and report it
    const details = {
      ...log,
      status: e.status,
      code: e.code,
      field: e.field,
      attempts: e.attempts,
      ms: Date.now() - started,
    };
    if (e.retryable) {
      logger.warn("recall: publisher unavailable, the platform will redeliver the event", details);
      throw e;
    }
    logger.error("recall: publisher refused the event; not retried", details);
    return { outcome: "rejected", status: e.status, code: e.code, attempts: e.attempts };
  }
}

/** The deployed function. */
export const messageCreated = onDocumentCreated(
  {
    document: MESSAGES_DOCUMENT,
    database,
    region,
    secrets: [webhookSecret],
    retry: true,
    // Three attempts of <= 10 s plus two waits of <= 5 s fit with room to spare.
    timeoutSeconds: 60,
  },
  (event) => handleMessageCreated(event),
);
