//! Crash and fault points for the fault suite (`tests/faults.rs`), on the `fail` crate.
//!
//! Without the `failpoints` cargo feature every function here is a no-op the compiler removes.
//! With it, `FAILPOINTS="<name>=return;..."` in a process's environment arms the named points
//! (the `fail` crate's syntax: `3*return` fires three times, `off` never). The points:
//!
//! | name | where | what it does when armed |
//! |---|---|---|
//! | `batch-after-claim` | a batch was claimed, nothing extracted yet | logs, then never returns |
//! | `batch-after-extract` | the extraction is saved on the batch record | logs, then never returns |
//! | `batch-after-upsert` | memories are in the memory store, messages not flipped | logs, then never returns |
//! | `batch-after-flip` | messages flipped, the batch job not yet acknowledged | logs, then never returns |
//! | `memory-store-upsert` | each memory-store write attempt | fails it as unavailable |
//!
//! A "never returns" point parks the batch task so the test can SIGKILL the process at exactly
//! that stage; it looks for the `failpoint reached` log line on stderr.

/// Keeps the `FAILPOINTS` configuration armed while alive; hold it for the process's lifetime.
#[must_use = "the fail points are disarmed when this is dropped"]
pub struct Failpoints {
    #[cfg(feature = "failpoints")]
    _scenario: fail::FailScenario<'static>,
}

/// Arms the points named in `FAILPOINTS` (no-op without the `failpoints` feature).
pub fn setup() -> Failpoints {
    Failpoints {
        #[cfg(feature = "failpoints")]
        _scenario: fail::FailScenario::setup(),
    }
}

/// A crash point: when armed, logs `failpoint reached` and waits forever for the kill.
pub async fn crash_point(name: &'static str) {
    if armed(name) {
        tracing::warn!(failpoint = name, "failpoint reached; waiting to be killed");
        std::future::pending::<()>().await;
    }
}

/// Whether the point `name` fires this time (always `false` without the feature).
pub fn armed(name: &'static str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    #[tokio::test]
    async fn armed_points_fire_as_configured() {
        fail::cfg("unit-test-point", "2*return").unwrap();
        assert!(super::armed("unit-test-point"));
        assert!(super::armed("unit-test-point"));
        assert!(!super::armed("unit-test-point"));
        assert!(!super::armed("never-configured"));
        fail::remove("unit-test-point");
        let parked = tokio::time::timeout(std::time::Duration::from_millis(50), async {
            fail::cfg("unit-test-crash", "return").unwrap();
            super::crash_point("unit-test-crash").await;
        })
        .await;
        assert!(parked.is_err(), "an armed crash point never returns");
        fail::remove("unit-test-crash");
    }
}
