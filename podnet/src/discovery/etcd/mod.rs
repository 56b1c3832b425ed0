//! Cluster membership through etcd, the way flannel leases subnets.
//!
//! Keys, under `[cluster] prefix` ("/podnet" by default), both attached to the node's etcd lease
//! so that they vanish once its agent has been gone for `lease_ttl`:
//!
//! - `<prefix>/subnets/<network>-<len>`, e.g. `/podnet/subnets/10.1.3.0-24`: who holds that pod
//!   CIDR;
//! - `<prefix>/nodes/<name>`: who holds that node name.
//!
//! Both hold the same JSON value, a [`Member`]:
//! `{"node":"node3","node_ip":"192.168.50.3","pod_cidr":"10.1.3.0/24"}`.
//!
//! A node joins with one transaction that creates both keys only if neither exists, so no two
//! live nodes hold one CIDR or one name. It follows the cluster by listing the keys and watching
//! them from the listing's revision. Values are read as untrusted input, and a node is believed
//! only by the rules of [`view`] (both keys, one lease, one value; the node believed first keeps
//! its place). While its lease lives a node's keys are its own: overwritten or deleted by
//! anyone, they are written back at once (with a warning), and the node never gives up or
//! renumbers its pod CIDR because of what someone else wrote.

mod follow;

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    LeaseTimeToLiveOptions, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use ipnet::Ipv4Net;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    DiscoveryError, Joined, LeaseRecord, PeerSource, Update,
    view::{Believed, Member, Stored},
};
use crate::{
    error_chain as chain,
    model::{Cluster, EtcdTls, Membership, PeerNode},
};

/// Longest wait for one answer from etcd (connecting included).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on an idle connection: a dead etcd is noticed within two of them.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// Bad keys remembered so that each is warned about once.
const WARNED_MAX: usize = 1024;
/// Shortest time between two write-backs of the node's keys: a writer who keeps overwriting
/// them costs etcd one write of ours per second at most.
const WRITE_BACK_MIN: Duration = Duration::from_secs(1);
/// First and longest wait before trying etcd again.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// This node's membership of a cluster in etcd.
pub struct Etcd {
    cluster: Cluster,
    name: String,
    node_ip: Ipv4Addr,
    state: PathBuf,
    /// `node.pod_cidr`, when the node claims that one.
    configured: Option<Ipv4Net>,
    /// The lease the node holds (or held last, as its lease record says).
    held: Option<LeaseRecord>,
    /// The last view sent, so that an unchanged cluster sends nothing.
    last_view: Option<Vec<PeerNode>>,
    /// The peers believed now, with their leases (see [`view`]).
    believed: Vec<Believed>,
    /// Subnet keys already warned about, with the value that was wrong (hashed: keys and values
    /// are anyone's, and may be large).
    warned: HashSet<u64>,
    /// For a lease TTL after a listing, the peers before it (see [`Self::view`]).
    grace: Option<Vec<Believed>>,
    /// When the node's keys were last written back.
    written_back: Option<tokio::time::Instant>,
}

impl Etcd {
    /// The membership `member` describes.
    pub fn of(member: Membership) -> Result<Self, DiscoveryError> {
        Ok(Self {
            held: LeaseRecord::load(&member.state)?,
            cluster: member.cluster,
            name: member.node,
            node_ip: member.node_ip,
            state: member.state,
            configured: member.pod_cidr,
            last_view: None,
            believed: Vec::new(),
            warned: HashSet::new(),
            grace: None,
            written_back: None,
        })
    }

    fn endpoints(&self) -> String {
        self.cluster.etcd.join(",")
    }

    /// Turns a client error into one line: a gRPC status is its message, without the transport's
    /// debug dump.
    fn etcd_error(&self) -> impl Fn(etcd_client::Error) -> DiscoveryError + use<> {
        let endpoints = self.endpoints();
        move |e| {
            let reason = match e {
                etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
                other => other.to_string(),
            };
            DiscoveryError::Etcd { endpoints: endpoints.clone(), reason }
        }
    }

    /// One request to etcd, given at most [`CALL_TIMEOUT`].
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, DiscoveryError> {
        match tokio::time::timeout(CALL_TIMEOUT, request).await {
            Ok(answer) => answer.map_err(self.etcd_error()),
            Err(_) => {
                Err(DiscoveryError::Timeout { endpoints: self.endpoints(), secs: CALL_TIMEOUT.as_secs() })
            }
        }
    }

    async fn connect(&self) -> Result<Client, DiscoveryError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, CALL_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.cluster.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        self.call(Client::connect(&self.cluster.etcd, Some(options))).await
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.cluster.prefix)
    }

    fn subnet_key(&self, cidr: Ipv4Net) -> String {
        format!("{}{}-{}", self.subnets_prefix(), cidr.network(), cidr.prefix_len())
    }

    fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.cluster.prefix)
    }

    fn node_key(&self) -> String {
        format!("{}{}", self.nodes_prefix(), self.name)
    }

    fn value(&self, pod_cidr: Ipv4Net) -> Vec<u8> {
        let member = Member { node: self.name.clone(), node_ip: self.node_ip, pod_cidr };
        serde_json::to_vec(&member).expect("a member serializes")
    }

    /// Whether this node may hold `cidr`: one the cluster leases, and the configured one if set.
    fn usable(&self, cidr: Ipv4Net) -> bool {
        self.cluster.leases(cidr) && self.configured.is_none_or(|c| c == cidr)
    }

    /// Resumes the node's lease, or takes a new one; the lease record follows.
    async fn claim(&mut self, client: &mut Client) -> Result<(LeaseRecord, Joined), DiscoveryError> {
        let fresh = self.held.is_none();
        let record = match self.resume(client).await? {
            Some(record) => record,
            None => {
                let ttl = self.cluster.lease_ttl.as_secs() as i64;
                let lease = self.call(client.lease_grant(ttl, None)).await?.id();
                match self.claim_free(client, lease).await {
                    Ok(pod_cidr) => LeaseRecord { pod_cidr, lease, node_ip: Some(self.node_ip) },
                    Err(e) => {
                        let _ = self.call(client.lease_revoke(lease)).await;
                        return Err(e);
                    }
                }
            }
        };
        if self.held != Some(record) {
            record.save(&self.state)?;
            self.held = Some(record);
        }
        Ok((record, Joined { pod_cidr: record.pod_cidr, fresh }))
    }

    /// The node's lease from before, if it lives and may still hold the node's CIDR. The lease
    /// record's lease, while it lives, holds the node's keys whatever they hold now (they are
    /// written back); a recorded lease that ran out is not looked for elsewhere. Without a record
    /// (a node that lost its state), the node's name key names its lease if it holds this name
    /// at this address and the lease holds exactly the node's two keys. A lease of this node
    /// that can no longer be used (its CIDR taken, a CIDR the config does not allow now, an
    /// address that changed) is given up.
    async fn resume(&mut self, client: &mut Client) -> Result<Option<LeaseRecord>, DiscoveryError> {
        if let Some(held) = self.held {
            if !self.alive(client, held.lease).await? {
                return Ok(None);
            }
            if self.usable(held.pod_cidr) && held.node_ip.is_none_or(|ip| ip == self.node_ip) {
                self.write_back(client, held).await?;
                return Ok(Some(LeaseRecord { node_ip: Some(self.node_ip), ..held }));
            }
            info!(
                "cluster: giving up lease {:x}: the config does not allow {} now, or the node's address changed",
                held.lease, held.pod_cidr
            );
            let _ = self.call(client.lease_revoke(held.lease)).await;
            return Ok(None);
        }
        let found = self.call(client.get(self.node_key(), None)).await?;
        let Some(kv) = found.kvs().first() else {
            return Ok(None);
        };
        let lease = kv.lease();
        let cidr = Member::parse(kv.value())
            .filter(|h| h.node == self.name && h.node_ip == self.node_ip)
            .map(|h| h.pod_cidr)
            .ok_or_else(|| self.name_held(kv))?;
        let attached = match lease {
            0 => Vec::new(),
            _ => {
                let options = LeaseTimeToLiveOptions::new().with_keys();
                self.call(client.lease_time_to_live(lease, Some(options))).await?.keys().to_vec()
            }
        };
        let mut own = [self.subnet_key(cidr).into_bytes(), self.node_key().into_bytes()];
        let mut attached = attached;
        own.sort();
        attached.sort();
        if attached != own {
            // Not a lease this node could have made: someone else's, to wait out.
            return Err(self.name_held(kv));
        }
        if self.usable(cidr) && self.hold(client, lease, cidr).await? {
            return Ok(Some(LeaseRecord { pod_cidr: cidr, lease, node_ip: Some(self.node_ip) }));
        }
        info!(
            "cluster: giving up lease {lease:x}: its CIDR is another node's now, or not one the config allows"
        );
        let _ = self.call(client.lease_revoke(lease)).await;
        Ok(None)
    }

    /// Whether `lease` lives.
    async fn alive(&self, client: &mut Client, lease: i64) -> Result<bool, DiscoveryError> {
        Ok(lease != 0 && self.call(client.lease_time_to_live(lease, None)).await?.ttl() > 0)
    }

    /// Writes the node's two keys as `held` says, in one transaction, whatever they hold now;
    /// says so when someone else had changed them.
    async fn write_back(&mut self, client: &mut Client, held: LeaseRecord) -> Result<(), DiscoveryError> {
        let (subnet, node) = (self.subnet_key(held.pod_cidr), self.node_key());
        let value = self.value(held.pod_cidr);
        let found = self
            .call(client.txn(
                Txn::new().and_then([TxnOp::get(subnet.as_str(), None), TxnOp::get(node.as_str(), None)]),
            ))
            .await?;
        let changed: Vec<&str> = [&subnet, &node]
            .into_iter()
            .enumerate()
            .filter(|(n, _)| {
                !got(&found, *n).is_some_and(|kv| kv.lease() == held.lease && kv.value() == value)
            })
            .map(|(_, key)| key.as_str())
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        warn!(
            "cluster: {} deleted or overwritten by another writer; writing back node {} ({}, {}) under lease {:x}",
            changed.join(" and "),
            self.name,
            self.node_ip,
            held.pod_cidr,
            held.lease
        );
        let put = |key: &str| TxnOp::put(key, value.clone(), Some(PutOptions::new().with_lease(held.lease)));
        self.call(client.txn(Txn::new().and_then([put(&subnet), put(&node)]))).await?;
        self.written_back = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// The error for a name key `kv` another node holds.
    fn name_held(&self, kv: &KeyValue) -> DiscoveryError {
        if kv.lease() == 0 {
            return DiscoveryError::NameKeyWithoutLease { key: self.node_key() };
        }
        DiscoveryError::NameHeld {
            name: self.name.clone(),
            holder_ip: Member::parse(kv.value())
                .map_or_else(|| "an unknown address".to_owned(), |h| h.node_ip.to_string()),
            node_ip: self.node_ip,
            ttl: self.cluster.lease_ttl.as_secs(),
        }
    }

    /// Makes `lease` hold `cidr`'s subnet key and the node's name key, with the node's current
    /// value (its address may have changed): each key is taken if free and rewritten if the
    /// lease's. False when another holds the subnet key.
    async fn hold(&self, client: &mut Client, lease: i64, cidr: Ipv4Net) -> Result<bool, DiscoveryError> {
        let (subnet, node) = (self.subnet_key(cidr), self.node_key());
        let put = |key: &str| TxnOp::put(key, self.value(cidr), Some(PutOptions::new().with_lease(lease)));
        for key in [&subnet, &node] {
            let free = Compare::create_revision(key.as_str(), CompareOp::Equal, 0);
            self.call(client.txn(Txn::new().when([free]).and_then([put(key)]))).await?;
        }
        let ours = [
            Compare::lease(subnet.as_str(), CompareOp::Equal, lease),
            Compare::lease(node.as_str(), CompareOp::Equal, lease),
        ];
        let txn = Txn::new()
            .when(ours)
            .and_then([put(&subnet), put(&node)])
            .or_else([TxnOp::get(node.as_str(), None)]);
        let answer = self.call(client.txn(txn)).await?;
        if answer.succeeded() {
            return Ok(true);
        }
        match got(&answer, 0) {
            Some(kv) if kv.lease() != lease => Err(self.name_held(&kv)),
            _ => Ok(false),
        }
    }

    /// Takes the configured CIDR, or the first free one (the one the node held last first),
    /// with the node's name, under `lease`.
    async fn claim_free(&self, client: &mut Client, lease: i64) -> Result<Ipv4Net, DiscoveryError> {
        // Taken: a CIDR with a subnet key, or one another node's name key names (its subnet key
        // may have been deleted by someone else a moment ago: its owner is writing it back).
        let listing = self
            .call(client.get(format!("{}/", self.cluster.prefix), Some(GetOptions::new().with_prefix())))
            .await?;
        let nodes = self.nodes_prefix();
        let taken: HashSet<Vec<u8>> = listing
            .kvs()
            .iter()
            .filter_map(|kv| match kv.key().starts_with(nodes.as_bytes()) {
                false => Some(kv.key().to_vec()),
                true if kv.lease() != 0 && kv.key() != self.node_key().as_bytes() => {
                    Member::parse(kv.value()).map(|m| self.subnet_key(m.pod_cidr).into_bytes())
                }
                true => None,
            })
            .collect();
        let last = self.held.map(|h| h.pod_cidr).filter(|c| self.usable(*c));
        let candidates: Box<dyn Iterator<Item = Ipv4Net>> = match self.configured {
            Some(cidr) => Box::new(std::iter::once(cidr)),
            None => {
                Box::new(last.into_iter().chain(self.cluster.subnets().filter(move |c| Some(*c) != last)))
            }
        };
        for cidr in candidates {
            let (subnet, node) = (self.subnet_key(cidr), self.node_key());
            if self.configured.is_none() && taken.contains(subnet.as_bytes()) {
                continue;
            }
            let put =
                |key: &str| TxnOp::put(key, self.value(cidr), Some(PutOptions::new().with_lease(lease)));
            let txn = Txn::new()
                .when([
                    Compare::create_revision(subnet.clone(), CompareOp::Equal, 0),
                    Compare::create_revision(node.clone(), CompareOp::Equal, 0),
                ])
                .and_then([put(&subnet), put(&node)])
                .or_else([TxnOp::get(subnet, None), TxnOp::get(node, None)]);
            let answer = self.call(client.txn(txn)).await?;
            if answer.succeeded() {
                info!("cluster: node {} leased pod CIDR {cidr} (lease {lease:x})", self.name);
                return Ok(cidr);
            }
            if let Some(kv) = got(&answer, 1) {
                return Err(self.name_held(&kv));
            }
            if self.configured.is_some() {
                let holder = got(&answer, 0).and_then(|kv| Member::parse(kv.value()));
                return Err(DiscoveryError::CidrTaken {
                    cidr,
                    holder: holder.as_ref().map_or_else(|| "?".to_owned(), |h| h.node.clone()),
                    holder_ip: holder.map_or_else(|| "?".to_owned(), |h| h.node_ip.to_string()),
                });
            }
            // Another node took it between the listing and now: the next one.
        }
        Err(DiscoveryError::Exhausted {
            node: self.name.clone(),
            cluster_cidr: self.cluster.cluster_cidr,
            node_prefix: self.cluster.node_prefix,
            count: self.cluster.subnets().count(),
            prefix: self.cluster.prefix.clone(),
        })
    }
}

impl PeerSource for Etcd {
    async fn join(&mut self) -> Result<Joined, DiscoveryError> {
        let mut backoff = Backoff::new(&self.cluster);
        loop {
            let attempt = async {
                let mut client = self.connect().await?;
                self.claim(&mut client).await.map(|(_, joined)| joined)
            };
            match attempt.await {
                Ok(joined) => return Ok(joined),
                Err(e) if e.is_transient() => {
                    if let Some(held) = self.held.filter(|h| self.usable(h.pod_cidr)) {
                        warn!(
                            "cluster: {}; going on with pod CIDR {}, leased before, and renewing once etcd answers",
                            chain(&e),
                            held.pod_cidr
                        );
                        return Ok(Joined { pod_cidr: held.pod_cidr, fresh: false });
                    }
                    let delay = backoff.next();
                    warn!("cluster: {}; trying to join again in {delay:?}", chain(&e));
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn follow(mut self, updates: mpsc::Sender<Update>) {
        let mut backoff = Backoff::new(&self.cluster);
        loop {
            let ended = tokio::select! {
                ended = self.session(&updates, &mut backoff) => ended,
                () = updates.closed() => return,
            };
            match ended {
                Ok(()) => return,
                Err(e) => {
                    let delay = backoff.next();
                    warn!(
                        "cluster: {}; trying again in {delay:?} (peers stay as they are meanwhile)",
                        chain(&e)
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn leave(&mut self) -> Result<(), DiscoveryError> {
        if let Some(held) = self.held {
            let mut client = self.connect().await?;
            match self.call(client.lease_revoke(held.lease)).await {
                // Gone already (expired): nothing to give back.
                Err(DiscoveryError::Etcd { reason, .. }) if reason.contains("lease not found") => {}
                answer => {
                    answer?;
                }
            }
            info!("cluster: node {} gave back pod CIDR {}", self.name, held.pod_cidr);
        }
        self.held = None;
        LeaseRecord::remove(&self.state)
    }
}

/// A key as the view reads it.
fn stored(kv: &KeyValue) -> (Vec<u8>, Stored) {
    (
        kv.key().to_vec(),
        Stored { value: kv.value().to_vec(), lease: kv.lease(), created: kv.create_revision() },
    )
}

/// The `n`th get of a transaction's answer, if it found a key.
fn got(answer: &TxnResponse, n: usize) -> Option<KeyValue> {
    match answer.op_responses().into_iter().nth(n)? {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    }
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, DiscoveryError> {
    let read = |field: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| DiscoveryError::TlsFile { field, path: path.to_owned(), source })
    };
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca", &tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    Ok(options)
}

/// Waits between attempts: doubling from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], and never more
/// than a third of the lease TTL, so that once etcd is back (it gives every lease a full TTL
/// when it starts) the node renews its lease before it runs out.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(cluster: &Cluster) -> Self {
        Self { next: BACKOFF_MIN, max: BACKOFF_MAX.min(cluster.lease_ttl / 3) }
    }

    fn next(&mut self) -> Duration {
        let delay = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        delay
    }
}
