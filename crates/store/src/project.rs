//! One project's store: a writer thread that owns the only read-write connection and commits
//! queued writes in groups (one fsync acknowledges many writers), and a pool of read-only
//! connections for readers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use holdfast_types::{Change, Epoch, Error, Kind, Lsn, Micros, Op, ProjectId, CHANGE_FORMAT_VERSION, now_micros};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::{apply_change, canonical_dump, check_project_schema, init_project_schema};
use crate::error::{Result, StoreError};
use crate::sqlite;
use crate::view::StateView;

/// Decides, against the current state, which ops a write makes; runs inside the writer's
/// transaction, so what it reads cannot change before its ops are applied. Returning an error
/// refuses the write; returning no ops writes nothing.
pub type Plan = Box<dyn FnOnce(&StateView<'_>) -> Result<Vec<Op>, Error> + Send>;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;

/// Idle read-only connections kept per project.
const MAX_IDLE_READERS: usize = 8;

/// The outcome of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The LSN of the change, or `None` when the plan made no ops.
    pub lsn: Option<Lsn>,
    /// The change's timestamp (or the time the write was looked at, when nothing was written).
    pub ts: Micros,
}

struct WriteRequest {
    actor: String,
    request_id: String,
    plan: Plan,
    reply: oneshot::Sender<Result<Committed>>,
}

/// What the writer thread is asked to do, in queue order.
enum Message {
    /// A local write (taken only while the store is the primary).
    Write(WriteRequest),
    /// Changes another region committed, applied as they are (taken only by a replica).
    Replicate { changes: Vec<Change>, reply: oneshot::Sender<Result<Lsn>> },
    /// Answered once everything queued before it is done.
    Barrier(oneshot::Sender<()>),
    /// Turns the store into the primary at `epoch` and commits `request` as the first change of
    /// that epoch.
    Promote { epoch: Epoch, request: WriteRequest },
}

/// What a copy of a project is in this region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Takes local writes.
    Primary,
    /// Applies the primary's changes; takes no local writes.
    Replica,
    /// A primary that stopped taking writes for a failover.
    Fenced,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "a replica",
            Role::Fenced => "fenced for a failover",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            0 => Role::Primary,
            1 => Role::Replica,
            _ => Role::Fenced,
        }
    }
}

pub struct ProjectStore {
    /// The project's name (names never change), for logs and scopes.
    name: String,
    id: ProjectId,
    path: PathBuf,
    tx: Mutex<Option<mpsc::UnboundedSender<Message>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    lsn: watch::Receiver<Lsn>,
    /// Set once the project's deletion is journaled (by the writer) or the store is closed for
    /// a delete: reads and writes then answer [`StoreError::Deleted`].
    deleted: std::sync::Arc<AtomicBool>,
    /// The lowest timestamp the writer may still give an uncommitted change (`i64::MAX` while
    /// it is idle); see [`ProjectStore::settled`].
    planning: std::sync::Arc<AtomicI64>,
    /// [`Role`] as a number, shared with the writer, which checks it for every write it plans.
    role: std::sync::Arc<AtomicU8>,
    /// The project's epoch, as the writer last committed it.
    epoch: std::sync::Arc<AtomicU64>,
    /// Sync commit: which replicas must have applied a write before it is acknowledged, and
    /// how long a write waits for them.
    sync: Mutex<Option<SyncCommit>>,
    /// What each replica region has applied, as its pulls acknowledge it.
    acked: watch::Sender<std::collections::BTreeMap<String, Lsn>>,
    /// Shared with the writer.
    gate: std::sync::Arc<Mutex<Option<WriteGate>>>,
}

/// Asked before every batch of local writes is planned: `false` refuses them (a primary whose
/// failover lease is in doubt, see the service's coordinator).
pub type WriteGate = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// A project's sync-commit setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncCommit {
    /// Regions whose replica must confirm a write.
    pub regions: Vec<String>,
    pub timeout: std::time::Duration,
    /// On a timeout, acknowledge the write anyway (loudly) instead of failing it.
    pub fallback: bool,
}

impl ProjectStore {
    /// Creates the database of a new, empty project at `path` (which must not exist).
    pub fn create(path: &Path, id: &ProjectId, label: &str) -> Result<Self> {
        if path.exists() {
            return Err(StoreError::Corrupt(format!("{} exists already", path.display())));
        }
        let conn = sqlite::open(path, true)?;
        init_project_schema(&conn, id, Epoch::FIRST)?;
        Self::start(conn, path, label)
    }

    /// Opens an existing project database.
    pub fn open(path: &Path, label: &str) -> Result<Self> {
        if !path.exists() {
            return Err(StoreError::Corrupt(format!("{} is missing", path.display())));
        }
        Self::start(sqlite::open(path, false)?, path, label)
    }

    fn start(conn: Connection, path: &Path, label: &str) -> Result<Self> {
        let id = check_project_schema(&conn)?;
        let view = StateView::new(&conn);
        let last = view.last_lsn()?;
        let epoch = view.epoch()?;
        let last_change = view.last_change()?;
        let last_ts = last_change.as_ref().map_or(0, |c| c.ts);
        // Nothing follows a project's deletion in its journal, so a project is deleted exactly
        // when its last change deletes its record (a delete that crashed before the catalog
        // forgot the project).
        let gone = last_change.is_some_and(|c| deletes_project(&c, &id));
        let (lsn_tx, lsn_rx) = watch::channel(last);
        let (tx, rx) = mpsc::unbounded_channel();
        let label = label.to_owned();
        metrics::gauge!("holdfast_project_lsn", "project" => label.clone()).set(last.0 as f64);
        let deleted = std::sync::Arc::new(AtomicBool::new(gone));
        let planning = std::sync::Arc::new(AtomicI64::new(i64::MAX));
        let role = std::sync::Arc::new(AtomicU8::new(Role::Primary as u8));
        let gate: std::sync::Arc<Mutex<Option<WriteGate>>> = std::sync::Arc::default();
        let shared_epoch = std::sync::Arc::new(AtomicU64::new(epoch.0));
        let writer = Writer {
            conn,
            project: id.clone(),
            last,
            last_ts,
            epoch,
            label: label.clone(),
            lsn: lsn_tx,
            deleted: deleted.clone(),
            planning: planning.clone(),
            role: role.clone(),
            shared_epoch: shared_epoch.clone(),
            gate: gate.clone(),
            promoting: false,
        };
        let handle = std::thread::Builder::new()
            .name(format!("writer-{id}"))
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            id,
            name: label,
            path: path.to_owned(),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            readers: Mutex::new(Vec::new()),
            lsn: lsn_rx,
            deleted,
            planning,
            role,
            epoch: shared_epoch,
            sync: Mutex::new(None),
            acked: watch::Sender::new(std::collections::BTreeMap::new()),
            gate,
        })
    }

    /// Sets (or clears) the gate every batch of local writes must pass.
    pub fn set_write_gate(&self, gate: Option<WriteGate>) {
        if let Ok(mut g) = self.gate.lock() {
            *g = gate;
        }
    }

    /// Turns sync commit on (or off with `None`).
    pub fn set_sync(&self, sync: Option<SyncCommit>) {
        if let Ok(mut s) = self.sync.lock() {
            *s = sync;
        }
    }

    /// A replica in `region` has durably applied everything up to `lsn`.
    pub fn acknowledge(&self, region: &str, lsn: Lsn) {
        self.acked.send_if_modified(|acked| {
            let before = acked.get(region).copied();
            let newer = before.is_none_or(|b| lsn > b);
            if newer {
                acked.insert(region.to_owned(), lsn);
            }
            newer
        });
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::SeqCst))
    }

    /// Makes this copy a replica (or a primary again after a failed failover); see also
    /// [`ProjectStore::fence`] and [`ProjectStore::promote`].
    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::SeqCst);
    }

    /// The project's epoch as last committed here.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    fn send(&self, message: Message) -> Result<()> {
        let tx = self.tx.lock().map_err(|_| StoreError::Closed)?;
        tx.as_ref().ok_or(StoreError::Closed)?.send(message).map_err(|_| StoreError::Closed)
    }

    /// Stops taking writes: the batch the writer is committing finishes, every write planned after
    /// this call is refused; returns once the writer has passed the fence.
    /// Returns the last LSN, which nothing will follow until the store is promoted again or
    /// turned back into the primary.
    pub async fn fence(&self) -> Result<Lsn> {
        self.set_role(Role::Fenced);
        let (reply, done) = oneshot::channel();
        self.send(Message::Barrier(reply))?;
        done.await.map_err(|_| StoreError::Closed)?;
        Ok(self.last_lsn())
    }

    /// Applies changes the primary committed, in one transaction; they must follow the last
    /// LSN densely and not come from an older epoch (`apply_change` checks both). Returns the
    /// new last LSN.
    pub async fn apply_replicated(&self, changes: Vec<Change>) -> Result<Lsn> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::Replicate { changes, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Makes this replica the primary at `epoch` (which must be newer than its own): `plan`'s
    /// ops become the first change of the new epoch, and local writes are taken from then on.
    pub async fn promote(&self, epoch: Epoch, actor: &str, request_id: &str, plan: Plan) -> Result<Committed> {
        let (reply, rx) = oneshot::channel();
        let request = WriteRequest { actor: actor.to_owned(), request_id: request_id.to_owned(), plan, reply };
        self.send(Message::Promote { epoch, request })?;
        rx.await.map_err(|_| StoreError::Closed)?.map_err(|e| self.explain(e))
    }

    pub fn id(&self) -> &ProjectId {
        &self.id
    }

    /// The project's name as the store was opened with it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last committed LSN.
    pub fn last_lsn(&self) -> Lsn {
        *self.lsn.borrow()
    }

    /// The last committed LSN and a time `t` such that every change with a timestamp up to `t`
    /// is at or before that LSN: the state "as of `t`" is known. A follower (the archive) uses
    /// it to say how recent a point it can restore, even while the project is idle.
    pub fn settled(&self) -> (Lsn, Micros) {
        let now = now_micros();
        let planning = self.planning.load(Ordering::SeqCst);
        let lsn = *self.lsn.borrow();
        (lsn, now.min(planning) - 1)
    }

    /// Follows the last committed LSN.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        // A clone carries the version the kept receiver saw (the store's opening LSN): marked
        // seen, so `changed()` waits for a change after this call, not the first one ever.
        let mut rx = self.lsn.clone();
        rx.mark_unchanged();
        rx
    }

    /// Queues a write and waits until it is durable (or refused).
    pub async fn write(&self, actor: &str, request_id: &str, plan: Plan) -> Result<Committed> {
        self.check_live()?;
        let role = self.role();
        if role != Role::Primary {
            return Err(StoreError::NotPrimary(role.as_str()));
        }
        let (reply, rx) = oneshot::channel();
        let request =
            WriteRequest { actor: actor.to_owned(), request_id: request_id.to_owned(), plan, reply };
        self.send(Message::Write(request))?;
        let committed = rx.await.map_err(|_| StoreError::Closed)?.map_err(|e| self.explain(e))?;
        let sync = self.sync.lock().ok().and_then(|s| s.clone());
        if let (Some(lsn), Some(sync)) = (committed.lsn, sync) {
            // Every sync replica, not just one: any of them may be the next primary.
            let mut acked = self.acked.subscribe();
            let all = |a: &std::collections::BTreeMap<String, Lsn>| sync.regions.iter().all(|r| a.get(r).is_some_and(|l| *l >= lsn));
            let confirmed = tokio::time::timeout(sync.timeout, acked.wait_for(all)).await;
            if !matches!(confirmed, Ok(Ok(_))) {
                metrics::counter!("holdfast_sync_commit_timeouts_total", "project" => self.name.clone()).increment(1);
                if !sync.fallback {
                    return Err(StoreError::SyncTimeout { lsn, regions: sync.regions.join(", "), timeout: sync.timeout });
                }
                tracing::warn!(project = %self.name, %lsn, regions = %sync.regions.join(", "), timeout = ?sync.timeout,
                    "sync replica did not confirm in time: acknowledging as async (sync_fallback is on)");
                metrics::counter!("holdfast_sync_fallbacks_total", "project" => self.name.clone()).increment(1);
            }
        }
        Ok(committed)
    }

    fn check_live(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) { Err(StoreError::Deleted) } else { Ok(()) }
    }

    /// A storage error on a deleted project (its files moved away mid-request) is "deleted".
    fn explain(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Rejected(_) | StoreError::NotPrimary(_) | StoreError::SyncTimeout { .. } => e,
            _ if self.deleted.load(Ordering::Acquire) => StoreError::Deleted,
            e => e,
        }
    }

    /// Runs `f` on a read-only connection, off the async runtime.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&StateView<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.check_live()?;
        self.read_any(f).await
    }

    /// Up to `limit` changes after `after`, in order — also once the project's deletion is
    /// journaled (but before its store is closed), so the archive can ship the deletion itself.
    pub async fn journal(&self, after: Lsn, limit: usize) -> Result<Vec<Change>> {
        self.read_any(move |view| view.journal(after, limit)).await
    }

    async fn read_any<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&StateView<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let conn = self.take_reader().map_err(|e| self.explain(e))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = f(&StateView::new(&conn));
            (conn, result)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("reader task failed: {e}")))?;
        if let Ok(mut idle) = self.readers.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
        result.map_err(|e| self.explain(e))
    }

    fn take_reader(&self) -> Result<Connection> {
        if let Some(conn) = self.readers.lock().map_err(|_| StoreError::Closed)?.pop() {
            return Ok(conn);
        }
        sqlite::open_reader(&self.path)
    }

    /// The state as canonical bytes (see [`canonical_dump`]).
    pub async fn dump(&self) -> Result<Vec<u8>> {
        self.read(|view| view.dump()).await
    }

    /// Writes a consistent copy of the database (state and journal) to `target`, which must not
    /// exist, and describes it. Readers and the writer carry on meanwhile: the copy is one read
    /// transaction (`VACUUM INTO`).
    pub async fn snapshot_into(&self, target: &Path) -> Result<SnapshotInfo> {
        let target = target.to_owned();
        let utf8 = target.to_str().ok_or_else(|| StoreError::Corrupt("snapshot path is not UTF-8".into()))?.to_owned();
        self.read(move |view| Ok(view.conn().execute("VACUUM INTO ?1", [&utf8])?)).await?;
        tokio::task::spawn_blocking(move || describe(&target))
            .await
            .map_err(|e| StoreError::Corrupt(format!("snapshot task failed: {e}")))?
    }

    /// Whether the project's deletion is journaled (or the store was closed for a delete).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Closes the store of a project being deleted: from now on reads and writes answer
    /// [`StoreError::Deleted`], even those already holding this store.
    pub fn close_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.close();
    }

    /// Stops taking writes, lets the writer commit what is queued, and waits for it to finish.
    /// Whether the store takes work: not closed.
    pub fn is_open(&self) -> bool {
        self.tx.lock().is_ok_and(|tx| tx.is_some())
    }

    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!(project = %self.id, "project writer panicked");
        }
        if let Ok(mut idle) = self.readers.lock() {
            idle.clear();
        }
    }
}

impl Drop for ProjectStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl StateView<'_> {
    pub fn dump(&self) -> Result<Vec<u8>> {
        canonical_dump(self.conn())
    }
}

/// The single writer of one project.
struct Writer {
    conn: Connection,
    project: ProjectId,
    last: Lsn,
    last_ts: Micros,
    epoch: Epoch,
    label: String,
    lsn: watch::Sender<Lsn>,
    /// Shared with the store; set when a change deletes the project's own record.
    deleted: std::sync::Arc<AtomicBool>,
    /// Shared with the store: no change of the batch being planned gets an earlier timestamp.
    planning: std::sync::Arc<AtomicI64>,
    /// Shared with the store: a write is planned only while this says primary.
    role: std::sync::Arc<AtomicU8>,
    shared_epoch: std::sync::Arc<AtomicU64>,
    /// Shared with the store: asked once per batch; `false` refuses its writes.
    gate: std::sync::Arc<Mutex<Option<WriteGate>>>,
    /// Committing the first change of a promotion: planned as the primary, while the store
    /// still says what it was until that change is committed (so nothing reads a primary whose
    /// journal does not yet say so).
    promoting: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut next = None;
        while let Some(first) = next.take().or_else(|| rx.blocking_recv()) {
            let Message::Write(first) = first else {
                self.handle(first);
                continue;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Message::Write(request)) => batch.push(request),
                    // Anything else waits until the writes queued before it are committed.
                    Ok(other) => {
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        // Every sender is gone: the store is closing. Fold the WAL back into the database so a
        // copy of the file alone is complete.
        if let Err(e) = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
            tracing::warn!(project = %self.label, error = %e, "checkpoint on close failed");
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Write(request) => self.commit_batch(&mut vec![request]),
            Message::Barrier(reply) => {
                let _ = reply.send(());
            }
            Message::Replicate { changes, reply } => {
                let _ = reply.send(self.replicate(&changes));
            }
            Message::Promote { epoch, request } => {
                let WriteRequest { actor, request_id, plan, reply } = request;
                if epoch <= self.epoch {
                    let refused = format!("cannot promote to epoch {epoch}: the project is at epoch {} already", self.epoch);
                    let _ = reply.send(Err(StoreError::Rejected(Error::new(holdfast_types::ErrorKind::Conflict, refused))));
                    return;
                }
                let epoch_before = self.epoch;
                self.epoch = epoch;
                self.promoting = true;
                let (inner, rx) = oneshot::channel();
                self.commit_batch(&mut vec![WriteRequest { actor, request_id, plan, reply: inner }]);
                self.promoting = false;
                let result = rx.blocking_recv().unwrap_or(Err(StoreError::Closed));
                if matches!(result, Ok(Committed { lsn: Some(_), .. })) {
                    self.role.store(Role::Primary as u8, Ordering::SeqCst);
                } else {
                    // Nothing of the new epoch was committed: stay what we were.
                    self.epoch = epoch_before;
                    self.shared_epoch.store(epoch_before.0, Ordering::SeqCst);
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Applies a primary's changes in one transaction (see [`ProjectStore::apply_replicated`]).
    fn replicate(&mut self, changes: &[Change]) -> Result<Lsn> {
        let role = Role::from_u8(self.role.load(Ordering::SeqCst));
        if role == Role::Primary {
            return Err(StoreError::Corrupt("the primary applies no replicated changes".into()));
        }
        let started = Instant::now();
        let (mut last, mut last_ts, mut epoch) = (self.last, self.last_ts, self.epoch);
        let mut deleted = false;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for change in changes {
            apply_change(&tx, last, change)?;
            (last, last_ts, epoch) = (change.lsn, change.ts, change.epoch.max(epoch));
            deleted |= deletes_project(change, &self.project);
        }
        tx.commit()?;
        (self.last, self.last_ts, self.epoch) = (last, last_ts, epoch);
        self.shared_epoch.store(epoch.0, Ordering::SeqCst);
        if deleted {
            self.deleted.store(true, Ordering::Release);
        }
        metrics::histogram!("holdfast_replica_apply_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("holdfast_project_lsn", "project" => self.label.clone()).set(self.last.0 as f64);
        self.lsn.send_replace(self.last);
        Ok(self.last)
    }

    /// Plans and applies every request of the batch in one transaction, each in a savepoint of
    /// its own so a refused request leaves no trace, then commits once and answers everyone.
    fn commit_batch(&mut self, batch: &mut Vec<WriteRequest>) {
        let started = Instant::now();
        let size = batch.len();
        let (last_before, ts_before) = (self.last, self.last_ts);
        let mut answers = Vec::with_capacity(size);
        let mut deleted = self.deleted.load(Ordering::Acquire);
        let floor = now_micros().max(self.last_ts);
        self.planning.store(floor, Ordering::SeqCst);
        let gate = self.gate.lock().ok().and_then(|g| g.clone());
        let gated = gate.is_some_and(|open| !open());
        let outcome = (|| -> Result<()> {
            let mut tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for request in batch.drain(..) {
                let WriteRequest { actor, request_id, plan, reply } = request;
                let ts = now_micros().max(self.last_ts).max(floor);
                let sp = tx.savepoint()?;
                let role = if self.promoting { Role::Primary } else { Role::from_u8(self.role.load(Ordering::SeqCst)) };
                let planned = if deleted {
                    // Nothing follows the project's deletion in its journal.
                    Err(StoreError::Deleted)
                } else if role != Role::Primary {
                    Err(StoreError::NotPrimary(role.as_str()))
                } else if gated {
                    Err(StoreError::NotPrimary("fenced: its failover lease is in doubt"))
                } else {
                    plan(&StateView::new(&sp)).map_err(StoreError::Rejected)
                };
                let result = match planned {
                    Err(e) => Err(e),
                    Ok(ops) if ops.is_empty() => Ok(Committed { lsn: None, ts }),
                    Ok(ops) => {
                        let change = Change {
                            v: CHANGE_FORMAT_VERSION,
                            lsn: self.last.next(),
                            epoch: self.epoch,
                            ts,
                            actor,
                            request_id,
                            ops,
                        };
                        apply_change(&sp, self.last, &change).map(|()| {
                            if deletes_project(&change, &self.project) {
                                deleted = true;
                            }
                            self.last = change.lsn;
                            self.last_ts = ts;
                            Committed { lsn: Some(change.lsn), ts }
                        })
                    }
                };
                match &result {
                    Ok(_) => sp.commit()?,
                    Err(_) => sp.finish()?, // rolls the savepoint back
                }
                answers.push((reply, result));
            }
            tx.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                if deleted {
                    self.deleted.store(true, Ordering::Release);
                }
                metrics::histogram!("holdfast_commit_seconds").record(started.elapsed().as_secs_f64());
                metrics::histogram!("holdfast_commit_batch_size").record(size as f64);
                metrics::gauge!("holdfast_project_lsn", "project" => self.label.clone()).set(self.last.0 as f64);
                self.lsn.send_replace(self.last);
                self.shared_epoch.store(self.epoch.0, Ordering::SeqCst);
                self.planning.store(i64::MAX, Ordering::SeqCst);
                for (reply, result) in answers {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                // The transaction rolled back: nothing of this batch is durable, so nobody may
                // be told otherwise.
                tracing::error!(project = %self.label, error = %e, "commit failed; batch rolled back");
                self.last = last_before;
                self.last_ts = ts_before;
                self.planning.store(i64::MAX, Ordering::SeqCst);
                let message = e.to_string();
                for (reply, _) in answers {
                    let _ = reply.send(Err(StoreError::Corrupt(format!("commit failed: {message}"))));
                }
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(StoreError::Corrupt(format!("commit failed: {message}"))));
                }
            }
        }
    }
}

/// What a project database file holds: its last change and the hash of its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub project: ProjectId,
    pub lsn: Lsn,
    /// The timestamp of the last change (0 for an empty journal).
    pub ts: Micros,
    pub state_hash: String,
}

/// Describes the project database at `path` after checking its integrity (`PRAGMA
/// integrity_check`): a snapshot is trusted only once this has passed.
pub fn describe(path: &Path) -> Result<SnapshotInfo> {
    let conn = sqlite::open_reader(path)?;
    let project = check_project_schema(&conn)?;
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        return Err(StoreError::Corrupt(format!("{} fails its integrity check: {integrity}", path.display())));
    }
    let view = StateView::new(&conn);
    let lsn = view.last_lsn()?;
    let ts = view.last_change()?.map_or(0, |c| c.ts);
    Ok(SnapshotInfo { project, lsn, ts, state_hash: crate::apply::state_hash(&conn)? })
}

/// Whether `change` deletes the project's own record (nothing follows it in a journal).
pub fn deletes_project(change: &Change, project: &ProjectId) -> bool {
    change.ops.iter().any(|op| matches!(op, Op::Delete { kind: Kind::Project, id } if id == project.as_str()))
}


