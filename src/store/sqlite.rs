//! The embedded default store: one SQLite database, `muchat.db`, in the
//! data directory, in WAL mode with full fsync on commit.
//!
//! All writes go to one writer thread that batches whatever is queued into
//! a single transaction (group commit): under load many messages share one
//! fsync, so durability costs little throughput. Callers that need
//! durability wait for their batch's commit; fire-and-forget writes
//! (chunks, acks) ride along in the next batch. Reads use their own
//! connection, which WAL lets run beside the writer.
//!
//! The schema carries a version in `PRAGMA user_version`; [`MIGRATIONS`]
//! brings an older database forward step by step, and a database from a
//! newer muchat is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use rusqlite::{params, Connection, OpenFlags};

use super::{
    Completion, Content, GroupRecord, Snapshot, Store, StoreError, StoreResult, StoredChunk,
    StoredMessage, UserRecord,
};
use crate::content::{Body, ContentKey};
use crate::names::{Conversation, GroupName, Username};
use crate::request::{format_sha256, parse_sha256};

/// The database file inside the data directory.
pub const DB_FILE: &str = "muchat.db";

/// Schema migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
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
        target    TEXT NOT NULL,   -- '@user' or '#group', as delivered
        conv      TEXT NOT NULL,   -- history key: '#group' or '@a|b'
        kind      TEXT NOT NULL,   -- 'text' or 'file'
        key       TEXT NOT NULL,   -- text: content key; file: ''
        body      TEXT NOT NULL    -- text: base64 body; file: '<size> <sha256> <name>'
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
];

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// A queued write.
enum Op {
    CreateUser(UserRecord),
    CreateGroup(GroupName, Username),
    SetMember(GroupName, Username, bool),
    SaveMessage(Box<StoredMessage>, Vec<(Username, u64)>),
    SaveChunk(u64, StoredChunk),
    DiscardFile(u64),
    Ack(Username, Vec<u64>),
    /// Several writes that succeed or fail together.
    Batch(Vec<Op>),
    /// Nothing: a barrier for [`Store::then`].
    Nothing,
    /// Reads a user's pending bytes on the writer, so acknowledgements
    /// queued before it are counted.
    PendingBytes(Username),
    /// Counts a file's stored chunks on the writer, after its chunk writes.
    CountChunks(u64),
}

/// Where a write's outcome goes.
enum Done {
    /// Nobody waits (chunks, acks): a failure is logged.
    Nobody,
    /// A caller blocked on the outcome.
    Waiter(Sender<StoreResult<u64>>),
    /// Work to run on the writer thread after the commit.
    Then(Completion),
}

/// A write and where its outcome goes.
struct Job {
    op: Op,
    done: Done,
}

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    writes: Sender<Job>,
    reader: Mutex<Connection>,
}

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 4096;

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`. Fails with a message
    /// naming the path if the directory cannot be created or written, or the
    /// database is corrupt or from a newer version.
    pub fn open(dir: &Path) -> StoreResult<SqliteStore> {
        let existed = dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        if !existed {
            // Messages and their keys live here: only the server's user may read them.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                StoreError(format!(
                    "cannot restrict data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let path = dir.join(DB_FILE);
        let problem = |e: &dyn std::fmt::Display| StoreError(format!("{}: {e}", path.display()));
        let writer = open_connection(&path).map_err(|e| problem(&e))?;
        migrate(&writer).map_err(|e| problem(&e))?;
        check_integrity(&writer).map_err(|e| problem(&e))?;
        // A transfer cut short by a crash leaves chunks with no message.
        writer
            .execute(
                "DELETE FROM file_chunks WHERE file_id NOT IN (SELECT id FROM messages)",
                [],
            )
            .map_err(|e| problem(&e))?;
        let reader = open_connection(&path).map_err(|e| problem(&e))?;
        let (writes, jobs) = unbounded();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(writer, &jobs))
            .map_err(|e| problem(&e))?;
        Ok(SqliteStore {
            path,
            writes,
            reader: Mutex::new(reader),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn wait(&self, op: Op) -> StoreResult<u64> {
        let (tx, rx) = bounded(1);
        self.writes
            .send(Job {
                op,
                done: Done::Waiter(tx),
            })
            .map_err(|_| StoreError("the store writer has stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError("the store writer has stopped".into()))?
    }

    fn queue(&self, op: Op, done: Done) {
        if let Err(e) = self.writes.send(Job { op, done }) {
            // The writer is gone: fail the job here so no caller hangs.
            if let Done::Then(f) = e.into_inner().done {
                f(Err(StoreError("the store writer has stopped".into())));
            }
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(err)
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    // FULL: a commit is on disk (fsync of the WAL) before it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
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
    for (i, step) in MIGRATIONS.iter().enumerate() {
        if read_version()? > i {
            continue;
        }
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| format!("cannot lock the database: {e}"))?;
        let result = if read_version()? > i {
            Ok(())
        } else {
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
    let version = read_version()?;
    if version > newest {
        return Err(format!(
            "database schema version {version} is newer than this server understands ({newest}); upgrade muchat"
        ));
    }
    Ok(())
}

fn write_loop(mut conn: Connection, jobs: &Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let outcome = apply_batch(&mut conn, &batch);
        // In queue order, so completions (replies) keep their order.
        for (job, result) in batch.into_iter().zip(outcome) {
            match job.done {
                Done::Nobody => {
                    if let Err(e) = result {
                        crate::log!("{e}");
                    }
                }
                Done::Waiter(tx) => {
                    let _ = tx.send(result);
                }
                Done::Then(f) => f(result.map(|_| ())),
            }
        }
    }
}

/// Applies a batch in one transaction. Each job gets its own result; if the
/// commit fails, every job in the batch fails.
fn apply_batch(conn: &mut Connection, batch: &[Job]) -> Vec<StoreResult<u64>> {
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return batch.iter().map(|_| Err(err(&e))).collect(),
    };
    let results: Vec<StoreResult<u64>> = batch
        .iter()
        .map(|j| apply(&tx, &j.op).map_err(err))
        .collect();
    match tx.commit() {
        Ok(()) => results,
        Err(e) => batch.iter().map(|_| Err(err(&e))).collect(),
    }
}

/// Applies one write. The result is a count: for creates 1 or 0 (created
/// or already there), for a read the number read, else 1.
fn apply(tx: &Connection, op: &Op) -> rusqlite::Result<u64> {
    let now = crate::clock::now_ms() as i64;
    match op {
        Op::Nothing => Ok(1),
        Op::PendingBytes(user) => pending_bytes(tx, user),
        Op::CountChunks(file_id) => tx
            .prepare_cached("SELECT COUNT(*) FROM file_chunks WHERE file_id = ?1")?
            .query_row([*file_id as i64], |r| r.get::<_, i64>(0))
            .map(|n| n as u64),
        Op::Batch(ops) => {
            // A savepoint makes the group all-or-nothing inside the batch's
            // transaction.
            tx.execute_batch("SAVEPOINT batch")?;
            for op in ops {
                if let Err(e) = apply(tx, op) {
                    tx.execute_batch("ROLLBACK TO batch; RELEASE batch")?;
                    return Err(e);
                }
            }
            tx.execute_batch("RELEASE batch")?;
            Ok(1)
        }
        Op::CreateUser(u) => Ok(tx
            .prepare_cached(
                "INSERT OR IGNORE INTO users (username, name, verifier, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![u.username.as_str(), u.name, u.verifier, now])? as u64),
        Op::CreateGroup(g, owner) => {
            let created = tx
                .prepare_cached("INSERT OR IGNORE INTO groups (name, owner, created_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![g.as_str(), owner.as_str(), now])?
                == 1;
            if created {
                tx.prepare_cached("INSERT OR IGNORE INTO members (group_name, username) VALUES (?1, ?2)")?
                    .execute(params![g.as_str(), owner.as_str()])?;
            }
            Ok(u64::from(created))
        }
        Op::SetMember(g, u, true) => {
            tx.prepare_cached("INSERT OR IGNORE INTO members (group_name, username) VALUES (?1, ?2)")?
                .execute(params![g.as_str(), u.as_str()])?;
            Ok(1)
        }
        Op::SetMember(g, u, false) => {
            tx.prepare_cached("DELETE FROM members WHERE group_name = ?1 AND username = ?2")?
                .execute(params![g.as_str(), u.as_str()])?;
            Ok(1)
        }
        Op::SaveMessage(m, recipients) => {
            let (kind, key, body) = match &m.content {
                Content::Text { key, body } => ("text", key.to_b64(), body.as_str().to_string()),
                Content::File { size, sha256, name } => {
                    ("file", String::new(), format!("{size} {} {name}", format_sha256(sha256)))
                }
            };
            tx.prepare_cached(
                "INSERT INTO messages (id, at_ms, sender, target, conv, kind, key, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                m.id as i64,
                m.at_ms as i64,
                m.from.as_str(),
                m.to.to_string(),
                m.conversation_key(),
                kind,
                key,
                body
            ])?;
            let mut pending =
                tx.prepare_cached("INSERT OR IGNORE INTO pending (username, message_id, bytes) VALUES (?1, ?2, ?3)")?;
            for (user, bytes) in recipients {
                pending.execute(params![user.as_str(), m.id as i64, *bytes as i64])?;
            }
            Ok(1)
        }
        Op::SaveChunk(file_id, c) => {
            tx.prepare_cached("INSERT OR REPLACE INTO file_chunks (file_id, offset, key, body) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![*file_id as i64, c.offset as i64, c.key.to_b64(), c.body.as_str()])?;
            Ok(1)
        }
        Op::DiscardFile(file_id) => {
            tx.prepare_cached("DELETE FROM file_chunks WHERE file_id = ?1")?
                .execute(params![*file_id as i64])?;
            Ok(1)
        }
        Op::Ack(user, ids) => {
            let mut del = tx.prepare_cached("DELETE FROM pending WHERE username = ?1 AND message_id = ?2")?;
            let mut gc = tx.prepare_cached(
                "DELETE FROM file_chunks WHERE file_id = ?1
                   AND NOT EXISTS (SELECT 1 FROM pending WHERE message_id = ?1)",
            )?;
            for id in ids {
                if del.execute(params![user.as_str(), *id as i64])? == 1 {
                    gc.execute(params![*id as i64])?;
                }
            }
            Ok(1)
        }
    }
}

fn pending_bytes(c: &Connection, user: &Username) -> rusqlite::Result<u64> {
    c.prepare_cached("SELECT COALESCE(SUM(bytes), 0) FROM pending WHERE username = ?1")?
        .query_row([user.as_str()], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

/// The write that stores messages with their pending rows, all or nothing.
fn save_op(batch: Vec<(StoredMessage, Vec<Username>)>) -> Op {
    let ops = batch
        .into_iter()
        .map(|(m, users)| {
            let bytes = m.pending_bytes();
            let rows = users.into_iter().map(|u| (u, bytes)).collect();
            Op::SaveMessage(Box::new(m), rows)
        })
        .collect();
    Op::Batch(ops)
}

/// Rebuilds a message from its row; a row that does not parse is reported,
/// not trusted.
fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let bad =
        |what: &str| rusqlite::Error::InvalidColumnName(format!("corrupt message row: {what}"));
    let id: i64 = r.get(0)?;
    let at_ms: i64 = r.get(1)?;
    let sender: String = r.get(2)?;
    let target: String = r.get(3)?;
    let kind: String = r.get(4)?;
    let key: String = r.get(5)?;
    let body: String = r.get(6)?;
    let content = match kind.as_str() {
        "text" => Content::Text {
            key: ContentKey::from_b64(&key).map_err(|_| bad("key"))?,
            body: Body::from_wire(&body).map_err(|_| bad("body"))?,
        },
        "file" => {
            let mut parts = body.splitn(3, ' ');
            let size = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("size"))?;
            let sha256 = parts
                .next()
                .and_then(parse_sha256)
                .ok_or_else(|| bad("sha256"))?;
            let name = parts.next().ok_or_else(|| bad("name"))?.to_string();
            Content::File { size, sha256, name }
        }
        _ => return Err(bad("kind")),
    };
    Ok(StoredMessage {
        id: id as u64,
        at_ms: at_ms as u64,
        from: Username::parse(&sender).map_err(|_| bad("sender"))?,
        to: Conversation::parse(&target).map_err(|_| bad("target"))?,
        content,
    })
}

const MESSAGE_COLUMNS: &str = "m.id, m.at_ms, m.sender, m.target, m.kind, m.key, m.body";

impl Store for SqliteStore {
    fn load(&self) -> StoreResult<Snapshot> {
        self.read(|c| {
            let bad =
                |what: String| rusqlite::Error::InvalidColumnName(format!("corrupt row: {what}"));
            let mut users = Vec::new();
            let mut stmt = c.prepare("SELECT username, name, verifier FROM users")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let name: String = r.get(0)?;
                users.push(UserRecord {
                    username: Username::parse(&name).map_err(|_| bad(name.clone()))?,
                    name: r.get(1)?,
                    verifier: r.get(2)?,
                });
            }
            let mut groups = Vec::new();
            let mut stmt = c.prepare("SELECT name, owner FROM groups ORDER BY name")?;
            let mut members =
                c.prepare("SELECT username FROM members WHERE group_name = ?1 ORDER BY username")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (name, owner): (String, String) = (r.get(0)?, r.get(1)?);
                let mut list = Vec::new();
                let mut mrows = members.query([&name])?;
                while let Some(m) = mrows.next()? {
                    let m: String = m.get(0)?;
                    list.push(Username::parse(&m).map_err(|_| bad(m.clone()))?);
                }
                groups.push(GroupRecord {
                    name: GroupName::parse(&name).map_err(|_| bad(name.clone()))?,
                    owner: Username::parse(&owner).map_err(|_| bad(owner.clone()))?,
                    members: list,
                });
            }
            let max: Option<i64> = c.query_row("SELECT MAX(id) FROM messages", [], |r| r.get(0))?;
            Ok(Snapshot {
                users,
                groups,
                max_message_id: max.unwrap_or(0) as u64,
            })
        })
    }

    fn create_user(&self, user: &UserRecord) -> StoreResult<bool> {
        self.wait(Op::CreateUser(user.clone())).map(|n| n == 1)
    }

    fn create_group(&self, name: &GroupName, owner: &Username) -> StoreResult<bool> {
        self.wait(Op::CreateGroup(name.clone(), owner.clone()))
            .map(|n| n == 1)
    }

    fn set_member(&self, group: &GroupName, user: &Username, member: bool) -> StoreResult<()> {
        self.wait(Op::SetMember(group.clone(), user.clone(), member))
            .map(|_| ())
    }

    fn save_messages(&self, batch: &[(StoredMessage, Vec<Username>)]) -> StoreResult<()> {
        self.wait(save_op(batch.to_vec())).map(|_| ())
    }

    fn save_messages_then(&self, batch: Vec<(StoredMessage, Vec<Username>)>, done: Completion) {
        self.queue(save_op(batch), Done::Then(done));
    }

    fn then(&self, done: Completion) {
        self.queue(Op::Nothing, Done::Then(done));
    }

    fn save_chunk(&self, file_id: u64, chunk: &StoredChunk) {
        self.queue(Op::SaveChunk(file_id, chunk.clone()), Done::Nobody);
    }

    fn discard_file(&self, file_id: u64) {
        self.queue(Op::DiscardFile(file_id), Done::Nobody);
    }

    fn stored_chunks(&self, file_id: u64) -> StoreResult<u64> {
        self.wait(Op::CountChunks(file_id))
    }

    fn ack(&self, user: &Username, ids: &[u64]) {
        self.queue(Op::Ack(user.clone(), ids.to_vec()), Done::Nobody);
    }

    fn pending(&self, user: &Username) -> StoreResult<Vec<StoredMessage>> {
        // Acknowledgements already queued must not be replayed.
        self.wait(Op::Nothing)?;
        self.read(|c| {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM pending p JOIN messages m ON m.id = p.message_id
                 WHERE p.username = ?1 ORDER BY m.id"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([user.as_str()], message_from_row)?;
            rows.collect()
        })
    }

    fn pending_bytes(&self, user: &Username) -> StoreResult<u64> {
        // On the writer, behind any acknowledgements already queued.
        self.wait(Op::PendingBytes(user.clone()))
    }

    fn chunks(&self, file_id: u64, from: u64, limit: usize) -> StoreResult<Vec<StoredChunk>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT offset, key, body FROM file_chunks WHERE file_id = ?1 AND offset >= ?2
                 ORDER BY offset LIMIT ?3",
            )?;
            let bad =
                |what: &str| rusqlite::Error::InvalidColumnName(format!("corrupt chunk: {what}"));
            let rows = stmt.query_map(params![file_id as i64, from as i64, limit as i64], |r| {
                let offset: i64 = r.get(0)?;
                let key: String = r.get(1)?;
                let body: String = r.get(2)?;
                Ok(StoredChunk {
                    offset: offset as u64,
                    key: ContentKey::from_b64(&key).map_err(|_| bad("key"))?,
                    body: Body::from_wire(&body).map_err(|_| bad("body"))?,
                })
            })?;
            rows.collect()
        })
    }

    fn history(&self, conversation: &str, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        self.read(|c| {
            let sql = format!(
                "SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conv = ?1
                 ORDER BY m.id DESC LIMIT ?2) ORDER BY id"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![conversation, limit as i64], message_from_row)?;
            rows.collect()
        })
    }
}
