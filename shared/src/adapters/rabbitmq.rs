//! The production event bus: RabbitMQ (AMQP 0-9-1 through `lapin`), durable quorum queues,
//! publisher confirms, delayed retries through TTL tiers and a parking queue for poison messages.
//!
//! ```text
//! publish_event ──► {p}.events ──key shard.{i}──► {p}.events.{i}   i = shard_of(pair, K) in 0..K
//!                   (direct)                      quorum, single active consumer;
//!                                                 retry() = nack + requeue
//!                                                   │ delivered more than x-delivery-limit times
//!                                                   ▼
//!                                                 {p}.dlx (fanout) ──► {p}.parking (quorum)
//!                                                   ▲                    ▲ confirmed copy with
//!                                                   │ delivered more     │ x-recall-reason, -attempt,
//!                                                   │ than the limit     │ -source-queue: park(),
//! publish_batch_job ──► "" ──key {p}.batches──► {p}.batches ─────────────┘ last tier failed,
//!                       (default exchange)        quorum, competing        malformed body (any queue)
//!                                                 consumers
//!                                                   │ retry(): confirmed copy, x-recall-attempt + 1
//!                                                   ▼
//!                                                 {p}.batches.retry.{n}   quorum,
//!                                                   │                     x-message-ttl = retry_delays[n]
//!                                                   └─► expired: DLX "" with key {p}.batches, so
//!                                                       back into {p}.batches
//! ```
//!
//! `{p}` is [`AmqpSettings::prefix`] and K is [`AmqpSettings::shards`].
//!
//! - **Publishing** ([`AmqpBus`]): one connection, a few channels in confirm mode, `mandatory`
//!   publishes. `Ok` only after the broker's ack; a nack, a return (unroutable) or no confirm
//!   within `confirm_timeout` is [`PortError::Unavailable`]. A lost connection is replaced lazily by
//!   the next publish (one reconnect at a time, capped backoff between failed attempts), and the
//!   topology is declared again on every new connection.
//! - **Consuming** ([`AmqpConsumers`]): one connection per worker, one channel per queue with
//!   `basic.qos` before `basic.consume`. Each delivery is handed to the worker loops with a
//!   [`Settle`] handle; nothing is acked before the worker says so. A lost connection or a
//!   cancelled consumer tears the session down, and it is rebuilt with capped backoff.
//! - **Settling**: `ack` is `basic.ack` (a closed channel is `Unavailable`, never assumed done);
//!   `retry` nacks an event back to its shard queue (the delivery limit bounds that) and moves a
//!   batch job to the next retry tier; `park` moves it to the parking queue. Moves publish a
//!   confirmed copy first and ack the original after. A dropped handle settles nothing: the broker
//!   redelivers when the channel closes. `Delivery::redeliveries` is the broker's
//!   `x-delivery-count` plus `x-recall-attempt`.
//! - **Connection state**: [`AmqpBus::connection`] and [`AmqpConsumers::connection`] tell
//!   readiness and the `recall_amqp_connected{role}` gauge whether each connection is up. The
//!   consumers' state changes the moment a session is lost or rebuilt; the publisher's when a
//!   publish or a ping finds its link broken or makes a new one.
//! - **Shutdown**: consumers are cancelled at once; the channels stay open up to `shutdown_grace`
//!   so deliveries in flight can still be settled, then close, and unsettled ones go back.
//! - **Dead-lettering** is `at-least-once` (`x-dead-letter-strategy`, which needs
//!   `x-overflow: reject-publish`; RabbitMQ 3.10+), so a message moving to the parking queue or
//!   back from a retry tier is not lost if the broker fails half-way.
//! - **Retry tiers are quorum queues** too: RabbitMQ 3.10 added message TTL to quorum queues, so
//!   every queue here is replicated and durable alike; all messages of a tier share one TTL, so
//!   they expire in arrival order and none waits behind a longer one.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use prometheus::IntGauge;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::domain::Pair;
use crate::error::{PortError, PortResult};
use crate::ports::{Delivery, EventBus, MessageEvent, Settle};

const DEP: &str = "rabbitmq";
/// Header: how many attempts of a batch job failed before this copy (u32).
pub const HEADER_ATTEMPT: &str = "x-recall-attempt";
/// Header: why the message was retried or parked (string).
pub const HEADER_REASON: &str = "x-recall-reason";
/// Header: the queue a parked message came from (string).
pub const HEADER_SOURCE_QUEUE: &str = "x-recall-source-queue";
/// Channels in confirm mode that publishers share round-robin.
const PUBLISH_CHANNELS: usize = 4;
/// Longest `x-recall-reason` stored, in bytes.
const MAX_REASON_BYTES: usize = 1024;
/// Longest accepted prefix, so every name fits AMQP's 255-byte short strings.
const MAX_PREFIX_LEN: usize = 200;
/// Bounds of the backoff between reconnect attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How long closing a channel or a connection may take before we walk away.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the broker is and how the queues are shaped; the same values must be used by every
/// publisher and worker of one deployment (the broker refuses a queue redeclared differently).
#[derive(Clone)]
pub struct AmqpSettings {
    /// Broker URL, `amqp://` or `amqps://` (vhost percent-encoded: `%2f` is `/`).
    pub url: String,
    /// Name prefix of every exchange and queue.
    pub prefix: String,
    /// How many event shard queues (K); a pair always maps to the same one.
    pub shards: u16,
    /// `basic.qos` prefetch of each event shard consumer.
    pub prefetch: u16,
    /// `basic.qos` prefetch of the batch-job consumer (= batches in flight per worker).
    pub batch_prefetch: u16,
    /// A publish not confirmed within this is an error; also bounds connecting.
    pub confirm_timeout: Duration,
    /// `x-delivery-limit` of the quorum queues: deliveries returned more often are parked.
    pub delivery_limit: u32,
    /// Delays of the batch retry tiers, shortest first; after the last one a job is parked.
    pub retry_delays: Vec<Duration>,
    /// At shutdown, how long unsettled deliveries may still be settled before the channels close.
    pub shutdown_grace: Duration,
    /// This process's name on its broker connections (`recall-<role> <prefix> <name>`), so an
    /// operator can tell replicas apart in the management UI.
    pub client_name: String,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            prefix: "recall".to_owned(),
            shards: 8,
            prefetch: 64,
            batch_prefetch: 4,
            confirm_timeout: Duration::from_secs(5),
            delivery_limit: 5,
            retry_delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(300),
            ],
            shutdown_grace: Duration::from_secs(30),
            client_name: String::new(),
        }
    }
}

impl fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("shards", &self.shards)
            .field("prefetch", &self.prefetch)
            .field("batch_prefetch", &self.batch_prefetch)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("delivery_limit", &self.delivery_limit)
            .field("retry_delays", &self.retry_delays)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("client_name", &self.client_name)
            .finish()
    }
}

impl AmqpSettings {
    /// Checks the settings before anything is declared; names the offending field.
    pub fn validate(&self) -> PortResult<()> {
        let bad = |m: String| Err(PortError::rejected(DEP, m));
        if self.prefix.is_empty()
            || self.prefix.len() > MAX_PREFIX_LEN
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return bad(format!(
                "prefix must be 1..={MAX_PREFIX_LEN} characters of A-Z, a-z, 0-9, '_', '.', '-'"
            ));
        }
        if self.shards == 0 {
            return bad("shards must be at least 1".to_owned());
        }
        if self.prefetch == 0 || self.batch_prefetch == 0 {
            return bad("prefetch and batch_prefetch must be at least 1".to_owned());
        }
        if self.delivery_limit == 0 {
            return bad("delivery_limit must be at least 1".to_owned());
        }
        if self.confirm_timeout.is_zero() {
            return bad("confirm_timeout must be positive".to_owned());
        }
        if self
            .retry_delays
            .iter()
            .any(|d| d.as_millis() == 0 || d.as_millis() > i32::MAX as u128)
        {
            return bad("every retry delay must be between 1 ms and about 24 days".to_owned());
        }
        Ok(())
    }
}

/// `amqp://user:secret@host` → `amqp://user:***@host`, for logs and `Debug`.
fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// The body of a published message (an event or a batch job): its JSON.
pub fn encode_body<T: Serialize>(payload: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(payload)
}

/// What a consumer makes of a delivery's body; one that does not decode is parked. Public for
/// the fuzz target `event_decode` (`fuzz/`).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    serde_json::from_slice(body)
}

/// The shard (0..`shards`) of a pair: the first 8 bytes of SHA-256(user_id, 0, character_name),
/// big-endian, modulo `shards`. Stable across processes and releases.
pub fn shard_of(pair: &Pair, shards: u16) -> u16 {
    let digest = pair.digest();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below `shards`, so it fits in a u16.
    (u64::from_be_bytes(first) % u64::from(shards.max(1))) as u16
}

/// Routing key of shard `i` on the events exchange.
pub fn shard_key(i: u16) -> String {
    format!("shard.{i}")
}

/// The type of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes on the exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
}

impl ExchangeType {
    fn lapin(self) -> ExchangeKind {
        match self {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
        }
    }
}

/// One durable exchange to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: ExchangeType,
}

/// A queue argument value (AMQP table types RabbitMQ understands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// A boolean (`t`).
    Bool(bool),
    /// A signed 64-bit integer (`l`).
    Int(i64),
    /// A string (`S`).
    Str(String),
}

impl ArgValue {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            ArgValue::Bool(b) => AMQPValue::Boolean(*b),
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::Str(s) => AMQPValue::LongString(s.as_str().into()),
        }
    }
}

/// One durable queue to declare, with its arguments in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Its name.
    pub name: String,
    /// Its `x-` arguments.
    pub arguments: Vec<(&'static str, ArgValue)>,
}

impl QueueSpec {
    /// The value of one argument, if set.
    pub fn argument(&self, key: &str) -> Option<&ArgValue> {
        self.arguments
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    fn field_table(&self) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in &self.arguments {
            table.insert((*key).into(), value.to_amqp());
        }
        table
    }
}

/// One binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSpec {
    /// The bound queue.
    pub queue: String,
    /// The exchange it is bound to.
    pub exchange: String,
    /// The binding key.
    pub routing_key: String,
}

/// Every exchange, queue and binding of a deployment, computed from the settings alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `{prefix}.events`, the direct exchange of message events.
    pub events_exchange: String,
    /// `{prefix}.dlx`, the fanout exchange that dead-letters into the parking queue.
    pub dead_letter_exchange: String,
    /// `{prefix}.events.{i}`, one per shard.
    pub shard_queues: Vec<String>,
    /// `{prefix}.batches`, the batch jobs.
    pub batch_queue: String,
    /// `{prefix}.batches.retry.{n}`, one per retry delay.
    pub retry_queues: Vec<String>,
    /// `{prefix}.parking`, poison messages for an operator.
    pub parking_queue: String,
    /// The exchanges, in declaration order.
    pub exchanges: Vec<ExchangeSpec>,
    /// The queues, in declaration order (dead-letter targets first).
    pub queues: Vec<QueueSpec>,
    /// The bindings.
    pub bindings: Vec<BindingSpec>,
}

fn quorum() -> (&'static str, ArgValue) {
    ("x-queue-type", ArgValue::Str("quorum".to_owned()))
}

/// At-least-once dead-lettering to `exchange` (optionally with a fixed routing key).
fn dead_lettering(exchange: &str, routing_key: Option<&str>) -> Vec<(&'static str, ArgValue)> {
    let mut args = vec![("x-dead-letter-exchange", ArgValue::Str(exchange.to_owned()))];
    if let Some(key) = routing_key {
        args.push(("x-dead-letter-routing-key", ArgValue::Str(key.to_owned())));
    }
    args.push((
        "x-dead-letter-strategy",
        ArgValue::Str("at-least-once".to_owned()),
    ));
    args.push(("x-overflow", ArgValue::Str("reject-publish".to_owned())));
    args
}

impl Topology {
    /// The topology the settings describe (pure: no broker involved).
    pub fn new(settings: &AmqpSettings) -> Self {
        let p = &settings.prefix;
        let events_exchange = format!("{p}.events");
        let dead_letter_exchange = format!("{p}.dlx");
        let batch_queue = format!("{p}.batches");
        let parking_queue = format!("{p}.parking");
        let shard_queues: Vec<String> = (0..settings.shards.max(1))
            .map(|i| format!("{p}.events.{i}"))
            .collect();
        let retry_queues: Vec<String> = (0..settings.retry_delays.len())
            .map(|n| format!("{p}.batches.retry.{n}"))
            .collect();
        let limit = (
            "x-delivery-limit",
            ArgValue::Int(i64::from(settings.delivery_limit)),
        );

        let mut queues = vec![QueueSpec {
            name: parking_queue.clone(),
            arguments: vec![quorum()],
        }];
        for name in &shard_queues {
            let mut arguments = vec![
                quorum(),
                ("x-single-active-consumer", ArgValue::Bool(true)),
                limit.clone(),
            ];
            arguments.extend(dead_lettering(&dead_letter_exchange, None));
            queues.push(QueueSpec {
                name: name.clone(),
                arguments,
            });
        }
        let mut arguments = vec![quorum(), limit.clone()];
        arguments.extend(dead_lettering(&dead_letter_exchange, None));
        queues.push(QueueSpec {
            name: batch_queue.clone(),
            arguments,
        });
        for (name, delay) in retry_queues.iter().zip(&settings.retry_delays) {
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            let mut arguments = vec![quorum(), ("x-message-ttl", ArgValue::Int(ttl))];
            arguments.extend(dead_lettering("", Some(&batch_queue)));
            queues.push(QueueSpec {
                name: name.clone(),
                arguments,
            });
        }

        let exchanges = vec![
            ExchangeSpec {
                name: events_exchange.clone(),
                kind: ExchangeType::Direct,
            },
            ExchangeSpec {
                name: dead_letter_exchange.clone(),
                kind: ExchangeType::Fanout,
            },
        ];
        let mut bindings = vec![BindingSpec {
            queue: parking_queue.clone(),
            exchange: dead_letter_exchange.clone(),
            routing_key: String::new(),
        }];
        for (i, name) in (0u16..).zip(&shard_queues) {
            bindings.push(BindingSpec {
                queue: name.clone(),
                exchange: events_exchange.clone(),
                routing_key: shard_key(i),
            });
        }

        Self {
            events_exchange,
            dead_letter_exchange,
            shard_queues,
            batch_queue,
            retry_queues,
            parking_queue,
            exchanges,
            queues,
            bindings,
        }
    }

    /// Looks a queue up by name.
    pub fn queue(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.iter().find(|q| q.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors, connecting, declaring, publishing with confirms.

fn unavailable(message: impl ToString) -> PortError {
    PortError::unavailable(DEP, message)
}

/// Classifies a lapin error: refused for good (bad credentials, vhost, arguments) or not now.
fn map_lapin(context: &str, e: &lapin::Error) -> PortError {
    if let ErrorKind::ProtocolError(amqp) = e.kind()
        && matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
        )
    {
        return PortError::rejected(DEP, format!("{context}: {}", amqp.get_message()));
    }
    unavailable(format!("{context}: {e}"))
}

fn declare_error(what: &str, name: &str, e: &lapin::Error) -> PortError {
    if let ErrorKind::ProtocolError(amqp) = e.kind()
        && matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
        )
    {
        return PortError::rejected(
            DEP,
            format!(
                "{what} `{name}` already exists with different arguments; delete it or restore \
                 the settings it was declared with ({})",
                amqp.get_message()
            ),
        );
    }
    map_lapin(&format!("declaring {what} `{name}`"), e)
}

async fn open_connection(settings: &AmqpSettings, role: &str) -> PortResult<Connection> {
    let props = ConnectionProperties::default().with_connection_name(
        format!("recall-{role} {} {}", settings.prefix, settings.client_name)
            .trim_end()
            .into(),
    );
    match tokio::time::timeout(
        settings.confirm_timeout,
        Connection::connect(&settings.url, props),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(map_lapin("connecting", &e)),
        Err(_) => Err(unavailable(format!(
            "no connection within {:?}",
            settings.confirm_timeout
        ))),
    }
}

/// Declares every exchange, queue and binding (idempotent: same names, same arguments).
async fn declare_topology(conn: &Connection, topology: &Topology) -> PortResult<()> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| map_lapin("opening a channel", &e))?;
    for ex in &topology.exchanges {
        ch.exchange_declare(
            ex.name.as_str().into(),
            ex.kind.lapin(),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error("exchange", &ex.name, &e))?;
    }
    for q in &topology.queues {
        ch.queue_declare(
            q.name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            q.field_table(),
        )
        .await
        .map_err(|e| declare_error("queue", &q.name, &e))?;
    }
    for b in &topology.bindings {
        ch.queue_bind(
            b.queue.as_str().into(),
            b.exchange.as_str().into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| map_lapin(&format!("binding `{}` to `{}`", b.queue, b.exchange), &e))?;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, "OK".into())).await;
    Ok(())
}

/// Opens a channel in confirm mode.
async fn confirm_channel(conn: &Connection) -> PortResult<Channel> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| map_lapin("opening a channel", &e))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| map_lapin("enabling publisher confirms", &e))?;
    Ok(ch)
}

/// Why a confirmed publish failed.
#[derive(Debug)]
enum PublishFailure {
    /// The frame never left (the channel is closed): safe to try again elsewhere.
    NotSent(String),
    /// The broker could not route it (a queue or binding is missing).
    Returned(String),
    /// Nacked, no confirm in time, or the channel died while waiting.
    Unconfirmed(String),
}

impl From<PublishFailure> for PortError {
    fn from(f: PublishFailure) -> Self {
        match f {
            PublishFailure::NotSent(m)
            | PublishFailure::Returned(m)
            | PublishFailure::Unconfirmed(m) => unavailable(m),
        }
    }
}

fn json_properties(headers: Option<FieldTable>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    match headers {
        Some(h) => props.with_headers(h),
        None => props,
    }
}

/// Publishes persistently with `mandatory` and waits for the broker's confirm.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    headers: Option<FieldTable>,
    within: Duration,
) -> Result<(), PublishFailure> {
    let target = if exchange.is_empty() {
        routing_key
    } else {
        exchange
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            json_properties(headers),
        )
        .await
        .map_err(|e| PublishFailure::NotSent(format!("publishing to `{target}`: {e}")))?;
    match tokio::time::timeout(within, confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => {
            Err(PublishFailure::Returned(format!(
                "`{target}` could not route the message (key `{routing_key}`): {} {}",
                returned.reply_code, returned.reply_text
            )))
        }
        Ok(Ok(Confirmation::Nack(None))) => Err(PublishFailure::Unconfirmed(format!(
            "the broker refused the message for `{target}` (nack)"
        ))),
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishFailure::Unconfirmed(
            "publisher confirms are off on this channel".to_owned(),
        )),
        Ok(Err(e)) => Err(PublishFailure::Unconfirmed(format!(
            "waiting for the confirm from `{target}`: {e}"
        ))),
        Err(_) => Err(PublishFailure::Unconfirmed(format!(
            "`{target}` did not confirm within {within:?}"
        ))),
    }
}

fn reconnect_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Whether one broker connection of this process is up, shared with readiness and with the
/// `recall_amqp_connected` gauge. Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct ConnectionState(Arc<Mutex<ConnectionInner>>);

#[derive(Default)]
struct ConnectionInner {
    up: bool,
    gauge: Option<IntGauge>,
}

impl fmt::Debug for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectionState")
            .field(&self.is_up())
            .finish()
    }
}

impl ConnectionState {
    fn inner(&self) -> std::sync::MutexGuard<'_, ConnectionInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, up: bool) {
        let mut s = self.inner();
        s.up = up;
        if let Some(g) = &s.gauge {
            g.set(i64::from(up));
        }
    }

    /// Whether the connection is up now.
    pub fn is_up(&self) -> bool {
        self.inner().up
    }

    /// Mirrors the state into `gauge` (1 up, 0 down) from now on.
    pub fn report_to(&self, gauge: IntGauge) {
        let mut s = self.inner();
        gauge.set(i64::from(s.up));
        s.gauge = Some(gauge);
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher.

/// One live connection of the publisher and its confirm-mode channels.
struct Link {
    conn: Connection,
    channels: Vec<Channel>,
    /// Set when a publish came back unroutable: the next publish reconnects and redeclares.
    stale: AtomicBool,
}

impl Link {
    /// Why this link can no longer be used, if it cannot.
    fn problem(&self) -> Option<String> {
        let status = self.conn.status();
        if !status.connected() {
            let what = if status.closed() {
                "the connection was closed"
            } else if status.errored() {
                "the connection failed"
            } else if status.closing() {
                "the connection is closing"
            } else {
                "the connection is not open"
            };
            return Some(what.to_owned());
        }
        if self.channels.iter().any(|c| !c.status().connected()) {
            return Some("a publishing channel was closed".to_owned());
        }
        if self.stale.load(Ordering::Relaxed) {
            return Some("a message was unroutable; declaring the topology again".to_owned());
        }
        None
    }
}

type PendingLink = Shared<BoxFuture<'static, PortResult<Arc<Link>>>>;

struct BusState {
    link: Option<Arc<Link>>,
    /// The reconnect in progress, which every concurrent publisher awaits.
    pending: Option<PendingLink>,
    backoff: ExponentialBackoff,
    /// After a failed reconnect: no new attempt before this instant; callers get that error.
    not_before: Option<(Instant, PortError)>,
    /// Why the last link was dropped, until a new one is up (logged once each way).
    lost: Option<String>,
}

struct BusShared {
    settings: AmqpSettings,
    topology: Topology,
    state: Mutex<BusState>,
    next_channel: AtomicUsize,
    connection: ConnectionState,
}

impl BusShared {
    fn state(&self) -> std::sync::MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a new link; runs in its own task so a publisher that times out does not abort it.
    async fn reconnect(self: Arc<Self>) -> PortResult<Arc<Link>> {
        let result = open_link(&self.settings, &self.topology)
            .await
            .map(Arc::new);
        let mut st = self.state();
        st.pending = None;
        match result {
            Ok(link) => {
                self.connection.set(true);
                st.link = Some(link.clone());
                st.not_before = None;
                st.backoff = reconnect_backoff();
                if st.lost.take().is_some() {
                    tracing::info!("rabbitmq publisher reconnected");
                }
                Ok(link)
            }
            Err(e) => {
                self.connection.set(false);
                let delay = st.backoff.next().unwrap_or(RECONNECT_MAX);
                st.not_before = Some((Instant::now() + delay, e.clone()));
                tracing::warn!(error = %e, retry_in = ?delay, "rabbitmq publisher cannot connect");
                Err(with_retry_after(e, delay))
            }
        }
    }
}

/// An `Unavailable` error that tells the caller when to come back.
fn with_retry_after(e: PortError, after: Duration) -> PortError {
    match e {
        PortError::Unavailable {
            dependency,
            message,
            ..
        } => PortError::Unavailable {
            dependency,
            message,
            retry_after: Some(after),
        },
        other => other,
    }
}

async fn open_link(settings: &AmqpSettings, topology: &Topology) -> PortResult<Link> {
    let conn = open_connection(settings, "publisher").await?;
    let setup = async {
        declare_topology(&conn, topology).await?;
        let mut channels = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            channels.push(confirm_channel(&conn).await?);
        }
        Ok::<_, PortError>(channels)
    };
    let channels = tokio::time::timeout(settings.confirm_timeout, setup)
        .await
        .map_err(|_| {
            unavailable(format!(
                "declaring the topology took longer than {:?}",
                settings.confirm_timeout
            ))
        })??;
    Ok(Link {
        conn,
        channels,
        stale: AtomicBool::new(false),
    })
}

/// The publishing side of the RabbitMQ bus, handed to the HTTP API and the worker loops.
/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct AmqpBus {
    shared: Arc<BusShared>,
}

impl fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBus")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl AmqpBus {
    /// Connects, declares the topology and opens the confirm channels; fails if the broker
    /// cannot be reached now or refuses the topology.
    pub async fn connect(settings: AmqpSettings) -> PortResult<Self> {
        let bus = Self::lazy(settings)?;
        bus.link().await?;
        Ok(bus)
    }

    /// Builds the bus without connecting: the first publish (or ping) connects. For a publisher
    /// that must start, and answer 503, while the broker is down.
    pub fn lazy(settings: AmqpSettings) -> PortResult<Self> {
        settings.validate()?;
        let topology = Topology::new(&settings);
        Ok(Self {
            shared: Arc::new(BusShared {
                settings,
                topology,
                state: Mutex::new(BusState {
                    link: None,
                    pending: None,
                    backoff: reconnect_backoff(),
                    not_before: None,
                    lost: None,
                }),
                next_channel: AtomicUsize::new(0),
                connection: ConnectionState::default(),
            }),
        })
    }

    /// Whether the publishing connection is up (as of the last publish, ping or reconnect).
    pub fn connection(&self) -> ConnectionState {
        self.shared.connection.clone()
    }

    /// The topology this bus declares.
    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    /// The current link, or a new one (one reconnect at a time; concurrent callers share it).
    async fn link(&self) -> PortResult<Arc<Link>> {
        let pending = {
            let mut st = self.shared.state();
            if let Some(link) = st.link.clone() {
                match link.problem() {
                    None => return Ok(link),
                    Some(problem) => {
                        self.shared.connection.set(false);
                        tracing::warn!(reason = %problem, "rabbitmq publisher reconnecting");
                        st.lost = Some(problem);
                        st.link = None;
                    }
                }
            }
            match &st.pending {
                Some(pending) => pending.clone(),
                None => {
                    let now = Instant::now();
                    if let Some((at, error)) = &st.not_before
                        && now < *at
                    {
                        // Failed moments ago: answer at once instead of hammering the broker.
                        return Err(with_retry_after(error.clone(), *at - now));
                    }
                    let task = tokio::spawn(self.shared.clone().reconnect());
                    let pending: PendingLink = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(unavailable(format!("the reconnect task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    st.pending = Some(pending.clone());
                    pending
                }
            }
        };
        pending.await
    }

    async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) -> PortResult<()> {
        let within = self.shared.settings.confirm_timeout;
        let attempt = async {
            let mut last = None;
            // A second try only when the first never left this process (its channel was closed).
            for _ in 0..2 {
                let link = self.link().await?;
                let i = self.shared.next_channel.fetch_add(1, Ordering::Relaxed);
                let channel = &link.channels[i % link.channels.len()];
                match publish_confirmed(channel, exchange, routing_key, body, None, within).await {
                    Ok(()) => return Ok(()),
                    Err(PublishFailure::NotSent(m)) => last = Some(unavailable(m)),
                    Err(f @ PublishFailure::Returned(_)) => {
                        link.stale.store(true, Ordering::Relaxed);
                        return Err(f.into());
                    }
                    Err(f) => return Err(f.into()),
                }
            }
            Err(last.unwrap_or_else(|| unavailable("publish failed")))
        };
        tokio::time::timeout(within, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "the publish was not confirmed within {within:?}"
                )))
            })
    }
}

#[async_trait]
impl EventBus for AmqpBus {
    async fn publish_event(&self, event: &MessageEvent) -> PortResult<()> {
        let body = encode_body(event).map_err(|e| PortError::rejected(DEP, e))?;
        let shard = shard_of(&event.pair(), self.shared.settings.shards);
        self.publish(
            &self.shared.topology.events_exchange,
            &shard_key(shard),
            &body,
        )
        .await
    }

    async fn publish_batch_job(&self, pair: &Pair) -> PortResult<()> {
        let body = encode_body(pair).map_err(|e| PortError::rejected(DEP, e))?;
        self.publish("", &self.shared.topology.batch_queue, &body)
            .await
    }

    async fn ping(&self) -> PortResult<()> {
        let within = self.shared.settings.confirm_timeout;
        match tokio::time::timeout(within, self.link()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(unavailable(format!("no connection within {within:?}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Consumers.

/// Which kind of queue a delivery came from: decides what `retry` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Events,
    Batches,
}

/// What the consumers and the settle handles of one connection share.
struct SessionCtx {
    /// Confirm-mode channel for copies to the retry tiers and the parking queue.
    publish: Channel,
    topology: Arc<Topology>,
    confirm_timeout: Duration,
}

struct Subscription {
    channel: Channel,
    consumer: lapin::Consumer,
    queue: String,
    source: Source,
}

struct Session {
    conn: Connection,
    ctx: Arc<SessionCtx>,
    subscriptions: Vec<Subscription>,
}

async fn subscribe(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    source: Source,
) -> PortResult<Subscription> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| map_lapin("opening a channel", &e))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| map_lapin(&format!("setting the prefetch of `{queue}`"), &e))?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| map_lapin(&format!("consuming `{queue}`"), &e))?;
    Ok(Subscription {
        channel,
        consumer,
        queue: queue.to_owned(),
        source,
    })
}

async fn open_session(settings: &AmqpSettings, topology: &Arc<Topology>) -> PortResult<Session> {
    let conn = open_connection(settings, "worker").await?;
    let setup = async {
        declare_topology(&conn, topology).await?;
        let publish = confirm_channel(&conn).await?;
        let mut subscriptions = Vec::with_capacity(topology.shard_queues.len() + 1);
        for queue in &topology.shard_queues {
            subscriptions.push(subscribe(&conn, queue, settings.prefetch, Source::Events).await?);
        }
        subscriptions.push(
            subscribe(
                &conn,
                &topology.batch_queue,
                settings.batch_prefetch,
                Source::Batches,
            )
            .await?,
        );
        Ok::<_, PortError>((publish, subscriptions))
    };
    let (publish, subscriptions) =
        tokio::time::timeout(settings.confirm_timeout.saturating_mul(2), setup)
            .await
            .map_err(|_| unavailable("declaring and subscribing took too long"))??;
    Ok(Session {
        conn,
        ctx: Arc::new(SessionCtx {
            publish,
            topology: topology.clone(),
            confirm_timeout: settings.confirm_timeout,
        }),
        subscriptions,
    })
}

/// The consuming side of the RabbitMQ bus: background tasks feeding the worker loops.
#[derive(Debug)]
pub struct AmqpConsumers {
    supervisor: JoinHandle<()>,
    connection: ConnectionState,
}

impl AmqpConsumers {
    /// Starts consuming every shard queue (single active consumer decides who counts) and the
    /// batch queue; returns receivers shaped like the in-process bus's, and stops when `shutdown`
    /// is cancelled. Fails if the first connection or the topology declaration fails.
    pub async fn start(
        settings: AmqpSettings,
        shutdown: CancellationToken,
    ) -> PortResult<(
        AmqpConsumers,
        mpsc::Receiver<Delivery<MessageEvent>>,
        mpsc::Receiver<Delivery<Pair>>,
    )> {
        settings.validate()?;
        let topology = Arc::new(Topology::new(&settings));
        let first = open_session(&settings, &topology).await?;
        let connection = ConnectionState::default();
        connection.set(true);
        let (events_tx, events_rx) = mpsc::channel(usize::from(settings.prefetch));
        let (jobs_tx, jobs_rx) = mpsc::channel(usize::from(settings.batch_prefetch));
        let supervisor = tokio::spawn(supervise(
            settings,
            topology,
            first,
            events_tx,
            jobs_tx,
            shutdown,
            connection.clone(),
        ));
        Ok((
            AmqpConsumers {
                supervisor,
                connection,
            },
            events_rx,
            jobs_rx,
        ))
    }

    /// Whether the consuming connection is up: set when a session starts, cleared the moment
    /// it is lost (and at shutdown).
    pub fn connection(&self) -> ConnectionState {
        self.connection.clone()
    }

    /// Waits for the background tasks to end (after shutdown). Call it once the worker loops
    /// returned: deliveries still held then are settled or handed back within `shutdown_grace`.
    pub async fn stopped(self) {
        if let Err(e) = self.supervisor.await {
            tracing::warn!(error = %e, "rabbitmq consumer supervisor failed");
        }
    }
}

/// Runs sessions until shutdown, rebuilding a lost one with capped backoff.
async fn supervise(
    settings: AmqpSettings,
    topology: Arc<Topology>,
    first: Session,
    events: mpsc::Sender<Delivery<MessageEvent>>,
    jobs: mpsc::Sender<Delivery<Pair>>,
    shutdown: CancellationToken,
    connection: ConnectionState,
) {
    supervise_sessions(
        settings,
        topology,
        first,
        events,
        jobs,
        shutdown,
        &connection,
    )
    .await;
    connection.set(false);
}

async fn supervise_sessions(
    settings: AmqpSettings,
    topology: Arc<Topology>,
    first: Session,
    events: mpsc::Sender<Delivery<MessageEvent>>,
    jobs: mpsc::Sender<Delivery<Pair>>,
    shutdown: CancellationToken,
    connection: &ConnectionState,
) {
    let mut next = Some(first);
    let mut backoff = reconnect_backoff();
    loop {
        let session = match next.take() {
            Some(s) => s,
            None => match open_session(&settings, &topology).await {
                Ok(s) => {
                    connection.set(true);
                    backoff = reconnect_backoff();
                    tracing::info!("rabbitmq consumers reconnected");
                    s
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(RECONNECT_MAX);
                    tracing::warn!(error = %e, retry_in = ?delay, "rabbitmq consumers cannot reconnect");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            },
        };
        let Some(reason) =
            run_session(session, &events, &jobs, &shutdown, settings.shutdown_grace).await
        else {
            return;
        };
        connection.set(false);
        let delay = backoff.next().unwrap_or(RECONNECT_MAX);
        tracing::warn!(reason = %reason, retry_in = ?delay, "rabbitmq consumer session lost; reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Consumes until shutdown (`None`) or until the session breaks (`Some(reason)`), then closes it.
async fn run_session(
    session: Session,
    events: &mpsc::Sender<Delivery<MessageEvent>>,
    jobs: &mpsc::Sender<Delivery<Pair>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Option<String> {
    let Session {
        conn,
        ctx,
        subscriptions,
    } = session;
    let stop = CancellationToken::new();
    let in_flight = TaskTracker::new();
    let mut channels = vec![ctx.publish.clone()];
    let mut tasks = JoinSet::new();
    for sub in subscriptions {
        channels.push(sub.channel.clone());
        let (ctx, in_flight, stop) = (ctx.clone(), in_flight.clone(), stop.clone());
        match sub.source {
            Source::Events => tasks.spawn(consume(sub, events.clone(), ctx, in_flight, stop)),
            Source::Batches => tasks.spawn(consume(sub, jobs.clone(), ctx, in_flight, stop)),
        };
    }
    drop(ctx);

    let lost = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            joined = tasks.join_next() => match joined {
                // Every receiver is gone: nothing to feed until shutdown.
                None => {
                    shutdown.cancelled().await;
                    break None;
                }
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(reason))) => break Some(reason),
                Some(Err(e)) => break Some(format!("a consumer task failed: {e}")),
            },
        }
    };
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    if lost.is_none() {
        // Consumers are cancelled; let the worker settle what it holds before the channels close.
        in_flight.close();
        if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
            tracing::warn!(
                unsettled = in_flight.len(),
                "rabbitmq deliveries still unsettled at shutdown go back to their queues"
            );
        }
    }
    for ch in channels {
        if ch.status().connected() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, "OK".into())).await;
        }
    }
    if conn.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "OK".into())).await;
    }
    lost
}

/// Reads one integer header as a `u32`, whatever integer type the sender used.
fn header_u32(headers: &FieldTable, key: &str) -> Option<u32> {
    match headers.inner().get(key)? {
        AMQPValue::ShortShortInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some(u32::from(*v)),
        AMQPValue::ShortInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u32::from(*v)),
        AMQPValue::LongInt(v) => u32::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(*v),
        AMQPValue::LongLongInt(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// Headers of a copy: the original's (minus the broker's bookkeeping) plus ours.
fn copy_headers(
    original: &FieldTable,
    attempt: u32,
    reason: &str,
    source_queue: Option<&str>,
) -> FieldTable {
    let mut headers = FieldTable::default();
    for (key, value) in original {
        let k = key.as_str();
        let broker_owned = k == "x-delivery-count"
            || k.starts_with("x-death")
            || k.starts_with("x-first-death")
            || k.starts_with("x-last-death");
        if !broker_owned {
            headers.insert(key.clone(), value.clone());
        }
    }
    headers.insert(
        HEADER_ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    headers.insert(
        HEADER_REASON.into(),
        AMQPValue::LongString(LongString::from(truncate_reason(reason))),
    );
    if let Some(queue) = source_queue {
        headers.insert(
            HEADER_SOURCE_QUEUE.into(),
            AMQPValue::LongString(queue.into()),
        );
    }
    headers
}

async fn ack(acker: &Acker, within: Duration) -> PortResult<()> {
    match tokio::time::timeout(within, acker.ack(BasicAckOptions::default())).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(unavailable(
            "the delivery's channel is closed; the broker will deliver it again",
        )),
        Ok(Err(e)) => Err(unavailable(format!("ack failed: {e}"))),
        Err(_) => Err(unavailable(format!("ack not sent within {within:?}"))),
    }
}

async fn nack_requeue(acker: &Acker, within: Duration) -> PortResult<()> {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    match tokio::time::timeout(within, acker.nack(options)).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(unavailable(
            "the delivery's channel is closed; the broker will deliver it again",
        )),
        Ok(Err(e)) => Err(unavailable(format!("nack failed: {e}"))),
        Err(_) => Err(unavailable(format!("nack not sent within {within:?}"))),
    }
}

/// Feeds one queue's deliveries to the worker loops until `stop`, the receiver goes away
/// (`Ok`), or the consumer breaks (`Err(reason)`).
async fn consume<T: DeserializeOwned + Send + 'static>(
    sub: Subscription,
    tx: mpsc::Sender<Delivery<T>>,
    ctx: Arc<SessionCtx>,
    in_flight: TaskTracker,
    stop: CancellationToken,
) -> Result<(), String> {
    let Subscription {
        channel,
        mut consumer,
        queue,
        source,
    } = sub;
    let result = loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let delivery = match next {
            None => break Err(format!("the broker cancelled the consumer of `{queue}`")),
            Some(Err(e)) => break Err(format!("consuming `{queue}`: {e}")),
            Some(Ok(d)) => d,
        };
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let attempt = header_u32(&headers, HEADER_ATTEMPT).unwrap_or(0);
        let payload = match decode_body::<T>(&delivery.data) {
            Ok(p) => p,
            Err(e) => {
                // The error text may quote the body: it goes into the parked message, not the log.
                tracing::warn!(
                    queue = %queue,
                    category = ?e.classify(),
                    line = e.line(),
                    column = e.column(),
                    "parking a malformed rabbitmq message"
                );
                let reason = format!("malformed body: {e}");
                let parked = publish_confirmed(
                    &ctx.publish,
                    "",
                    &ctx.topology.parking_queue,
                    &delivery.data,
                    Some(copy_headers(
                        &headers,
                        attempt.saturating_add(1),
                        &reason,
                        Some(&queue),
                    )),
                    ctx.confirm_timeout,
                )
                .await;
                if let Err(f) = parked {
                    break Err(format!(
                        "cannot park a malformed message from `{queue}`: {}",
                        PortError::from(f)
                    ));
                }
                if let Err(e) = ack(&delivery.acker, ctx.confirm_timeout).await {
                    break Err(format!("cannot ack a parked message from `{queue}`: {e}"));
                }
                continue;
            }
        };
        let broker_redeliveries =
            header_u32(&headers, "x-delivery-count").unwrap_or(u32::from(delivery.redelivered));
        let settle = AmqpSettle {
            acker: delivery.acker,
            body: delivery.data,
            headers,
            attempt,
            source,
            queue: queue.clone(),
            ctx: ctx.clone(),
            _in_flight: in_flight.token(),
        };
        let delivery = Delivery {
            payload,
            redeliveries: broker_redeliveries.saturating_add(attempt),
            settle: Box::new(settle),
        };
        tokio::select! {
            biased;
            // Dropped unsettled: it goes back to the queue when the channel closes.
            _ = stop.cancelled() => break Ok(()),
            sent = tx.send(delivery) => if sent.is_err() { break Ok(()) },
        }
    };
    // No new deliveries; the channel stays open so the ones in flight can still be settled.
    if channel.status().connected() {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await;
    }
    result
}

/// How a worker settles one RabbitMQ delivery.
struct AmqpSettle {
    acker: Acker,
    body: Vec<u8>,
    headers: FieldTable,
    /// Failed attempts before this copy (`x-recall-attempt`).
    attempt: u32,
    source: Source,
    queue: String,
    ctx: Arc<SessionCtx>,
    /// Keeps the session's channels open at shutdown until this delivery is settled or dropped.
    _in_flight: TaskTrackerToken,
}

impl AmqpSettle {
    /// Publishes a confirmed copy to `queue`, then acks the original. If the copy fails, the
    /// original is handed back (nack + requeue) so the broker delivers it again.
    async fn divert(&self, queue: &str, headers: FieldTable) -> PortResult<()> {
        let within = self.ctx.confirm_timeout;
        match publish_confirmed(
            &self.ctx.publish,
            "",
            queue,
            &self.body,
            Some(headers),
            within,
        )
        .await
        {
            Ok(()) => ack(&self.acker, within).await,
            Err(f) => {
                let _ = nack_requeue(&self.acker, within).await;
                Err(f.into())
            }
        }
    }

    async fn park_copy(&self, reason: &str) -> PortResult<()> {
        tracing::warn!(queue = %self.queue, attempt = self.attempt + 1, "parking a rabbitmq message");
        let headers = copy_headers(
            &self.headers,
            self.attempt.saturating_add(1),
            reason,
            Some(&self.queue),
        );
        self.divert(&self.ctx.topology.parking_queue, headers).await
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> PortResult<()> {
        ack(&self.acker, self.ctx.confirm_timeout).await
    }

    async fn retry(self: Box<Self>, reason: &str) -> PortResult<()> {
        match self.source {
            // Back to its shard queue; the delivery limit dead-letters it into parking eventually.
            Source::Events => nack_requeue(&self.acker, self.ctx.confirm_timeout).await,
            Source::Batches => match self.ctx.topology.retry_queues.get(self.attempt as usize) {
                Some(tier) => {
                    let headers =
                        copy_headers(&self.headers, self.attempt.saturating_add(1), reason, None);
                    self.divert(tier, headers).await
                }
                None => {
                    let reason = format!(
                        "gave up after {} attempts: {reason}",
                        self.attempt.saturating_add(1)
                    );
                    self.park_copy(&reason).await
                }
            },
        }
    }

    async fn park(self: Box<Self>, reason: &str) -> PortResult<()> {
        self.park_copy(reason).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CharacterName, MessageId, UserId};
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

    const WAIT: Duration = Duration::from_secs(15);

    /// Shows this module's logs in the test output (`--nocapture`).
    fn logs() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("recall_shared=debug")
            .with_test_writer()
            .try_init();
    }

    fn pair(user: &str, character: &str) -> Pair {
        Pair::parse(user, character).unwrap()
    }

    fn event(user: &str, id: &str) -> MessageEvent {
        MessageEvent {
            user_id: UserId::parse(user).unwrap(),
            character_name: CharacterName::parse("meher").unwrap(),
            message_id: Some(MessageId::parse(id).unwrap()),
        }
    }

    fn test_settings() -> AmqpSettings {
        AmqpSettings {
            prefix: format!("t-{}", uuid::Uuid::new_v4().simple()),
            shards: 4,
            confirm_timeout: Duration::from_secs(3),
            delivery_limit: 3,
            retry_delays: vec![Duration::from_millis(200), Duration::from_millis(400)],
            shutdown_grace: Duration::from_secs(2),
            ..AmqpSettings::default()
        }
    }

    async fn raw_connection(settings: &AmqpSettings) -> Connection {
        Connection::connect(&settings.url, ConnectionProperties::default())
            .await
            .expect("raw connection")
    }

    /// Deletes every queue and exchange of the test's prefix (best effort).
    async fn cleanup(settings: &AmqpSettings) {
        let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&settings.url, ConnectionProperties::default()),
        )
        .await
        else {
            return;
        };
        let topology = Topology::new(settings);
        for q in &topology.queues {
            // A failed delete closes the channel: one channel per delete.
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch
                    .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        for ex in &topology.exchanges {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch
                    .exchange_delete(ex.name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "OK".into()).await;
    }

    /// Takes the first message of `queue` through a short-lived consumer (quorum queues with a
    /// single active consumer refuse `basic.get`), or `None` when the wait is over.
    async fn get_one(
        conn: &Connection,
        queue: &str,
        wait: Duration,
    ) -> Option<lapin::message::Delivery> {
        let ch = conn.create_channel().await.expect("test channel");
        // One at a time, acked by hand: the rest stays in the queue when the channel closes.
        ch.basic_qos(1, BasicQosOptions::default())
            .await
            .expect("test qos");
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("test consumer");
        let got = match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("test ack");
                Some(d)
            }
            Ok(Some(Err(e))) => panic!("test consumer of {queue}: {e}"),
            Ok(None) | Err(_) => None,
        };
        let _ = ch.close(200, "OK".into()).await;
        got
    }

    fn header_string(d: &lapin::message::Delivery, key: &str) -> Option<String> {
        match d.properties.headers().as_ref()?.inner().get(key)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    }

    fn header_int(d: &lapin::message::Delivery, key: &str) -> Option<u32> {
        header_u32(d.properties.headers().as_ref()?, key)
    }

    async fn recv<T>(rx: &mut mpsc::Receiver<Delivery<T>>, wait: Duration) -> Delivery<T> {
        tokio::time::timeout(wait, rx.recv())
            .await
            .expect("a delivery in time")
            .expect("the receiver is open")
    }

    async fn stop(
        consumers: AmqpConsumers,
        shutdown: CancellationToken,
        events: mpsc::Receiver<Delivery<MessageEvent>>,
        jobs: mpsc::Receiver<Delivery<Pair>>,
    ) {
        shutdown.cancel();
        drop((events, jobs));
        tokio::time::timeout(Duration::from_secs(10), consumers.stopped())
            .await
            .expect("consumers stop in time");
    }

    /// Closes this test's connections from the broker side (only ours: other tests run too).
    fn close_connections_named(marker: &str) -> usize {
        crate::testkit::broker::close_connections(marker)
    }

    #[test]
    fn topology_names_and_arguments() {
        let settings = AmqpSettings {
            prefix: "p".to_owned(),
            shards: 3,
            delivery_limit: 5,
            retry_delays: vec![Duration::from_secs(5), Duration::from_millis(1500)],
            ..AmqpSettings::default()
        };
        let t = Topology::new(&settings);
        assert_eq!(t.events_exchange, "p.events");
        assert_eq!(t.dead_letter_exchange, "p.dlx");
        assert_eq!(t.shard_queues, ["p.events.0", "p.events.1", "p.events.2"]);
        assert_eq!(t.batch_queue, "p.batches");
        assert_eq!(t.retry_queues, ["p.batches.retry.0", "p.batches.retry.1"]);
        assert_eq!(t.parking_queue, "p.parking");
        assert_eq!(
            t.exchanges,
            [
                ExchangeSpec {
                    name: "p.events".into(),
                    kind: ExchangeType::Direct
                },
                ExchangeSpec {
                    name: "p.dlx".into(),
                    kind: ExchangeType::Fanout
                },
            ]
        );
        let names: Vec<&str> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "p.parking",
                "p.events.0",
                "p.events.1",
                "p.events.2",
                "p.batches",
                "p.batches.retry.0",
                "p.batches.retry.1"
            ],
            "dead-letter targets are declared before the queues that use them"
        );

        let s = |v: &str| ArgValue::Str(v.to_owned());
        let dl = |ex: &str| {
            vec![
                ("x-dead-letter-exchange", s(ex)),
                ("x-dead-letter-strategy", s("at-least-once")),
                ("x-overflow", s("reject-publish")),
            ]
        };
        let mut shard = vec![
            ("x-queue-type", s("quorum")),
            ("x-single-active-consumer", ArgValue::Bool(true)),
            ("x-delivery-limit", ArgValue::Int(5)),
        ];
        shard.extend(dl("p.dlx"));
        assert_eq!(t.queue("p.events.1").unwrap().arguments, shard);
        let mut batches = vec![
            ("x-queue-type", s("quorum")),
            ("x-delivery-limit", ArgValue::Int(5)),
        ];
        batches.extend(dl("p.dlx"));
        assert_eq!(t.queue("p.batches").unwrap().arguments, batches);
        let retry = t.queue("p.batches.retry.1").unwrap();
        assert_eq!(
            retry.arguments,
            [
                ("x-queue-type", s("quorum")),
                ("x-message-ttl", ArgValue::Int(1500)),
                ("x-dead-letter-exchange", s("")),
                ("x-dead-letter-routing-key", s("p.batches")),
                ("x-dead-letter-strategy", s("at-least-once")),
                ("x-overflow", s("reject-publish")),
            ]
        );
        assert_eq!(
            t.queue("p.batches.retry.0")
                .unwrap()
                .argument("x-message-ttl"),
            Some(&ArgValue::Int(5000))
        );
        assert_eq!(
            t.queue("p.parking").unwrap().arguments,
            [("x-queue-type", s("quorum"))]
        );
        assert_eq!(
            t.bindings,
            [
                BindingSpec {
                    queue: "p.parking".into(),
                    exchange: "p.dlx".into(),
                    routing_key: "".into()
                },
                BindingSpec {
                    queue: "p.events.0".into(),
                    exchange: "p.events".into(),
                    routing_key: "shard.0".into()
                },
                BindingSpec {
                    queue: "p.events.1".into(),
                    exchange: "p.events".into(),
                    routing_key: "shard.1".into()
                },
                BindingSpec {
                    queue: "p.events.2".into(),
                    exchange: "p.events".into(),
                    routing_key: "shard.2".into()
                },
            ]
        );
        assert_eq!(t, Topology::new(&settings), "pure and repeatable");
    }

    #[test]
    fn settings_are_validated_and_redacted() {
        assert!(AmqpSettings::default().validate().is_ok());
        let bad = [
            AmqpSettings {
                prefix: String::new(),
                ..AmqpSettings::default()
            },
            AmqpSettings {
                prefix: "a b".into(),
                ..AmqpSettings::default()
            },
            AmqpSettings {
                prefix: "x".repeat(201),
                ..AmqpSettings::default()
            },
            AmqpSettings {
                shards: 0,
                ..AmqpSettings::default()
            },
            AmqpSettings {
                prefetch: 0,
                ..AmqpSettings::default()
            },
            AmqpSettings {
                delivery_limit: 0,
                ..AmqpSettings::default()
            },
            AmqpSettings {
                retry_delays: vec![Duration::ZERO],
                ..AmqpSettings::default()
            },
        ];
        for s in bad {
            assert!(
                matches!(s.validate(), Err(PortError::Rejected { .. })),
                "{s:?}"
            );
        }
        let s = AmqpSettings {
            url: "amqps://app:s3cret@mq.example:5671/prod".into(),
            ..AmqpSettings::default()
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("amqps://app:***@mq.example:5671/prod"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn shard_of_is_stable_and_spread() {
        // Pinned values: changing the hash would re-route every pair of a running deployment.
        let table = [
            (("kabir", "meher"), 8, 7),
            (("demo_user", "meher"), 8, 7),
            (("u1", "meher"), 8, 3),
            (("u2", "meher"), 8, 0),
            (("u1", "arjun"), 8, 4),
            (("kabir", "meher"), 1, 0),
            (("kabir", "meher"), 3, 1),
            (("kabir", "meher"), 0, 0),
        ];
        for ((user, character), shards, want) in table {
            assert_eq!(
                shard_of(&pair(user, character), shards),
                want,
                "{user}/{character} over {shards}"
            );
        }
        let mut buckets = [0u32; 8];
        for i in 0..200 {
            buckets[usize::from(shard_of(&pair(&format!("user{i}"), "meher"), 8))] += 1;
        }
        // 25 expected per shard (the pinned spread is 19..=40); no starving or very hot shard.
        assert!(
            buckets.iter().all(|&n| (10..=45).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn copies_carry_our_headers_but_not_the_brokers() {
        let mut original = FieldTable::default();
        original.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        original.insert("x-death".into(), AMQPValue::Void);
        original.insert("trace".into(), AMQPValue::LongString("abc".into()));
        original.insert(HEADER_ATTEMPT.into(), AMQPValue::LongInt(1));
        let long = "é".repeat(MAX_REASON_BYTES);
        let h = copy_headers(&original, 2, &long, Some("q"));
        assert!(!h.contains_key("x-delivery-count"));
        assert!(!h.contains_key("x-death"));
        assert!(h.contains_key("trace"));
        assert_eq!(header_u32(&h, HEADER_ATTEMPT), Some(2));
        let Some(AMQPValue::LongString(reason)) = h.inner().get(HEADER_REASON) else {
            panic!("reason header")
        };
        assert!(reason.len() <= MAX_REASON_BYTES + "…".len());
        assert!(std::str::from_utf8(reason.as_bytes()).is_ok());
        assert!(h.contains_key(HEADER_SOURCE_QUEUE));
        assert_eq!(header_u32(&original, HEADER_ATTEMPT), Some(1));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn topology_is_idempotent_and_a_changed_argument_is_rejected() {
        let settings = test_settings();
        let first = AmqpBus::connect(settings.clone())
            .await
            .expect("first declare");
        let second = AmqpBus::connect(settings.clone())
            .await
            .expect("second declare");
        second.ping().await.expect("ping");
        drop((first, second));

        let changed = AmqpSettings {
            delivery_limit: settings.delivery_limit + 1,
            ..settings.clone()
        };
        let err = AmqpBus::connect(changed).await.expect_err("mismatch");
        let PortError::Rejected { message, .. } = &err else {
            panic!("expected Rejected, got {err:?}")
        };
        assert!(
            message.contains(&format!("{}.events.0", settings.prefix)),
            "{message}"
        );
        assert!(message.contains("x-delivery-limit"), "{message}");
        assert!(!err.is_retryable());
        cleanup(&settings).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn events_and_batch_jobs_flow_to_the_consumers() {
        let settings = test_settings();
        let topology = Topology::new(&settings);
        let bus = AmqpBus::connect(settings.clone()).await.expect("bus");
        let raw_conn = raw_connection(&settings).await;

        // Routed to the pair's shard, persistent JSON.
        let ev = event("kabir", "m1");
        bus.publish_event(&ev).await.expect("publish event");
        let shard = usize::from(shard_of(&ev.pair(), settings.shards));
        let got = get_one(&raw_conn, &topology.shard_queues[shard], WAIT)
            .await
            .expect("on its shard queue");
        assert_eq!(
            serde_json::from_slice::<MessageEvent>(&got.data).unwrap(),
            ev
        );
        assert_eq!(
            got.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(*got.properties.delivery_mode(), Some(2));
        assert_eq!(got.routing_key.as_str(), shard_key(shard as u16));

        let shutdown = CancellationToken::new();
        let (consumers, mut events, mut jobs) =
            AmqpConsumers::start(settings.clone(), shutdown.clone())
                .await
                .expect("consumers");
        let ev2 = event("kabir", "m2");
        bus.publish_event(&ev2).await.expect("publish event");
        let d = recv(&mut events, WAIT).await;
        assert_eq!(d.payload, ev2);
        assert_eq!(d.redeliveries, 0);
        d.settle.ack().await.expect("ack");

        let p = pair("kabir", "meher");
        bus.publish_batch_job(&p).await.expect("publish job");
        let j = recv(&mut jobs, WAIT).await;
        assert_eq!(j.payload, p);
        j.settle.ack().await.expect("ack job");

        stop(consumers, shutdown, events, jobs).await;
        // Acked for real: nothing comes back once the consumers are gone.
        assert!(
            get_one(
                &raw_conn,
                &topology.shard_queues[shard],
                Duration::from_millis(300)
            )
            .await
            .is_none()
        );
        assert!(
            get_one(&raw_conn, &topology.batch_queue, Duration::from_millis(300))
                .await
                .is_none()
        );
        cleanup(&settings).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn passes_the_bus_contract() {
        let settings = test_settings();
        let bus = AmqpBus::connect(settings.clone()).await.expect("bus");
        let shutdown = CancellationToken::new();
        let (consumers, mut events, mut jobs) =
            AmqpConsumers::start(settings.clone(), shutdown.clone())
                .await
                .expect("consumers");
        crate::testkit::bus::run_all(&bus, &mut events, &mut jobs).await;
        stop(consumers, shutdown, events, jobs).await;
        cleanup(&settings).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn malformed_bodies_are_parked_and_valid_ones_still_flow() {
        logs();
        let settings = test_settings();
        let topology = Topology::new(&settings);
        let shutdown = CancellationToken::new();
        let (consumers, mut events, mut jobs) =
            AmqpConsumers::start(settings.clone(), shutdown.clone())
                .await
                .expect("consumers");
        let bus = AmqpBus::connect(settings.clone()).await.expect("bus");
        let raw_conn = raw_connection(&settings).await;
        let raw = raw_conn.create_channel().await.unwrap();
        raw.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();

        let bad_event = b"this is not json".as_slice();
        let bad_job = br#"{"user_id":"no spaces allowed","character_name":"meher"}"#.as_slice();
        for (queue, body) in [
            (&topology.shard_queues[1], bad_event),
            (&topology.batch_queue, bad_job),
        ] {
            publish_confirmed(&raw, "", queue, body, None, Duration::from_secs(3))
                .await
                .expect("raw publish");
        }
        let mut parked = Vec::new();
        for _ in 0..2 {
            let m = get_one(&raw_conn, &topology.parking_queue, WAIT)
                .await
                .expect("parked");
            parked.push((
                header_string(&m, HEADER_SOURCE_QUEUE).expect("source header"),
                header_string(&m, HEADER_REASON).expect("reason header"),
                header_int(&m, HEADER_ATTEMPT),
                m.data,
            ));
        }
        parked.sort();
        assert_eq!(parked[0].0, topology.batch_queue);
        assert!(
            parked[0].1.starts_with("malformed body: "),
            "{}",
            parked[0].1
        );
        assert!(parked[0].1.contains("may only contain"), "{}", parked[0].1);
        assert_eq!(parked[0].3, bad_job);
        assert_eq!(parked[1].0, topology.shard_queues[1]);
        assert!(
            parked[1].1.starts_with("malformed body: "),
            "{}",
            parked[1].1
        );
        assert_eq!(parked[1].3, bad_event);
        assert_eq!(parked[1].2, Some(1));

        let ev = event("after", "m1");
        bus.publish_event(&ev).await.expect("publish");
        let d = recv(&mut events, WAIT).await;
        assert_eq!(d.payload, ev);
        d.settle.ack().await.unwrap();
        let p = pair("after", "meher");
        bus.publish_batch_job(&p).await.expect("publish job");
        let j = recv(&mut jobs, WAIT).await;
        assert_eq!(j.payload, p);
        j.settle.ack().await.unwrap();

        stop(consumers, shutdown, events, jobs).await;
        cleanup(&settings).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn batch_retry_walks_the_tiers_then_parks() {
        logs();
        let settings = test_settings();
        let topology = Topology::new(&settings);
        let shutdown = CancellationToken::new();
        let (consumers, events, mut jobs) =
            AmqpConsumers::start(settings.clone(), shutdown.clone())
                .await
                .expect("consumers");
        let bus = AmqpBus::connect(settings.clone()).await.expect("bus");
        let raw_conn = raw_connection(&settings).await;

        let p = pair("retry_me", "meher");
        bus.publish_batch_job(&p).await.expect("publish job");
        let mut d = recv(&mut jobs, WAIT).await;
        assert_eq!(d.redeliveries, 0);
        for (n, delay) in settings.retry_delays.iter().enumerate() {
            let sent = Instant::now();
            d.settle.retry(&format!("boom {n}")).await.expect("retry");
            d = recv(&mut jobs, WAIT).await;
            let waited = sent.elapsed();
            assert_eq!(d.payload, p);
            assert_eq!(d.redeliveries, n as u32 + 1, "x-recall-attempt went up");
            assert!(
                waited >= *delay,
                "tier {n} waited {waited:?}, want {delay:?}"
            );
        }
        d.settle
            .retry("boom last")
            .await
            .expect("retry into parking");
        let m = get_one(&raw_conn, &topology.parking_queue, WAIT)
            .await
            .expect("parked after the last tier");
        assert_eq!(serde_json::from_slice::<Pair>(&m.data).unwrap(), p);
        let reason = header_string(&m, HEADER_REASON).unwrap();
        assert!(
            reason.contains("boom last") && reason.contains("3 attempts"),
            "{reason}"
        );
        assert_eq!(header_int(&m, HEADER_ATTEMPT), Some(3));
        assert_eq!(
            header_string(&m, HEADER_SOURCE_QUEUE).as_deref(),
            Some(topology.batch_queue.as_str())
        );
        // Nothing else is left behind.
        assert!(
            tokio::time::timeout(Duration::from_millis(800), jobs.recv())
                .await
                .is_err()
        );

        // park() moves a job aside at once.
        let p2 = pair("poison", "meher");
        bus.publish_batch_job(&p2).await.expect("publish job");
        let d = recv(&mut jobs, WAIT).await;
        d.settle.park("cannot ever work").await.expect("park");
        let m = get_one(&raw_conn, &topology.parking_queue, WAIT)
            .await
            .expect("parked");
        assert_eq!(
            header_string(&m, HEADER_REASON).as_deref(),
            Some("cannot ever work")
        );
        assert_eq!(header_int(&m, HEADER_ATTEMPT), Some(1));

        stop(consumers, shutdown, events, jobs).await;
        cleanup(&settings).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn event_retry_is_dead_lettered_after_the_delivery_limit() {
        let settings = test_settings();
        let topology = Topology::new(&settings);
        let shutdown = CancellationToken::new();
        let (consumers, mut events, jobs) =
            AmqpConsumers::start(settings.clone(), shutdown.clone())
                .await
                .expect("consumers");
        let bus = AmqpBus::connect(settings.clone()).await.expect("bus");
        let raw_conn = raw_connection(&settings).await;

        let ev = event("flaky", "m1");
        bus.publish_event(&ev).await.expect("publish");
        let mut deliveries = 0u32;
        let mut redeliveries = Vec::new();
        while deliveries < settings.delivery_limit + 3 {
            let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(3), events.recv()).await
            else {
                break;
            };
            deliveries += 1;
            redeliveries.push(d.redeliveries);
            d.settle.retry("store down").await.expect("nack");
        }
        assert_eq!(
            deliveries,
            settings.delivery_limit + 1,
            "delivered once plus once per allowed return: {redeliveries:?}"
        );
        assert_eq!(redeliveries, [0, 1, 2, 3]);
        let m = get_one(&raw_conn, &topology.parking_queue, WAIT)
            .await
            .expect("dead-lettered into parking");
        assert_eq!(serde_json::from_slice::<MessageEvent>(&m.data).unwrap(), ev);

        stop(consumers, shutdown, events, jobs).await;
        cleanup(&settings).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_broker_is_unavailable_within_the_confirm_timeout() {
        logs();
        let settings = AmqpSettings {
            url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            confirm_timeout: Duration::from_secs(2),
            ..test_settings()
        };
        let bound = settings.confirm_timeout + Duration::from_millis(500);

        let started = Instant::now();
        let err = AmqpBus::connect(settings.clone())
            .await
            .expect_err("no broker");
        assert!(matches!(err, PortError::Unavailable { .. }), "{err:?}");
        assert!(started.elapsed() < bound);

        let bus = AmqpBus::lazy(settings.clone()).expect("lazy");
        let started = Instant::now();
        let err = bus
            .publish_event(&event("u", "m"))
            .await
            .expect_err("no broker");
        assert!(matches!(err, PortError::Unavailable { .. }), "{err:?}");
        assert!(err.retry_after().is_some(), "{err:?}");
        assert!(started.elapsed() < bound);
        // Within the backoff window: fails at once, says when to come back.
        let started = Instant::now();
        let err = bus
            .publish_batch_job(&pair("u", "meher"))
            .await
            .expect_err("no broker");
        assert!(err.retry_after().is_some(), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(bus.ping().await.is_err());
        let gauge = IntGauge::new("t_connected", "test").unwrap();
        gauge.set(7);
        bus.connection().report_to(gauge.clone());
        assert!(!bus.connection().is_up());
        assert_eq!(gauge.get(), 0, "down, and the gauge says so");

        // amqps goes through rustls (ring): against the plain-text listener the handshake fails
        // cleanly, as an error, within the bound.
        let tls = AmqpSettings {
            url: "amqps://guest:guest@127.0.0.1:5672/%2f".into(),
            ..settings.clone()
        };
        let started = Instant::now();
        let err = AmqpBus::connect(tls)
            .await
            .expect_err("no TLS listener there");
        assert!(matches!(err, PortError::Unavailable { .. }), "{err:?}");
        assert!(started.elapsed() < bound);

        let started = Instant::now();
        let err = AmqpConsumers::start(settings.clone(), CancellationToken::new())
            .await
            .expect_err("no broker");
        assert!(matches!(err, PortError::Unavailable { .. }), "{err:?}");
        assert!(started.elapsed() < bound);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn publisher_and_consumers_survive_a_dropped_connection() {
        logs();
        let settings = test_settings();
        let shutdown = CancellationToken::new();
        let (consumers, mut events, jobs) =
            AmqpConsumers::start(settings.clone(), shutdown.clone())
                .await
                .expect("consumers");
        let bus = AmqpBus::connect(settings.clone()).await.expect("bus");
        let (publisher_up, consumer_up) = (
            IntGauge::new("t_publisher", "test").unwrap(),
            IntGauge::new("t_consumer", "test").unwrap(),
        );
        bus.connection().report_to(publisher_up.clone());
        let consumer_state = consumers.connection();
        consumer_state.report_to(consumer_up.clone());
        assert_eq!((publisher_up.get(), consumer_up.get()), (1, 1));

        bus.publish_event(&event("before", "m1"))
            .await
            .expect("publish");
        let held = recv(&mut events, WAIT).await;
        assert_eq!(held.payload.user_id.as_str(), "before");

        let marker = settings.prefix.clone();
        let closed = tokio::task::spawn_blocking(move || close_connections_named(&marker))
            .await
            .unwrap();
        assert_eq!(closed, 2, "the publisher's and the worker's connections");

        // The held delivery's channel is gone: its ack is an error, never assumed done.
        let err = held.settle.ack().await.expect_err("dead channel");
        assert!(matches!(err, PortError::Unavailable { .. }), "{err:?}");

        // The next publish reconnects lazily (a publish racing the close may fail once).
        let ev = event("after", "m2");
        let deadline = Instant::now() + WAIT;
        let mut failures = 0;
        loop {
            match bus.publish_event(&ev).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    failures += 1;
                    tracing::info!(error = %e, "publish after the drop failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no reconnect: {e}"),
            }
        }
        assert!(failures <= 1, "{failures} failures before the reconnect");

        // The consumers reconnect on their own; the redelivered "before" may come first.
        let deadline = Instant::now() + WAIT;
        loop {
            let d = recv(
                &mut events,
                deadline.saturating_duration_since(Instant::now()),
            )
            .await;
            let user = d.payload.user_id.as_str().to_owned();
            d.settle.ack().await.expect("ack after the reconnect");
            if user == "after" {
                break;
            }
            assert_eq!(user, "before");
        }
        assert_eq!(
            (publisher_up.get(), consumer_up.get()),
            (1, 1),
            "both reconnected"
        );

        stop(consumers, shutdown, events, jobs).await;
        assert!(!consumer_state.is_up(), "down after shutdown");
        assert_eq!(consumer_up.get(), 0);
        cleanup(&settings).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_deleted_queue_is_declared_again_by_publisher_and_consumers() {
        logs();
        let settings = test_settings();
        let topology = Topology::new(&settings);
        let bus = AmqpBus::connect(settings.clone()).await.expect("bus");
        let raw_conn = raw_connection(&settings).await;
        let ev = event("orphan", "m1");
        let queue =
            topology.shard_queues[usize::from(shard_of(&ev.pair(), settings.shards))].clone();
        let delete = || async {
            let ch = raw_conn.create_channel().await.unwrap();
            ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .expect("delete the shard queue");
        };

        // Unroutable (mandatory publish returned): an error, never a silent drop.
        delete().await;
        let err = bus.publish_event(&ev).await.expect_err("returned");
        assert!(matches!(err, PortError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("could not route"), "{err}");
        // The next publish reconnects and declares the topology again.
        bus.publish_event(&ev).await.expect("after redeclaring");
        assert_eq!(
            get_one(&raw_conn, &queue, WAIT).await.map(|m| m.data),
            Some(serde_json::to_vec(&ev).unwrap())
        );

        // Consumers whose queue vanishes resubscribe after declaring it again.
        let shutdown = CancellationToken::new();
        let (consumers, mut events, jobs) =
            AmqpConsumers::start(settings.clone(), shutdown.clone())
                .await
                .expect("consumers");
        delete().await;
        let deadline = Instant::now() + WAIT;
        while let Err(e) = bus.publish_event(&ev).await {
            assert!(Instant::now() < deadline, "never routable again: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let d = recv(&mut events, WAIT).await;
        assert_eq!(d.payload, ev);
        d.settle.ack().await.expect("ack");

        stop(consumers, shutdown, events, jobs).await;
        cleanup(&settings).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unsettled_deliveries_go_back_at_shutdown() {
        let settings = AmqpSettings {
            shutdown_grace: Duration::from_millis(200),
            ..test_settings()
        };
        let topology = Topology::new(&settings);
        let shutdown = CancellationToken::new();
        let (consumers, mut events, jobs) =
            AmqpConsumers::start(settings.clone(), shutdown.clone())
                .await
                .expect("consumers");
        let bus = AmqpBus::connect(settings.clone()).await.expect("bus");
        let ev = event("handback", "m1");
        bus.publish_event(&ev).await.expect("publish");
        let held = recv(&mut events, WAIT).await;
        drop(held); // never settled
        stop(consumers, shutdown, events, jobs).await;

        let raw_conn = raw_connection(&settings).await;
        let shard = usize::from(shard_of(&ev.pair(), settings.shards));
        let m = get_one(&raw_conn, &topology.shard_queues[shard], WAIT)
            .await
            .expect("handed back to its queue");
        assert_eq!(serde_json::from_slice::<MessageEvent>(&m.data).unwrap(), ev);
        cleanup(&settings).await;
    }
}
