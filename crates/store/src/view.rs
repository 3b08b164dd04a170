//! Read access to one project's state and journal, on any connection (a reader, or the writer's
//! open transaction while it plans a change).

use holdfast_types::{Change, Epoch, Kind, Lsn, Micros, Op, CHANGE_FORMAT_VERSION};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use crate::error::{Result, StoreError};

/// A stored resource: its body plus what the store keeps about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub id: String,
    pub parent: Option<String>,
    /// Position among its siblings: `created_lsn << 16 | op index`.
    pub seq: i64,
    pub created_us: Micros,
    pub updated_us: Micros,
    pub body: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

pub struct StateView<'c> {
    conn: &'c Connection,
}

impl<'c> StateView<'c> {
    pub fn new(conn: &'c Connection) -> Self {
        Self { conn }
    }

    pub(crate) fn conn(&self) -> &Connection {
        self.conn
    }

    pub fn get(&self, kind: Kind, id: &str) -> Result<Option<Resource>> {
        self.conn
            .prepare_cached(
                "SELECT kind, id, parent, seq, created_us, updated_us, body FROM resources
                 WHERE kind = ?1 AND id = ?2",
            )?
            .query_row(params![kind.as_str(), id], resource_from_row)
            .optional()?
            .transpose()
    }

    /// Every resource of the project, ordered by kind and id (the canonical dump's order).
    pub fn all(&self) -> Result<Vec<Resource>> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, id, parent, seq, created_us, updated_us, body FROM resources ORDER BY kind, id")?;
        let mut out = Vec::new();
        for row in stmt.query_map([], resource_from_row)? {
            out.push(row??);
        }
        Ok(out)
    }

    /// Resources of `kind` under `parent` (or at the top level), in creation order, starting after
    /// the resource with id `after`.
    pub fn list(
        &self,
        kind: Kind,
        parent: Option<&str>,
        after: Option<&str>,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Resource>> {
        let cursor = match after {
            Some(id) => match self.get(kind, id)? {
                Some(r) => Some(r.seq),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let sql = match order {
            Order::Asc => {
                "SELECT kind, id, parent, seq, created_us, updated_us, body FROM resources
                 WHERE kind = ?1 AND parent IS ?2 AND seq > ?3 ORDER BY seq ASC LIMIT ?4"
            }
            Order::Desc => {
                "SELECT kind, id, parent, seq, created_us, updated_us, body FROM resources
                 WHERE kind = ?1 AND parent IS ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
            }
        };
        let bound = cursor.unwrap_or(match order {
            Order::Asc => i64::MIN,
            Order::Desc => i64::MAX,
        });
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(
            params![kind.as_str(), parent, bound, limit as i64],
            resource_from_row,
        )?;
        rows.map(|r| r?).collect()
    }

    /// Resources of `kind` whose id starts with `prefix`, in id order, after the id `after`
    /// (a range of the primary key: an artifact directory, say).
    pub fn list_by_id_prefix(&self, kind: Kind, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<Resource>> {
        // Every id with the prefix sorts before the prefix followed by the largest character.
        let upper = format!("{prefix}\u{10FFFF}");
        let lower = after.filter(|a| *a >= prefix).unwrap_or(prefix);
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, id, parent, seq, created_us, updated_us, body FROM resources
             WHERE kind = ?1 AND id >= ?2 AND id < ?3 AND (?4 IS NULL OR id > ?4) ORDER BY id LIMIT ?5",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), lower, upper, after, limit as i64], resource_from_row)?;
        rows.map(|r| r?).collect()
    }

    pub fn count(&self, kind: Kind, parent: Option<&str>) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM resources WHERE kind = ?1 AND parent IS ?2")?
            .query_row(params![kind.as_str(), parent], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn last_lsn(&self) -> Result<Lsn> {
        let lsn: i64 =
            self.conn.prepare_cached("SELECT COALESCE(MAX(lsn), 0) FROM journal")?.query_row([], |r| r.get(0))?;
        Ok(Lsn(lsn as u64))
    }

    /// The project this database holds.
    pub fn project_id(&self) -> Result<holdfast_types::ProjectId> {
        let id: String = self.conn.query_row("SELECT value FROM meta WHERE key = 'project_id'", [], |r| r.get(0))?;
        holdfast_types::ProjectId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("bad project id {id:?} in meta")))
    }

    pub fn epoch(&self) -> Result<Epoch> {
        let epoch: String =
            self.conn.prepare_cached("SELECT value FROM meta WHERE key = 'epoch'")?.query_row([], |r| r.get(0))?;
        epoch
            .parse()
            .map(Epoch)
            .map_err(|_| StoreError::Corrupt(format!("bad epoch {epoch:?} in meta")))
    }

    /// The first LSN of every epoch the journal holds, oldest first: where each failover's
    /// lineage begins.
    pub fn epoch_starts(&self) -> Result<Vec<(Epoch, Lsn)>> {
        let mut stmt = self.conn.prepare_cached("SELECT epoch, MIN(lsn) FROM journal GROUP BY epoch ORDER BY epoch")?;
        let rows = stmt.query_map([], |r| Ok((Epoch(r.get::<_, i64>(0)? as u64), Lsn(r.get::<_, i64>(1)? as u64))))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Up to `limit` changes with `lsn > after`, in order.
    pub fn journal(&self, after: Lsn, limit: usize) -> Result<Vec<Change>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT v, lsn, epoch, ts, actor, request_id, ops FROM journal
             WHERE lsn > ?1 ORDER BY lsn LIMIT ?2",
        )?;
        changes(stmt.query(params![after.0 as i64, limit as i64])?)
    }

    /// The journal's last change, if any.
    pub fn last_change(&self) -> Result<Option<Change>> {
        let last = self.last_lsn()?;
        Ok(self.journal(Lsn(last.0.saturating_sub(1)), 1)?.pop())
    }

    /// Every change whose ops' JSON contains `text`, in order.
    pub fn journal_mentioning(&self, text: &str) -> Result<Vec<Change>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT v, lsn, epoch, ts, actor, request_id, ops FROM journal
             WHERE instr(ops, ?1) > 0 ORDER BY lsn",
        )?;
        changes(stmt.query([text])?)
    }
}

/// Reads journal rows (`v, lsn, epoch, ts, actor, request_id, ops`) into changes.
fn changes(rows: rusqlite::Rows<'_>) -> Result<Vec<Change>> {
    let rows = rows.mapped(|r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
        ))
    });
    let mut out = Vec::new();
    for row in rows {
        let (v, lsn, epoch, ts, actor, request_id, ops) = row?;
        if v != CHANGE_FORMAT_VERSION {
            return Err(StoreError::Corrupt(format!(
                "journal entry {lsn} has format version {v}; this server reads {CHANGE_FORMAT_VERSION}"
            )));
        }
        let ops: Vec<Op> = serde_json::from_str(&ops)?;
        out.push(Change {
            v,
            lsn: Lsn(lsn as u64),
            epoch: Epoch(epoch as u64),
            ts,
            actor,
            request_id,
            ops,
        });
    }
    Ok(out)
}

fn resource_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Resource>> {
    let kind: String = r.get(0)?;
    let body: String = r.get(6)?;
    let resource = (|| {
        Ok(Resource {
            kind: Kind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown resource kind {kind:?}")))?,
            id: r.get(1)?,
            parent: r.get(2)?,
            seq: r.get(3)?,
            created_us: r.get(4)?,
            updated_us: r.get(5)?,
            body: serde_json::from_str(&body)?,
        })
    })();
    Ok(resource)
}
