//! The readiness review (`holdfast check`): each project against the practices of docs/DR.md —
//! a delete lock, continuous backup on and fresh, a replica in another region, a user-assigned
//! identity, no standing delete rights beyond Owners, a recent verified trial restore, purge
//! protection. Every finding carries its severity and the command that fixes it. A check for a
//! capability not built yet answers `not_available`, never `pass`.
//!
//! The review only reads: the project, its locks, its backup status and the role assignments
//! (of which it reports principal ids and role names, nothing more), all under the caller's
//! `projects/read`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use holdfast_store::control::{self, CatalogEntry};
use holdfast_types::api::{ProjectStatus, BackupStatus, CheckStatus, Finding, Lock, Project, Readiness, Role, RoleDefinition, Severity};
use holdfast_types::{Error, ErrorKind, Micros, now_micros, parse_rfc3339};

use holdfast_core::auth::{self, Action, Caller};
use holdfast_core::identities::USER_ASSIGNED;
use holdfast_core::Result;

use crate::Governance;

/// How old the oldest change not yet archived may be before `continuous_backup` fails. The
/// archiver ships every second by default and its measured lag stays near a second under load
/// (docs/DR.md), so a minute behind means it is failing or cannot keep up.
pub const BACKUP_FRESHNESS: Duration = Duration::from_secs(60);

/// How recent the last successful trial restore (`holdfast backup verify`) must be.
pub const DRILL_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What turns continuous backup on.
const ARCHIVE_FIX: &str = "holdfast serve --archive URL";

/// A role assignment that allows deleting a project or its contents (locks aside); see
/// [`standing_delete_rights`].
#[derive(Clone, Debug)]
struct Holder {
    principal: String,
    role: String,
    scope: String,
    /// The role allows deleting or purging the project itself (`projects/write`,
    /// `projects/purge`).
    project: bool,
    /// The role allows deleting the project's contents (`projects/data/write`).
    data: bool,
}

fn finding(check: &str, severity: Severity, status: CheckStatus, message: String, fix: String) -> Finding {
    Finding { check: check.to_owned(), status, severity, message, fix }
}

fn pass(check: &str, severity: Severity, message: String) -> Finding {
    finding(check, severity, CheckStatus::Pass, message, String::new())
}

fn fail(check: &str, severity: Severity, message: String, fix: String) -> Finding {
    finding(check, severity, CheckStatus::Fail, message, fix)
}

fn lock_fix(name: &str) -> String {
    format!("holdfast lock create --scope /projects/{name} --kind CanNotDelete --data-plane")
}

impl Governance {
    /// `holdfast check`: the readiness review of one project, or of every active project.
    pub async fn check(&self, caller: &Caller, project: Option<&str>) -> Result<Vec<Readiness>> {
        let scope = project.map_or_else(|| "/".to_owned(), |p| format!("/projects/{p}"));
        caller.require(Action::ProjectsRead, &scope)?;
        let entries = match project {
            Some(name) => vec![self.core.entry(name).await?],
            // The control journal is reviewed by what it is made of (keys, roles), not as a project.
            None => self
                .core
                .control()
                .call(control::all_projects)
                .await
                .map_err(Error::from)?
                .into_iter()
                .filter(|e| e.active && !self.core.is_control_project(e))
                .collect(),
        };
        let holders = self.delete_holders().await?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.readiness(caller, &entry, &holders).await {
                Ok(readiness) => out.push(readiness),
                // A project deleted since the catalog was read is left out of a review of all.
                Err(e) if e.kind == ErrorKind::NotFound && project.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn readiness(&self, caller: &Caller, entry: &CatalogEntry, holders: &[Holder]) -> Result<Readiness> {
        let name = entry.name.as_str();
        let scope = format!("/projects/{name}");
        let project = self.core.get_project(caller, name).await?;
        // The locks at `/` and at the project (a lock on one resource guards only that).
        let locks = self.list_locks(caller, Some(&scope))?.data;
        // Read on the server's behalf: the review reports lag and verification, which
        // `projects/read` may see, without asking for `projects/backup/read`.
        let backup = if self.recovery.archives() {
            Some(self.recovery.backup_status(&Caller::system(), Some(name)).await.and_then(|mut all| {
                all.pop().ok_or_else(|| Error::internal(format!("no backup status for project {name}")))
            }))
        } else {
            None
        };
        let status = self.geo.status_of(entry).await?;
        let locked_out = self.regions_without_data_key(entry, &status).await?;
        let findings = vec![
            delete_lock(name, &locks),
            data_plane_lock(name, &locks),
            continuous_backup(name, backup.as_ref()),
            replica(name, &status, &locked_out),
            identity(name, &project),
            standing_delete_rights(name, holders, &locks),
            restore_drill(name, backup.as_ref(), now_micros()),
            purge_protection(name, &project),
        ];
        let ok = !findings.iter().any(|f| f.status == CheckStatus::Fail && f.severity == Severity::High);
        Ok(Readiness { project: name.to_owned(), ok, findings })
    }

    /// The replica regions of a primary here that could not open the project's secrets.
    async fn regions_without_data_key(&self, entry: &CatalogEntry, status: &ProjectStatus) -> Result<Vec<String>> {
        if status.role != "primary" || status.replicas.is_empty() {
            return Ok(Vec::new());
        }
        let regions: Vec<String> = status.replicas.iter().map(|r| r.region.clone()).collect();
        let (store, id) = (self.core.store(entry).await?, entry.id.clone());
        store
            .read(move |view| Ok(holdfast_core::projects::regions_without_data_key(view, &id, &regions)))
            .await
            .map_err(Error::from)?
    }

    /// Every assignment, Owners' aside, whose role allows a delete, held by a principal that
    /// can act: one with a live key, or a managed identity (it can be given a key at any time).
    async fn delete_holders(&self) -> Result<Vec<Holder>> {
        let (assignments, roles, keys, identities) = self
            .core
            .control()
            .call(|c| {
                Ok((control::list_assignments(c)?, control::list_roles(c)?, control::list_keys(c)?, control::list_identities(c)?))
            })
            .await
            .map_err(Error::from)?;
        // An unreadable custom role grants nothing (as when keys are loaded).
        let custom: HashMap<String, RoleDefinition> =
            roles.into_iter().filter_map(|(name, json)| Some((name, serde_json::from_str(&json).ok()?))).collect();
        let can_act: HashSet<String> = keys
            .iter()
            .filter(|k| k.revoked_us.is_none())
            .map(|k| k.principal_id.as_str().to_owned())
            .chain(identities.iter().map(|i| i.id.as_str().to_owned()))
            .collect();
        let mut holders = Vec::new();
        for (principal, role, scope) in assignments {
            let parsed = Role::parse(&role);
            if parsed == Role::Admin || !can_act.contains(&principal) {
                continue;
            }
            let Some(def) = auth::built_in_definition(&parsed).or_else(|| custom.get(&role).cloned()) else { continue };
            let allows = |action| auth::definition_allows(&def, action);
            let project = allows(Action::ProjectsWrite) || allows(Action::ProjectsPurge);
            let data = allows(Action::DataWrite) || allows(Action::MlWrite);
            if project || data {
                holders.push(Holder { principal, role: parsed.as_str().to_owned(), scope, project, data });
            }
        }
        Ok(holders)
    }
}

/// A `CanNotDelete` or `ReadOnly` lock at `/` or at the project: either refuses its delete.
fn delete_lock(name: &str, locks: &[Lock]) -> Finding {
    const CHECK: &str = "delete_lock";
    match locks.first() {
        Some(lock) => pass(
            CHECK,
            Severity::High,
            format!("lock {} ({} at {}) refuses deleting project {name}", lock.id, lock.kind.as_str(), lock.scope),
        ),
        None => fail(CHECK, Severity::High, format!("no lock at / or /projects/{name} refuses deleting project {name}"), lock_fix(name)),
    }
}

/// A lock that also guards the contents (`--data-plane`): without one, conversations, files
/// and agents can be deleted even while the project cannot.
fn data_plane_lock(name: &str, locks: &[Lock]) -> Finding {
    const CHECK: &str = "data_plane_lock";
    match locks.iter().find(|l| l.data_plane) {
        Some(lock) => pass(
            CHECK,
            Severity::Low,
            format!("lock {} ({} at {}) guards the contents of project {name} too", lock.id, lock.kind.as_str(), lock.scope),
        ),
        None => fail(
            CHECK,
            Severity::Low,
            format!(
                "no lock guards the contents of project {name}: its conversations, files and agents can be deleted \
                 (a lock needs --data-plane for that)"
            ),
            lock_fix(name),
        ),
    }
}

/// Continuous backup on, archiving without error, and its lag under [`BACKUP_FRESHNESS`].
/// `backup` is `None` when the server has no archive.
fn continuous_backup(name: &str, backup: Option<&Result<BackupStatus>>) -> Finding {
    const CHECK: &str = "continuous_backup";
    let investigate = format!("holdfast backup status --project {name}");
    let target = BACKUP_FRESHNESS.as_secs();
    match backup {
        None => fail(CHECK, Severity::High, "continuous backup is off on this server: nothing is archived".into(), ARCHIVE_FIX.into()),
        Some(Err(_)) => fail(CHECK, Severity::High, format!("the backup status of project {name} cannot be read"), investigate),
        Some(Ok(s)) if s.last_error.is_some() => fail(
            CHECK,
            Severity::High,
            format!("archiving project {name} is failing; {} changes wait to be archived", s.lag_changes),
            investigate,
        ),
        Some(Ok(s)) if s.lag_seconds > BACKUP_FRESHNESS.as_secs_f64() => fail(
            CHECK,
            Severity::High,
            format!(
                "{} changes of project {name} wait to be archived, the oldest for {:.0} s (target {target} s)",
                s.lag_changes, s.lag_seconds
            ),
            investigate,
        ),
        Some(Ok(s)) => pass(
            CHECK,
            Severity::High,
            format!(
                "project {name} is archived through LSN {} of {}; {} changes wait, the oldest for {:.1} s (target {target} s)",
                s.archived_lsn, s.journal_lsn, s.lag_changes, s.lag_seconds
            ),
        ),
    }
}

/// The replication lag a replica must stay under to pass: the async RPO target of docs/DR.md.
const REPLICA_LAG_TARGET_MS: u64 = 1000;

/// A replica in another region that has pulled since this server started, with its lag under
/// [`REPLICA_LAG_TARGET_MS`]. Reviewed in the primary's region; a replica's region says so.
fn replica(name: &str, status: &ProjectStatus, locked_out: &[String]) -> Finding {
    const CHECK: &str = "replica";
    let fix = format!("holdfast project replicate --project {name} --to REGION --mode warm");
    if let Some(region) = locked_out.first() {
        // Replicated before data keys: a failover there would leave every connection without
        // its key.
        return fail(
            CHECK,
            Severity::High,
            format!("the replica of {name} in region {region} cannot open the project's connection secrets (no wrap of its data key for that region)"),
            format!("holdfast project replicate --project {name} --to {region}"),
        );
    }
    if status.role != "primary" {
        return finding(
            CHECK,
            Severity::Medium,
            CheckStatus::NotAvailable,
            format!("region {} holds a {} copy of {name}; review it in the primary's region {}", status.region, status.role, status.primary_region),
            String::new(),
        );
    }
    if let Some((r, since)) = status.replicas.iter().find_map(|r| Some((r, r.sync_suspended_since.as_ref()?))) {
        return fail(
            CHECK,
            Severity::Medium,
            format!(
                "{name} is not synchronously protected since {since}: a failover declared region {} lost, and writes do not wait \
                 for it until it is back and caught up (RPO > 0 meanwhile)",
                r.region
            ),
            format!("bring region {} back; holdfast status --project {name} shows when sync commit applies again", r.region),
        );
    }
    let healthy = status.replicas.iter().find(|r| r.last_contact.is_some() && r.lag_ms < REPLICA_LAG_TARGET_MS);
    match (healthy, status.replicas.first()) {
        (Some(r), _) => pass(CHECK, Severity::Medium, format!("replica in region {} ({:?}), {} ms behind", r.region, r.mode, r.lag_ms)),
        (None, Some(r)) => fail(
            CHECK,
            Severity::Medium,
            format!(
                "no replica of {name} is under {REPLICA_LAG_TARGET_MS} ms of lag: region {} is {} changes / {} ms behind, last contact {}",
                r.region,
                r.lag_changes,
                r.lag_ms,
                r.last_contact.as_deref().unwrap_or("never since this server started")
            ),
            format!("holdfast status --project {name}"),
        ),
        (None, None) => fail(CHECK, Severity::Medium, format!("project {name} has no replica in another region"), fix),
    }
}

/// The project's workloads act as a user-assigned identity: it outlives the project, so a
/// project restored or recreated after a loss gets the same principal and its role
/// assignments elsewhere back. A system-assigned one is removed at the project's purge.
fn identity(name: &str, project: &Project) -> Finding {
    const CHECK: &str = "identity";
    // `project create` is the only way to attach an identity today.
    let fix = "holdfast identity create NAME, then holdfast project create NEW --identity NAME (no command gives an \
               existing project an identity yet)"
        .to_owned();
    match &project.identity {
        Some(i) if i.kind == USER_ASSIGNED => pass(
            CHECK,
            Severity::Low,
            format!("project {name} runs as user-assigned identity {} ({})", i.name, i.principal_id),
        ),
        Some(i) => fail(
            CHECK,
            Severity::Low,
            format!(
                "project {name} runs as system-assigned identity {} ({}), which is removed with its role assignments \
                 when the project is purged; a user-assigned identity outlives it",
                i.name, i.principal_id
            ),
            fix,
        ),
        None => fail(CHECK, Severity::Low, format!("project {name} has no managed identity for its workloads"), fix),
    }
}

/// No principal but Owners can delete the project or its contents.
///
/// Holdfast has no separate delete action: a role that may write may delete. So a principal
/// holds standing delete rights in a project when a role it holds at `/` or at the project
/// allows `projects/write` or `projects/purge` (deleting or purging the project) and no lock
/// at `/` or at the project refuses that, or allows `projects/data/write` (deleting its
/// contents) and no such lock has `data_plane`. Locks bind every key and only an Owner removes
/// one, so a writer under a lock cannot delete: that is how an application keeps writing
/// without the power to delete. Owners (the built-in `admin` role, the bootstrap key's) are
/// not counted, nor principals that cannot authenticate (every key revoked, and not a managed
/// identity). A custom role that only manages keys or locks is not counted either, though it
/// could grant itself the rest: it is an Owner in all but name.
fn standing_delete_rights(name: &str, holders: &[Holder], locks: &[Lock]) -> Finding {
    const CHECK: &str = "standing_delete_rights";
    let scope = format!("/projects/{name}");
    let (project_locked, data_locked) = (!locks.is_empty(), locks.iter().any(|l| l.data_plane));
    let here: Vec<&Holder> = holders.iter().filter(|h| auth::covers(&h.scope, &scope)).collect();
    let able: Vec<&Holder> =
        here.iter().copied().filter(|h| (h.project && !project_locked) || (h.data && !data_locked)).collect();
    let Some(first) = able.first() else {
        let message = if here.is_empty() {
            format!("only Owners hold roles that can delete project {name} or its contents")
        } else {
            format!(
                "{} role assignment(s) besides Owners' allow writing project {name}, but locks refuse their deletes",
                here.len()
            )
        };
        return pass(CHECK, Severity::Medium, message);
    };
    let principals: HashSet<&str> = able.iter().map(|h| h.principal.as_str()).collect();
    let held: Vec<String> = able.iter().map(|h| format!("{} ({} at {})", h.principal, h.role, h.scope)).collect();
    fail(
        CHECK,
        Severity::Medium,
        format!(
            "{} principal(s) besides Owners can delete project {name} or its contents: {}; unassign those roles, or \
             keep them writing and refuse deletes to every key with a CanNotDelete lock with --data-plane",
            principals.len(),
            held.join(", ")
        ),
        format!("holdfast role unassign --principal {} --role {} --scope {}", first.principal, first.role, first.scope),
    )
}

/// A trial restore (`holdfast backup verify`) that passed within [`DRILL_MAX_AGE`] of `now`.
fn restore_drill(name: &str, backup: Option<&Result<BackupStatus>>, now: Micros) -> Finding {
    const CHECK: &str = "restore_drill";
    let verify = format!("holdfast backup verify --project {name}");
    let days = DRILL_MAX_AGE.as_secs() / 86_400;
    let status = match backup {
        None => {
            let message = "continuous backup is off on this server: there is no archive to restore from".into();
            return fail(CHECK, Severity::Medium, message, format!("{ARCHIVE_FIX}, then {verify}"));
        }
        Some(Err(_)) => {
            let message = format!("the backup status of project {name} cannot be read");
            return fail(CHECK, Severity::Medium, message, format!("holdfast backup status --project {name}"));
        }
        Some(Ok(status)) => status,
    };
    match &status.last_verify {
        None => fail(CHECK, Severity::Medium, format!("no trial restore of project {name} has run"), verify),
        Some(v) if !v.ok => fail(CHECK, Severity::Medium, format!("the last trial restore of project {name}, at {}, failed", v.verified_at), verify),
        Some(v) if parse_rfc3339(&v.verified_at).is_none_or(|at| now - at > DRILL_MAX_AGE.as_micros() as Micros) => fail(
            CHECK,
            Severity::Medium,
            format!("the last trial restore of project {name} passed at {}, more than {days} days ago", v.verified_at),
            verify,
        ),
        Some(v) => pass(
            CHECK,
            Severity::Medium,
            format!("a trial restore of project {name} to LSN {} passed at {} (within {days} days)", v.lsn, v.verified_at),
        ),
    }
}

/// Purge protection: nobody, Owners included, purges the project before its retention ends.
fn purge_protection(name: &str, project: &Project) -> Finding {
    const CHECK: &str = "purge_protection";
    if project.purge_protection {
        let days = project.soft_delete_retention_days;
        pass(CHECK, Severity::Low, format!("once deleted, project {name} cannot be purged for {days} days"))
    } else {
        fail(
            CHECK,
            Severity::Low,
            format!("once deleted, project {name} can be purged at once by an Owner"),
            format!("holdfast project update {name} --purge-protection"),
        )
    }
}

#[cfg(test)]
mod tests {
    use holdfast_types::api::{LockKind, VerifyReport};
    use holdfast_types::{Lsn, ProjectId, rfc3339};

    use super::*;

    const DAY_US: Micros = 86_400_000_000;

    fn lock(scope: &str, data_plane: bool) -> Lock {
        Lock {
            id: "lock_1".into(),
            scope: scope.into(),
            kind: LockKind::CanNotDelete,
            data_plane,
            notes: String::new(),
            created_by: "prn_admin".into(),
            created_at: rfc3339(0),
        }
    }

    fn holder(role: &str, scope: &str, project: bool, data: bool) -> Holder {
        Holder { principal: format!("prn_{role}"), role: role.into(), scope: scope.into(), project, data }
    }

    fn status(lag_seconds: f64, last_verify: Option<(bool, Micros)>) -> BackupStatus {
        BackupStatus {
            project: "p".into(),
            project_id: ProjectId::generate(),
            archive: "file:///a".into(),
            archived_lsn: Lsn(1),
            journal_lsn: Lsn(2),
            lag_changes: 1,
            lag_seconds,
            earliest: None,
            latest: None,
            segments: 1,
            snapshots: 1,
            last_snapshot_at: None,
            last_error: None,
            last_verify: last_verify.map(|(ok, at)| VerifyReport {
                project: "p".into(),
                ok,
                lsn: Lsn(1),
                verified_at: rfc3339(at),
                message: String::new(),
            }),
        }
    }

    #[test]
    fn locks_neutralise_the_deletes_they_refuse() {
        let writer = [holder("contributor", "/projects/p", true, true)];
        let app = [holder("ai_user", "/", false, true)];
        let elsewhere = [holder("contributor", "/projects/other", true, true)];
        let none: [Lock; 0] = [];
        let control = [lock("/projects/p", false)];
        let both = [lock("/", true)];
        let status = |h: &[Holder], l: &[Lock]| standing_delete_rights("p", h, l).status;
        assert_eq!(status(&writer, &none), CheckStatus::Fail);
        assert_eq!(status(&writer, &control), CheckStatus::Fail, "a control-plane lock leaves content deletes");
        assert_eq!(status(&writer, &both), CheckStatus::Pass);
        assert_eq!(status(&app, &none), CheckStatus::Fail);
        assert_eq!(status(&app, &both), CheckStatus::Pass);
        assert_eq!(status(&elsewhere, &none), CheckStatus::Pass, "a role at another project does not reach p");
        let failed = standing_delete_rights("p", &writer, &none);
        assert!(failed.message.contains("prn_contributor (contributor at /projects/p)"), "{}", failed.message);
        assert_eq!(failed.fix, "holdfast role unassign --principal prn_contributor --role contributor --scope /projects/p");
    }

    #[test]
    fn backup_must_be_fresh_and_the_drill_recent() {
        let now = 100 * DAY_US;
        let fresh = Ok(status(0.5, Some((true, now - DAY_US))));
        assert_eq!(continuous_backup("p", Some(&fresh)).status, CheckStatus::Pass);
        assert_eq!(restore_drill("p", Some(&fresh), now).status, CheckStatus::Pass);
        let stale = Ok(status(BACKUP_FRESHNESS.as_secs_f64() + 1.0, None));
        let finding = continuous_backup("p", Some(&stale));
        assert_eq!((finding.status, finding.fix.as_str()), (CheckStatus::Fail, "holdfast backup status --project p"));
        assert_eq!(continuous_backup("p", None).fix, ARCHIVE_FIX);
        let old = Ok(status(0.0, Some((true, now - 31 * DAY_US))));
        let finding = restore_drill("p", Some(&old), now);
        assert_eq!((finding.status, finding.fix.as_str()), (CheckStatus::Fail, "holdfast backup verify --project p"));
        let failed = Ok(status(0.0, Some((false, now))));
        assert_eq!(restore_drill("p", Some(&failed), now).status, CheckStatus::Fail);
        assert_eq!(restore_drill("p", Some(&Ok(status(0.0, None))), now).status, CheckStatus::Fail);
        assert_eq!(restore_drill("p", None, now).status, CheckStatus::Fail, "no archive is a failure, not n/a");
    }
}
