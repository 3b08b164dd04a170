//! The one place that changes a project's state: [`apply_change`] applies a change to the
//! `resources` table and appends it to the `journal` table, inside the caller's transaction.
//! The primary's writer and every replay (restore, replica, tests) call the same function.

use holdfast_types::change::MAX_OPS_PER_CHANGE;
use holdfast_types::{Change, Epoch, Lsn, Op, ProjectId, CHANGE_FORMAT_VERSION};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::sqlite::user_version;
use crate::view::StateView;

/// Schema version of a project database (`PRAGMA user_version`).
pub const PROJECT_SCHEMA_VERSION: i64 = 1;

const PROJECT_SCHEMA: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE journal (
    lsn        INTEGER PRIMARY KEY,
    v          INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    request_id TEXT NOT NULL,
    ops        TEXT NOT NULL
);
CREATE TABLE resources (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    parent     TEXT,
    seq        INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX resources_by_parent ON resources (parent, kind, seq);
";

/// Creates the schema of an empty project database.
pub fn init_project_schema(conn: &Connection, project: &ProjectId, epoch: Epoch) -> Result<()> {
    let version = user_version(conn)?;
    if version != 0 {
        return Err(StoreError::Corrupt(format!(
            "project database already initialised (schema version {version})"
        )));
    }
    conn.execute_batch(PROJECT_SCHEMA)?;
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('project_id', ?1), ('epoch', ?2)",
        params![project.as_str(), epoch.0.to_string()],
    )?;
    conn.pragma_update(None, "user_version", PROJECT_SCHEMA_VERSION)?;
    Ok(())
}

/// Checks that `conn` holds a project database this build understands and returns its id.
pub fn check_project_schema(conn: &Connection) -> Result<ProjectId> {
    let version = user_version(conn)?;
    if version != PROJECT_SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "project database has schema version {version}; this server reads {PROJECT_SCHEMA_VERSION}"
        )));
    }
    let id: String = conn.query_row("SELECT value FROM meta WHERE key = 'project_id'", [], |r| r.get(0))?;
    ProjectId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("bad project id {id:?} in meta")))
}

/// Applies `change` to the state and appends it to the journal. The caller owns the transaction.
///
/// Refuses a change that would break the journal's invariants: a format version this build does
/// not know, an LSN other than `last + 1`, an epoch older than the project's. On error the caller
/// must roll back: some ops may have been applied.
pub fn apply_change(conn: &Connection, last: Lsn, change: &Change) -> Result<()> {
    apply_change_at(conn, last, StateView::new(conn).epoch()?, change).map(|_| ())
}

/// [`apply_change`] for a caller that knows the project's epoch (a replay keeps it rather than
/// reading it back for every change); returns the epoch after the change.
fn apply_change_at(conn: &Connection, last: Lsn, epoch: Epoch, change: &Change) -> Result<Epoch> {
    if change.v != CHANGE_FORMAT_VERSION {
        return Err(StoreError::Corrupt(format!(
            "change {} has format version {}; this server reads {CHANGE_FORMAT_VERSION}",
            change.lsn, change.v
        )));
    }
    if change.lsn != last.next() {
        return Err(StoreError::Corrupt(format!(
            "change {} does not follow {last}: journal LSNs are dense",
            change.lsn
        )));
    }
    if change.epoch < epoch {
        return Err(StoreError::Corrupt(format!(
            "change {} has epoch {} but the project is at epoch {epoch}",
            change.lsn, change.epoch
        )));
    }
    if change.epoch > epoch {
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'epoch'", [change.epoch.0.to_string()])?;
    }
    if change.ops.is_empty() || change.ops.len() > MAX_OPS_PER_CHANGE {
        return Err(StoreError::Corrupt(format!(
            "change {} carries {} ops; a change carries 1 to {MAX_OPS_PER_CHANGE}",
            change.lsn,
            change.ops.len()
        )));
    }
    for (index, op) in change.ops.iter().enumerate() {
        apply_op(conn, change, index, op)?;
    }
    conn.prepare_cached(
        "INSERT INTO journal (lsn, v, epoch, ts, actor, request_id, ops) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        change.lsn.0 as i64,
        change.v,
        change.epoch.0 as i64,
        change.ts,
        change.actor,
        change.request_id,
        serde_json::to_string(&change.ops)?,
    ])?;
    Ok(change.epoch)
}

fn apply_op(conn: &Connection, change: &Change, index: usize, op: &Op) -> Result<()> {
    match op {
        Op::Put { kind, id, parent, body } => {
            let seq = ((change.lsn.0 as i64) << 16) | index as i64;
            conn.prepare_cached(
                "INSERT INTO resources (kind, id, parent, seq, created_us, updated_us, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
                 ON CONFLICT (kind, id) DO UPDATE
                 SET parent = excluded.parent, updated_us = excluded.updated_us, body = excluded.body",
            )?
            .execute(params![kind.as_str(), id, parent, seq, change.ts, serde_json::to_string(body)?])?;
        }
        Op::Patch { kind, id, patch } => {
            let body: Option<String> = conn
                .prepare_cached("SELECT body FROM resources WHERE kind = ?1 AND id = ?2")?
                .query_row(params![kind.as_str(), id], |r| r.get(0))
                .optional()?;
            let Some(body) = body else {
                return Err(StoreError::Corrupt(format!(
                    "change {} patches {} {id}, which does not exist",
                    change.lsn,
                    kind.as_str()
                )));
            };
            let mut body: serde_json::Value = serde_json::from_str(&body)?;
            json_patch::merge(&mut body, patch);
            conn.prepare_cached(
                "UPDATE resources SET body = ?3, updated_us = ?4 WHERE kind = ?1 AND id = ?2",
            )?
            .execute(params![kind.as_str(), id, serde_json::to_string(&body)?, change.ts])?;
        }
        Op::Stamp { kind, id, created_us, updated_us } => {
            let stamped = conn
                .prepare_cached("UPDATE resources SET created_us = ?3, updated_us = ?4 WHERE kind = ?1 AND id = ?2")?
                .execute(params![kind.as_str(), id, created_us, updated_us])?;
            if stamped == 0 {
                return Err(StoreError::Corrupt(format!(
                    "change {} stamps {} {id}, which does not exist",
                    change.lsn,
                    kind.as_str()
                )));
            }
        }
        Op::Delete { kind, id } => {
            let deleted = conn
                .prepare_cached("DELETE FROM resources WHERE kind = ?1 AND id = ?2")?
                .execute(params![kind.as_str(), id])?;
            if deleted == 0 {
                return Err(StoreError::Corrupt(format!(
                    "change {} deletes {} {id}, which does not exist",
                    change.lsn,
                    kind.as_str()
                )));
            }
            // Children, grandchildren, …: ids are unique within a project across kinds.
            conn.prepare_cached(
                "WITH RECURSIVE doomed(id) AS (
                     SELECT id FROM resources WHERE parent = ?1
                     UNION SELECT r.id FROM resources r JOIN doomed d ON r.parent = d.id)
                 DELETE FROM resources WHERE id IN doomed",
            )?
            .execute([id])?;
        }
    }
    Ok(())
}

/// The project's state as canonical bytes: one JSON line per resource, ordered by (kind, id),
/// object keys sorted. Two stores hold the same state exactly when their dumps are equal.
pub fn canonical_dump(conn: &Connection) -> Result<Vec<u8>> {
    let mut stmt = conn.prepare(
        "SELECT kind, id, parent, seq, created_us, updated_us, body FROM resources ORDER BY kind, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut body: serde_json::Value = serde_json::from_str(&r.get::<_, String>(6)?)?;
        // Sorted whatever serde_json's map type is (a dependency may enable `preserve_order`).
        body.sort_all_objects();
        let line = serde_json::json!({
            "kind": r.get::<_, String>(0)?,
            "id": r.get::<_, String>(1)?,
            "parent": r.get::<_, Option<String>>(2)?,
            "seq": r.get::<_, i64>(3)?,
            "created_us": r.get::<_, i64>(4)?,
            "updated_us": r.get::<_, i64>(5)?,
            "body": body,
        });
        serde_json::to_writer(&mut out, &line)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// sha256 of [`canonical_dump`], hex encoded: the state's fingerprint.
pub fn state_hash(conn: &Connection) -> Result<String> {
    Ok(hex::encode(Sha256::digest(canonical_dump(conn)?)))
}

/// Changes applied in one transaction by a [`Replayer`].
const REPLAY_BATCH: u64 = 8192;

/// Applies a journal to a project database of its own: how a journal is replayed into an empty
/// store (restore, verification, undelete, the replay property test), or onto a snapshot.
///
/// Replay is fast because nobody waits on it: changes are applied in large transactions with
/// `synchronous=OFF`, and [`Replayer::finish`] makes the result durable once, at the end. A
/// replay that crashes leaves a database that must be thrown away, which is what its callers do
/// (the target is never visible before `finish`).
pub struct Replayer {
    conn: Connection,
    last: Lsn,
    /// The last LSN committed: where `last` returns to when a refused change rolls the open
    /// transaction back.
    committed: Lsn,
    /// Changes applied in the open transaction.
    pending: u64,
    /// The project's epoch after `last`.
    epoch: Epoch,
}

impl Replayer {
    /// Creates an empty project database at `path` (which must not exist).
    pub fn create(path: &std::path::Path, project: &ProjectId) -> Result<Self> {
        if path.exists() {
            return Err(StoreError::Corrupt(format!("{} exists already", path.display())));
        }
        let conn = crate::sqlite::open(path, true)?;
        init_project_schema(&conn, project, Epoch::FIRST)?;
        Self::start(conn, Lsn::ZERO)
    }

    /// Opens a project database restored from a snapshot, to replay what followed it, and makes
    /// it the database of `project` (a restore always makes a new project).
    pub fn open(path: &std::path::Path, project: &ProjectId) -> Result<Self> {
        let conn = crate::sqlite::open(path, false)?;
        check_project_schema(&conn)?;
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'project_id'", [project.as_str()])?;
        let last = StateView::new(&conn).last_lsn()?;
        Self::start(conn, last)
    }

    fn start(conn: Connection, last: Lsn) -> Result<Self> {
        conn.pragma_update(None, "synchronous", "OFF")?;
        // A large page cache: a replay touches the same index pages over and over.
        conn.pragma_update(None, "cache_size", -262_144)?; // KiB: 256 MiB
        let epoch = StateView::new(&conn).epoch()?;
        Ok(Self { conn, last, committed: last, pending: 0, epoch })
    }

    /// Applies one change. A refused change rolls back every change applied since the last
    /// commit (up to a batch), so callers treat an error as the end of the replay.
    pub fn apply(&mut self, change: &Change) -> Result<()> {
        if self.pending == 0 {
            self.conn.execute_batch("BEGIN")?;
        }
        match apply_change_at(&self.conn, self.last, self.epoch, change) {
            Ok(epoch) => self.epoch = epoch,
            Err(e) => {
                // The whole open batch goes: the replayer is back at its last commit.
                self.conn.execute_batch("ROLLBACK")?;
                self.pending = 0;
                self.last = self.committed;
                self.epoch = StateView::new(&self.conn).epoch()?;
                return Err(e);
            }
        }
        self.last = change.lsn;
        self.pending += 1;
        if self.pending >= REPLAY_BATCH {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if self.pending > 0 {
            self.conn.execute_batch("COMMIT")?;
            self.pending = 0;
            self.committed = self.last;
        }
        Ok(())
    }

    pub fn last_lsn(&self) -> Lsn {
        self.last
    }

    /// The state as canonical bytes, with everything applied so far.
    pub fn dump(&mut self) -> Result<Vec<u8>> {
        self.commit()?;
        canonical_dump(&self.conn)
    }

    /// Changes in the journal so far whose ops' JSON contains `text` (a cheap prefilter: the
    /// caller looks at the ops).
    pub fn changes_mentioning(&mut self, text: &str) -> Result<Vec<Change>> {
        self.commit()?;
        StateView::new(&self.conn).journal_mentioning(text)
    }

    /// Reads the state with everything applied so far.
    pub fn view(&mut self) -> Result<StateView<'_>> {
        self.commit()?;
        Ok(StateView::new(&self.conn))
    }

    /// [`state_hash`] of everything applied so far.
    pub fn state_hash(&mut self) -> Result<String> {
        self.commit()?;
        state_hash(&self.conn)
    }

    /// Commits, folds the WAL into the database file and fsyncs it: from here on the database
    /// survives a crash, and the file alone is complete.
    pub fn finish(mut self) -> Result<()> {
        self.commit()?;
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
        let path = self.conn.path().map(std::path::PathBuf::from);
        drop(self.conn);
        if let Some(path) = path {
            std::fs::File::open(&path)?.sync_all()?;
        }
        Ok(())
    }
}
