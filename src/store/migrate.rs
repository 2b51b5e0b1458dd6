//! Moving a single server's data directory into PostgreSQL
//! (`server migrate --from-data-dir DIR --database-url URL`), so a server
//! that outgrew one machine becomes the first of a cluster with its
//! accounts, groups, conversations, cursors, files and device tokens.
//!
//! The SQLite store is opened the usual way first (taking the directory's
//! lock, so no server can write while it is copied, and bringing its
//! schema up to date); its tables then go column for column into an empty
//! PostgreSQL database in one transaction: either everything arrives or
//! nothing does.

use std::path::Path;

use postgres::NoTls;
use rusqlite::types::Value;

use super::sqlite::{SqliteStore, DB_FILE};
use super::{StoreError, StoreResult};

/// How many rows of each table were copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied(pub Vec<(&'static str, u64)>);

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(t, n)| format!("{n} {t}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// A table to copy: its name in both databases, the SQLite columns, and
/// the PostgreSQL columns they go to (in the same order), with each
/// column's type there.
struct Table {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    types: &'static [Kind],
}

/// How a SQLite value becomes a PostgreSQL parameter.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    BigInt,
    Bool,
    /// A text column that may be NULL.
    OptText,
    /// A bigint column that may be NULL.
    OptBigInt,
}

const TABLES: &[Table] = &[
    Table {
        name: "users",
        from: "username, name, verifier, created_ms",
        to: "username, name, verifier, created_ms",
        types: &[Kind::Text, Kind::Text, Kind::Text, Kind::BigInt],
    },
    Table {
        name: "groups",
        from: "name, owner, created_ms, private",
        to: "name, owner, created_ms, private",
        types: &[Kind::Text, Kind::Text, Kind::BigInt, Kind::Bool],
    },
    Table {
        name: "members",
        from: "group_name, username, admin",
        to: "group_name, username, admin",
        types: &[Kind::Text, Kind::Text, Kind::Bool],
    },
    Table {
        name: "invites",
        from: "group_name, username, by, at_ms",
        to: "group_name, username, by_user, at_ms",
        types: &[Kind::Text, Kind::Text, Kind::Text, Kind::BigInt],
    },
    Table {
        name: "conversations",
        from: "key, head",
        to: "key, head",
        types: &[Kind::Text, Kind::BigInt],
    },
    Table {
        name: "files",
        from: "id, size, sha256, name, created_ms, complete, released, voice",
        to: "id, size, sha256, name, created_ms, complete, released, voice",
        types: &[
            Kind::BigInt,
            Kind::BigInt,
            Kind::Text,
            Kind::Text,
            Kind::BigInt,
            Kind::Bool,
            Kind::Bool,
            Kind::OptText,
        ],
    },
    Table {
        name: "log",
        from: "conv, seq, at_ms, sender, kind, key, body, file_id",
        to: "conv, seq, at_ms, sender, kind, key, body, file_id",
        types: &[
            Kind::Text,
            Kind::BigInt,
            Kind::BigInt,
            Kind::Text,
            Kind::Text,
            Kind::Text,
            Kind::Text,
            Kind::OptBigInt,
        ],
    },
    Table {
        name: "file_chunks",
        from: "file_id, offset, key, body",
        to: "file_id, chunk_offset, key, body",
        types: &[Kind::BigInt, Kind::BigInt, Kind::Text, Kind::Text],
    },
    Table {
        name: "cursors",
        from: "username, conv, acked",
        to: "username, conv, acked",
        types: &[Kind::Text, Kind::Text, Kind::BigInt],
    },
    Table {
        name: "sends",
        from: "username, send_id, at_ms, refs",
        to: "username, send_id, at_ms, refs",
        types: &[Kind::Text, Kind::Text, Kind::BigInt, Kind::Text],
    },
    Table {
        name: "devices",
        from: "token_hash, username, created_ms, last_used_ms",
        to: "token_hash, username, created_ms, last_used_ms",
        types: &[Kind::Text, Kind::Text, Kind::BigInt, Kind::BigInt],
    },
];

/// One SQLite value as the PostgreSQL column wants it.
fn convert(
    v: Value,
    kind: Kind,
    table: &'static str,
) -> StoreResult<Box<dyn postgres::types::ToSql + Sync>> {
    let bad = || StoreError::Corrupt(table);
    Ok(match (kind, v) {
        (Kind::Text | Kind::OptText, Value::Text(s)) => Box::new(s),
        (Kind::OptText, Value::Null) => Box::new(None::<String>),
        (Kind::BigInt | Kind::OptBigInt, Value::Integer(n)) => Box::new(n),
        (Kind::OptBigInt, Value::Null) => Box::new(None::<i64>),
        (Kind::Bool, Value::Integer(n)) => Box::new(n != 0),
        _ => return Err(bad()),
    })
}

/// Copies the data directory `dir` into the empty PostgreSQL database at
/// `url` (creating muchat's tables there). Refuses a database that
/// already holds accounts, groups or messages.
pub fn sqlite_to_postgres(dir: &Path, url: &str) -> StoreResult<Copied> {
    if !dir.join(DB_FILE).exists() {
        return Err(StoreError::Unusable {
            path: dir.display().to_string(),
            why: format!("no {DB_FILE} here: not a muchat data directory"),
        });
    }
    // Held to the end: no server can write to the directory meanwhile.
    let store = SqliteStore::open(dir)?;
    let source = rusqlite::Connection::open_with_flags(
        store.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut pg = super::postgres::config(url)?
        .connect(NoTls)
        .map_err(|e| StoreError::Unreachable(format!("{}: {e}", super::postgres::redact(url))))?;
    super::postgres::migrate(&mut pg)?;
    let used: i64 = pg
        .query_one(
            "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM groups)
                  + (SELECT COUNT(*) FROM log)",
            &[],
        )?
        .get(0);
    if used > 0 {
        return Err(StoreError::Unusable {
            path: super::postgres::redact(url),
            why: "the database already holds muchat data; migrate into an empty one".into(),
        });
    }
    let mut tx = pg.transaction()?;
    let mut copied = Copied::default();
    for table in TABLES {
        let placeholders: Vec<String> = (1..=table.types.len()).map(|i| format!("${i}")).collect();
        let insert = tx.prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            table.to,
            placeholders.join(", ")
        ))?;
        let mut stmt = source.prepare(&format!("SELECT {} FROM {}", table.from, table.name))?;
        let mut rows = stmt.query([])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            let mut params = Vec::with_capacity(table.types.len());
            for (i, kind) in table.types.iter().enumerate() {
                params.push(convert(row.get::<_, Value>(i)?, *kind, table.name)?);
            }
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref()).collect();
            tx.execute(&insert, &refs)?;
            n += 1;
        }
        copied.0.push((table.name, n));
    }
    // New files continue after the copied ids.
    tx.execute(
        "SELECT setval(pg_get_serial_sequence('files', 'id'), GREATEST((SELECT MAX(id) FROM files), 1))",
        &[],
    )?;
    tx.commit()?;
    drop(store);
    Ok(copied)
}
