//! Rate limits per API key on the routes that embed a query (search, context, enhance-prompt):
//! each costs an embedding (a model call with `RECALL_EMBEDDER=openai`) and reveals memories.
//!
//! One GCRA bucket (the `governor` crate) per client, shared by those routes: a client is the
//! SHA-256 of the credential it presented when the API key is required (never the key itself,
//! which is neither stored nor logged), else its IP address (without a key the server only listens
//! on loopback, see [`super::check_exposure`]). Over the limit the answer is 429 with
//! `Retry-After` in seconds, counted in `recall_http_rate_limited_total{route}`.
//!
//! Buckets live in this process: with N replicas behind a load balancer a key gets up to N times
//! the rate.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};
use sha2::{Digest, Sha256};

/// How fast a client may call the rate-limited routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The time in which one request is earned back (1 s / the rate).
    pub replenish_one_per: Duration,
    /// Requests a client may make at once, on top of the steady rate (the bucket's size).
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// `per_second` requests per second with bursts of `burst`; `None` (no limit) when
    /// `per_second` is 0. A `burst` of 0 counts as 1.
    pub fn per_second(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        Some(Self {
            replenish_one_per: Duration::from_secs(1) / rate.get(),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        })
    }

    fn quota(&self) -> Quota {
        Quota::with_period(self.replenish_one_per.max(Duration::from_nanos(1)))
            .expect("a positive period")
            .allow_burst(self.burst)
    }
}

/// Who a bucket belongs to: 16 bytes of SHA-256 over a credential or an address. `Debug` shows
/// nothing of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey([u8; 16]);

impl ClientKey {
    /// The client presenting `credential` (the bearer token), by its hash.
    pub fn credential(credential: &str) -> Self {
        Self::hash(b"credential", credential.as_bytes())
    }

    /// The client at `ip`, when the API key is not required.
    pub fn address(ip: IpAddr) -> Self {
        Self::hash(b"address", ip.to_string().as_bytes())
    }

    /// A client whose address is not known (a request served without connection info).
    pub fn unknown() -> Self {
        Self::hash(b"unknown", b"")
    }

    fn hash(kind: &[u8], value: &[u8]) -> Self {
        let digest = Sha256::new()
            .chain_update(kind)
            .chain_update([0u8])
            .chain_update(value)
            .finalize();
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(..)")
    }
}

/// Checks between two sweeps of the buckets that are full again (they hold nothing worth keeping).
const SWEEP_EVERY: u64 = 4096;

/// One bucket per [`ClientKey`]. The clock is a parameter so tests can move time by hand.
pub struct RateLimiter<C: Clock = DefaultClock> {
    gcra: Gcra<ClientKey, HashMapStateStore<ClientKey>, C, NoOpMiddleware<C::Instant>>,
    limit: RateLimit,
    checks: AtomicU64,
}

impl RateLimiter {
    /// A limiter on the monotonic clock.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// A limiter reading time from `clock`.
    pub fn with_clock(limit: RateLimit, clock: C) -> Self {
        Self {
            gcra: Gcra::hashmap_with_clock(limit.quota(), clock),
            limit,
            checks: AtomicU64::new(0),
        }
    }

    /// The limit it enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one request from `client`'s bucket: `Ok`, or `Err` with how long until the next
    /// request would be allowed.
    pub fn check(&self, client: &ClientKey) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Bounds the memory a stream of new clients can take.
            self.gcra.retain_recent();
            self.gcra.shrink_to_fit();
        }
        self.gcra
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(self.gcra.clock().now()))
    }

    /// Clients with a bucket that is not full.
    pub fn tracked(&self) -> usize {
        self.gcra.len()
    }
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(per_second: u32, burst: u32) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::per_second(per_second, burst).unwrap();
        (RateLimiter::with_clock(limit, clock.clone()), clock)
    }

    #[test]
    fn a_burst_passes_then_the_client_waits_for_the_rate() {
        let (l, _) = limiter(2, 3);
        let alice = ClientKey::credential("alice-key");
        for i in 0..3 {
            assert_eq!(l.check(&alice), Ok(()), "request {i} of the burst");
        }
        let wait = l.check(&alice).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500), "one request per 1/2 s");
        assert_eq!(retry_after_seconds(wait), 1);
    }

    #[test]
    fn another_client_is_unaffected() {
        let (l, _) = limiter(1, 1);
        let alice = ClientKey::credential("alice-key");
        let bob = ClientKey::credential("bob-key");
        assert_eq!(l.check(&alice), Ok(()));
        assert!(l.check(&alice).is_err());
        assert_eq!(l.check(&bob), Ok(()), "bob has his own bucket");
        let here = ClientKey::address("127.0.0.1".parse().unwrap());
        let there = ClientKey::address("127.0.0.2".parse().unwrap());
        assert_eq!(l.check(&here), Ok(()));
        assert!(l.check(&here).is_err());
        assert_eq!(l.check(&there), Ok(()));
        assert_eq!(l.tracked(), 4);
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let (l, clock) = limiter(10, 2);
        let alice = ClientKey::credential("alice-key");
        assert!(l.check(&alice).is_ok() && l.check(&alice).is_ok());
        let wait = l.check(&alice).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        clock.advance(Duration::from_millis(60));
        assert_eq!(l.check(&alice), Err(Duration::from_millis(40)));
        clock.advance(Duration::from_millis(40));
        assert_eq!(l.check(&alice), Ok(()), "one request earned back");
        assert!(l.check(&alice).is_err(), "only one");
        clock.advance(Duration::from_secs(1));
        assert!(l.check(&alice).is_ok() && l.check(&alice).is_ok());
        assert!(l.check(&alice).is_err(), "never more than the burst");
    }

    #[test]
    fn full_buckets_are_swept() {
        let (l, clock) = limiter(100, 1);
        for i in 0..SWEEP_EVERY - 1 {
            assert!(l.check(&ClientKey::credential(&i.to_string())).is_ok());
        }
        assert_eq!(l.tracked() as u64, SWEEP_EVERY - 1);
        clock.advance(Duration::from_secs(1));
        assert!(l.check(&ClientKey::unknown()).is_ok());
        assert_eq!(l.tracked(), 1, "only the bucket just used is left");
    }

    #[test]
    fn zero_per_second_is_no_limit_and_rounding_is_up() {
        assert_eq!(RateLimit::per_second(0, 10), None);
        let l = RateLimit::per_second(3, 0).unwrap();
        assert_eq!(l.burst.get(), 1);
        assert_eq!(l.replenish_one_per, Duration::from_nanos(333_333_333));
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(7)), 7);
    }

    #[test]
    fn keys_are_hashes_and_never_printed() {
        let k = ClientKey::credential("s3cret-api-key");
        assert_ne!(k, ClientKey::credential("s3cret-api-kez"));
        assert_ne!(
            ClientKey::credential("127.0.0.1"),
            ClientKey::address("127.0.0.1".parse().unwrap()),
            "a credential and an address never share a bucket"
        );
        assert_eq!(format!("{k:?}"), "ClientKey(..)");
        assert!(!k.0.windows(6).any(|w| w == b"s3cret"));
    }
}
