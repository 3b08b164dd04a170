//! Projects: the catalog entry in the control store plus the project's own record, which lives
//! (and is journaled) in the project's database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_store::control::{self, CatalogEntry};
use holdfast_store::{ProjectStore, Resource, StateView, StoreError};
use holdfast_types::api::{JournalPage, Page, Project, ProjectCreate, ProjectPage, ProjectUpdate};
use holdfast_types::{Error, ErrorKind, Kind, Lsn, Op, ProjectId, rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{Action, Caller};
use crate::{Result, Service, validate};

pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;
pub const DEFAULT_JOURNAL_PAGE: usize = 100;
pub const MAX_JOURNAL_PAGE: usize = 1000;
pub const MAX_JOURNAL_WAIT: Duration = Duration::from_secs(30);

/// The body of a project's own resource (`kind = project`, `id = proj_…`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProjectBody {
    name: String,
    display_name: String,
    description: String,
    tags: BTreeMap<String, String>,
}

fn scope(name: &str) -> String {
    format!("/projects/{name}")
}

fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(Error::invalid(format!("limit must be 1 to {max}, got {n}"))),
    }
}

/// Reads the project's own record; `None` once the project's delete is journaled.
fn read_project(view: &StateView<'_>, id: &ProjectId) -> Result<Option<Project>, StoreError> {
    let Some(resource) = view.get(Kind::Project, id.as_str())? else {
        return Ok(None);
    };
    let Resource { body, created_us, updated_us, .. } = resource;
    let body: ProjectBody = serde_json::from_value(body)?;
    Ok(Some(Project {
        id: id.clone(),
        name: body.name,
        display_name: body.display_name,
        description: body.description,
        tags: body.tags,
        created_at: rfc3339(created_us),
        updated_at: rfc3339(updated_us),
        lsn: view.last_lsn()?,
        epoch: view.epoch()?,
    }))
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("project {name:?} not found"))
}

impl Service {
    /// The catalog entry of an active project, by name or id.
    pub(crate) async fn entry(&self, name: &str) -> Result<CatalogEntry> {
        let key = name.to_owned();
        self.control
            .call(move |c| control::find_project(c, &key))
            .await
            .map_err(Error::from)?
            .filter(|e| e.active)
            .ok_or_else(|| not_found(name))
    }

    /// The open store of a project, opening it on first use.
    pub(crate) async fn store(&self, entry: &CatalogEntry) -> Result<Arc<ProjectStore>> {
        let mut open = self.projects.lock().await;
        if let Some(store) = open.get(&entry.id) {
            return Ok(store.clone());
        }
        let (path, label) = (self.project_db(&entry.id), entry.name.clone());
        if !path.exists() {
            // Deleted since the catalog was read: a delete holds this lock until the directory
            // has moved to the trash.
            return Err(not_found(&entry.name));
        }
        let store = tokio::task::spawn_blocking(move || ProjectStore::open(&path, &label))
            .await
            .map_err(|e| Error::internal(format!("open task failed: {e}")))?
            .map_err(Error::from)?;
        let store = Arc::new(store);
        if store.is_deleted() {
            // A delete journaled before a crash (or a failure) kept the catalog from forgetting
            // the project: finish it now, so the name is free again.
            tracing::warn!(project = %entry.name, id = %entry.id, "finishing a project delete interrupted by a crash");
            // What the crash kept from the archive, the deletion included, goes there first.
            self.archive_final(entry, &store).await;
            let closing = store.clone();
            let _ = tokio::task::spawn_blocking(move || closing.close_deleted()).await;
            self.forget_project(entry).await?;
            self.move_to_trash(&self.project_dir(&entry.id), entry.id.as_str())?;
            return Err(not_found(&entry.name));
        }
        let system = Caller::system();
        store
            .write(system.principal.id.as_str(), system.request_id.as_str(), crate::data::responses::fail_interrupted())
            .await
            .map_err(Error::from)?;
        open.insert(entry.id.clone(), store.clone());
        Ok(store)
    }

    /// Drops a deleted project from the catalog, with the role assignments at its scope, so a
    /// later project of that name starts with none.
    async fn forget_project(&self, entry: &CatalogEntry) -> Result<()> {
        let (cid, scope) = (entry.id.clone(), format!("/projects/{}", entry.name));
        self.control
            .call(move |c| {
                control::remove_project(c, &cid)?;
                control::remove_scope_assignments(c, &scope)
            })
            .await
            .map_err(Error::from)?;
        self.reload_principals().await
    }

    /// The open store of the project named (or with id) `name`.
    pub async fn project_store(&self, name: &str) -> Result<Arc<ProjectStore>> {
        let entry = self.entry(name).await?;
        self.store(&entry).await
    }

    pub async fn create_project(&self, caller: &Caller, req: ProjectCreate) -> Result<Project> {
        caller.require(Action::ProjectsWrite, "/")?;
        validate::project_name(&req.name)?;
        let body = ProjectBody {
            display_name: req.display_name.unwrap_or_else(|| req.name.clone()),
            description: req.description.unwrap_or_default(),
            tags: req.tags,
            name: req.name,
        };
        validate::display_name(&body.display_name)?;
        validate::description(&body.description)?;
        validate::tags(&body.tags)?;

        let id = ProjectId::generate();
        let name = body.name.clone();
        let (cid, cname) = (id.clone(), name.clone());
        let reserved = self
            .control
            .call(move |c| control::insert_creating(c, &cid, &cname))
            .await
            .map_err(Error::from)?;
        if !reserved {
            return Err(Error::conflict(format!("a project named {name:?} exists already")));
        }
        match self.initialise_project(caller, &id, body).await {
            Ok(store) => {
                // The store is registered before the project turns active (requests cannot see
                // a `creating` project), so no request ever opens a second writer on it.
                self.projects.lock().await.insert(id.clone(), store.clone());
                let cid = id.clone();
                self.control.call(move |c| control::mark_active(c, &cid)).await.map_err(Error::from)?;
                store
                    .read(move |view| read_project(view, &id))
                    .await
                    .map_err(Error::from)?
                    .ok_or_else(|| Error::internal("created project vanished"))
            }
            Err(e) => {
                tracing::error!(project = %name, error = %e, "project create failed; rolling back");
                let _ = std::fs::remove_dir_all(self.project_dir(&id));
                let cid = id.clone();
                let _ = self.control.call(move |c| control::remove_project(c, &cid)).await;
                Err(e)
            }
        }
    }

    /// Creates the project's database and journals its first change.
    async fn initialise_project(&self, caller: &Caller, id: &ProjectId, body: ProjectBody) -> Result<Arc<ProjectStore>> {
        let dir = self.project_dir(id);
        let (path, pid, label) = (self.project_db(id), id.clone(), body.name.clone());
        let store = tokio::task::spawn_blocking(move || -> Result<ProjectStore> {
            std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
            ProjectStore::create(&path, &pid, &label).map_err(Error::from)
        })
        .await
        .map_err(|e| Error::internal(format!("create task failed: {e}")))??;
        let store = Arc::new(store);
        let op = Op::Put {
            kind: Kind::Project,
            id: id.as_str().to_owned(),
            parent: None,
            body: serde_json::to_value(&body).map_err(|e| Error::internal(e.to_string()))?,
        };
        store
            .write(caller.principal.id.as_str(), caller.request_id.as_str(), Box::new(move |_| Ok(vec![op])))
            .await
            .map_err(Error::from)?;
        Ok(store)
    }

    pub async fn list_projects(&self, caller: &Caller, after: Option<String>, limit: Option<usize>) -> Result<ProjectPage> {
        caller.require(Action::ProjectsRead, "/")?;
        let limit = page_limit(limit, DEFAULT_PAGE, MAX_PAGE)?;
        let entries = self
            .control
            .call(move |c| control::list_projects(c, after.as_deref(), limit + 1))
            .await
            .map_err(Error::from)?;
        let has_more = entries.len() > limit;
        let mut data = Vec::with_capacity(limit);
        for entry in entries.into_iter().take(limit) {
            let id = entry.id.clone();
            let read = async { self.store(&entry).await?.read(move |view| read_project(view, &id)).await.map_err(Error::from) };
            // A project deleted since the catalog was read is left out.
            match read.await {
                Ok(Some(p)) => data.push(p),
                Ok(None) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let next_after = if has_more { data.last().map(|p| p.name.clone()) } else { None };
        Ok(Page { data, has_more, next_after })
    }

    pub async fn get_project(&self, caller: &Caller, name: &str) -> Result<Project> {
        caller.require(Action::ProjectsRead, &scope(name))?;
        let entry = self.entry(name).await?;
        let store = self.store(&entry).await?;
        let id = entry.id.clone();
        store.read(move |view| read_project(view, &id)).await.map_err(Error::from)?.ok_or_else(|| not_found(name))
    }

    pub async fn update_project(&self, caller: &Caller, name: &str, req: ProjectUpdate) -> Result<Project> {
        caller.require(Action::ProjectsWrite, &scope(name))?;
        // Locks name projects by name: resolve an id first, so a lock cannot be stepped around.
        self.check_project_locks(&self.entry(name).await?.name, false)?;
        if let Some(v) = &req.display_name {
            validate::display_name(v)?;
        }
        if let Some(v) = &req.description {
            validate::description(v)?;
        }
        let entry = self.entry(name).await?;
        let store = self.store(&entry).await?;
        let (id, missing) = (entry.id.clone(), not_found(name));
        let plan_id = id.clone();
        store
            .write(
                caller.principal.id.as_str(),
                caller.request_id.as_str(),
                Box::new(move |view| {
                    let current = read_project(view, &plan_id).map_err(Error::from)?.ok_or(missing)?;
                    let mut patch = serde_json::Map::new();
                    if let Some(v) = req.display_name.filter(|v| *v != current.display_name) {
                        patch.insert("display_name".into(), json!(v));
                    }
                    if let Some(v) = req.description.filter(|v| *v != current.description) {
                        patch.insert("description".into(), json!(v));
                    }
                    if let Some(changes) = req.tags {
                        let mut after = current.tags.clone();
                        let mut tag_patch = serde_json::Map::new();
                        for (k, v) in changes {
                            match v {
                                Some(v) if after.get(&k) != Some(&v) => {
                                    after.insert(k.clone(), v.clone());
                                    tag_patch.insert(k, json!(v));
                                }
                                None if after.remove(&k).is_some() => {
                                    tag_patch.insert(k, serde_json::Value::Null);
                                }
                                _ => {}
                            }
                        }
                        validate::tags(&after)?;
                        if !tag_patch.is_empty() {
                            patch.insert("tags".into(), serde_json::Value::Object(tag_patch));
                        }
                    }
                    if patch.is_empty() {
                        return Ok(Vec::new()); // nothing changes, nothing is journaled
                    }
                    Ok(vec![Op::Patch { kind: Kind::Project, id: plan_id.as_str().to_owned(), patch: patch.into() }])
                }),
            )
            .await
            .map_err(Error::from)?;
        store.read(move |view| read_project(view, &id)).await.map_err(Error::from)?.ok_or_else(|| not_found(name))
    }

    /// Deletes a project: journals the deletion of its record, then removes it from the catalog
    /// and moves its directory to the trash.
    pub async fn delete_project(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Action::ProjectsWrite, &scope(name))?;
        let entry = self.entry(name).await?;
        self.check_project_locks(&entry.name, true)?;
        let store = self.store(&entry).await?;
        let (id, missing) = (entry.id.as_str().to_owned(), not_found(name));
        store
            .write(
                caller.principal.id.as_str(),
                caller.request_id.as_str(),
                Box::new(move |view| {
                    view.get(Kind::Project, &id).map_err(Error::from)?.ok_or(missing)?;
                    Ok(vec![Op::Delete { kind: Kind::Project, id }])
                }),
            )
            .await
            .map_err(Error::from)?;
        // The writer now refuses every write (nothing follows a project's deletion in its
        // journal). The archive gets every change up to and including the deletion, so the
        // project can be restored from it after its directory is gone. The catalog forgets the project, then the store is closed as deleted, so
        // requests still holding it answer "not found" (and start-up recovery trashes the
        // directory if we crash before moving it). The open-stores lock is held until the
        // directory has moved, so no request reopens the store in between.
        self.archive_final(&entry, &store).await;
        self.forget_project(&entry).await?;
        let mut open = self.projects.lock().await;
        open.remove(&entry.id);
        let closing = store.clone();
        let _ = tokio::task::spawn_blocking(move || closing.close_deleted()).await;
        self.move_to_trash(&self.project_dir(&entry.id), entry.id.as_str())?;
        drop(open);
        Ok(())
    }

    /// Changes with `lsn > after`, in order. With `wait`, blocks up to that long (at most 30 s)
    /// for a change when there is none yet: a long poll for followers.
    pub async fn journal(
        &self,
        caller: &Caller,
        name: &str,
        after: Lsn,
        limit: Option<usize>,
        wait: Option<Duration>,
    ) -> Result<JournalPage> {
        caller.require(Action::JournalRead, &scope(name))?;
        let limit = page_limit(limit, DEFAULT_JOURNAL_PAGE, MAX_JOURNAL_PAGE)?;
        let store = self.project_store(name).await?;
        if let Some(wait) = wait {
            let mut lsn = store.subscribe();
            let mut stopping = self.stopping.subscribe();
            let _ = tokio::time::timeout(wait.min(MAX_JOURNAL_WAIT), async {
                tokio::select! {
                    _ = lsn.wait_for(|l| *l > after) => {}
                    _ = stopping.wait_for(|s| *s) => {}
                }
            })
            .await;
        }
        store
            .read(move |view| Ok(JournalPage { changes: view.journal(after, limit)?, last_lsn: view.last_lsn()? }))
            .await
            .map_err(Error::from)
    }
}
