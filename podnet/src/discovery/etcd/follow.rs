//! Following the cluster once the node holds its lease: one session per connection to etcd
//! renews the lease, lists the prefix and watches it, writes the node's keys back when someone
//! else changed them, and sends the agent a view whenever the believed nodes change (see
//! `discovery::view` for the rules).

use std::{
    collections::BTreeMap,
    hash::{Hash as _, Hasher as _},
};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Backoff, Etcd, WARNED_MAX, WRITE_BACK_MIN, stored};
use crate::{
    discovery::{
        DiscoveryError, Update,
        view::{self, LeftOut, Member, QUOTED_MAX, Stored},
    },
    model::PeerNode,
};

impl Etcd {
    /// One connection's worth of following: (re)claim, renew, list, watch. Returns on an error.
    pub(super) async fn session(
        &mut self,
        updates: &mpsc::Sender<Update>,
        backoff: &mut Backoff,
    ) -> Result<(), DiscoveryError> {
        let mut client = self.connect().await?;
        let before = self.held.map(|h| h.pod_cidr);
        let (held, joined) = self.claim(&mut client).await?;
        if before != Some(joined.pod_cidr) {
            warn!(
                "cluster: node {} lost its lease on {} and now holds {}: its pods move",
                self.name,
                before.map_or_else(|| "no CIDR".to_owned(), |c| c.to_string()),
                joined.pod_cidr
            );
            if updates.send(Update::PodCidr(joined.pod_cidr)).await.is_err() {
                return Ok(());
            }
        }
        let lease = held.lease;
        let (mut keeper, mut renewed) = self.call(client.lease_keep_alive(lease)).await?;
        // The whole prefix: the subnet keys, the name keys, and this node's own.
        let watched = format!("{}/", self.cluster.prefix);
        let listing = self.call(client.get(watched.clone(), Some(GetOptions::new().with_prefix()))).await?;
        let revision = listing.header().map_or(0, |h| h.revision());
        let mut keys: BTreeMap<Vec<u8>, Stored> = listing.kvs().iter().map(stored).collect();
        // After an outage (a restarted or even a wiped etcd), peers missing from the first
        // listing may just not have renewed yet: they stay one lease TTL longer.
        let grace_end = tokio::time::Instant::now() + self.cluster.lease_ttl;
        self.grace = Some(self.believed.clone());
        if !self.send_view(&mut client, &keys, updates).await? {
            return Ok(());
        }
        let watch_from = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut watch = self.call(client.watch(watched.clone(), Some(watch_from))).await?;
        *backoff = Backoff::new(&self.cluster);
        info!("cluster: following {watched} in etcd from revision {revision}");
        let mut renew = tokio::time::interval(self.cluster.lease_ttl / 3);
        let own_keys = [self.subnet_key(joined.pod_cidr), self.node_key()];
        let own_value = self.value(joined.pod_cidr);
        let subnets = self.subnets_prefix();
        let etcd_error = self.etcd_error();
        // A write-back held back by WRITE_BACK_MIN, and when it is due.
        let mut write_back_due = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(grace_end), if self.grace.is_some() => {
                    self.grace = None;
                    if !self.send_view(&mut client, &keys, updates).await? {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(write_back_due.unwrap_or(grace_end)), if write_back_due.is_some() => {
                    write_back_due = None;
                    self.write_back(&mut client, held).await?;
                }
                _ = renew.tick() => self.call(keeper.keep_alive()).await?,
                answer = renewed.message() => match answer.map_err(&etcd_error)? {
                    Some(answer) if answer.ttl() > 0 => {}
                    _ => return Err(DiscoveryError::LeaseLost { lease }),
                },
                changes = watch.message() => {
                    let ended = |reason: String| DiscoveryError::WatchEnded { prefix: watched.clone(), reason };
                    let changes = changes.map_err(&etcd_error)?.ok_or_else(|| ended("the stream closed".into()))?;
                    if changes.canceled() {
                        return Err(ended(format!(
                            "{} (compacted at revision {})",
                            changes.cancel_reason(),
                            changes.compact_revision()
                        )));
                    }
                    let mut taken = false;
                    for event in changes.events() {
                        let Some(kv) = event.kv() else { continue };
                        let deleted = event.event_type() == EventType::Delete;
                        if own_keys.iter().any(|k| k.as_bytes() == kv.key()) {
                            taken |= deleted || kv.lease() != lease || kv.value() != own_value;
                        }
                        if deleted {
                            // A subnet key gone for sure: its node is not held over either.
                            if let (Some(grace), true) = (&mut self.grace, kv.key().starts_with(subnets.as_bytes()))
                                && let Some(gone) = keys.get(kv.key()).and_then(|s| Member::parse(&s.value))
                            {
                                grace.retain(|b| b.peer.pod_cidr != gone.pod_cidr);
                            }
                            keys.remove(kv.key());
                        } else {
                            let (key, value) = stored(kv);
                            keys.insert(key, value);
                        }
                    }
                    if taken && write_back_due.is_none() {
                        // At most one write-back a second: a writer who keeps overwriting the
                        // keys costs etcd one write of ours a second, and waits nothing else.
                        match self.written_back.map(|last| last + WRITE_BACK_MIN) {
                            Some(due) if due > tokio::time::Instant::now() => write_back_due = Some(due),
                            _ => self.write_back(&mut client, held).await?,
                        }
                    }
                    if !self.send_view(&mut client, &keys, updates).await? {
                        return Ok(());
                    }
                }
                () = updates.closed() => return Ok(()),
            }
        }
    }

    /// Sends the view `keys` make, if it changed; false when nobody listens any more.
    async fn send_view(
        &mut self,
        client: &mut Client,
        keys: &BTreeMap<Vec<u8>, Stored>,
        updates: &mpsc::Sender<Update>,
    ) -> Result<bool, DiscoveryError> {
        let view = self.view(client, keys).await?;
        if self.last_view.as_ref() == Some(&view) {
            return Ok(true);
        }
        self.last_view = Some(view.clone());
        Ok(updates.send(Update::Peers(view)).await.is_ok())
    }

    /// The other nodes the cluster's `keys` hold, by the rules of [`view`], given the nodes
    /// believed so far (etcd says which of their leases live, for those whose keys no longer
    /// hold them); in a grace time after a listing, with the peers before it that it lacks. Each
    /// key left out is warned about once.
    async fn view(
        &mut self,
        client: &mut Client,
        keys: &BTreeMap<Vec<u8>, Stored>,
    ) -> Result<Vec<PeerNode>, DiscoveryError> {
        let (subnets_prefix, nodes_prefix) = (self.subnets_prefix(), self.nodes_prefix());
        let me = view::Me {
            cluster: &self.cluster,
            name: &self.name,
            node_ip: self.node_ip,
            pod_cidr: self.held.map(|h| h.pod_cidr),
            subnets_prefix: &subnets_prefix,
            nodes_prefix: &nodes_prefix,
        };
        let mut alive = Vec::new();
        for lease in view::unheld(&me, keys, &self.believed) {
            if lease != 0 && self.call(client.lease_time_to_live(lease, None)).await?.ttl() > 0 {
                alive.push(lease);
            }
        }
        let (believed, left_out) =
            view::view(&me, keys, &self.believed, &alive, self.grace.as_deref().unwrap_or_default());
        for LeftOut { key, value, problem } in left_out {
            if self.warned.len() >= WARNED_MAX {
                // Anyone can write keys: remembering them all would let them fill memory.
                self.warned.clear();
            }
            let mut seen = std::hash::DefaultHasher::new();
            (&key, &value).hash(&mut seen);
            if self.warned.insert(seen.finish()) {
                let key = String::from_utf8_lossy(&key[..key.len().min(QUOTED_MAX)]);
                warn!("cluster: ignoring {key:?}: {problem}");
            }
        }
        let peers = believed.iter().map(|b| b.peer.clone()).collect();
        self.believed = believed;
        Ok(peers)
    }
}
