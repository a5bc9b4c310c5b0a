//! The embedded message store: SQLite (bundled, WAL) in the data directory.
//!
//! One connection behind a `std::sync::Mutex`, used only inside `spawn_blocking` so nothing awaits
//! while holding it. Claims run in `BEGIN IMMEDIATE` transactions, which serialise writers, so the
//! "one open batch per pair" rule and the lease checks are atomic.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::domain::{
    BatchOutcome, CharacterName, Extraction, Message, MessageId, MessageStats, Pair, Role,
    TokenUsage, UserId,
};
use crate::error::{PortError, PortResult};
use crate::ports::{BatchPlan, Claim, ClaimedBatch, MessageStore, OpenBatch};

const DEP: &str = "sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    user_id        TEXT NOT NULL,
    character_name TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    role           TEXT NOT NULL,
    channel        TEXT NOT NULL,
    text           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,   -- microseconds since the epoch
    sync           INTEGER NOT NULL DEFAULT 0,
    batch_id       TEXT,
    PRIMARY KEY (user_id, character_name, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_unsynced
    ON messages (user_id, character_name, sync, created_at, message_id);
CREATE TABLE IF NOT EXISTS batches (
    user_id           TEXT NOT NULL,
    character_name    TEXT NOT NULL,
    batch_id          TEXT NOT NULL,
    state             TEXT NOT NULL,   -- open | done
    message_ids       TEXT NOT NULL,   -- JSON array
    claimed_by        TEXT,
    lease_until       INTEGER,         -- microseconds since the epoch
    attempt           INTEGER NOT NULL,
    extraction        TEXT,            -- JSON, saved before the vector write
    outcome           TEXT,            -- JSON provenance, on completion
    last_error        TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    completed_at      INTEGER,
    PRIMARY KEY (user_id, character_name, batch_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_open ON batches (user_id, character_name, state);
";

/// [`MessageStore`] on a local SQLite file.
#[derive(Clone)]
pub struct SqliteMessageStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteMessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteMessageStore").finish_non_exhaustive()
    }
}

fn db_err(e: rusqlite::Error) -> PortError {
    match e {
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            PortError::unavailable(DEP, e)
        }
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::SystemIoFailure
            ) =>
        {
            PortError::unavailable(DEP, e)
        }
        other => PortError::rejected(DEP, other),
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn json_err(e: serde_json::Error) -> PortError {
    PortError::invalid_output(DEP, format!("corrupt JSON column: {e}"))
}

impl SqliteMessageStore {
    /// Opens (or creates) the database file, in WAL mode.
    pub fn open(path: &Path) -> PortResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                PortError::unavailable(DEP, format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path).map_err(db_err)?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> PortResult<Self> {
        Self::init(Connection::open_in_memory().map_err(db_err)?)
    }

    fn init(conn: Connection) -> PortResult<Self> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T, F>(&self, f: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> PortResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| PortError::unavailable(DEP, "connection mutex poisoned"))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| PortError::unavailable(DEP, format!("blocking task failed: {e}")))?
    }
}

fn row_to_message(pair: &Pair, row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let id: String = row.get("message_id")?;
    let role: String = row.get("role")?;
    Ok(Message {
        // Ids were validated on the way in; a corrupt row is surfaced as a conversion error.
        id: MessageId::parse(id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        pair: pair.clone(),
        role: Role::parse(&role).unwrap_or(Role::User),
        channel: row.get("channel")?,
        text: row.get("text")?,
        created_at: from_micros(row.get("created_at")?),
        sync: row.get::<_, i64>("sync")? != 0,
    })
}

const MESSAGE_COLUMNS: &str = "message_id, role, channel, text, created_at, sync";

fn open_batch_tx(conn: &Connection, pair: &Pair) -> PortResult<Option<OpenBatch>> {
    conn.query_row(
        "SELECT batch_id, message_ids, claimed_by, lease_until, attempt, last_error
         FROM batches WHERE user_id = ?1 AND character_name = ?2 AND state = 'open'
         ORDER BY created_at LIMIT 1",
        params![pair.user_id.as_str(), pair.character_name.as_str()],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        },
    )
    .optional()
    .map_err(db_err)?
    .map(|(batch_id, ids, claimed_by, lease, attempt, last_error)| {
        Ok(OpenBatch {
            batch_id,
            message_ids: serde_json::from_str(&ids).map_err(json_err)?,
            claimed_by,
            lease_until: lease.map(from_micros),
            attempt,
            last_error,
        })
    })
    .transpose()
}

#[async_trait]
impl MessageStore for SqliteMessageStore {
    async fn append(&self, m: &Message) -> PortResult<bool> {
        let m = m.clone();
        self.with(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO messages
                     (user_id, character_name, message_id, role, channel, text, created_at, sync)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        m.pair.user_id.as_str(),
                        m.pair.character_name.as_str(),
                        m.id.as_str(),
                        m.role.as_str(),
                        m.channel,
                        m.text,
                        micros(m.created_at),
                        m.sync as i64
                    ],
                )
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn count_unsynced(&self, pair: &Pair) -> PortResult<u64> {
        let pair = pair.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM messages
                 WHERE user_id = ?1 AND character_name = ?2 AND sync = 0",
                params![pair.user_id.as_str(), pair.character_name.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db_err)
        })
        .await
    }

    async fn list_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>> {
        let pair = pair.clone();
        self.with(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE user_id = ?1 AND character_name = ?2 AND sync = 0
                     ORDER BY created_at, message_id LIMIT ?3"
                ))
                .map_err(db_err)?;
            let rows = st
                .query_map(
                    params![
                        pair.user_id.as_str(),
                        pair.character_name.as_str(),
                        limit as i64
                    ],
                    |r| row_to_message(&pair, r),
                )
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn recent_unsynced(&self, pair: &Pair, limit: usize) -> PortResult<Vec<Message>> {
        let pair = pair.clone();
        self.with(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE user_id = ?1 AND character_name = ?2 AND sync = 0
                     ORDER BY created_at DESC, message_id DESC LIMIT ?3"
                ))
                .map_err(db_err)?;
            let rows = st
                .query_map(
                    params![
                        pair.user_id.as_str(),
                        pair.character_name.as_str(),
                        limit as i64
                    ],
                    |r| row_to_message(&pair, r),
                )
                .map_err(db_err)?;
            let mut v = rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?;
            v.reverse();
            Ok(v)
        })
        .await
    }

    async fn get_messages(&self, pair: &Pair, ids: &[MessageId]) -> PortResult<Vec<Message>> {
        let pair = pair.clone();
        let ids = ids.to_vec();
        self.with(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE user_id = ?1 AND character_name = ?2 AND message_id = ?3"
                ))
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                let m = st
                    .query_row(
                        params![
                            pair.user_id.as_str(),
                            pair.character_name.as_str(),
                            id.as_str()
                        ],
                        |r| row_to_message(&pair, r),
                    )
                    .optional()
                    .map_err(db_err)?;
                out.extend(m);
            }
            Ok(out)
        })
        .await
    }

    async fn open_batch(&self, pair: &Pair) -> PortResult<Option<OpenBatch>> {
        let pair = pair.clone();
        self.with(move |c| open_batch_tx(c, &pair)).await
    }

    async fn claim_batch(
        &self,
        pair: &Pair,
        plan: &BatchPlan,
        worker: &str,
        lease: Duration,
    ) -> PortResult<Claim> {
        let pair = pair.clone();
        let plan = plan.clone();
        let worker = worker.to_owned();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let now = Utc::now();
            let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
            let (u, ch) = (pair.user_id.as_str(), pair.character_name.as_str());
            let existing: Option<(String, Option<String>, Option<i64>, u32, Option<String>)> = tx
                .query_row(
                    "SELECT state, claimed_by, lease_until, attempt, extraction FROM batches
                     WHERE user_id = ?1 AND character_name = ?2 AND batch_id = ?3",
                    params![u, ch, plan.batch_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(db_err)?;
            let claim = match existing {
                Some((state, _, _, _, _)) if state == "done" => Claim::Done,
                Some((_, Some(by), Some(lease_until), _, _))
                    if by != worker && lease_until > micros(now) =>
                {
                    Claim::Held {
                        by,
                        until: from_micros(lease_until),
                    }
                }
                Some((_, _, _, attempt, extraction)) => {
                    tx.execute(
                        "UPDATE batches SET claimed_by = ?4, lease_until = ?5, attempt = ?6
                         WHERE user_id = ?1 AND character_name = ?2 AND batch_id = ?3",
                        params![u, ch, plan.batch_id, worker, micros(until), attempt + 1],
                    )
                    .map_err(db_err)?;
                    let extraction = extraction
                        .map(|e| serde_json::from_str::<Extraction>(&e))
                        .transpose()
                        .map_err(json_err)?;
                    Claim::Acquired(ClaimedBatch {
                        batch_id: plan.batch_id.clone(),
                        attempt: attempt + 1,
                        extraction,
                    })
                }
                None => {
                    let other_open = open_batch_tx(&tx, &pair)?;
                    let mut all_unsynced = true;
                    for m in &plan.messages {
                        let unsynced: Option<i64> = tx
                            .query_row(
                                "SELECT 1 FROM messages WHERE user_id = ?1 AND character_name = ?2
                                 AND message_id = ?3 AND sync = 0",
                                params![u, ch, m.id.as_str()],
                                |r| r.get(0),
                            )
                            .optional()
                            .map_err(db_err)?;
                        all_unsynced &= unsynced.is_some();
                    }
                    if other_open.is_some() || !all_unsynced || plan.messages.is_empty() {
                        Claim::Stale
                    } else {
                        let ids: Vec<&str> = plan.messages.iter().map(|m| m.id.as_str()).collect();
                        tx.execute(
                            "INSERT INTO batches (user_id, character_name, batch_id, state,
                                message_ids, claimed_by, lease_until, attempt, created_at)
                             VALUES (?1, ?2, ?3, 'open', ?4, ?5, ?6, 1, ?7)",
                            params![
                                u,
                                ch,
                                plan.batch_id,
                                serde_json::to_string(&ids).map_err(json_err)?,
                                worker,
                                micros(until),
                                micros(now)
                            ],
                        )
                        .map_err(db_err)?;
                        Claim::Acquired(ClaimedBatch {
                            batch_id: plan.batch_id.clone(),
                            attempt: 1,
                            extraction: None,
                        })
                    }
                }
            };
            tx.commit().map_err(db_err)?;
            Ok(claim)
        })
        .await
    }

    async fn save_extraction(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        extraction: &Extraction,
    ) -> PortResult<()> {
        let (pair, batch_id, worker) = (pair.clone(), batch_id.to_owned(), worker.to_owned());
        let json = serde_json::to_string(extraction).map_err(json_err)?;
        let usage = extraction.usage;
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE batches SET extraction = ?5, prompt_tokens = ?6, completion_tokens = ?7
                     WHERE user_id = ?1 AND character_name = ?2 AND batch_id = ?3
                       AND state = 'open' AND claimed_by = ?4",
                    params![
                        pair.user_id.as_str(),
                        pair.character_name.as_str(),
                        batch_id,
                        worker,
                        json,
                        usage.prompt_tokens as i64,
                        usage.completion_tokens as i64
                    ],
                )
                .map_err(db_err)?;
            if n == 1 {
                Ok(())
            } else {
                Err(PortError::Conflict(format!(
                    "batch {batch_id} is no longer held by {worker}"
                )))
            }
        })
        .await
    }

    async fn complete_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        message_ids: &[MessageId],
        outcome: &BatchOutcome,
    ) -> PortResult<u64> {
        let (pair, batch_id, worker) = (pair.clone(), batch_id.to_owned(), worker.to_owned());
        let ids = message_ids.to_vec();
        let json = serde_json::to_string(outcome).map_err(json_err)?;
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let (u, ch) = (pair.user_id.as_str(), pair.character_name.as_str());
            let n = tx
                .execute(
                    "UPDATE batches SET state = 'done', outcome = ?5, completed_at = ?6,
                        lease_until = NULL, last_error = NULL
                     WHERE user_id = ?1 AND character_name = ?2 AND batch_id = ?3
                       AND state = 'open' AND claimed_by = ?4",
                    params![u, ch, batch_id, worker, json, micros(Utc::now())],
                )
                .map_err(db_err)?;
            if n != 1 {
                return Err(PortError::Conflict(format!(
                    "batch {batch_id} is no longer held by {worker}"
                )));
            }
            let mut flipped = 0u64;
            {
                let mut st = tx
                    .prepare_cached(
                        "UPDATE messages SET sync = 1, batch_id = ?4
                         WHERE user_id = ?1 AND character_name = ?2 AND message_id = ?3
                           AND sync = 0",
                    )
                    .map_err(db_err)?;
                for id in &ids {
                    flipped += st
                        .execute(params![u, ch, id.as_str(), batch_id])
                        .map_err(db_err)? as u64;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(flipped)
        })
        .await
    }

    async fn fail_batch(
        &self,
        pair: &Pair,
        batch_id: &str,
        worker: &str,
        reason: &str,
    ) -> PortResult<()> {
        let (pair, batch_id, worker, reason) = (
            pair.clone(),
            batch_id.to_owned(),
            worker.to_owned(),
            reason.to_owned(),
        );
        self.with(move |c| {
            c.execute(
                "UPDATE batches SET lease_until = NULL, last_error = ?5
                 WHERE user_id = ?1 AND character_name = ?2 AND batch_id = ?3
                   AND state = 'open' AND claimed_by = ?4",
                params![
                    pair.user_id.as_str(),
                    pair.character_name.as_str(),
                    batch_id,
                    worker,
                    reason
                ],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn stats(&self, pair: &Pair) -> PortResult<MessageStats> {
        let pair = pair.clone();
        self.with(move |c| {
            let p = params![pair.user_id.as_str(), pair.character_name.as_str()];
            let (total, synced): (i64, i64) = c
                .query_row(
                    "SELECT COUNT(*), COALESCE(SUM(sync), 0) FROM messages
                     WHERE user_id = ?1 AND character_name = ?2",
                    p,
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db_err)?;
            let (done, failed, last, prompt, completion): (i64, i64, Option<i64>, i64, i64) = c
                .query_row(
                    "SELECT COALESCE(SUM(state = 'done'), 0),
                            COALESCE(SUM(state = 'open' AND last_error IS NOT NULL), 0),
                            MAX(completed_at),
                            COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0)
                     FROM batches WHERE user_id = ?1 AND character_name = ?2",
                    p,
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .map_err(db_err)?;
            Ok(MessageStats {
                total: total as u64,
                synced: synced as u64,
                unsynced: (total - synced) as u64,
                batches_done: done as u64,
                batches_failed: failed as u64,
                last_batch_at: last.map(from_micros),
                tokens: TokenUsage {
                    prompt_tokens: prompt as u64,
                    completion_tokens: completion as u64,
                },
            })
        })
        .await
    }

    async fn erase_batches(
        &self,
        user: &UserId,
        character: Option<&CharacterName>,
    ) -> PortResult<u64> {
        let user = user.as_str().to_owned();
        let character = character.map(|c| c.as_str().to_owned());
        self.with(move |c| {
            let n = match &character {
                Some(ch) => c.execute(
                    "DELETE FROM batches WHERE user_id = ?1 AND character_name = ?2",
                    params![user, ch],
                ),
                None => c.execute("DELETE FROM batches WHERE user_id = ?1", params![user]),
            }
            .map_err(db_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn unsynced_pairs(&self, min_unsynced: u64) -> PortResult<Vec<(Pair, u64)>> {
        self.with(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT user_id, character_name, COUNT(*) FROM messages WHERE sync = 0
                     GROUP BY user_id, character_name HAVING COUNT(*) >= ?1
                     ORDER BY user_id, character_name",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map(params![min_unsynced as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (u, ch, n) = row.map_err(db_err)?;
                if let Ok(pair) = Pair::parse(&u, &ch) {
                    out.push((pair, n as u64));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> PortResult<()> {
        self.with(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(db_err)
                .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract_in_memory() {
        let store = SqliteMessageStore::in_memory().unwrap();
        crate::testkit::message_store::run_all(&store).await;
    }

    #[tokio::test]
    async fn contract_on_disk_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let store = SqliteMessageStore::open(&path).unwrap();
        crate::testkit::message_store::run_all(&store).await;
        let pair = Pair::parse("reopen", "meher").unwrap();
        let m = crate::testkit::message_store::message(&pair, 0);
        assert!(store.append(&m).await.unwrap());
        drop(store);
        let store = SqliteMessageStore::open(&path).unwrap();
        assert_eq!(store.count_unsynced(&pair).await.unwrap(), 1);
        assert!(
            !store.append(&m).await.unwrap(),
            "the id is still known after reopening"
        );
    }
}
