//! The embedded default store: one SQLite database, `muchat.db`, in the
//! data directory, in WAL mode with full fsync on commit.
//!
//! All writes go to one writer thread that batches whatever is queued into
//! a single transaction (group commit): under load many messages share one
//! fsync, so durability costs little throughput. Sequence numbers are
//! assigned there, so they follow commit order, and completions run there
//! in the same order. Acknowledgements in one batch are merged (only the
//! highest per user and conversation is written). Reads use a few
//! connections of their own, which WAL lets run beside the writer.
//!
//! The schema carries a version in `PRAGMA user_version`; [`MIGRATIONS`]
//! brings an older database forward step by step (version 1, from muchat
//! 0.1, kept a pending row per recipient; version 2 turns those into
//! conversation logs and cursors), and a database from a newer muchat is
//! refused rather than guessed at.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::writer::{
    format_send_refs, parse_send_refs, Batcher, LogStore, Op, Outcome, Reads, SEND_ID_DAYS,
};
use super::{
    Append, Appended, BatchHook, Content, ConvId, Cursor, GroupChange, GroupRecord, LogEntry,
    LogRow, Snapshot, StoreError, StoreResult, StoredChunk, UserRecord,
};
use crate::names::{GroupName, Username};
use crate::request::{format_sha256, SendId};

/// The database file inside the data directory.
pub const DB_FILE: &str = "muchat.db";

/// Schema migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema (muchat 0.1): a pending row per recipient.
    "CREATE TABLE users (
        username   TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        verifier   TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE groups (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE members (
        group_name TEXT NOT NULL,
        username   TEXT NOT NULL,
        PRIMARY KEY (group_name, username)
     ) WITHOUT ROWID;
     CREATE TABLE messages (
        id        INTEGER PRIMARY KEY,
        at_ms     INTEGER NOT NULL,
        sender    TEXT NOT NULL,
        target    TEXT NOT NULL,
        conv      TEXT NOT NULL,
        kind      TEXT NOT NULL,
        key       TEXT NOT NULL,
        body      TEXT NOT NULL
     );
     CREATE INDEX messages_by_conv ON messages (conv, id);
     CREATE TABLE pending (
        username   TEXT NOT NULL,
        message_id INTEGER NOT NULL,
        bytes      INTEGER NOT NULL,
        PRIMARY KEY (username, message_id)
     ) WITHOUT ROWID;
     CREATE INDEX pending_by_message ON pending (message_id);
     CREATE TABLE file_chunks (
        file_id INTEGER NOT NULL,
        offset  INTEGER NOT NULL,
        key     TEXT NOT NULL,
        body    TEXT NOT NULL,
        PRIMARY KEY (file_id, offset)
     ) WITHOUT ROWID;",
    // 1 -> 2: conversation logs and per-member cursors. Every message gets
    // the next sequence number of its conversation (in id order); a
    // member's cursor sits just before their oldest pending message in
    // that conversation (at its end if none); files keep their chunks
    // under the same id.
    "CREATE TABLE conversations (
        key  TEXT PRIMARY KEY,        -- '#group' or '@a|b' (names in order)
        head INTEGER NOT NULL         -- the last sequence number (0: empty)
     ) WITHOUT ROWID;
     CREATE TABLE log (
        id      INTEGER PRIMARY KEY,
        conv    TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        at_ms   INTEGER NOT NULL,
        sender  TEXT NOT NULL,
        kind    TEXT NOT NULL,        -- 'text' or 'file'
        key     TEXT NOT NULL,        -- text: the content key; file: ''
        body    TEXT NOT NULL,        -- text: the base64 body; file: ''
        file_id INTEGER,              -- file: files.id
        UNIQUE (conv, seq)
     );
     CREATE INDEX log_by_file ON log (file_id) WHERE file_id IS NOT NULL;
     CREATE TABLE files (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids are never reused
        size       INTEGER NOT NULL,
        sha256     TEXT NOT NULL,
        name       TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        complete   INTEGER NOT NULL,  -- 0 while uploading
        released   INTEGER NOT NULL   -- 1 once every member has it: chunks dropped
     );
     CREATE TABLE cursors (
        username TEXT NOT NULL,
        conv     TEXT NOT NULL,
        acked    INTEGER NOT NULL,
        PRIMARY KEY (username, conv)
     ) WITHOUT ROWID;
     CREATE INDEX cursors_by_conv ON cursors (conv, acked);
     CREATE TABLE sends (
        username TEXT NOT NULL,
        send_id  TEXT NOT NULL,
        at_ms    INTEGER NOT NULL,
        refs     TEXT NOT NULL,       -- 'conv seq' pairs, ',' between
        PRIMARY KEY (username, send_id)
     ) WITHOUT ROWID;
     CREATE TABLE devices (
        token_hash   TEXT PRIMARY KEY,  -- SHA-256 of the device token, hex
        username     TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        last_used_ms INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX devices_by_user ON devices (username);
     ALTER TABLE groups ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE members ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE invites (
        group_name TEXT NOT NULL,
        username   TEXT NOT NULL,
        by         TEXT NOT NULL,
        at_ms      INTEGER NOT NULL,
        PRIMARY KEY (group_name, username)
     ) WITHOUT ROWID;

     CREATE TEMP TABLE v1_seq AS
        SELECT id, conv, ROW_NUMBER() OVER (PARTITION BY conv ORDER BY id) AS seq FROM messages;
     INSERT INTO log (conv, seq, at_ms, sender, kind, key, body, file_id)
        SELECT m.conv, s.seq, m.at_ms, m.sender, m.kind,
               CASE m.kind WHEN 'text' THEN m.key ELSE '' END,
               CASE m.kind WHEN 'text' THEN m.body ELSE '' END,
               CASE m.kind WHEN 'file' THEN m.id END
        FROM messages m JOIN v1_seq s ON s.id = m.id;
     -- A v1 file row's body is '<size> <sha256> <name>'.
     INSERT INTO files (id, size, sha256, name, created_ms, complete, released)
        SELECT id,
               CAST(substr(body, 1, instr(body, ' ') - 1) AS INTEGER),
               substr(body, instr(body, ' ') + 1, 64),
               substr(body, instr(body, ' ') + 66),
               at_ms, 1,
               NOT EXISTS (SELECT 1 FROM file_chunks c WHERE c.file_id = messages.id)
        FROM messages WHERE kind = 'file';
     INSERT INTO conversations (key, head) SELECT conv, MAX(seq) FROM log GROUP BY conv;
     INSERT OR IGNORE INTO conversations (key, head) SELECT '#' || name, 0 FROM groups;
     CREATE TEMP TABLE v1_parties AS
        SELECT '#' || group_name AS conv, username FROM members
        UNION
        SELECT key, substr(key, 2, instr(key, '|') - 2) FROM conversations WHERE key LIKE '@%'
        UNION
        SELECT key, substr(key, instr(key, '|') + 1) FROM conversations WHERE key LIKE '@%';
     INSERT INTO cursors (username, conv, acked)
        SELECT p.username, p.conv,
               COALESCE((SELECT MIN(s.seq) - 1 FROM pending q JOIN v1_seq s ON s.id = q.message_id
                         WHERE q.username = p.username AND s.conv = p.conv), c.head)
        FROM v1_parties p JOIN conversations c ON c.key = p.conv;
     DELETE FROM file_chunks WHERE file_id IN (SELECT id FROM files WHERE released = 1);
     DROP TABLE v1_parties;
     DROP TABLE v1_seq;
     DROP TABLE pending;
     DROP TABLE messages",
    // 2 -> 3: voice notes: a file may carry '<duration-ms> <format>'.
    "ALTER TABLE files ADD COLUMN voice TEXT",
];

/// The SQLite-backed [`Store`].
pub type SqliteStore = LogStore<SqliteReads>;

/// The read half of the SQLite store: a few connections of its own, which
/// WAL lets run beside the writer.
pub struct SqliteReads {
    path: PathBuf,
    /// Idle read connections; more are opened when all are busy.
    readers: Mutex<Vec<Connection>>,
    /// `DIR/lock`, locked for as long as this store is open: one server per
    /// data directory.
    _lock: std::fs::File,
}

/// The writer half: its own connection, used by the writer thread alone.
struct SqliteBatcher {
    conn: Connection,
}

/// The lock file inside the data directory; it holds the locking server's
/// process id.
pub const LOCK_FILE: &str = "lock";

/// Takes the data directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = dir.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(if holder.is_empty() {
                "the data directory is in use by another server".to_string()
            } else {
                format!("the data directory is in use by another server (pid {holder})")
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("cannot lock {}: {e}", path.display()));
        }
    }
    let write = |f: &mut std::fs::File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.flush()
    };
    write(&mut f).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(f)
}

/// Read connections kept open when idle.
const IDLE_READERS: usize = 4;

impl LogStore<SqliteReads> {
    /// Opens (creating if needed) the store in `dir`. Fails, naming the
    /// path, if the directory cannot be created or written, or the
    /// database is corrupt or from a newer version.
    pub fn open(dir: &Path) -> StoreResult<SqliteStore> {
        Self::open_with(dir, None)
    }

    /// [`open`](Self::open), running each commit's completions inside `batch`.
    pub fn open_with(dir: &Path, batch: Option<BatchHook>) -> StoreResult<SqliteStore> {
        let unusable = |path: &Path, why: String| StoreError::Unusable {
            path: path.display().to_string(),
            why,
        };
        let existed = dir.exists();
        std::fs::create_dir_all(dir)
            .map_err(|e| unusable(dir, format!("cannot create the data directory: {e}")))?;
        if !existed {
            // Messages and their keys live here: only the server's user may read them.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| unusable(dir, format!("cannot restrict the data directory: {e}")))?;
        }
        let lock = lock_dir(dir).map_err(|why| unusable(dir, why))?;
        let path = dir.join(DB_FILE);
        let problem = |e: &dyn std::fmt::Display| unusable(&path, e.to_string());
        let writer = open_connection(&path).map_err(|e| problem(&e))?;
        give_space_back(&writer, true).map_err(|e| problem(&e))?;
        migrate(&writer).map_err(|e| problem(&e))?;
        give_space_back(&writer, false).map_err(|e| problem(&e))?;
        check_integrity(&writer).map_err(|e| problem(&e))?;
        // An upload cut short by a crash leaves an incomplete file behind.
        writer
            .execute_batch(
                "DELETE FROM file_chunks WHERE file_id IN (SELECT id FROM files WHERE complete = 0);
                 DELETE FROM files WHERE complete = 0;",
            )
            .map_err(|e| problem(&e))?;
        if let Err(e) = forget_old_sends(&writer) {
            tracing::warn!("cannot forget old send ids: {e}");
        }
        let reader = open_connection(&path).map_err(|e| problem(&e))?;
        let reads = SqliteReads {
            path,
            readers: Mutex::new(vec![reader]),
            _lock: lock,
        };
        let batcher = SqliteBatcher { conn: writer };
        LogStore::start(reads, batcher, batch).map_err(|e| unusable(dir, e.to_string()))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.reads.path
    }
}

impl SqliteReads {
    /// Runs `f` on a read connection of its own (opened if none is idle),
    /// so one slow read never holds up another.
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => open_connection(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    // FULL: a commit is on disk (fsync of the WAL) before it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Makes the database give the space of deleted rows (delivered files'
/// chunks, mostly) back to the file system: incremental auto-vacuum, set
/// before the first table on a new database (`fresh`), or by one `VACUUM`
/// of an older one (after its migrations), which is logged.
fn give_space_back(conn: &Connection, fresh: bool) -> rusqlite::Result<()> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == 2 {
        return Ok(());
    }
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    if fresh && tables > 0 {
        return Ok(());
    }
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
    if tables > 0 {
        tracing::info!("turning on incremental vacuum (one VACUUM of the database)");
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

fn check_integrity(conn: &Connection) -> Result<(), String> {
    let result: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if result == "ok" {
        Ok(())
    } else {
        Err(format!(
            "database is corrupt ({result}); restore it from a backup"
        ))
    }
}

/// Brings the schema up to date; refuses a database from a newer version.
/// Each step runs in an immediate (write-locked) transaction that re-reads
/// the version, so two servers starting on one directory cannot both
/// apply it.
fn migrate(conn: &Connection) -> Result<(), String> {
    let read_version = || -> Result<usize, String> {
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| format!("not a readable muchat database ({e})"))?;
        usize::try_from(v).map_err(|_| format!("bad schema version {v}"))
    };
    let newest = MIGRATIONS.len();
    let found = read_version()?;
    if found > newest {
        return Err(format!(
            "database schema version {} is newer than this server understands ({newest}); upgrade muchat",
            read_version()?
        ));
    }
    for (i, step) in MIGRATIONS.iter().enumerate() {
        if read_version()? > i {
            continue;
        }
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| format!("cannot lock the database: {e}"))?;
        let result = if read_version()? > i {
            Ok(())
        } else {
            if found > 0 {
                tracing::info!(from = i, to = i + 1, "migrating the database schema");
            }
            conn.execute_batch(&format!("{step}; PRAGMA user_version = {};", i + 1))
        };
        match result {
            Ok(()) => conn
                .execute_batch("COMMIT")
                .map_err(|e| format!("migrating schema to version {}: {e}", i + 1))?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(format!("migrating schema to version {}: {e}", i + 1));
            }
        }
    }
    Ok(())
}

impl Batcher for SqliteBatcher {
    fn apply_batch(&mut self, ops: &[&Op]) -> Vec<StoreResult<Outcome>> {
        // First as one transaction; if any op fails, the whole batch is
        // rolled back and run again with each op in a savepoint of its
        // own, so a failed op undoes only its own writes. Ops rarely fail,
        // and two statements per op are saved on the usual path.
        for isolated in [false, true] {
            let tx = match self.conn.transaction() {
                Ok(tx) => tx,
                Err(e) => return failed_batch(ops.len(), &e),
            };
            let mut heads = Heads::default();
            let results: Vec<StoreResult<Outcome>> = ops
                .iter()
                .map(|op| apply(&tx, op, isolated, &mut heads))
                .collect();
            // Only the first run leaves heads to write back (an isolated
            // append writes its own inside its savepoint).
            let flushed = heads.flush(&tx);
            if !isolated && (flushed.is_err() || results.iter().any(Result::is_err)) {
                // Dropping the transaction rolls it back.
                continue;
            }
            return match tx.commit() {
                Ok(()) => results,
                Err(e) => failed_batch(ops.len(), &e),
            };
        }
        unreachable!("the isolated run always returns")
    }

    fn tidy(&mut self) -> StoreResult<()> {
        release_delivered_files(&self.conn)
    }
}

/// Every job of a batch whose transaction failed gets the same error.
fn failed_batch(n: usize, e: &rusqlite::Error) -> Vec<StoreResult<Outcome>> {
    (0..n)
        .map(|_| {
            Err(StoreError::Unusable {
                path: DB_FILE.into(),
                why: format!("commit failed: {e}"),
            })
        })
        .collect()
}

/// Runs `f` inside a savepoint when `isolated`, so a failure undoes only
/// its own writes (otherwise a failure fails the whole batch, which is
/// then run again isolated: see [`SqliteBatcher::apply_batch`]).
fn atomically<T>(
    tx: &Connection,
    isolated: bool,
    f: impl FnOnce() -> StoreResult<T>,
) -> StoreResult<T> {
    if !isolated {
        return f();
    }
    tx.prepare_cached("SAVEPOINT op")?.execute([])?;
    match f() {
        Ok(v) => {
            tx.prepare_cached("RELEASE op")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Err(e)
        }
    }
}

fn apply(tx: &Connection, op: &Op, isolated: bool, heads: &mut Heads) -> StoreResult<Outcome> {
    let now = crate::clock::now_ms() as i64;
    let count = |n: usize| Ok(Outcome::Count(n as u64));
    if !matches!(op, Op::Append(_)) {
        // Anything else may read a conversation's head.
        heads.flush(tx)?;
    }
    match op {
        Op::Nothing => count(1),
        Op::CreateUser(u) => count(
            tx.prepare_cached(
                "INSERT OR IGNORE INTO users (username, name, verifier, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![u.username.as_str(), u.name, u.verifier, now])?,
        ),
        Op::CreateGroup(g, owner, private) => atomically(tx, isolated, || {
            let conv = ConvId::Group(g.clone()).key();
            let created = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO groups (name, owner, created_ms, private) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![g.as_str(), owner.as_str(), now, *private])?
                == 1;
            if created {
                tx.prepare_cached("INSERT INTO members (group_name, username) VALUES (?1, ?2)")?
                    .execute(params![g.as_str(), owner.as_str()])?;
                tx.prepare_cached("INSERT OR IGNORE INTO conversations (key, head) VALUES (?1, 0)")?
                    .execute([&conv])?;
                cursor_at_head(tx, owner, &conv)?;
            }
            Ok(Outcome::Count(u64::from(created)))
        }),
        Op::SetMember(g, u, member) => atomically(tx, isolated, || {
            let conv = ConvId::Group(g.clone()).key();
            let changed = if *member {
                let added = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO members (group_name, username) VALUES (?1, ?2)",
                    )?
                    .execute(params![g.as_str(), u.as_str()])?
                    == 1;
                if added {
                    cursor_at_head(tx, u, &conv)?;
                    tx.prepare_cached("DELETE FROM invites WHERE group_name = ?1 AND username = ?2")?
                        .execute(params![g.as_str(), u.as_str()])?;
                }
                added
            } else {
                tx.prepare_cached("DELETE FROM cursors WHERE username = ?1 AND conv = ?2")?
                    .execute(params![u.as_str(), conv])?;
                tx.prepare_cached("DELETE FROM members WHERE group_name = ?1 AND username = ?2")?
                    .execute(params![g.as_str(), u.as_str()])?
                    == 1
            };
            let head: Option<i64> = tx
                .prepare_cached("SELECT head FROM conversations WHERE key = ?1")?
                .query_row([&conv], |r| r.get(0))
                .optional()?;
            Ok(Outcome::Membership(head.unwrap_or(0) as u64, changed))
        }),
        Op::Cursors(user) => Ok(Outcome::Cursors(read_cursors(tx, user)?)),
        Op::ChangeGroup(g, change) => atomically(tx, isolated, || {
            match change {
                GroupChange::Invite { user, by } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO invites (group_name, username, by, at_ms)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![g.as_str(), user.as_str(), by.as_str(), now])?;
                }
                GroupChange::Admin(u, admin) => {
                    tx.prepare_cached(
                        "UPDATE members SET admin = ?3 WHERE group_name = ?1 AND username = ?2",
                    )?
                    .execute(params![g.as_str(), u.as_str(), *admin])?;
                }
                GroupChange::Owner(u) => {
                    tx.prepare_cached(
                        "UPDATE members SET admin = 1 WHERE group_name = ?1
                           AND username = (SELECT owner FROM groups WHERE name = ?1)",
                    )?
                    .execute([g.as_str()])?;
                    tx.prepare_cached("UPDATE groups SET owner = ?2 WHERE name = ?1")?
                        .execute(params![g.as_str(), u.as_str()])?;
                    tx.prepare_cached(
                        "UPDATE members SET admin = 0 WHERE group_name = ?1 AND username = ?2",
                    )?
                    .execute(params![g.as_str(), u.as_str()])?;
                }
            }
            Ok(Outcome::Count(1))
        }),
        Op::Append(a) => {
            let appended = atomically(tx, isolated, || {
                let appended = append(tx, a, heads)?;
                if isolated {
                    heads.flush(tx)?;
                }
                Ok(appended)
            });
            if appended.is_err() {
                // Its savepoint (or the batch) is rolled back, heads too.
                heads.forget();
            }
            appended.map(Outcome::Appended)
        }
        Op::Ack(user, conv, seq) => count(
            tx.prepare_cached(
                "UPDATE cursors SET acked = ?3 WHERE username = ?1 AND conv = ?2 AND acked < ?3",
            )?
            .execute(params![user.as_str(), conv.key(), *seq as i64])?,
        ),
        Op::NewFile(f) => {
            tx.prepare_cached(
                "INSERT INTO files (size, sha256, name, created_ms, complete, released, voice)
                 VALUES (?1, ?2, ?3, ?4, 0, 0, ?5)",
            )?
            .execute(params![
                f.size as i64,
                format_sha256(&f.sha256),
                f.name,
                now,
                f.voice.map(|v| v.to_wire())
            ])?;
            Ok(Outcome::Count(tx.last_insert_rowid() as u64))
        }
        Op::SaveChunk(file_id, c) => count(
            tx.prepare_cached(
                "INSERT OR REPLACE INTO file_chunks (file_id, offset, key, body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![*file_id as i64, c.offset as i64, c.key.to_b64(), c.body.as_str()])?,
        ),
        Op::DiscardFile(file_id) => atomically(tx, isolated, || {
            tx.prepare_cached("DELETE FROM file_chunks WHERE file_id = ?1")?
                .execute([*file_id as i64])?;
            tx.prepare_cached("DELETE FROM files WHERE id = ?1 AND complete = 0")?
                .execute([*file_id as i64])?;
            Ok(Outcome::Count(1))
        }),
        Op::AddDevice(user, hash) => count(
            tx.prepare_cached(
                "INSERT OR REPLACE INTO devices (token_hash, username, created_ms, last_used_ms)
                 VALUES (?1, ?2, ?3, ?3)",
            )?
            .execute(params![format_sha256(hash), user.as_str(), now])?,
        ),
        Op::ForgetDevice(hash) => count(
            tx.prepare_cached("DELETE FROM devices WHERE token_hash = ?1")?
                .execute([format_sha256(hash)])?,
        ),
        Op::CountChunks(file_id) => Ok(Outcome::Count(
            tx.prepare_cached("SELECT COUNT(*) FROM file_chunks WHERE file_id = ?1")?
                .query_row([*file_id as i64], |r| r.get::<_, i64>(0))? as u64,
        )),
    }
}

/// Starts `user`'s cursor in `conv` at its head: a new member does not
/// get the group's past as unread.
fn cursor_at_head(tx: &Connection, user: &Username, conv: &str) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO cursors (username, conv, acked)
         SELECT ?1, key, head FROM conversations WHERE key = ?2",
    )?
    .execute(params![user.as_str(), conv])?;
    Ok(())
}

/// Conversation heads as a batch of appends moves them: each is read once,
/// advanced in memory and written back once ([`Heads::flush`]), before
/// anything else could read it and before the commit. A burst of messages
/// to one conversation then costs one `UPDATE`, not one per message.
#[derive(Default)]
struct Heads(HashMap<String, i64>);

impl Heads {
    /// Hands out `conv`'s next sequence number, creating the conversation
    /// for the first message between two users (a group's is made with
    /// the group).
    fn advance(&mut self, tx: &Connection, conv: &ConvId) -> StoreResult<i64> {
        let key = conv.key();
        let head = match self.0.get_mut(&key) {
            Some(head) => head,
            None => {
                let stored: Option<i64> = tx
                    .prepare_cached("SELECT head FROM conversations WHERE key = ?1")?
                    .query_row([&key], |r| r.get(0))
                    .optional()?;
                let head = match stored {
                    Some(head) => head,
                    None => {
                        tx.prepare_cached("INSERT INTO conversations (key, head) VALUES (?1, 0)")?
                            .execute([&key])?;
                        if let Some((x, y)) = conv.direct_users() {
                            let mut cursor = tx.prepare_cached(
                                "INSERT OR IGNORE INTO cursors (username, conv, acked) VALUES (?1, ?2, 0)",
                            )?;
                            cursor.execute(params![x.as_str(), key])?;
                            cursor.execute(params![y.as_str(), key])?;
                        }
                        0
                    }
                };
                self.0.entry(key).or_insert(head)
            }
        };
        *head += 1;
        Ok(*head)
    }

    /// Takes back the numbers [`advance`](Self::advance) just handed out
    /// for `convs`: the send was a repeat and stores nothing.
    fn retreat(&mut self, convs: &[ConvId]) {
        for conv in convs {
            if let Some(head) = self.0.get_mut(&conv.key()) {
                *head -= 1;
            }
        }
    }

    /// Writes the heads back and starts afresh.
    fn flush(&mut self, tx: &Connection) -> StoreResult<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut update = tx.prepare_cached("UPDATE conversations SET head = ?2 WHERE key = ?1")?;
        for (key, head) in self.0.drain() {
            update.execute(params![key, head])?;
        }
        Ok(())
    }

    /// Drops the heads without writing them: what advanced them was rolled back.
    fn forget(&mut self) {
        self.0.clear();
    }
}

/// Appends one entry per conversation (see [`Store::append`]). The send id
/// is claimed first: a repeat is found by the claim failing, so a new send
/// (nearly all of them) costs no lookup.
fn append(tx: &Connection, a: &Append, heads: &mut Heads) -> StoreResult<Appended> {
    let (kind, key, body, file_id) = match &a.content {
        Content::Text { key, body } => ("text", key.to_b64(), body.as_str(), None),
        Content::File(f) => ("file", String::new(), "", Some(f.id as i64)),
    };
    let mut entries = Vec::with_capacity(a.convs.len());
    for conv in &a.convs {
        entries.push(a.entry(conv, heads.advance(tx, conv)? as u64));
    }
    let claimed =
        tx.prepare_cached(
            "INSERT INTO sends (username, send_id, at_ms, refs) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            a.from.as_str(),
            a.send_id.as_str(),
            a.at_ms as i64,
            format_send_refs(&entries)
        ])? == 1;
    if !claimed {
        heads.retreat(&a.convs);
        let refs: String = tx
            .prepare_cached("SELECT refs FROM sends WHERE username = ?1 AND send_id = ?2")?
            .query_row(params![a.from.as_str(), a.send_id.as_str()], |r| r.get(0))?;
        return parse_send_refs(&refs).map(Appended::Repeat);
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO log (conv, seq, at_ms, sender, kind, key, body, file_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for e in &entries {
        insert.execute(params![
            e.conv.key(),
            e.seq as i64,
            a.at_ms as i64,
            a.from.as_str(),
            kind,
            key,
            body,
            file_id
        ])?;
    }
    if let Some(id) = file_id {
        tx.prepare_cached("UPDATE files SET complete = 1 WHERE id = ?1")?
            .execute([id])?;
    }
    Ok(Appended::New(entries))
}

fn read_cursors(c: &Connection, user: &Username) -> StoreResult<Vec<Cursor>> {
    let mut stmt = c.prepare_cached(
        "SELECT c.conv, c.acked, v.head FROM cursors c JOIN conversations v ON v.key = c.conv
         WHERE c.username = ?1",
    )?;
    let mut rows = stmt.query([user.as_str()])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        out.push(Cursor {
            conv: ConvId::parse_key(&key).ok_or(StoreError::Corrupt("cursors"))?,
            acked: r.get::<_, i64>(1)? as u64,
            head: r.get::<_, i64>(2)? as u64,
        });
    }
    Ok(out)
}

/// Drops the chunks of files every member of every conversation holding
/// them has acknowledged (history keeps the announcement).
fn release_delivered_files(conn: &Connection) -> StoreResult<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS releasing (id INTEGER PRIMARY KEY);
         DELETE FROM releasing;
         INSERT INTO releasing
            SELECT f.id FROM files f WHERE f.complete = 1 AND f.released = 0
              AND NOT EXISTS (SELECT 1 FROM log l JOIN cursors c ON c.conv = l.conv
                              WHERE l.file_id = f.id AND c.acked < l.seq);
         DELETE FROM file_chunks WHERE file_id IN (SELECT id FROM releasing);
         UPDATE files SET released = 1 WHERE id IN (SELECT id FROM releasing);",
    )?;
    tx.commit()?;
    // The freed pages go back to the file system. The pragma frees one page
    // per step, so it is stepped to the end (execute_batch steps it once).
    let mut vacuum = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut rows = vacuum.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

fn forget_old_sends(conn: &Connection) -> StoreResult<()> {
    let cutoff = crate::clock::now_ms().saturating_sub(SEND_ID_DAYS * 86_400_000);
    conn.execute("DELETE FROM sends WHERE at_ms < ?1", [cutoff as i64])?;
    Ok(())
}

/// A log row's columns (as in [`LOG_COLUMNS`]).
fn log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRow> {
    let file_id: Option<i64> = r.get(6)?;
    let file = match file_id {
        Some(id) => Some((id, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?)),
        None => None,
    };
    Ok(LogRow {
        seq: r.get(0)?,
        at_ms: r.get(1)?,
        sender: r.get(2)?,
        kind: r.get(3)?,
        key: r.get(4)?,
        body: r.get(5)?,
        file,
    })
}

const LOG_COLUMNS: &str =
    "l.seq, l.at_ms, l.sender, l.kind, l.key, l.body, f.id, f.size, f.sha256, f.name, f.voice
     FROM log l LEFT JOIN files f ON f.id = l.file_id";

/// One group with its members, admins and invitations, if it exists.
fn read_group(c: &Connection, name: &GroupName) -> StoreResult<Option<GroupRecord>> {
    let corrupt = |what| move |_| StoreError::Corrupt(what);
    let row: Option<(String, bool)> = c
        .prepare_cached("SELECT owner, private FROM groups WHERE name = ?1")?
        .query_row([name.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((owner, private)) = row else {
        return Ok(None);
    };
    let (mut members, mut admins, mut invited) = (Vec::new(), Vec::new(), Vec::new());
    let mut stmt = c.prepare_cached(
        "SELECT username, admin FROM members WHERE group_name = ?1 ORDER BY username",
    )?;
    let mut rows = stmt.query([name.as_str()])?;
    while let Some(m) = rows.next()? {
        let (u, admin): (String, bool) = (m.get(0)?, m.get(1)?);
        let u = Username::parse(&u).map_err(corrupt("members"))?;
        if admin {
            admins.push(u.clone());
        }
        members.push(u);
    }
    let mut stmt =
        c.prepare_cached("SELECT username FROM invites WHERE group_name = ?1 ORDER BY username")?;
    let mut rows = stmt.query([name.as_str()])?;
    while let Some(i) = rows.next()? {
        let u: String = i.get(0)?;
        invited.push(Username::parse(&u).map_err(corrupt("invites"))?);
    }
    Ok(Some(GroupRecord {
        // One server per database: nobody else's changes to tell apart.
        version: 0,
        name: name.clone(),
        owner: Username::parse(&owner).map_err(corrupt("groups"))?,
        private,
        members,
        admins,
        invited,
    }))
}

fn user_from_row(r: &rusqlite::Row<'_>) -> StoreResult<UserRecord> {
    let name: String = r.get(0)?;
    Ok(UserRecord {
        username: Username::parse(&name).map_err(|_| StoreError::Corrupt("users"))?,
        name: r.get(1)?,
        verifier: r.get(2)?,
    })
}

impl Reads for SqliteReads {
    fn load(&self) -> StoreResult<Snapshot> {
        self.with_reader(|c| {
            let mut users = Vec::new();
            let mut stmt = c.prepare("SELECT username, name, verifier FROM users")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                users.push(user_from_row(r)?);
            }
            let mut groups = Vec::new();
            let mut stmt = c.prepare("SELECT name FROM groups ORDER BY name")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let name: String = r.get(0)?;
                let name = GroupName::parse(&name).map_err(|_| StoreError::Corrupt("groups"))?;
                groups.extend(read_group(c, &name)?);
            }
            let mut heads = HashMap::new();
            let mut stmt = c.prepare("SELECT key, head FROM conversations")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let key: String = r.get(0)?;
                let conv = ConvId::parse_key(&key).ok_or(StoreError::Corrupt("conversations"))?;
                heads.insert(conv, r.get::<_, i64>(1)? as u64);
            }
            Ok(Snapshot {
                users,
                groups,
                heads,
            })
        })
    }

    fn user(&self, username: &Username) -> StoreResult<Option<UserRecord>> {
        self.with_reader(|c| {
            let mut stmt =
                c.prepare_cached("SELECT username, name, verifier FROM users WHERE username = ?1")?;
            let mut rows = stmt.query([username.as_str()])?;
            rows.next()?.map(user_from_row).transpose()
        })
    }

    fn group(&self, name: &GroupName) -> StoreResult<Option<GroupRecord>> {
        self.with_reader(|c| read_group(c, name))
    }

    fn previous_send(
        &self,
        user: &Username,
        send_id: &SendId,
    ) -> StoreResult<Option<Vec<(ConvId, u64)>>> {
        self.with_reader(|c| {
            let refs: Option<String> = c
                .prepare_cached("SELECT refs FROM sends WHERE username = ?1 AND send_id = ?2")?
                .query_row(params![user.as_str(), send_id.as_str()], |r| r.get(0))
                .optional()?;
            refs.map(|r| parse_send_refs(&r)).transpose()
        })
    }

    fn read(&self, conv: &ConvId, from_seq: u64, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.with_reader(|c| {
            let sql = format!(
                "SELECT {LOG_COLUMNS} WHERE l.conv = ?1 AND l.seq >= ?2 ORDER BY l.seq LIMIT ?3"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows =
                stmt.query_map(params![conv.key(), from_seq as i64, limit as i64], log_row)?;
            rows.map(|r| r?.into_entry(conv)).collect()
        })
    }

    fn history(&self, conv: &ConvId, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.with_reader(|c| {
            let sql =
                format!("SELECT {LOG_COLUMNS} WHERE l.conv = ?1 ORDER BY l.seq DESC LIMIT ?2");
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![conv.key(), limit as i64], log_row)?;
            let mut out = rows
                .map(|r| r?.into_entry(conv))
                .collect::<StoreResult<Vec<_>>>()?;
            out.reverse();
            Ok(out)
        })
    }

    fn chunks(&self, file_id: u64, from: u64, limit: usize) -> StoreResult<Vec<StoredChunk>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT offset, key, body FROM file_chunks WHERE file_id = ?1 AND offset >= ?2
                 ORDER BY offset LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![file_id as i64, from as i64, limit as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(StoredChunk::from_columns(
                    r.get::<_, i64>(0)?,
                    &r.get::<_, String>(1)?,
                    &r.get::<_, String>(2)?,
                )?);
            }
            Ok(out)
        })
    }

    fn device_owner(
        &self,
        token_hash: [u8; 32],
        fresh_after_ms: u64,
    ) -> StoreResult<Option<Username>> {
        self.with_reader(|c| {
            let name: Option<String> = c
                .prepare_cached(
                    "SELECT username FROM devices WHERE token_hash = ?1 AND last_used_ms >= ?2",
                )?
                .query_row(
                    params![format_sha256(&token_hash), fresh_after_ms as i64],
                    |r| r.get(0),
                )
                .optional()?;
            name.map(|n| Username::parse(&n).map_err(|_| StoreError::Corrupt("devices")))
                .transpose()
        })
    }

    fn undelivered_file_bytes(&self, conv: &ConvId) -> StoreResult<u64> {
        self.with_reader(|c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT COALESCE(SUM(f.size), 0) FROM log l JOIN files f ON f.id = l.file_id
                     WHERE l.conv = ?1 AND f.released = 0
                       AND l.seq > (SELECT COALESCE(MIN(acked), 0) FROM cursors WHERE conv = ?1)",
                )?
                .query_row([conv.key()], |r| r.get(0))?;
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::ContentKey;
    use crate::store::Store;
    use crossbeam_channel::bounded;

    fn user(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    fn append_sync(store: &SqliteStore, a: Append) -> Appended {
        let (tx, rx) = bounded(1);
        store.append(a, Box::new(move |r| tx.send(r).unwrap()));
        rx.recv().unwrap().unwrap()
    }

    fn text(from: &str, id: &str, convs: Vec<ConvId>) -> Append {
        let key = ContentKey::random();
        Append {
            from: user(from),
            send_id: SendId::parse(id).unwrap(),
            at_ms: 1,
            convs,
            content: Content::Text {
                body: key.seal(b"hi"),
                key,
            },
        }
    }

    #[test]
    fn appends_number_each_conversation_and_repeats_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let (a, b) = (user("alice"), user("bob"));
        let dm = ConvId::direct(&b, &a);
        assert_eq!(dm.key(), "@alice|bob");
        for (i, id) in ["s1", "s2"].into_iter().enumerate() {
            let Appended::New(e) = append_sync(&store, text("alice", id, vec![dm.clone()])) else {
                panic!("new")
            };
            assert_eq!(e[0].seq, i as u64 + 1);
        }
        let Appended::Repeat(refs) = append_sync(&store, text("alice", "s1", vec![dm.clone()]))
        else {
            panic!("a repeat")
        };
        assert_eq!(refs, vec![(dm.clone(), 1)]);
        // Bob's cursor was created at 0 with the conversation.
        let cursors_of = |u: &Username| {
            let (tx, rx) = bounded(1);
            store.cursors(u, Box::new(move |r| tx.send(r).unwrap()));
            rx.recv().unwrap().unwrap()
        };
        let cursors = cursors_of(&b);
        assert_eq!(
            cursors,
            vec![Cursor {
                conv: dm.clone(),
                acked: 0,
                head: 2
            }]
        );
        store.ack(&b, &dm, 2);
        store.ack(&b, &dm, 1);
        assert_eq!(cursors_of(&b)[0].acked, 2, "never backwards");
        assert_eq!(store.read(&dm, 2, 10).unwrap().len(), 1);
        assert_eq!(store.history(&dm, 1).unwrap()[0].seq, 2);
    }

    /// Every op's outcome in a batch, as the writer thread would get them.
    fn run(b: &mut SqliteBatcher, ops: Vec<Op>) -> Vec<StoreResult<Outcome>> {
        b.apply_batch(&ops.iter().collect::<Vec<_>>())
    }

    fn seq_of(outcome: &StoreResult<Outcome>) -> u64 {
        match outcome {
            Ok(Outcome::Appended(Appended::New(e))) => e[0].seq,
            other => panic!("not a new append: {other:?}"),
        }
    }

    #[test]
    fn heads_moved_in_a_batch_are_what_later_ops_and_a_replay_see() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join(DB_FILE)).unwrap();
        migrate(&conn).unwrap();
        let mut b = SqliteBatcher { conn };
        let (alice, bob) = (user("alice"), user("bob"));
        let g = GroupName::parse("g").unwrap();
        let conv = ConvId::Group(g.clone());
        let send = |from: &str, id: &str| Op::Append(Box::new(text(from, id, vec![conv.clone()])));

        let out = run(
            &mut b,
            vec![
                Op::CreateGroup(g.clone(), alice.clone(), false),
                send("alice", "a1"),
                send("alice", "a2"),
                send("alice", "a1"),
                Op::SetMember(g.clone(), bob.clone(), true),
                send("alice", "a3"),
                Op::Cursors(bob.clone()),
            ],
        );
        assert_eq!((seq_of(&out[1]), seq_of(&out[2])), (1, 2));
        assert!(
            matches!(&out[3], Ok(Outcome::Appended(Appended::Repeat(r))) if *r == vec![(conv.clone(), 1)]),
            "a repeat in the same batch: {:?}",
            out[3]
        );
        // Bob joined after two messages: he starts after them, and the
        // cursor read sees the third.
        assert!(
            matches!(out[4], Ok(Outcome::Membership(2, true))),
            "{:?}",
            out[4]
        );
        assert_eq!(seq_of(&out[5]), 3);
        let Ok(Outcome::Cursors(cursors)) = &out[6] else {
            panic!("{:?}", out[6])
        };
        assert_eq!(
            cursors,
            &vec![Cursor {
                conv: conv.clone(),
                acked: 2,
                head: 3
            }]
        );

        // An op that fails sends the batch round again, each op on its
        // own: the others keep consecutive numbers, the failed one takes none.
        b.conn
            .execute_batch(
                "CREATE TEMP TRIGGER refuse_bob BEFORE INSERT ON sends WHEN NEW.username = 'bob'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .unwrap();
        let out = run(
            &mut b,
            vec![send("alice", "a4"), send("bob", "b1"), send("alice", "a5")],
        );
        assert_eq!(seq_of(&out[0]), 4);
        assert!(out[1].is_err(), "{:?}", out[1]);
        assert_eq!(seq_of(&out[2]), 5);
        let (head, seqs): (i64, String) = b
            .conn
            .query_row(
                "SELECT (SELECT head FROM conversations WHERE key = '#g'),
                        (SELECT group_concat(seq) FROM (SELECT seq FROM log WHERE conv = '#g' ORDER BY seq))",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((head, seqs.as_str()), (5, "1,2,3,4,5"));
    }
}
