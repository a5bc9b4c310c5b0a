//! The batching rules as pure functions: when a pair is due, which messages form its batch, and
//! the deterministic ids that make every retry overwrite instead of duplicate.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::Message;

/// Default number of unsynced messages that makes a pair due.
pub const DEFAULT_THRESHOLD: usize = 25;
/// Default largest batch.
pub const DEFAULT_MAX_MESSAGES: usize = 50;

/// Namespace of memory ids (UUIDv5), fixed forever so ids stay stable across releases.
const MEMORY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7b1c_2d4e_8f3a_4b5c_9d6e_0f1a_2b3c_4d5e);

/// Batch size rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRules {
    /// A pair is due at this many unsynced messages.
    pub threshold: usize,
    /// A batch holds at most this many messages.
    pub max_messages: usize,
    /// A pair idle for this long is due with fewer messages (stragglers).
    pub idle_after: Duration,
    /// ...but only with at least this many.
    pub idle_min_messages: usize,
}

impl Default for BatchRules {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
            max_messages: DEFAULT_MAX_MESSAGES,
            idle_after: Duration::from_secs(30 * 60),
            idle_min_messages: 5,
        }
    }
}

/// Why a pair is or is not due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Enough unsynced messages.
    Threshold,
    /// Fewer than the threshold, but the conversation went quiet.
    Idle,
    /// Not yet.
    NotDue,
}

impl BatchRules {
    /// Checks the rules are coherent; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.threshold == 0 {
            return Err("BATCH_THRESHOLD must be at least 1".into());
        }
        if self.max_messages < self.threshold {
            return Err(format!(
                "BATCH_MAX_MESSAGES ({}) must be at least BATCH_THRESHOLD ({})",
                self.max_messages, self.threshold
            ));
        }
        if self.idle_min_messages == 0 || self.idle_min_messages > self.threshold {
            return Err("the idle minimum must be between 1 and BATCH_THRESHOLD".into());
        }
        Ok(())
    }

    /// Is a pair with `unsynced` messages, the newest written at `newest`, due at `now`?
    pub fn due(&self, unsynced: usize, newest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Due {
        if unsynced >= self.threshold {
            return Due::Threshold;
        }
        let idle = newest
            .and_then(|t| (now - t).to_std().ok())
            .is_some_and(|quiet| quiet >= self.idle_after);
        if unsynced >= self.idle_min_messages && idle {
            Due::Idle
        } else {
            Due::NotDue
        }
    }

    /// Chooses the batch from the oldest unsynced messages (`oldest_first` must be sorted):
    /// `None` unless due; otherwise at most `max_messages`, oldest first.
    pub fn select<'a>(
        &self,
        oldest_first: &'a [Message],
        now: DateTime<Utc>,
    ) -> Option<&'a [Message]> {
        let newest = oldest_first.last().map(|m| m.created_at);
        match self.due(oldest_first.len(), newest, now) {
            Due::NotDue => None,
            Due::Threshold | Due::Idle => {
                Some(&oldest_first[..oldest_first.len().min(self.max_messages)])
            }
        }
    }
}

/// The batch id: a hash of the pair and the ordered message ids, so the same messages always
/// give the same batch (and the same claim) no matter which worker computes it.
pub fn batch_id(messages: &[Message]) -> String {
    let mut h = Sha256::new();
    if let Some(first) = messages.first() {
        h.update(first.pair.user_id.as_str());
        h.update([0]);
        h.update(first.pair.character_name.as_str());
        h.update([0]);
    }
    for m in messages {
        h.update(m.id.as_str());
        h.update([0]);
    }
    format!("b_{}", hex::encode(&h.finalize()[..16]))
}

/// The id of the `index`-th memory of a batch: UUIDv5(batch id, index). A retry overwrites.
pub fn memory_id(batch_id: &str, index: usize) -> Uuid {
    Uuid::new_v5(
        &MEMORY_ID_NAMESPACE,
        format!("{batch_id}/{index}").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::{MessageId, Pair, Role};

    fn msgs(n: usize, user: &str) -> Vec<Message> {
        let t0 = Utc.with_ymd_and_hms(2024, 11, 3, 10, 0, 0).unwrap();
        (0..n)
            .map(|i| Message {
                id: MessageId::parse(format!("m{i:04}")).unwrap(),
                pair: Pair::parse(user, "meher").unwrap(),
                role: if i.is_multiple_of(2) {
                    Role::User
                } else {
                    Role::Assistant
                },
                channel: "whatsapp".into(),
                text: format!("message {i}"),
                created_at: t0 + chrono::Duration::seconds(i as i64 * 10),
                sync: false,
            })
            .collect()
    }

    #[test]
    fn due_table() {
        let rules = BatchRules::default();
        let t = Utc.with_ymd_and_hms(2024, 11, 3, 10, 0, 0).unwrap();
        let min = |m: i64| t + chrono::Duration::minutes(m);
        let cases = [
            // (unsynced, newest, now, expected)
            (0, None, t, Due::NotDue),
            (24, Some(t), t, Due::NotDue),
            (25, Some(t), t, Due::Threshold),
            (80, Some(t), t, Due::Threshold),
            (4, Some(t), min(60), Due::NotDue), // idle but too few
            (5, Some(t), min(29), Due::NotDue), // not idle long enough
            (5, Some(t), min(30), Due::Idle),   // idle and enough
            (24, Some(t), min(31), Due::Idle),
            (5, Some(min(10)), t, Due::NotDue), // clock skew: newest in the future
        ];
        for (n, newest, now, want) in cases {
            assert_eq!(
                rules.due(n, newest, now),
                want,
                "n={n} newest={newest:?} now={now}"
            );
        }
    }

    #[test]
    fn select_table() {
        let rules = BatchRules {
            threshold: 25,
            max_messages: 50,
            ..Default::default()
        };
        let now = Utc.with_ymd_and_hms(2024, 11, 3, 10, 5, 0).unwrap();
        for (n, want) in [
            (0, None),
            (24, None),
            (25, Some(25)),
            (49, Some(49)),
            (50, Some(50)),
            (120, Some(50)),
        ] {
            let all = msgs(n, "u1");
            let got = rules.select(&all, now).map(|b| b.len());
            assert_eq!(got, want, "n={n}");
            if let Some(b) = rules.select(&all, now) {
                assert_eq!(b[0].id, all[0].id, "a batch starts at the oldest message");
            }
        }
    }

    #[test]
    fn rules_validation() {
        assert!(BatchRules::default().validate().is_ok());
        let bad = BatchRules {
            threshold: 30,
            max_messages: 20,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("BATCH_MAX_MESSAGES"));
        let zero = BatchRules {
            threshold: 0,
            ..Default::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn batch_id_is_deterministic_and_sensitive() {
        let a = msgs(25, "u1");
        assert_eq!(batch_id(&a), batch_id(&a.clone()));
        assert_ne!(batch_id(&a), batch_id(&a[..24]), "a different message set");
        assert_ne!(
            batch_id(&a),
            batch_id(&msgs(25, "u2")),
            "same message ids, another user"
        );
        let mut reordered = a.clone();
        reordered.swap(0, 1);
        assert_ne!(batch_id(&a), batch_id(&reordered));
        assert!(batch_id(&a).starts_with("b_") && batch_id(&a).len() == 34);
    }

    #[test]
    fn memory_ids_are_stable() {
        let id = memory_id("b_x", 0);
        assert_eq!(id, memory_id("b_x", 0));
        assert_ne!(id, memory_id("b_x", 1));
        assert_ne!(id, memory_id("b_y", 0));
        assert_eq!(id.get_version_num(), 5);
    }
}
