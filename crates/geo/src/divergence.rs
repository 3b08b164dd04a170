//! Divergence records (DESIGN.md invariant 5, "nothing lost silently"): the changes a deposed
//! primary committed that never reached the region that took over. The new primary keeps each
//! record as a resource of the project (`Kind::Divergence`, journaled, so it is replicated and
//! archived like everything else); an operator lists and reads them, and replays chosen changes
//! as new changes on the current primary, where locks and the journal treat them like any write.

use holdfast_types::api::{Divergence, ReplayOutcome, ReplayRequest};
use holdfast_types::{Change, Epoch, Error, Kind, Lsn, Op, rfc3339};
use serde_json::{Value, json};

use holdfast_core::{Action, Caller, PageQuery};
use holdfast_core::Result;

use crate::Geo;

fn record(id: &str, body: &Value, with_changes: bool) -> Result<Divergence> {
    let bad = |what: &str| Error::internal(format!("divergence record {id} has no valid {what}"));
    let changes: Vec<Change> = serde_json::from_value(body["changes"].clone()).map_err(|_| bad("changes"))?;
    let replayed: Vec<Lsn> = serde_json::from_value(body["replayed"].clone()).unwrap_or_default();
    Ok(Divergence {
        id: id.to_owned(),
        from_region: body["from_region"].as_str().ok_or_else(|| bad("from_region"))?.to_owned(),
        epoch: Epoch(body["epoch"].as_u64().ok_or_else(|| bad("epoch"))?),
        first_lsn: Lsn(body["first_lsn"].as_u64().ok_or_else(|| bad("first_lsn"))?),
        last_lsn: Lsn(body["last_lsn"].as_u64().ok_or_else(|| bad("last_lsn"))?),
        count: changes.len(),
        detected_at: rfc3339(body["detected_us"].as_i64().unwrap_or_default()),
        replayed,
        changes: if with_changes { changes } else { Vec::new() },
    })
}

impl Geo {
    /// `holdfast divergence list --project P`: a page of records, oldest first, without their
    /// changes.
    pub async fn list_divergences(&self, caller: &Caller, project: &str, page: PageQuery) -> Result<Vec<Divergence>> {
        caller.require(Action::ProjectsRead, &format!("/projects/{project}"))?;
        let limit = page.limit()?;
        let store = self.core.project_store(project).await?;
        let rows = store
            .read(move |view| view.list(Kind::Divergence, None, page.after.as_deref(), limit, holdfast_store::Order::Asc))
            .await
            .map_err(Error::from)?;
        rows.iter().map(|r| record(&r.id, &r.body, false)).collect()
    }

    /// `holdfast divergence show --project P --id D`: the record with its changes — whole
    /// changes, with contents, actors and sealed secrets, so it needs what the journal needs.
    pub async fn get_divergence(&self, caller: &Caller, project: &str, id: &str) -> Result<Divergence> {
        caller.require(Action::JournalRead, &format!("/projects/{project}"))?;
        let store = self.core.project_store(project).await?;
        let key = id.to_owned();
        let row = store.read(move |view| view.get(Kind::Divergence, &key)).await.map_err(Error::from)?;
        let row = row.ok_or_else(|| Error::not_found(format!("project {project:?} has no divergence record {id:?}")))?;
        record(id, &row.body, true)
    }

    /// `holdfast divergence replay --project P --id D [--lsn N …]`: re-applies chosen changes
    /// (all not yet replayed by default) as new changes on this primary, one each, in LSN
    /// order, as the caller; a refused one (a lock, a conflict) is reported and the rest go on.
    /// Owners only: a replayed change can touch anything.
    pub async fn replay_divergence(&self, caller: &Caller, project: &str, id: &str, request: ReplayRequest) -> Result<Vec<ReplayOutcome>> {
        caller.require(Action::Failover, &format!("/projects/{project}"))?;
        let record = self.get_divergence(caller, project, id).await?;
        let chosen: Vec<&Change> = match &request.lsns {
            Some(lsns) => {
                if let Some(missing) = lsns.iter().find(|l| !record.changes.iter().any(|c| c.lsn == **l)) {
                    return Err(Error::invalid(format!(
                        "divergence record {id} holds LSNs {} to {}; it has no LSN {missing}",
                        record.first_lsn, record.last_lsn
                    )));
                }
                record.changes.iter().filter(|c| lsns.contains(&c.lsn)).collect()
            }
            None => record.changes.iter().filter(|c| !record.replayed.contains(&c.lsn)).collect(),
        };
        let control = self.core.project_store(project).await?.name() == holdfast_core::control_plane::CONTROL_PROJECT;
        let data = if control { None } else { Some(self.core.data(caller, project, Action::DataWrite).await?) };
        let mut outcomes = Vec::with_capacity(chosen.len());
        let mut replayed = record.replayed.clone();
        for change in chosen {
            // The project record (topology, data key) was the deposed primary's view of a
            // project it no longer leads: its changes are not replayed.
            let ops: Vec<Op> = change.ops.iter().filter(|op| op.kind() != Kind::Project).cloned().collect();
            let committed = match &data {
                Some(data) => {
                    let core = self.core.clone();
                    data.commit(Box::new(move |view| {
                        core.check_joining(view, &ops)?;
                        Ok(ops)
                    }))
                    .await
                    .map(|c| c.lsn)
                }
                // The control journal's changes are control writes (its projection follows).
                None => self.core.control_write_ops(caller, ops).await.map(|()| None),
            };
            let outcome = match committed {
                Ok(new_lsn) => {
                    replayed.push(change.lsn);
                    ReplayOutcome { lsn: change.lsn, new_lsn, error: None }
                }
                Err(e) => ReplayOutcome { lsn: change.lsn, new_lsn: None, error: Some(e.message) },
            };
            outcomes.push(outcome);
        }
        replayed.sort();
        replayed.dedup();
        let patch = Op::Patch { kind: Kind::Divergence, id: id.to_owned(), patch: json!({ "replayed": replayed }) };
        let store = self.core.project_store(project).await?;
        store
            .write(caller.principal.id.as_str(), caller.request_id.as_str(), Box::new(move |_| Ok(vec![patch])))
            .await
            .map_err(Error::from)?;
        Ok(outcomes)
    }
}
