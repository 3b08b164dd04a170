//! Automatic failover, with etcd as the witness (`[coordinator] etcd = [urls]`).
//!
//! Each node holds one etcd lease (TTL `lease_ttl`, 5 s by default) and renews it every third
//! of the TTL. Keys, per replicated project:
//!
//! - `/holdfast/projects/{id}/leader`: `{"region","epoch"}` of the primary, on its lease;
//! - `/holdfast/projects/{id}/epoch`: the newest epoch granted (no lease);
//! - `/holdfast/projects/{id}/replicas/{region}`: the LSN a replica has applied, on its lease.
//!
//! The primary keeps its leader key. A primary whose renewals stop being acknowledged fences
//! itself once `FENCE_AFTER` of the TTL has passed since the last acknowledged renewal, which is
//! before etcd can expire the lease (it counts from a renewal it received no earlier than our
//! acknowledgement): so its writes stop before anyone can take over (self-fencing). When the
//! leader key is gone (the lease lapsed), the replica with the highest applied LSN among those
//! whose own keys are alive (ties: the lowest region name) takes the next epoch in one
//! transaction — leader key absent and epoch key unchanged since read — and promotes itself.
//! A deposed primary that comes back finds the new primary through its peers and steps down
//! (`replication::depose`), keeping what it alone had as a divergence record.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use holdfast_store::Role as StoreRole;
use holdfast_store::control;
use holdfast_types::{Epoch, Error, ProjectId};
use serde::{Deserialize, Serialize};

use holdfast_core::Result;

use crate::Geo;

/// `[coordinator]`.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
}

/// How much of the TTL may pass without an acknowledged renewal before a primary fences itself.
const FENCE_AFTER: f64 = 0.6;
/// How often leadership, positions and campaigns are looked at.
const TICK: Duration = Duration::from_millis(250);
/// How often the lease's age is checked for self-fencing.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

pub(crate) use holdfast_types::api::LeaseView;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Leader {
    region: String,
    epoch: Epoch,
}

fn leader_key(id: &ProjectId) -> String {
    format!("/holdfast/projects/{id}/leader")
}

fn epoch_key(id: &ProjectId) -> String {
    format!("/holdfast/projects/{id}/epoch")
}

fn replicas_prefix(id: &ProjectId) -> String {
    format!("/holdfast/projects/{id}/replicas/")
}

/// The lease id while its last acknowledged renewal was sent less than `safe` ago.
fn live(lease: &Mutex<Option<(i64, Instant)>>, safe: Duration) -> Option<i64> {
    lease.lock().unwrap_or_else(|e| e.into_inner()).filter(|(_, at)| at.elapsed() < safe).map(|(id, _)| id)
}

/// The newest epoch granted for the project, and the epoch key's `mod_revision` (0: absent).
async fn read_epoch(client: &mut Client, id: &ProjectId) -> Result<(u64, i64)> {
    let got = client.get(epoch_key(id), None).await.map_err(etcd_err("read epoch"))?;
    Ok(got
        .kvs()
        .first()
        .map(|kv| (kv.value_str().ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0), kv.mod_revision()))
        .unwrap_or((0, 0)))
}

/// The epoch key is as it was read (`revision` 0: still absent).
fn epoch_guard(id: &ProjectId, revision: i64) -> Compare {
    if revision == 0 {
        Compare::create_revision(epoch_key(id), CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(epoch_key(id), CompareOp::Equal, revision)
    }
}

fn etcd_err(what: &str) -> impl Fn(etcd_client::Error) -> Error + '_ {
    move |e| Error::unavailable(format!("etcd: {what}: {e}"))
}

/// The node's side of the witness.
pub(crate) struct Coordinator {
    config: CoordinatorConfig,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The node's lease and when the renewal last acknowledged was sent (shared with the
    /// write gates of the stores).
    lease: Arc<Mutex<Option<(i64, Instant)>>>,
    /// Projects this node fenced because its lease was in doubt (unfenced when it is renewed).
    self_fenced: Mutex<HashSet<ProjectId>>,
}

impl Coordinator {
    pub(crate) fn new(config: CoordinatorConfig) -> Self {
        Self { config, client: tokio::sync::Mutex::new(None), lease: Arc::default(), self_fenced: Mutex::default() }
    }

    /// The gate a replicated primary's writes pass: open only while the lease is live.
    pub(crate) fn write_gate(&self) -> holdfast_store::WriteGate {
        let (lease, safe) = (self.lease.clone(), self.config.lease_ttl.mul_f64(FENCE_AFTER));
        Arc::new(move || live(&lease, safe).is_some())
    }

    async fn client(&self) -> Result<Client> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
        let client = Client::connect(self.config.endpoints.clone(), Some(options)).await.map_err(etcd_err("connect"))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The node's lease id while its last acknowledged renewal is recent enough to act on.
    fn live_lease(&self) -> Option<i64> {
        live(&self.lease, self.config.lease_ttl.mul_f64(FENCE_AFTER))
    }

    /// Grants a lease if there is none (or it expired) and renews it; records the acknowledgement.
    async fn renew(&self) -> Result<i64> {
        let mut client = self.client().await?;
        let current = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, _)) = current {
            // Stamped before the request: etcd restarts the TTL no earlier than this.
            let sent = Instant::now();
            let renewed = tokio::time::timeout(Duration::from_secs(2), async {
                let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match renewed {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, sent));
                    return Ok(id);
                }
                Ok(Ok(_)) => {
                    tracing::warn!(lease = id, "etcd lease expired; taking a new one");
                }
                Ok(Err(e)) => return Err(etcd_err("renew")(e)),
                Err(_) => return Err(Error::unavailable("etcd: renewing the lease timed out")),
            }
        }
        let granted_at = Instant::now();
        let ttl = self.config.lease_ttl.as_secs().max(1) as i64;
        let lease = client.lease_grant(ttl, None).await.map_err(etcd_err("grant"))?.id();
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some((lease, granted_at));
        Ok(lease)
    }
}

impl Geo {
    fn coordinator(&self) -> Option<&Coordinator> {
        self.state.coordinator.as_ref()
    }

    /// Who holds the project's leader key in etcd, at which epoch, and for how much longer;
    /// `None` without a coordinator or when etcd does not answer within a second.
    pub(crate) async fn lease_of(&self, id: &ProjectId) -> Option<LeaseView> {
        let coordinator = self.coordinator()?;
        let lookup = async {
            let mut client = coordinator.client().await.ok()?;
            let current = client.get(leader_key(id), None).await.ok()?;
            let Some(kv) = current.kvs().first() else {
                return Some(LeaseView { holder: None, epoch: None, expires_in_secs: None });
            };
            let leader: Leader = serde_json::from_slice(kv.value()).ok()?;
            let ttl = client.lease_time_to_live(kv.lease(), None).await.ok().map(|t| t.ttl());
            Some(LeaseView { holder: Some(leader.region), epoch: Some(leader.epoch), expires_in_secs: ttl })
        };
        tokio::time::timeout(Duration::from_secs(1), lookup).await.ok().flatten()
    }

    /// Runs the witness side of this node until shutdown: renews the lease, fences primaries
    /// whose lease is in doubt, keeps leader keys, publishes replica positions, campaigns.
    pub fn spawn_coordinator(self: &Arc<Self>) {
        if self.coordinator().is_none() {
            return;
        }
        // The watchdog runs on its own, so a renewal or an etcd call that hangs never delays
        // self-fencing.
        let watchdog = self.clone();
        tokio::spawn(async move {
            let mut stopping = watchdog.core.stopping();
            loop {
                watchdog.fence_if_lease_in_doubt().await;
                tokio::select! {
                    _ = tokio::time::sleep(WATCHDOG_TICK) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
        });
        // Renewals run on their own too: a slow coordination pass never delays one.
        let renewer = self.clone();
        tokio::spawn(async move {
            let mut stopping = renewer.core.stopping();
            loop {
                let Some(coordinator) = renewer.coordinator() else { return };
                if let Err(e) = coordinator.renew().await {
                    tracing::warn!(error = %e, "cannot renew the etcd lease");
                    // Reconnect next time: a stream that broke stays broken.
                    *coordinator.client.lock().await = None;
                }
                tokio::select! {
                    _ = tokio::time::sleep(coordinator.config.lease_ttl / 3) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
        });
        let service = self.clone();
        tokio::spawn(async move {
            let mut stopping = service.core.stopping();
            loop {
                if let Err(e) = service.coordinate().await {
                    tracing::debug!(error = %e, "coordination pass failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
        });
    }

    /// Self-fencing, as status shows it: while the lease is in doubt, every replicated primary
    /// here is marked fenced (its write gate already refuses writes).
    async fn fence_if_lease_in_doubt(&self) {
        let Some(coordinator) = self.coordinator() else { return };
        if coordinator.live_lease().is_some() {
            return;
        }
        // The write gate refuses the writes already; this makes the state visible (status says
        // fenced), so it never waits on the project map.
        // The table's lock is let go at once: the checks below wait on stores.
        let Some(open) = self.core.try_open_stores().map(|o| o.stores()) else { return };
        for store in open {
            if store.role() == StoreRole::Primary && self.is_replicated(&store).await {
                store.set_role(StoreRole::Fenced);
                coordinator.self_fenced.lock().unwrap_or_else(|e| e.into_inner()).insert(store.id().clone());
                tracing::warn!(project = %store.name(), "etcd lease in doubt: fenced (no writes) until it is renewed");
                metrics::counter!("holdfast_self_fences_total").increment(1);
            }
        }
    }

    async fn is_replicated(&self, store: &holdfast_store::ProjectStore) -> bool {
        let id = store.id().clone();
        store.read(move |view| holdfast_core::projects::topology(view, &id)).await.is_ok_and(|(_, r)| !r.is_empty())
    }

    /// One pass over the projects: leaders keep their keys, replicas publish and campaign.
    async fn coordinate(self: &Arc<Self>) -> Result<()> {
        let Some(coordinator) = self.coordinator() else { return Ok(()) };
        let Some(lease) = coordinator.live_lease() else { return Ok(()) };
        let mut client = coordinator.client().await?;
        let entries = self.core.control().call(control::all_projects).await.map_err(Error::from)?;
        for entry in entries.into_iter().filter(|e| e.active) {
            let Ok(store) = self.core.store(&entry).await else { continue };
            if !self.is_replicated(&store).await {
                continue;
            }
            let id = entry.id.clone();
            let current = client.get(leader_key(&id), None).await.map_err(etcd_err("get leader"))?;
            let leader: Option<Leader> = current.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok());
            match self.state.replication.replica(&id) {
                None => {
                    // The primary here (or one fenced for its lease): hold the leader key.
                    let mine = Leader { region: self.core.region().to_owned(), epoch: store.epoch() };
                    let (granted, epoch_revision) = read_epoch(&mut client, &id).await?;
                    if granted > store.epoch().0 {
                        // A newer epoch was granted to another region: never lead at an older one.
                        if store.role() == StoreRole::Primary {
                            store.set_role(StoreRole::Fenced);
                        }
                        continue;
                    }
                    match &leader {
                        Some(l) if l.region != self.core.region() && l.epoch >= store.epoch() => {
                            if store.role() == StoreRole::Primary {
                                // Another region leads: stop; the peer check makes this a replica.
                                store.set_role(StoreRole::Fenced);
                            }
                            continue;
                        }
                        Some(l) if *l == mine && current.kvs().first().is_some_and(|kv| kv.lease() == lease) => {}
                        _ => {
                            let value = serde_json::to_vec(&mine).map_err(|e| Error::internal(e.to_string()))?;
                            let leader_guard = match current.kvs().first() {
                                Some(kv) => Compare::mod_revision(leader_key(&id), CompareOp::Equal, kv.mod_revision()),
                                None => Compare::create_revision(leader_key(&id), CompareOp::Equal, 0),
                            };
                            let claim = Txn::new()
                                .when(vec![leader_guard, epoch_guard(&id, epoch_revision)])
                                .and_then(vec![
                                    TxnOp::put(leader_key(&id), value, Some(PutOptions::new().with_lease(lease))),
                                    TxnOp::put(epoch_key(&id), store.epoch().0.to_string(), None),
                                ]);
                            let claimed = client.txn(claim).await.map_err(etcd_err("claim"))?.succeeded();
                            if !claimed {
                                continue;
                            }
                        }
                    }
                    // The lease is renewed and the key is ours: writes may go on.
                    let fenced_here = coordinator.self_fenced.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    if fenced_here && store.role() == StoreRole::Fenced {
                        store.set_role(StoreRole::Primary);
                        tracing::info!(project = %entry.name, "etcd lease renewed: taking writes again");
                    }
                }
                Some(state) => {
                    let applied = store.last_lsn();
                    let mine = format!("{}{}", replicas_prefix(&id), self.core.region());
                    client
                        .put(mine, applied.0.to_string(), Some(PutOptions::new().with_lease(lease)))
                        .await
                        .map_err(etcd_err("publish position"))?;
                    if leader.is_none() {
                        self.campaign(&mut client, lease, &entry, &store, &state).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A forced failover with a coordinator: the epoch comes from etcd too, so it can never be
    /// one an automatic failover granted. Refused while another region holds the lease.
    pub(crate) async fn take_lease_for(&self, id: &ProjectId, store: &holdfast_store::ProjectStore) -> Result<Option<Epoch>> {
        let Some(coordinator) = self.coordinator() else { return Ok(None) };
        let lease = coordinator
            .live_lease()
            .ok_or_else(|| Error::unavailable("this node's etcd lease is not live: cannot take the project's lease"))?;
        let mut client = coordinator.client().await?;
        let current = client.get(leader_key(id), None).await.map_err(etcd_err("get leader"))?;
        if let Some(leader) = current.kvs().first().and_then(|kv| serde_json::from_slice::<Leader>(kv.value()).ok()) {
            return Err(Error::conflict(format!(
                "region {} still holds the project's etcd lease at epoch {}: automatic failover decides while it is live",
                leader.region, leader.epoch
            )));
        }
        let (granted, revision) = read_epoch(&mut client, id).await?;
        match self.take_next_epoch(&mut client, lease, id, store, granted, revision).await? {
            Some(epoch) => Ok(Some(epoch)),
            None => Err(Error::conflict("another region took the project's lease meanwhile; see holdfast status")),
        }
    }

    /// The one way a region takes the next epoch: the leader key and `granted + 1` in one
    /// transaction, guarded by the leader key being absent and the epoch key being as it was
    /// read (`revision`). `None` when another region got there first.
    async fn take_next_epoch(
        &self,
        client: &mut Client,
        lease: i64,
        id: &ProjectId,
        store: &holdfast_store::ProjectStore,
        granted: u64,
        revision: i64,
    ) -> Result<Option<Epoch>> {
        let epoch = Epoch(granted.max(store.epoch().0) + 1);
        let value = serde_json::to_vec(&Leader { region: self.core.region().to_owned(), epoch }).map_err(|e| Error::internal(e.to_string()))?;
        let take = Txn::new()
            .when(vec![Compare::create_revision(leader_key(id), CompareOp::Equal, 0), epoch_guard(id, revision)])
            .and_then(vec![
                TxnOp::put(leader_key(id), value, Some(PutOptions::new().with_lease(lease))),
                TxnOp::put(epoch_key(id), epoch.0.to_string(), None),
            ]);
        let taken = client.txn(take).await.map_err(etcd_err("take the next epoch"))?.succeeded();
        Ok(taken.then_some(epoch))
    }

    /// The leader key is gone: the most up-to-date live replica takes the next epoch.
    async fn campaign(
        self: &Arc<Self>,
        client: &mut Client,
        lease: i64,
        entry: &control::CatalogEntry,
        store: &holdfast_store::ProjectStore,
        state: &crate::replication::ReplicaState,
    ) -> Result<()> {
        let id = &entry.id;
        let positions = client
            .get(replicas_prefix(id), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("read positions"))?;
        let mut best: Option<(u64, String)> = None;
        for kv in positions.kvs() {
            let region = kv.key_str().map_err(etcd_err("position key"))?.trim_start_matches(&replicas_prefix(id)).to_owned();
            let lsn: u64 = kv.value_str().ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            let better = best.as_ref().is_none_or(|(l, r)| lsn > *l || (lsn == *l && region < *r));
            if better {
                best = Some((lsn, region));
            }
        }
        if best.as_ref().is_none_or(|(_, r)| *r != self.core.region()) {
            return Ok(());
        }
        let (granted, revision) = read_epoch(client, id).await?;
        if revision == 0 {
            // No primary has held this project's lease yet (it was just replicated): there is
            // nothing to take over from.
            return Ok(());
        }
        let Some(epoch) = self.take_next_epoch(client, lease, id, store, granted, revision).await? else {
            return Ok(());
        };
        tracing::warn!(project = %entry.name, %epoch, "the primary's etcd lease lapsed: this region takes over");
        self.promote_automatically(entry, store, state, epoch).await?;
        metrics::counter!("holdfast_failovers_total", "kind" => "automatic").increment(1);
        Ok(())
    }
}
