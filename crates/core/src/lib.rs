//! The core of a Holdfast node: the [`Service`] handle, the project catalog and each project's
//! life (create, open, soft delete, recover, purge, idle close), principals and the
//! authorization check, locks, the audit log's writer, and the one door through which every
//! domain changes a project ([`Service::data`] → [`Data::commit`]).
//!
//! API Boundary: a domain crate (agents, ml, recovery, geo, governance) reads and changes a
//! project only through [`Service::data`], [`Service::data_on`], [`Data::read`] and
//! [`Data::commit`] (or [`Service::project_store`] for a read-only look at its journal), and
//! tells the core what it adds to a project's life through [`Domain`]. No domain crate opens
//! a project store or writes a journal any other way.

pub mod audit;
pub mod auth;
pub mod control_plane;
pub mod data;
pub mod domain;
pub mod idempotency;
pub mod identities;
pub mod locks;
pub mod projects;
pub mod secrets;
pub mod validate;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use auth::{Action, Caller, Grant, Principal, role_allows};
pub use data::{Data, PageQuery};
pub use domain::Domain;
pub use secrets::MasterKey;
use holdfast_blob::BlobStore;
use holdfast_store::ProjectStore;
use holdfast_store::control::{self, ControlStore};
use holdfast_types::api::Info;
use holdfast_types::{Error, ErrorKind, ProjectId, CHANGE_FORMAT_VERSION};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the service needs to start; the binary builds it from flags, environment and file.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub data_dir: PathBuf,
    pub region: String,
    /// `HOLDFAST_ADMIN_KEY`: when set, this key is an admin key and no key is generated.
    pub admin_key: Option<String>,
    /// `HOLDFAST_MASTER_KEY`: encrypts connection secrets; else `<data>/master.key` is used
    /// (and created).
    pub master_key: Option<String>,
    /// Largest uploaded file, in bytes.
    pub max_file_bytes: usize,
    /// Most projects a principal other than an Owner may hold (`None`: no limit).
    pub max_projects_per_principal: Option<u64>,
    /// A project nobody used for this long is closed (its writer thread and connections
    /// released) and opened again on its next use; `None`: never.
    pub idle_close: Option<std::time::Duration>,
}

impl ServiceConfig {
    /// `<data>/tmp`: scratch files of requests and background work (upload spools, snapshot
    /// copies, undelete and verify databases); emptied whenever the service opens.
    pub fn scratch_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }

    /// A configuration with the documented defaults for everything but the essentials; for
    /// tools and tests.
    pub fn new(data_dir: PathBuf, region: &str, admin_key: Option<String>) -> Self {
        Self {
            data_dir,
            region: region.to_owned(),
            admin_key,
            master_key: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_projects_per_principal: Some(DEFAULT_MAX_PROJECTS_PER_PRINCIPAL),
            idle_close: Some(DEFAULT_IDLE_CLOSE),
        }
    }
}

pub const DEFAULT_MAX_FILE_BYTES: usize = 32 * 1024 * 1024;
pub const DEFAULT_MAX_PROJECTS_PER_PRINCIPAL: u64 = 100;
pub const DEFAULT_IDLE_CLOSE: std::time::Duration = std::time::Duration::from_secs(600);

pub struct Service {
    region: String,
    data_dir: PathBuf,
    control: ControlStore,
    blobs: BlobStore,
    /// Open project stores, by id. Opened on first use, closed on delete and shutdown.
    projects: tokio::sync::Mutex<HashMap<ProjectId, Arc<ProjectStore>>>,
    /// Live keys by hash; rebuilt from the control journal whenever it moves.
    keys: RwLock<HashMap<String, Principal>>,
    /// Held by a control write from its planning to the install of the rebuilt keys and locks,
    /// and by every rebuild, so an older read never replaces a newer one (a revoked key must
    /// stop working).
    keys_update: tokio::sync::Mutex<()>,
    /// The copy of the control journal (the store itself: a copy set aside and bootstrapped
    /// again is another, whatever its id and LSN) and the LSN the control tables, keys and
    /// locks reflect.
    projected: std::sync::Mutex<(Option<std::sync::Weak<ProjectStore>>, holdfast_types::Lsn)>,
    /// Creates that failed (or a crash cut off) whose names across regions are still to be
    /// released: their id and name.
    unreleased: std::sync::Mutex<Vec<(ProjectId, String)>>,
    /// Keys (by their older hash) being stored again under the current one.
    upgrading: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The control journal's open store (also in `projects`), once opened.
    control_handle: std::sync::Mutex<Option<Arc<ProjectStore>>>,
    /// This service, for work it hands to the runtime on its own (key hash upgrades).
    me: std::sync::OnceLock<std::sync::Weak<Service>>,
    /// The audit log's writer.
    audit: audit::AuditLog,
    /// Resource locks, rebuilt from the control journal whenever it moves.
    locks: locks::SharedLocks,
    /// Limits from the configuration.
    max_file_bytes: usize,
    max_projects_per_principal: Option<u64>,
    idle_close: Option<std::time::Duration>,
    /// When each open project was last asked for ([`Service::store`]), for closing idle ones.
    used: std::sync::Mutex<HashMap<ProjectId, std::time::Instant>>,
    /// Seals and opens secrets, and derives the node's other keys.
    master: MasterKey,
    /// Hashes API keys under a pepper derived from the master key.
    key_hasher: auth::KeyHasher,
    /// This region's key pair for project data keys (derived from the master key).
    region_key: Arc<secrets::RegionKey>,
    /// What the domain crates add to a project's life, called in order.
    domains: domain::Domains,
    /// Set when the server begins to shut down, so long polls return at once.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Held for the life of the service: one server per data directory.
    _lock: File,
}

/// What [`Service::open`] hands back besides the service.
pub struct Opened {
    pub service: Service,
    /// The admin key made on first start, to show once (it is also in `<data>/admin.key`).
    pub generated_admin_key: Option<String>,
}

impl Service {
    /// Opens (or initialises) the data directory, recovers from a crash mid-create or
    /// mid-delete, and loads the keys. `domains` builds the domains called at the points of each
    /// project's life ([`Domain`]); it runs once the data directory is this process's (its lock
    /// taken, its scratch directory emptied), so nothing a domain opens races another server.
    pub fn open(config: ServiceConfig, domains: impl FnOnce() -> Result<Vec<Arc<dyn Domain>>>) -> Result<Opened> {
        let data = &config.data_dir;
        std::fs::create_dir_all(data.join("projects"))
            .map_err(|e| Error::internal(format!("cannot create data directory {}: {e}", data.display())))?;
        let lock = lock_data_dir(data)?;
        // Scratch files (upload spools, snapshot copies, undelete and verify databases) belong
        // to requests that ended with the last process; the lock says no other one is here.
        let scratch = config.scratch_dir();
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch)
                .map_err(|e| Error::internal(format!("cannot clear {}: {e}", scratch.display())))?;
        }
        std::fs::create_dir_all(&scratch)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", scratch.display())))?;
        // Before the databases open: SQLite gives a new WAL file its database's mode.
        tighten_permissions(data)?;
        let domains = domains()?;
        let control = ControlStore::open(&data.join("control.db")).map_err(Error::from)?;
        let master = MasterKey::load(config.master_key.as_deref(), &data.join("master.key"))?;
        let audit = audit::AuditLog::start(control.clone(), control::AuditKey(master.derive(audit::AUDIT_KEY_LABEL)))?;
        let blobs = BlobStore::local(&data.join("blobs"))
            .map_err(|e| Error::internal(format!("cannot open blob store: {e}")))?;
        let service = Service {
            domains,
            max_file_bytes: config.max_file_bytes,
            max_projects_per_principal: config.max_projects_per_principal,
            idle_close: config.idle_close,
            used: std::sync::Mutex::new(HashMap::new()),
            key_hasher: auth::KeyHasher::new(&master),
            region_key: Arc::new(secrets::RegionKey::of(&master)),
            master,
            region: config.region.clone(),
            data_dir: data.clone(),
            control,
            blobs,
            projects: tokio::sync::Mutex::new(HashMap::new()),
            keys: RwLock::new(HashMap::new()),
            keys_update: tokio::sync::Mutex::new(()),
            projected: std::sync::Mutex::new((None, holdfast_types::Lsn::ZERO)),
            me: std::sync::OnceLock::new(),
            control_handle: std::sync::Mutex::new(None),
            unreleased: std::sync::Mutex::new(Vec::new()),
            upgrading: std::sync::Mutex::new(std::collections::HashSet::new()),
            locks: Arc::default(),
            audit,
            stopping: tokio::sync::watch::Sender::new(false),
            _lock: lock,
        };
        service.recover()?;
        let admin_key = config.admin_key.clone();
        let generated_admin_key = on_own_runtime(|| service.open_control_plane(admin_key.as_deref()))?;
        Ok(Opened { service, generated_admin_key })
    }

    /// Lets the service hand work to the runtime on its own; call once it is in its `Arc`.
    pub fn bind(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    pub fn info(&self) -> Info {
        Info {
            name: "holdfast".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            region: self.region.clone(),
            journal_format: CHANGE_FORMAT_VERSION,
        }
    }

    /// Largest uploaded file, in bytes; the HTTP layer sizes its body limit for uploads by it.
    pub fn max_file_bytes(&self) -> usize {
        self.max_file_bytes
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// `<data>/tmp`, empty when the service opened ([`ServiceConfig::scratch_dir`]).
    pub fn scratch_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The catalog, principals, locks and audit log of this node.
    pub fn control(&self) -> &ControlStore {
        &self.control
    }

    /// Content-addressed blobs (file bytes) of every project here.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The node's master key (seals secrets).
    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// This region's key pair for project data keys: what other regions wrap a project's data
    /// key for, so its secrets open here.
    pub fn region_key(&self) -> &Arc<secrets::RegionKey> {
        &self.region_key
    }

    /// The key of the audit log's chain.
    pub fn audit_key(&self) -> control::AuditKey {
        self.audit.key
    }

    /// Resolves when the server begins to shut down (at once if it has): long waits end then.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Whether the service can take requests: its control store answers.
    pub async fn ready(&self) -> Result<()> {
        self.control.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?)).await.map_err(Error::from)
    }

    /// Ends waits (journal long polls) so in-flight requests finish promptly; call when the
    /// server stops accepting requests.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Closes every project store, letting each writer commit what it has queued.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let stores: Vec<_> = self.projects.lock().await.drain().map(|(_, s)| s).collect();
        let _ = tokio::task::spawn_blocking(move || stores.iter().for_each(|s| s.close())).await;
        self.audit.close();
    }

    /// Where a project's files live.
    pub fn project_dir(&self, id: &ProjectId) -> PathBuf {
        self.data_dir.join("projects").join(id.as_str())
    }

    /// A project's database.
    pub fn project_db(&self, id: &ProjectId) -> PathBuf {
        self.project_dir(id).join("state.db")
    }

    /// Purged projects' directories are moved here (an operator empties it; nothing in it is
    /// read again).
    fn trash_dir(&self) -> PathBuf {
        self.data_dir.join("trash")
    }

    /// Start-up recovery. A create that crashed before it was acknowledged is rolled back; a
    /// project directory the catalog does not know (a delete that crashed after the catalog
    /// forgot the project) is moved to the trash.
    fn recover(&self) -> Result<()> {
        let entries = self.control.call_blocking(control::all_projects).map_err(Error::from)?;
        for entry in entries.iter().filter(|e| e.creating()) {
            tracing::warn!(project = %entry.name, id = %entry.id, "rolling back a create interrupted by a crash");
            remove_dir_if_exists(&self.project_dir(&entry.id))?;
            self.control.call_blocking(|c| control::remove_project(c, &entry.id)).map_err(Error::from)?;
            if entry.name != projects::CONTROL_PROJECT {
                // Its name across regions, if it got that far, is released once the control
                // journal is open (`release_unreleased_names`).
                self.unreleased.lock().unwrap_or_else(|e| e.into_inner()).push((entry.id.clone(), entry.name.clone()));
            }
        }
        let known: Vec<_> = entries.iter().filter(|e| !e.creating()).map(|e| e.id.as_str().to_owned()).collect();
        let dir = self.data_dir.join("projects");
        let listing = std::fs::read_dir(&dir)
            .map_err(|e| Error::internal(format!("cannot list {}: {e}", dir.display())))?;
        for item in listing.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::warn!(dir = %name, "moving a project directory the catalog does not know to the trash");
                self.move_to_trash(&item.path(), &name)?;
            }
        }
        Ok(())
    }

    /// Moves a directory of this node to the trash (an operator empties it).
    pub fn move_to_trash(&self, dir: &Path, name: &str) -> Result<()> {
        let trash = self.trash_dir();
        std::fs::create_dir_all(&trash).map_err(|e| Error::internal(format!("cannot create trash: {e}")))?;
        let target = trash.join(format!("{name}-{}", ulid::Ulid::generate().to_string().to_lowercase()));
        std::fs::rename(dir, &target)
            .map_err(|e| Error::internal(format!("cannot move {} to the trash: {e}", dir.display())))
    }
}

/// Runs `work` to its end on a runtime of its own, on a thread of its own: start-up work that is
/// async (it commits through a project's writer) from the blocking [`Service::open`], wherever
/// that is called from.
fn on_own_runtime<T: Send, F: std::future::Future<Output = Result<T>> + Send>(work: impl FnOnce() -> F + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::internal(format!("cannot start the start-up runtime: {e}")))?;
                runtime.block_on(work())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::internal("start-up work panicked")))
    })
}

/// Takes an exclusive lock on `<data>/holdfast.lock` for the life of the process, so a second
/// server on the same directory is refused instead of corrupting it.
fn lock_data_dir(data: &Path) -> Result<File> {
    let path = data.join("holdfast.lock");
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", path.display())))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "data directory {} is in use by another holdfast process{who}; stop it or choose another --data",
                data.display()
            ),
        ));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

/// One line of a project's canonical dump (`holdfast_store::apply::canonical_dump`), read back
/// by export and undelete.
#[derive(serde::Deserialize)]
pub struct DumpRow {
    pub kind: holdfast_types::Kind,
    pub id: String,
    pub parent: Option<String>,
    pub seq: i64,
    pub created_us: holdfast_types::Micros,
    pub updated_us: holdfast_types::Micros,
    pub body: serde_json::Value,
}

/// Takes group and other permissions away from the data directory and everything in it:
/// directories become 0700, files 0600 (`holdfast serve` creates them so, under umask 077; a
/// data directory from an earlier version, a copy or a library user's process may have them
/// open to other local users). Symbolic links inside are neither followed nor changed. A file
/// that cannot be changed (another owner's) is logged and left; the directory being 0700 keeps
/// other users out of it anyway.
fn tighten_permissions(data: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let open_to_others = |meta: &std::fs::Metadata| meta.permissions().mode() & 0o077 != 0;
    let mut tightened = 0usize;
    let mut tighten = |path: &Path, dir: bool| match std::fs::set_permissions(path, std::fs::Permissions::from_mode(if dir { 0o700 } else { 0o600 })) {
        Ok(()) => tightened += 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot take group and other permissions away"),
    };
    // The data directory itself is followed if it is a link: the operator chose it.
    let root = std::fs::metadata(data).map_err(|e| Error::internal(format!("cannot read {}: {e}", data.display())))?;
    if open_to_others(&root) {
        tighten(data, true);
    }
    let mut dirs = vec![data.to_owned()];
    while let Some(dir) = dirs.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::internal(format!("cannot list {}: {e}", dir.display()))),
        };
        for entry in listing {
            let entry = entry.map_err(|e| Error::internal(format!("cannot list {}: {e}", dir.display())))?;
            // Neither `file_type` nor `metadata` of a directory entry follows a link.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.file_type().is_symlink() {
                continue;
            }
            let path = entry.path();
            if open_to_others(&meta) {
                tighten(&path, meta.is_dir());
            }
            if meta.is_dir() {
                dirs.push(path);
            }
        }
    }
    if tightened > 0 {
        tracing::info!(tightened, data = %data.display(), "took group and other permissions away in the data directory (directories 0700, files 0600)");
    }
    Ok(())
}

/// Writes a small secret file (mode 0600) so that it is either wholly there or not at all, and
/// survives a power loss once this returns: a temporary file, fsync, rename, fsync of the
/// directory. Refuses to replace an existing file.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Error::internal(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    // A temporary file left by a crash (or put there by someone else) is never reused: its mode
    // and owner would be the secret's. `create_new` makes a fresh one, 0600 from the start, and
    // refuses a link in its place.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut file = File::options().write(true).create_new(true).mode(0o600).open(&tmp).map_err(fail)?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(fail)?;
    if path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::internal(format!("{} exists already", path.display())));
    }
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    Ok(())
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("cannot remove {}: {e}", dir.display()))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_stale_temporary_file_is_never_reused_for_a_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, tmp) = (dir.path().join("admin.key"), dir.path().join("admin.tmp"));
        std::fs::write(&tmp, "left by a crash, readable by all").expect("write");
        chmod(&tmp, 0o644);
        super::write_secret_file(&path, "hf_secret\n").expect("write secret");
        assert_eq!(mode(&path), 0o600, "the secret is the owner's alone");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "hf_secret\n");
        assert!(!tmp.exists());
        // An existing secret is never replaced.
        assert!(super::write_secret_file(&path, "other\n").is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "hf_secret\n");
    }

    #[test]
    fn the_data_directory_is_tightened_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data, outside) = (dir.path().join("data"), dir.path().join("outside"));
        std::fs::create_dir_all(data.join("projects/prj_1")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        let (db, elsewhere) = (data.join("projects/prj_1/state.db"), outside.join("file"));
        for file in [&db, &elsewhere] {
            std::fs::write(file, "x").expect("write");
            chmod(file, 0o644);
        }
        for d in [&data, &data.join("projects"), &data.join("projects/prj_1"), &outside] {
            chmod(d, 0o755);
        }
        std::os::unix::fs::symlink(&outside, data.join("link-to-dir")).expect("symlink");
        std::os::unix::fs::symlink(&elsewhere, data.join("link-to-file")).expect("symlink");
        super::tighten_permissions(&data).expect("tighten");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("projects")), 0o700);
        assert_eq!(mode(&data.join("projects/prj_1")), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!((mode(&outside), mode(&elsewhere)), (0o755, 0o644), "links are not followed");
    }
}
