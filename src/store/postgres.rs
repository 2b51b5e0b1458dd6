//! The cluster store: PostgreSQL, shared by every server of a cluster.
//!
//! Same logs, cursors and semantics as the embedded SQLite store, through
//! the same writer ([`super::writer`]): each server folds its queued writes
//! into one transaction. What changes is that several servers write at
//! once, so everything a server would otherwise decide alone is decided by
//! the database:
//!
//! * A conversation's next sequence number comes from an upsert of its
//!   `conversations` row, which locks the row until commit: appends from
//!   different servers to one conversation take turns, and every member
//!   everywhere sees one order with no gaps.
//! * A repeated send id is caught by the `sends` primary key, even when the
//!   first send is still committing on another server (the second insert
//!   waits for it).
//! * Two servers' batches can lock the same conversations in opposite
//!   orders; PostgreSQL then aborts one (deadlock), and that batch is
//!   simply run again.
//!
//! When PostgreSQL cannot be reached, every operation fails at once with a
//! [`StoreError`] (the request gets `ERR STORAGE`, never a false `OK`), and
//! the next operation tries to connect again: the server recovers by
//! itself when the database returns.
//!
//! The schema carries its version in `muchat_schema`; [`MIGRATIONS`] bring
//! it forward under an advisory lock, so servers starting together apply
//! each step once.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement, Transaction};
use r2d2_postgres::PostgresConnectionManager;

use super::writer::{
    format_send_refs, parse_send_refs, Batcher, LogStore, Op, Outcome, Reads, SEND_ID_DAYS,
};
use super::{
    Append, Appended, BatchHook, Content, ConvId, Cursor, GroupChange, GroupRecord, LogEntry,
    LogRow, Snapshot, StoreError, StoreResult, StoredChunk, UserRecord,
};
use crate::names::{GroupName, Username};
use crate::request::{format_sha256, SendId};

/// Schema migrations: entry `i` takes the schema from version `i` to `i + 1`.
/// Version 1 is the SQLite store's version 3, table for table (so a data
/// directory moves over column by column, see [`super::migrate`]).
pub const MIGRATIONS: &[&str] = &["CREATE TABLE users (
        username   TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        verifier   TEXT NOT NULL,
        created_ms BIGINT NOT NULL
     );
     CREATE TABLE groups (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        private    BOOLEAN NOT NULL DEFAULT false,
        version    BIGINT NOT NULL DEFAULT 0  -- counts changes to the group
     );
     CREATE TABLE members (
        group_name TEXT NOT NULL,
        username   TEXT NOT NULL,
        admin      BOOLEAN NOT NULL DEFAULT false,
        PRIMARY KEY (group_name, username)
     );
     CREATE TABLE invites (
        group_name TEXT NOT NULL,
        username   TEXT NOT NULL,
        by_user    TEXT NOT NULL,
        at_ms      BIGINT NOT NULL,
        PRIMARY KEY (group_name, username)
     );
     CREATE TABLE conversations (
        key  TEXT PRIMARY KEY,         -- '#group' or '@a|b' (names in order)
        head BIGINT NOT NULL           -- the last sequence number (0: empty)
     );
     CREATE TABLE files (
        id         BIGSERIAL PRIMARY KEY,
        size       BIGINT NOT NULL,
        sha256     TEXT NOT NULL,
        name       TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        complete   BOOLEAN NOT NULL,   -- false while uploading
        released   BOOLEAN NOT NULL,   -- true once every member has it: chunks dropped
        voice      TEXT                -- a voice note: '<duration-ms> <format>'
     );
     CREATE TABLE log (
        conv    TEXT NOT NULL,
        seq     BIGINT NOT NULL,
        at_ms   BIGINT NOT NULL,
        sender  TEXT NOT NULL,
        kind    TEXT NOT NULL,         -- 'text' or 'file'
        key     TEXT NOT NULL,         -- text: the content key; file: ''
        body    TEXT NOT NULL,         -- text: the base64 body; file: ''
        file_id BIGINT,
        PRIMARY KEY (conv, seq)
     );
     CREATE INDEX log_by_file ON log (file_id) WHERE file_id IS NOT NULL;
     CREATE TABLE file_chunks (
        file_id      BIGINT NOT NULL,
        chunk_offset BIGINT NOT NULL,
        key          TEXT NOT NULL,
        body         TEXT NOT NULL,
        PRIMARY KEY (file_id, chunk_offset)
     );
     CREATE TABLE cursors (
        username TEXT NOT NULL,
        conv     TEXT NOT NULL,
        acked    BIGINT NOT NULL,
        PRIMARY KEY (username, conv)
     );
     CREATE INDEX cursors_by_conv ON cursors (conv, acked);
     CREATE TABLE sends (
        username TEXT NOT NULL,
        send_id  TEXT NOT NULL,
        at_ms    BIGINT NOT NULL,
        refs     TEXT NOT NULL,        -- 'conv seq' pairs, ',' between
        PRIMARY KEY (username, send_id)
     );
     CREATE TABLE devices (
        token_hash   TEXT PRIMARY KEY, -- SHA-256 of the device token, hex
        username     TEXT NOT NULL,
        created_ms   BIGINT NOT NULL,
        last_used_ms BIGINT NOT NULL
     );
     CREATE INDEX devices_by_user ON devices (username);"];

/// Identifies muchat's advisory lock (held while migrating).
const MIGRATION_LOCK: i64 = 0x6d75_6368_6174;

/// How long to wait for a connection before an operation fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Read connections kept in the pool.
const READERS: u32 = 8;

/// An upload not finished after this long was cut short (its server
/// stopped): its chunks are dropped. Another server may be receiving a
/// file right now, so a start-up cannot simply drop every incomplete one.
const STALE_UPLOAD_MS: u64 = 6 * 3_600_000;

/// Times a batch is run again after PostgreSQL aborted it for a deadlock
/// or serialization conflict with another server.
const CONFLICT_RETRIES: usize = 5;

/// The PostgreSQL-backed [`super::Store`].
pub type PostgresStore = LogStore<PostgresReads>;

/// The read half: a pool of connections.
pub struct PostgresReads {
    pool: r2d2::Pool<PostgresConnectionManager<NoTls>>,
}

/// Connection settings from a `postgres://` URL, with a short connect
/// timeout so an unreachable database fails requests quickly.
pub(super) fn config(url: &str) -> StoreResult<postgres::Config> {
    let mut config = postgres::Config::from_str(url)
        .map_err(|e| StoreError::Unreachable(format!("bad database URL: {e}")))?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("muchat");
    }
    Ok(config)
}

/// A URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl LogStore<PostgresReads> {
    /// Connects to the database at `url`, brings its schema up to date,
    /// and starts the writer. Fails if the database cannot be reached or
    /// is from a newer muchat.
    pub fn connect(url: &str, batch: Option<BatchHook>) -> StoreResult<PostgresStore> {
        let config = config(url)?;
        let unreachable =
            |e: &dyn std::fmt::Display| StoreError::Unreachable(format!("{}: {e}", redact(url)));
        let mut writer = config.connect(NoTls).map_err(|e| unreachable(&e))?;
        migrate(&mut writer)?;
        let stale = crate::clock::now_ms().saturating_sub(STALE_UPLOAD_MS) as i64;
        let cutoff = crate::clock::now_ms().saturating_sub(SEND_ID_DAYS * 86_400_000) as i64;
        writer.execute(
            "DELETE FROM file_chunks WHERE file_id IN
               (SELECT id FROM files WHERE NOT complete AND created_ms < $1)",
            &[&stale],
        )?;
        writer.execute(
            "DELETE FROM files WHERE NOT complete AND created_ms < $1",
            &[&stale],
        )?;
        writer.execute("DELETE FROM sends WHERE at_ms < $1", &[&cutoff])?;
        let manager = PostgresConnectionManager::new(config.clone(), NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(READERS)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            // Failures are the store's errors to report, not r2d2's to log.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(|e| unreachable(&e))?;
        let batcher = PostgresBatcher {
            config,
            client: Some(writer),
            statements: HashMap::new(),
        };
        LogStore::start(PostgresReads { pool }, batcher, batch)
            .map_err(|e| StoreError::Unreachable(e.to_string()))
    }
}

/// Brings the schema up to date under an advisory lock; refuses a
/// database from a newer version.
pub(super) fn migrate(client: &mut Client) -> StoreResult<()> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = migrate_locked(client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

fn migrate_locked(client: &mut Client) -> StoreResult<()> {
    // Checked first: CREATE TABLE IF NOT EXISTS would log a notice at every start.
    let exists: bool = client
        .query_one("SELECT to_regclass('muchat_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS muchat_schema (version INTEGER NOT NULL)")?;
    }
    let found: i32 = client
        .query_opt("SELECT version FROM muchat_schema", &[])?
        .map_or(0, |r| r.get(0));
    let newest = MIGRATIONS.len();
    let found = usize::try_from(found).map_err(|_| StoreError::Corrupt("muchat_schema"))?;
    if found > newest {
        return Err(StoreError::Unusable {
            path: "the database".into(),
            why: format!(
                "schema version {found} is newer than this server understands ({newest}); upgrade muchat"
            ),
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found) {
        if found > 0 {
            tracing::info!(from = i, to = i + 1, "migrating the database schema");
        }
        let mut tx = client.transaction()?;
        tx.batch_execute(step)?;
        tx.execute("DELETE FROM muchat_schema", &[])?;
        tx.execute(
            "INSERT INTO muchat_schema (version) VALUES ($1)",
            &[&((i + 1) as i32)],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// The writer half: one connection, opened again after it breaks.
struct PostgresBatcher {
    config: postgres::Config,
    client: Option<Client>,
    /// Statements prepared on `client` (forgotten with it).
    statements: HashMap<&'static str, Statement>,
}

/// Why a batch did not commit.
enum BatchError {
    /// PostgreSQL aborted it for a conflict with another server: run it again.
    Conflict(postgres::Error),
    /// One op failed on its own: run the batch again, each op isolated.
    Op(postgres::Error),
    /// The connection or the commit failed: every op fails.
    Batch(StoreError),
}

fn is_conflict(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

impl PostgresBatcher {
    fn client(&mut self) -> StoreResult<&mut Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.statements.clear();
            let c = self
                .config
                .connect(NoTls)
                .map_err(|e| StoreError::Unreachable(e.to_string()))?;
            tracing::info!("connected to the database again");
            self.client = Some(c);
        }
        self.client.as_mut().ok_or(StoreError::Stopped)
    }

    /// Runs the batch in one transaction; `isolated` puts each op in a
    /// savepoint of its own so its failure is only its own.
    fn run(
        &mut self,
        ops: &[&Op],
        isolated: bool,
    ) -> Result<Vec<StoreResult<Outcome>>, BatchError> {
        let PostgresBatcher {
            client, statements, ..
        } = self;
        let client = client
            .as_mut()
            .ok_or(BatchError::Batch(StoreError::Stopped))?;
        let mut tx = client
            .transaction()
            .map_err(|e| BatchError::Batch(e.into()))?;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let result = if isolated {
                let mut sp = tx
                    .savepoint("op")
                    .map_err(|e| BatchError::Batch(e.into()))?;
                let r = apply(&mut sp, statements, op);
                match r {
                    Ok(_) => sp.commit().map_err(|e| BatchError::Batch(e.into()))?,
                    Err(_) => sp.rollback().map_err(|e| BatchError::Batch(e.into()))?,
                }
                r
            } else {
                apply(&mut tx, statements, op)
            };
            match result {
                Ok(o) => results.push(Ok(o)),
                Err(StoreError::Postgres(e)) if is_conflict(&e) => {
                    return Err(BatchError::Conflict(e))
                }
                Err(StoreError::Postgres(e)) if !isolated && !e.is_closed() => {
                    return Err(BatchError::Op(e))
                }
                Err(e) if isolated => results.push(Err(e)),
                Err(e) => return Err(BatchError::Batch(e)),
            }
        }
        match tx.commit() {
            Ok(()) => Ok(results),
            Err(e) if is_conflict(&e) => Err(BatchError::Conflict(e)),
            Err(e) => Err(BatchError::Batch(e.into())),
        }
    }
}

impl Batcher for PostgresBatcher {
    fn apply_batch(&mut self, ops: &[&Op]) -> Vec<StoreResult<Outcome>> {
        let fail_all = |e: &StoreError| {
            ops.iter()
                .map(|_| Err(StoreError::Unreachable(e.to_string())))
                .collect()
        };
        if ops.iter().all(|op| matches!(op, Op::Nothing)) {
            // Barriers only: nothing to send to the database.
            return ops.iter().map(|_| Ok(Outcome::Count(1))).collect();
        }
        let mut isolated = false;
        let mut conflicts = 0;
        loop {
            if let Err(e) = self.client() {
                return fail_all(&e);
            }
            match self.run(ops, isolated) {
                Ok(results) => return results,
                Err(BatchError::Conflict(e)) if conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::debug!("batch ran into another server's ({e}); running it again");
                }
                Err(BatchError::Conflict(e)) => return fail_all(&e.into()),
                Err(BatchError::Op(e)) if !isolated => {
                    tracing::debug!("an op failed ({e}); running the batch op by op");
                    isolated = true;
                }
                Err(BatchError::Op(e)) => return fail_all(&e.into()),
                Err(BatchError::Batch(e)) => {
                    if self.client.as_ref().is_some_and(Client::is_closed) {
                        self.client = None;
                    }
                    return fail_all(&e);
                }
            }
        }
    }

    fn tidy(&mut self) -> StoreResult<()> {
        let client = self.client()?;
        let mut tx = client.transaction()?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS releasing (id BIGINT PRIMARY KEY) ON COMMIT DELETE ROWS;
             INSERT INTO releasing
                SELECT f.id FROM files f WHERE f.complete AND NOT f.released
                  AND NOT EXISTS (SELECT 1 FROM log l JOIN cursors c ON c.conv = l.conv
                                  WHERE l.file_id = f.id AND c.acked < l.seq);
             DELETE FROM file_chunks WHERE file_id IN (SELECT id FROM releasing);
             UPDATE files SET released = true WHERE id IN (SELECT id FROM releasing);",
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// A statement prepared once per connection.
fn prepared(
    tx: &mut Transaction<'_>,
    statements: &mut HashMap<&'static str, Statement>,
    sql: &'static str,
) -> StoreResult<Statement> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = tx.prepare(sql)?;
    statements.insert(sql, s.clone());
    Ok(s)
}

fn apply(
    tx: &mut Transaction<'_>,
    st: &mut HashMap<&'static str, Statement>,
    op: &Op,
) -> StoreResult<Outcome> {
    let now = crate::clock::now_ms() as i64;
    let count = |n: u64| Ok(Outcome::Count(n));
    match op {
        Op::Nothing => count(1),
        Op::CreateUser(u) => {
            let s = prepared(
                tx,
                st,
                "INSERT INTO users (username, name, verifier, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
            )?;
            count(tx.execute(&s, &[&u.username.as_str(), &u.name, &u.verifier, &now])?)
        }
        Op::CreateGroup(g, owner, private) => {
            let conv = ConvId::Group(g.clone()).key();
            let created = tx.execute(
                "INSERT INTO groups (name, owner, created_ms, private, version)
                 VALUES ($1, $2, $3, $4, 1) ON CONFLICT DO NOTHING",
                &[&g.as_str(), &owner.as_str(), &now, private],
            )? == 1;
            if created {
                tx.execute(
                    "INSERT INTO members (group_name, username) VALUES ($1, $2)",
                    &[&g.as_str(), &owner.as_str()],
                )?;
                tx.execute(
                    "INSERT INTO conversations (key, head) VALUES ($1, 0) ON CONFLICT DO NOTHING",
                    &[&conv],
                )?;
                cursor_at_head(tx, owner, &conv)?;
            }
            count(u64::from(created))
        }
        Op::SetMember(g, u, member) => {
            let conv = ConvId::Group(g.clone()).key();
            let changed = if *member {
                let added = tx.execute(
                    "INSERT INTO members (group_name, username) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[&g.as_str(), &u.as_str()],
                )? == 1;
                if added {
                    cursor_at_head(tx, u, &conv)?;
                    tx.execute(
                        "DELETE FROM invites WHERE group_name = $1 AND username = $2",
                        &[&g.as_str(), &u.as_str()],
                    )?;
                }
                added
            } else {
                tx.execute(
                    "DELETE FROM cursors WHERE username = $1 AND conv = $2",
                    &[&u.as_str(), &conv],
                )?;
                tx.execute(
                    "DELETE FROM members WHERE group_name = $1 AND username = $2",
                    &[&g.as_str(), &u.as_str()],
                )? == 1
            };
            if changed {
                bump_version(tx, g)?;
            }
            let head: Option<i64> = tx
                .query_opt("SELECT head FROM conversations WHERE key = $1", &[&conv])?
                .map(|r| r.get(0));
            Ok(Outcome::Membership(head.unwrap_or(0) as u64, changed))
        }
        Op::Cursors(user) => {
            let s = prepared(
                tx,
                st,
                "SELECT c.conv, c.acked, v.head FROM cursors c JOIN conversations v ON v.key = c.conv
                 WHERE c.username = $1",
            )?;
            let mut out = Vec::new();
            for r in tx.query(&s, &[&user.as_str()])? {
                let key: String = r.get(0);
                out.push(Cursor {
                    conv: ConvId::parse_key(&key).ok_or(StoreError::Corrupt("cursors"))?,
                    acked: r.get::<_, i64>(1) as u64,
                    head: r.get::<_, i64>(2) as u64,
                });
            }
            Ok(Outcome::Cursors(out))
        }
        Op::ChangeGroup(g, change) => {
            match change {
                GroupChange::Invite { user, by } => {
                    tx.execute(
                        "INSERT INTO invites (group_name, username, by_user, at_ms)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (group_name, username)
                         DO UPDATE SET by_user = EXCLUDED.by_user, at_ms = EXCLUDED.at_ms",
                        &[&g.as_str(), &user.as_str(), &by.as_str(), &now],
                    )?;
                }
                GroupChange::Admin(u, admin) => {
                    tx.execute(
                        "UPDATE members SET admin = $3 WHERE group_name = $1 AND username = $2",
                        &[&g.as_str(), &u.as_str(), admin],
                    )?;
                }
                GroupChange::Owner(u) => {
                    tx.execute(
                        "UPDATE members SET admin = true WHERE group_name = $1
                           AND username = (SELECT owner FROM groups WHERE name = $1)",
                        &[&g.as_str()],
                    )?;
                    tx.execute(
                        "UPDATE groups SET owner = $2 WHERE name = $1",
                        &[&g.as_str(), &u.as_str()],
                    )?;
                    tx.execute(
                        "UPDATE members SET admin = false WHERE group_name = $1 AND username = $2",
                        &[&g.as_str(), &u.as_str()],
                    )?;
                }
            }
            bump_version(tx, g)?;
            count(1)
        }
        Op::Append(a) => append(tx, st, a).map(Outcome::Appended),
        Op::Ack(user, conv, seq) => {
            let s = prepared(
                tx,
                st,
                "UPDATE cursors SET acked = $3 WHERE username = $1 AND conv = $2 AND acked < $3",
            )?;
            count(tx.execute(&s, &[&user.as_str(), &conv.key(), &(*seq as i64)])?)
        }
        Op::NewFile(f) => {
            let row = tx.query_one(
                "INSERT INTO files (size, sha256, name, created_ms, complete, released, voice)
                 VALUES ($1, $2, $3, $4, false, false, $5) RETURNING id",
                &[
                    &(f.size as i64),
                    &format_sha256(&f.sha256),
                    &f.name,
                    &now,
                    &f.voice.map(|v| v.to_wire()),
                ],
            )?;
            count(row.get::<_, i64>(0) as u64)
        }
        Op::SaveChunk(file_id, c) => {
            let s = prepared(
                tx,
                st,
                "INSERT INTO file_chunks (file_id, chunk_offset, key, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (file_id, chunk_offset) DO UPDATE SET key = EXCLUDED.key, body = EXCLUDED.body",
            )?;
            count(tx.execute(
                &s,
                &[
                    &(*file_id as i64),
                    &(c.offset as i64),
                    &c.key.to_b64(),
                    &c.body.as_str(),
                ],
            )?)
        }
        Op::DiscardFile(file_id) => {
            let id = *file_id as i64;
            tx.execute("DELETE FROM file_chunks WHERE file_id = $1", &[&id])?;
            tx.execute("DELETE FROM files WHERE id = $1 AND NOT complete", &[&id])?;
            count(1)
        }
        Op::AddDevice(user, hash) => count(tx.execute(
            "INSERT INTO devices (token_hash, username, created_ms, last_used_ms)
             VALUES ($1, $2, $3, $3)
             ON CONFLICT (token_hash) DO UPDATE SET username = EXCLUDED.username,
               last_used_ms = EXCLUDED.last_used_ms",
            &[&format_sha256(hash), &user.as_str(), &now],
        )?),
        Op::ForgetDevice(hash) => count(tx.execute(
            "DELETE FROM devices WHERE token_hash = $1",
            &[&format_sha256(hash)],
        )?),
        Op::CountChunks(file_id) => {
            let n: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM file_chunks WHERE file_id = $1",
                    &[&(*file_id as i64)],
                )?
                .get(0);
            count(n as u64)
        }
    }
}

/// Starts `user`'s cursor in `conv` at its head: a new member does not
/// get the group's past as unread.
fn cursor_at_head(tx: &mut Transaction<'_>, user: &Username, conv: &str) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO cursors (username, conv, acked)
         SELECT $1, key, head FROM conversations WHERE key = $2
         ON CONFLICT (username, conv) DO UPDATE SET acked = EXCLUDED.acked",
        &[&user.as_str(), &conv],
    )?;
    Ok(())
}

/// Counts a change to the group (see [`GroupRecord::version`]).
fn bump_version(tx: &mut Transaction<'_>, g: &GroupName) -> StoreResult<()> {
    tx.execute(
        "UPDATE groups SET version = version + 1 WHERE name = $1",
        &[&g.as_str()],
    )?;
    Ok(())
}

/// Appends one entry per conversation (see [`super::Store::append`]).
fn append(
    tx: &mut Transaction<'_>,
    st: &mut HashMap<&'static str, Statement>,
    a: &Append,
) -> StoreResult<Appended> {
    // The send id is claimed first: a repeat of a send that another server
    // is committing waits here for it, then sees its row.
    let claim = prepared(
        tx,
        st,
        "INSERT INTO sends (username, send_id, at_ms, refs) VALUES ($1, $2, $3, '')
         ON CONFLICT DO NOTHING",
    )?;
    let (from, send_id) = (a.from.as_str(), a.send_id.as_str());
    if tx.execute(&claim, &[&from, &send_id, &(a.at_ms as i64)])? == 0 {
        let refs: String = tx
            .query_one(
                "SELECT refs FROM sends WHERE username = $1 AND send_id = $2",
                &[&from, &send_id],
            )?
            .get(0);
        return parse_send_refs(&refs).map(Appended::Repeat);
    }
    let (kind, key, body, file_id) = match &a.content {
        Content::Text { key, body } => ("text", key.to_b64(), body.as_str(), None),
        Content::File(f) => ("file", String::new(), "", Some(f.id as i64)),
    };
    let next = prepared(
        tx,
        st,
        "INSERT INTO conversations (key, head) VALUES ($1, 1)
         ON CONFLICT (key) DO UPDATE SET head = conversations.head + 1
         RETURNING head",
    )?;
    let insert = prepared(
        tx,
        st,
        "INSERT INTO log (conv, seq, at_ms, sender, kind, key, body, file_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )?;
    let mut entries = Vec::with_capacity(a.convs.len());
    for conv in &a.convs {
        let k = conv.key();
        let seq: i64 = tx.query_one(&next, &[&k])?.get(0);
        if let (1, Some((x, y))) = (seq, conv.direct_users()) {
            // A direct conversation's first message: both users follow it.
            tx.execute(
                "INSERT INTO cursors (username, conv, acked) VALUES ($1, $3, 0), ($2, $3, 0)
                 ON CONFLICT DO NOTHING",
                &[&x.as_str(), &y.as_str(), &k],
            )?;
        }
        tx.execute(
            &insert,
            &[
                &k,
                &seq,
                &(a.at_ms as i64),
                &from,
                &kind,
                &key,
                &body,
                &file_id,
            ],
        )?;
        entries.push(a.entry(conv, seq as u64));
    }
    if let Some(id) = file_id {
        tx.execute("UPDATE files SET complete = true WHERE id = $1", &[&id])?;
    }
    let refs = prepared(
        tx,
        st,
        "UPDATE sends SET refs = $3 WHERE username = $1 AND send_id = $2",
    )?;
    tx.execute(&refs, &[&from, &send_id, &format_send_refs(&entries)])?;
    Ok(Appended::New(entries))
}

impl PostgresReads {
    fn conn(&self) -> StoreResult<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        self.pool
            .get()
            .map_err(|e| StoreError::Unreachable(e.to_string()))
    }
}

fn user_from_row(r: &postgres::Row) -> StoreResult<UserRecord> {
    Ok(UserRecord {
        username: Username::parse(r.get(0)).map_err(|_| StoreError::Corrupt("users"))?,
        name: r.get(1),
        verifier: r.get(2),
    })
}

fn name<T>(
    s: &str,
    parse: fn(&str) -> Result<T, crate::names::NameError>,
    what: &'static str,
) -> StoreResult<T> {
    parse(s).map_err(|_| StoreError::Corrupt(what))
}

/// Groups with their members and invitations; `only` picks one.
fn read_groups(c: &mut Client, only: Option<&GroupName>) -> StoreResult<Vec<GroupRecord>> {
    let filter = only.map(GroupName::as_str);
    let mut groups: Vec<GroupRecord> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for r in c.query(
        "SELECT name, owner, private, version FROM groups
         WHERE $1::TEXT IS NULL OR name = $1 ORDER BY name",
        &[&filter],
    )? {
        let n: String = r.get(0);
        at.insert(n.clone(), groups.len());
        groups.push(GroupRecord {
            name: name(&n, GroupName::parse, "groups")?,
            owner: name(r.get(1), Username::parse, "groups")?,
            private: r.get(2),
            version: r.get::<_, i64>(3) as u64,
            members: Vec::new(),
            admins: Vec::new(),
            invited: Vec::new(),
        });
    }
    for r in c.query(
        "SELECT group_name, username, admin FROM members
         WHERE $1::TEXT IS NULL OR group_name = $1 ORDER BY group_name, username",
        &[&filter],
    )? {
        let Some(&i) = at.get(r.get::<_, &str>(0)) else {
            continue;
        };
        let u = name(r.get(1), Username::parse, "members")?;
        if r.get::<_, bool>(2) {
            groups[i].admins.push(u.clone());
        }
        groups[i].members.push(u);
    }
    for r in c.query(
        "SELECT group_name, username FROM invites
         WHERE $1::TEXT IS NULL OR group_name = $1 ORDER BY group_name, username",
        &[&filter],
    )? {
        let Some(&i) = at.get(r.get::<_, &str>(0)) else {
            continue;
        };
        groups[i]
            .invited
            .push(name(r.get(1), Username::parse, "invites")?);
    }
    Ok(groups)
}

fn log_row(r: &postgres::Row) -> LogRow {
    let file_id: Option<i64> = r.get(6);
    LogRow {
        seq: r.get(0),
        at_ms: r.get(1),
        sender: r.get(2),
        kind: r.get(3),
        key: r.get(4),
        body: r.get(5),
        file: file_id.map(|id| (id, r.get(7), r.get(8), r.get(9), r.get(10))),
    }
}

const LOG_COLUMNS: &str =
    "l.seq, l.at_ms, l.sender, l.kind, l.key, l.body, f.id, f.size, f.sha256, f.name, f.voice
     FROM log l LEFT JOIN files f ON f.id = l.file_id";

impl Reads for PostgresReads {
    fn load(&self) -> StoreResult<Snapshot> {
        let mut c = self.conn()?;
        let users = c
            .query("SELECT username, name, verifier FROM users", &[])?
            .iter()
            .map(user_from_row)
            .collect::<StoreResult<_>>()?;
        let groups = read_groups(&mut c, None)?;
        let mut heads = HashMap::new();
        for r in c.query("SELECT key, head FROM conversations", &[])? {
            let conv = ConvId::parse_key(r.get(0)).ok_or(StoreError::Corrupt("conversations"))?;
            heads.insert(conv, r.get::<_, i64>(1) as u64);
        }
        Ok(Snapshot {
            users,
            groups,
            heads,
        })
    }

    fn user(&self, username: &Username) -> StoreResult<Option<UserRecord>> {
        self.conn()?
            .query_opt(
                "SELECT username, name, verifier FROM users WHERE username = $1",
                &[&username.as_str()],
            )?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    fn group(&self, name: &GroupName) -> StoreResult<Option<GroupRecord>> {
        Ok(read_groups(&mut *self.conn()?, Some(name))?.pop())
    }

    fn previous_send(
        &self,
        user: &Username,
        send_id: &SendId,
    ) -> StoreResult<Option<Vec<(ConvId, u64)>>> {
        let refs: Option<String> = self
            .conn()?
            .query_opt(
                "SELECT refs FROM sends WHERE username = $1 AND send_id = $2 AND refs <> ''",
                &[&user.as_str(), &send_id.as_str()],
            )?
            .map(|r| r.get(0));
        refs.map(|r| parse_send_refs(&r)).transpose()
    }

    fn read(&self, conv: &ConvId, from_seq: u64, limit: usize) -> StoreResult<Vec<LogEntry>> {
        let sql = format!(
            "SELECT {LOG_COLUMNS} WHERE l.conv = $1 AND l.seq >= $2 ORDER BY l.seq LIMIT $3"
        );
        self.conn()?
            .query(&sql, &[&conv.key(), &(from_seq as i64), &(limit as i64)])?
            .iter()
            .map(|r| log_row(r).into_entry(conv))
            .collect()
    }

    fn history(&self, conv: &ConvId, limit: usize) -> StoreResult<Vec<LogEntry>> {
        let sql = format!("SELECT {LOG_COLUMNS} WHERE l.conv = $1 ORDER BY l.seq DESC LIMIT $2");
        let mut out = self
            .conn()?
            .query(&sql, &[&conv.key(), &(limit as i64)])?
            .iter()
            .map(|r| log_row(r).into_entry(conv))
            .collect::<StoreResult<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    fn chunks(&self, file_id: u64, from: u64, limit: usize) -> StoreResult<Vec<StoredChunk>> {
        self.conn()?
            .query(
                "SELECT chunk_offset, key, body FROM file_chunks
                 WHERE file_id = $1 AND chunk_offset >= $2 ORDER BY chunk_offset LIMIT $3",
                &[&(file_id as i64), &(from as i64), &(limit as i64)],
            )?
            .iter()
            .map(|r| StoredChunk::from_columns(r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    fn device_owner(
        &self,
        token_hash: [u8; 32],
        fresh_after_ms: u64,
    ) -> StoreResult<Option<Username>> {
        self.conn()?
            .query_opt(
                "SELECT username FROM devices WHERE token_hash = $1 AND last_used_ms >= $2",
                &[&format_sha256(&token_hash), &(fresh_after_ms as i64)],
            )?
            .map(|r| name(r.get(0), Username::parse, "devices"))
            .transpose()
    }

    fn undelivered_file_bytes(&self, conv: &ConvId) -> StoreResult<u64> {
        let n: i64 = self
            .conn()?
            .query_one(
                "SELECT COALESCE(SUM(f.size), 0)::BIGINT FROM log l JOIN files f ON f.id = l.file_id
                 WHERE l.conv = $1 AND NOT f.released
                   AND l.seq > (SELECT COALESCE(MIN(acked), 0) FROM cursors WHERE conv = $1)",
                &[&conv.key()],
            )?
            .get(0);
        Ok(n as u64)
    }
}
