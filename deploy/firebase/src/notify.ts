/**
 * The webhook call to recall-publisher, free of any Firebase type so it can be tested alone:
 * build the exact body, sign it (HMAC-SHA256, `X-Recall-Signature`), POST it with a per-attempt
 * timeout, retry transient failures a bounded number of times with capped, jittered backoff that
 * honours `Retry-After`, and classify the end result as delivered, retryable or permanent.
 *
 * Nothing here logs; the caller decides what to log. Error messages carry the HTTP status and the
 * publisher's stable error `code`/`field`, never the secret, the body or any message text.
 */
import { createHmac } from "node:crypto";

/** The route of the publisher that turns a "message created" into an AMQP event. */
export const WEBHOOK_PATH = "/firebase/message-created";
/** Header carrying `sha256=<hex HMAC-SHA256 of the raw body keyed with the secret>`. */
export const SIGNATURE_HEADER = "X-Recall-Signature";

/** What the publisher needs to know: the pair, and the message for de-duplication. */
export interface MessageCreated {
  user_id: string;
  character_name: string;
  message_id?: string;
}

/** Where and how to call the publisher. */
export interface Target {
  /** Base URL of recall-publisher, e.g. `https://recall.example.com` (no trailing path needed). */
  baseUrl: string;
  /** `RECALL_WEBHOOK_SECRET` of the publisher. */
  secret: string;
}

/** Retry and timeout knobs of one invocation (all bounded: the function has a deadline). */
export interface RetryPolicy {
  /** Total HTTP attempts in this invocation (1 = no in-function retry). */
  attempts: number;
  /** Deadline of one attempt, connect to last body byte, in milliseconds. */
  timeoutMs: number;
  /** First backoff; it doubles per attempt, with full jitter. */
  baseDelayMs: number;
  /** Cap of any wait between attempts, `Retry-After` included. */
  maxDelayMs: number;
}

export const DEFAULT_POLICY: RetryPolicy = {
  attempts: 3,
  timeoutMs: 10_000,
  baseDelayMs: 250,
  maxDelayMs: 5_000,
};

/** The publisher answered 2xx: the broker confirmed the event. */
export interface Delivered {
  status: number;
  attempts: number;
}

/** Base of both failure kinds; `retryable` tells the platform whether to redeliver. */
export class NotifyError extends Error {
  constructor(
    message: string,
    /** `true`: throw so the platform retries; `false`: retrying cannot help. */
    readonly retryable: boolean,
    /** HTTP status of the last answer, when there was one. */
    readonly status: number | undefined,
    /** The publisher's stable error code (`unauthorized`, `invalid_request`, ...), or a local one. */
    readonly code: string,
    /** HTTP attempts made. */
    readonly attempts: number,
    /** The request field the publisher blamed, if any (a field name, never its value). */
    readonly field?: string,
  ) {
    super(message);
    this.name = retryable ? "RetryableError" : "PermanentError";
  }
}

/** The exact bytes sent (and signed): compact JSON, `message_id` omitted when unknown. */
export function webhookBody(event: MessageCreated): string {
  const body: MessageCreated = {
    user_id: event.user_id,
    character_name: event.character_name,
  };
  if (event.message_id !== undefined) body.message_id = event.message_id;
  return JSON.stringify(body);
}

/** `sha256=<lowercase hex HMAC-SHA256(secret, body)>`, as recall-publisher verifies it. */
export function sign(secret: string | Buffer, body: string | Buffer): string {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}

/** The webhook URL under a base URL, with or without a trailing slash. */
export function webhookUrl(baseUrl: string): string {
  // Relative to the base, so a base path (a gateway's `/recall/`) is kept.
  return new URL(WEBHOOK_PATH.slice(1), baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`).toString();
}

/**
 * Whether an HTTP status is worth retrying: 408, 425, 429 and every 5xx. Other 4xx (400 bad id,
 * 401 bad signature, 413, 415) fail the same way every time.
 */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 425 || status === 429 || status >= 500;
}

/** `Retry-After` in milliseconds (delta-seconds or an HTTP date), or undefined. */
export function retryAfterMs(header: string | null, now: number = Date.now()): number | undefined {
  if (header === null || header.trim() === "") return undefined;
  const trimmed = header.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/**
 * Wait before attempt `attempt + 1` (attempt counts from 1): full jitter over a doubling window,
 * at least what `Retry-After` asked for, never above `maxDelayMs`.
 */
export function backoffMs(
  attempt: number,
  policy: RetryPolicy,
  retryAfter: number | undefined,
  random: () => number = Math.random,
): number {
  const window = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  const jittered = Math.floor(random() * window);
  return Math.min(policy.maxDelayMs, Math.max(jittered, retryAfter ?? 0));
}

/** The publisher's `{"error":{"code","field"}}`, if the body is one (the message text is ignored). */
async function errorDetails(resp: Response): Promise<{ code?: string; field?: string }> {
  try {
    const parsed = (await resp.json()) as { error?: { code?: unknown; field?: unknown } };
    const code = typeof parsed?.error?.code === "string" ? parsed.error.code : undefined;
    const field = typeof parsed?.error?.field === "string" ? parsed.error.field : undefined;
    return { code, field };
  } catch {
    return {};
  }
}

/** One attempt's result, before the retry decision. */
type Attempt =
  | { kind: "ok"; status: number }
  | { kind: "http"; status: number; code: string; field?: string; retryAfter?: number }
  | { kind: "network"; code: string };

async function attemptOnce(url: string, body: string, signature: string, timeoutMs: number): Promise<Attempt> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const resp = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/json",
        [SIGNATURE_HEADER]: signature,
      },
      body,
      signal: controller.signal,
      redirect: "error",
    });
    if (resp.ok) {
      await resp.body?.cancel();
      return { kind: "ok", status: resp.status };
    }
    const { code, field } = await errorDetails(resp);
    return {
      kind: "http",
      status: resp.status,
      code: code ?? `http_${resp.status}`,
      field,
      retryAfter: retryAfterMs(resp.headers.get("retry-after")),
    };
  } catch (e) {
    if (controller.signal.aborted) return { kind: "network", code: "timeout" };
    // undici puts the system error (ECONNREFUSED, ENOTFOUND, ...) in `cause`.
    const cause = (e as { cause?: { code?: unknown } })?.cause;
    const code = typeof cause?.code === "string" ? cause.code : "network_error";
    return { kind: "network", code };
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Announces one created message to recall-publisher. Resolves once the publisher answered 2xx
 * (= the broker confirmed the event); rejects with a {@link NotifyError} whose `retryable` says
 * whether the platform should redeliver the Firestore event.
 */
export async function notifyPublisher(
  target: Target,
  event: MessageCreated,
  policy: RetryPolicy = DEFAULT_POLICY,
  random: () => number = Math.random,
): Promise<Delivered> {
  if (!target.secret || !target.baseUrl) {
    // A deployment mistake: every retry would fail the same way (like a 401). The sweep of the
    // workers finds the message once the function is fixed.
    const what = !target.secret ? "RECALL_WEBHOOK_SECRET" : "RECALL_PUBLISHER_URL";
    throw new NotifyError(`${what} is not set`, false, undefined, "misconfigured", 0);
  }
  let url: string;
  try {
    url = webhookUrl(target.baseUrl);
  } catch {
    throw new NotifyError("RECALL_PUBLISHER_URL is not a URL", false, undefined, "misconfigured", 0);
  }
  const body = webhookBody(event);
  const signature = sign(target.secret, body);
  const attempts = Math.max(1, Math.floor(policy.attempts));
  let last: Attempt = { kind: "network", code: "not_attempted" };
  for (let attempt = 1; attempt <= attempts; attempt++) {
    last = await attemptOnce(url, body, signature, policy.timeoutMs);
    if (last.kind === "ok") return { status: last.status, attempts: attempt };
    if (last.kind === "http" && !isRetryableStatus(last.status)) {
      throw new NotifyError(
        `recall-publisher refused the event: HTTP ${last.status} ${last.code}`,
        false,
        last.status,
        last.code,
        attempt,
        last.field,
      );
    }
    if (attempt < attempts) {
      const retryAfter = last.kind === "http" ? last.retryAfter : undefined;
      await sleep(backoffMs(attempt, policy, retryAfter, random));
    }
  }
  const status = last.kind === "http" ? last.status : undefined;
  const what = last.kind === "http" ? `HTTP ${last.status} ${last.code}` : last.code;
  throw new NotifyError(
    `recall-publisher unavailable after ${attempts} attempt(s): ${what}`,
    true,
    status,
    last.code,
    attempts,
  );
}
