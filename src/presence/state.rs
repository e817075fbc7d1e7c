//! The tracker's state: a delta-state observed-remove set of presences (Phoenix.Tracker.State).
//!
//! Pure: no threads, no I/O. Every add gets a dot `(replica, clock)`; the causal context is a
//! version vector plus a "cloud" of dots seen out of order. A remove keeps the dot in the
//! context and drops the value, which is how a remote replica learns of it: a merge removes the
//! values whose dots the other side has seen but no longer holds, and adds the values whose dots
//! this side has not seen. `update` is a remove and an add in one step. Today there is one
//! replica per server; the shape is what lets the cluster work replicate it without a rewrite.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// A replica's identity: the node's name and a version chosen at start, so a restarted node is
/// a new replica (its old dots are never confused with new ones).
pub type Replica = Arc<str>;

/// The identity of a tracking process (one channel process), for exit cleanup.
pub type Owner = u64;
/// Owner of presences held for another node: never a local channel's (those start at 1).
/// Not indexed in `State::owners`: nothing untracks by it, and one list of every remote
/// presence made each remote leave a scan of all of them (10,000 leaves after a node's `bye`
/// cost 50 million comparisons while its clients were rejoining).
pub const REMOTE_OWNER: Owner = 0;

/// One add event: which replica made it, and that replica's clock at the time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub replica: Replica,
    pub clock: u64,
}

/// What a replica has seen: every clock up to `vv[replica]`, plus the dots in `cloud`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    vv: BTreeMap<Replica, u64>,
    cloud: BTreeSet<Dot>,
}

impl Context {
    pub fn contains(&self, dot: &Dot) -> bool {
        self.vv.get(&dot.replica).is_some_and(|&c| dot.clock <= c) || self.cloud.contains(dot)
    }

    /// Adds one dot, keeping the context compact without walking the cloud: a delta's context
    /// starts empty, so every change of a 50 ms window went to the cloud and each `add`
    /// re-sorted all of them (quadratic in the changes of a window, in a reconnect storm).
    pub fn add(&mut self, dot: Dot) {
        if self.contains(&dot) {
            return;
        }
        let max = self.vv.get(&dot.replica).copied().unwrap_or(0);
        if dot.clock != max + 1 {
            self.cloud.insert(dot);
            return;
        }
        let mut top = Dot { replica: dot.replica, clock: dot.clock + 1 };
        while self.cloud.remove(&top) {
            top.clock += 1;
        }
        self.vv.insert(top.replica, top.clock - 1);
    }

    pub fn merge(&mut self, other: &Context) {
        for (replica, &clock) in &other.vv {
            let mine = self.vv.entry(replica.clone()).or_insert(0);
            *mine = (*mine).max(clock);
        }
        self.cloud.extend(other.cloud.iter().cloned());
        self.compact();
    }

    /// The version vector and the cloud, for the wire (`replication.rs`).
    pub fn parts(&self) -> (&BTreeMap<Replica, u64>, &BTreeSet<Dot>) {
        (&self.vv, &self.cloud)
    }

    pub fn from_parts(vv: BTreeMap<Replica, u64>, cloud: BTreeSet<Dot>) -> Context {
        let mut context = Context { vv, cloud };
        context.compact();
        context
    }

    /// What is known of `replica` alone.
    fn only(&self, replica: &Replica) -> Context {
        let vv = self.vv.iter().filter(|(r, _)| *r == replica);
        let cloud = self.cloud.iter().filter(|d| &d.replica == replica);
        Context { vv: vv.map(|(r, c)| (r.clone(), *c)).collect(), cloud: cloud.cloned().collect() }
    }

    /// Every dot seen, if there are at most `max` of them.
    fn dots(&self, max: usize) -> Option<impl Iterator<Item = Dot> + '_> {
        let total = self.vv.values().fold(self.cloud.len() as u64, |n, c| n.saturating_add(*c));
        if total > max as u64 {
            return None;
        }
        let ranges = self
            .vv
            .iter()
            .flat_map(|(r, &c)| (1..=c).map(move |clock| Dot { replica: r.clone(), clock }));
        Some(ranges.chain(self.cloud.iter().cloned()))
    }

    /// Forgets everything seen of `replica`, so that its state is taken whole if it ever
    /// speaks again.
    fn forget(&mut self, replica: &str) {
        self.vv.remove(replica);
        self.cloud.retain(|d| &*d.replica != replica);
    }

    /// Moves cloud dots that extend a replica's contiguous range into the version vector.
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let max = self.vv.entry(dot.replica.clone()).or_insert(0);
            if dot.clock == *max + 1 {
                *max = dot.clock;
            } else if dot.clock > *max {
                self.cloud.insert(dot);
            }
        }
        self.vv.retain(|_, clock| *clock > 0);
    }
}

/// One tracked presence: `key` on `topic`, held by `owner`, with its meta already encoded as a
/// JSON object that includes its `phx_ref` (and `phx_ref_prev` after an update), so that
/// states and diffs are assembled from text without encoding anything again.
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    pub topic: Arc<str>,
    pub key: Arc<str>,
    pub owner: Owner,
    pub phx_ref: Arc<str>,
    pub meta: Arc<str>,
}

/// A delta: the values added and the dots covered since the last extraction; a dot covered but
/// absent from `values` is a remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub context: Context,
    pub values: BTreeMap<Dot, Presence>,
}

/// What changed, in order: joins and leaves as the clients see them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub joins: Vec<Presence>,
    pub leaves: Vec<Presence>,
}

/// Bounds on what one client can put into the tracker (`PresenceConfig` documents defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_meta_bytes: usize,
    pub max_metas_per_key: usize,
    pub max_per_topic: usize,
}

/// Why a track or update was refused. The `Display` text is the reason sent to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceError {
    AlreadyTracked,
    NoPresence,
    MetaNotObject,
    MetaTooLarge(usize),
    TooManyMetas(usize),
    TopicFull(usize),
    /// The tracker's mailbox is full; nothing was changed.
    Overloaded,
    /// The tracker did not answer in time, or has stopped.
    Unavailable,
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresenceError::AlreadyTracked => f.write_str("presence already tracked"),
            PresenceError::NoPresence => f.write_str("no presence to update"),
            PresenceError::MetaNotObject => f.write_str("presence meta must be a JSON object"),
            PresenceError::MetaTooLarge(n) => write!(f, "presence meta is over {n} bytes"),
            PresenceError::TooManyMetas(n) => write!(f, "presence key has {n} metas already"),
            PresenceError::TopicFull(n) => write!(f, "topic has {n} presences already"),
            PresenceError::Overloaded => f.write_str("presence tracker is overloaded"),
            PresenceError::Unavailable => f.write_str("presence tracker is unavailable"),
        }
    }
}

impl std::error::Error for PresenceError {}

/// The set, its indexes, and the delta not yet handed out.
#[derive(Debug)]
pub struct State {
    replica: Replica,
    clock: u64,
    context: Context,
    values: HashMap<Dot, Presence>,
    /// topic → key → dots, in join order.
    topics: HashMap<Arc<str>, BTreeMap<Arc<str>, Vec<Dot>>>,
    /// Presences per topic, so the topic limit costs no walk over the topic.
    counts: HashMap<Arc<str>, usize>,
    owners: HashMap<Owner, Vec<Dot>>,
    delta: Delta,
    limits: Limits,
}

impl State {
    pub fn new(replica: Replica, limits: Limits) -> State {
        State {
            replica,
            clock: 0,
            context: Context::default(),
            values: HashMap::new(),
            topics: HashMap::new(),
            counts: HashMap::new(),
            owners: HashMap::new(),
            delta: Delta::default(),
            limits,
        }
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Adds `key` on `topic` for `owner` (`Phoenix.Presence.track/4`).
    pub fn track(
        &mut self,
        owner: Owner,
        topic: &str,
        key: &str,
        meta: Map<String, Value>,
    ) -> Result<Presence, PresenceError> {
        if self.find(owner, topic, key).is_some() {
            return Err(PresenceError::AlreadyTracked);
        }
        self.check_room(topic, key)?;
        self.add(owner, topic, key, meta, None)
    }

    /// Removes `owner`'s `key` on `topic`; nothing if it was not tracked.
    pub fn untrack(&mut self, owner: Owner, topic: &str, key: &str) -> Changes {
        let leaves = self.find(owner, topic, key).map(|dot| self.remove(&dot));
        Changes { joins: Vec::new(), leaves: leaves.into_iter().collect() }
    }

    /// Replaces the meta of `owner`'s `key` on `topic`: a new `phx_ref`, the old one as
    /// `phx_ref_prev`, reported as one join and one leave.
    pub fn update(
        &mut self,
        owner: Owner,
        topic: &str,
        key: &str,
        meta: Map<String, Value>,
    ) -> Result<Changes, PresenceError> {
        let dot = self.find(owner, topic, key).ok_or(PresenceError::NoPresence)?;
        let prev = self.values[&dot].phx_ref.clone();
        let joined = self.add(owner, topic, key, meta, Some(&prev))?;
        let left = self.remove(&dot);
        Ok(Changes { joins: vec![joined], leaves: vec![left] })
    }

    /// Removes everything `owner` tracked (its channel exited).
    pub fn untrack_owner(&mut self, owner: Owner) -> Changes {
        let dots = self.owners.remove(&owner).unwrap_or_default();
        let leaves = dots.iter().map(|dot| self.remove(dot)).collect();
        Changes { joins: Vec::new(), leaves }
    }

    /// The presences of `topic`, by key, in key order.
    pub fn list(&self, topic: &str) -> impl Iterator<Item = (&str, Vec<&Presence>)> + '_ {
        let keys = self.topics.get(topic).into_iter().flatten();
        keys.map(|(key, dots)| (&**key, dots.iter().map(|d| &self.values[d]).collect()))
    }

    /// The metas of one key of `topic`, in join order.
    pub fn get_by_key(&self, topic: &str, key: &str) -> Vec<&Presence> {
        let dots = self.topics.get(topic).and_then(|keys| keys.get(key));
        dots.into_iter().flatten().map(|d| &self.values[d]).collect()
    }

    /// Presences on `topic`.
    pub fn count(&self, topic: &str) -> usize {
        self.counts.get(topic).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The changes since the last call, for replication.
    pub fn take_delta(&mut self) -> Delta {
        std::mem::take(&mut self.delta)
    }

    /// This replica's own presences and context as a delta, for a replica that missed some
    /// of them (a transfer). Only its own: every node answers for itself, so a transfer costs
    /// the presences of one node, not of the whole cluster (at 5 nodes, a fifth), and a stale
    /// view of a third node never travels.
    pub fn snapshot(&self) -> Delta {
        let own = self.values.iter().filter(|(d, _)| d.replica == self.replica);
        let values = own.map(|(d, p)| (d.clone(), p.clone())).collect();
        Delta { context: self.context.only(&self.replica), values }
    }

    /// Merges a remote delta (or snapshot): values whose dots we have not seen are added, ours
    /// whose dots the remote has seen but no longer holds are removed. Idempotent, commutative.
    pub fn merge(&mut self, remote: &Delta) -> Changes {
        let mut changes = Changes::default();
        for (dot, presence) in &remote.values {
            if !self.context.contains(dot) {
                self.insert(dot.clone(), presence.clone());
                changes.joins.push(presence.clone());
            }
        }
        let removed = self.removed_by(remote);
        changes.leaves.extend(removed.iter().map(|dot| self.remove(dot)));
        self.context.merge(&remote.context);
        changes
    }

    /// The values held here whose dots `remote` has seen and no longer holds. A delta covers
    /// a few dots, so those are looked up rather than every value held scanned (a cluster's
    /// tracker holds every node's presences and merges a delta per node every 50 ms).
    fn removed_by(&self, remote: &Delta) -> Vec<Dot> {
        let gone = |dot: &Dot| remote.context.contains(dot) && !remote.values.contains_key(dot);
        let Some(dots) = remote.context.dots(self.values.len()) else {
            return self.values.keys().filter(|d| gone(d)).cloned().collect();
        };
        dots.filter(|d| self.values.contains_key(d) && gone(d)).collect()
    }

    /// Drops every presence of `replica` (its node is down) without recording a remove in the
    /// delta: each node notices a dead node by itself. The replica is forgotten, so if it was
    /// only unreachable, its next full state is taken whole.
    pub fn remove_replica(&mut self, replica: &str) -> Changes {
        let dots: Vec<Dot> =
            self.values.keys().filter(|d| &*d.replica == replica).cloned().collect();
        let mut leaves = Vec::with_capacity(dots.len());
        for dot in dots {
            let presence = self.values.remove(&dot).expect("a held dot");
            self.unindex(&dot, &presence);
            leaves.push(presence);
        }
        self.context.forget(replica);
        Changes { joins: Vec::new(), leaves }
    }

    /// A digest of what this state holds of `replica`: the last clock seen of it, and how
    /// many of its presences are held. Two nodes that agree on both hold the same presences
    /// of that replica (adds are ordered by clock; a remove lowers the count).
    pub fn digest(&self, replica: &str) -> (u64, usize) {
        let clock = self.context.vv.get(replica).copied().unwrap_or(0);
        (clock, self.values.keys().filter(|d| &*d.replica == replica).count())
    }

    fn find(&self, owner: Owner, topic: &str, key: &str) -> Option<Dot> {
        let dots = self.owners.get(&owner)?;
        let presence = |d: &&Dot| &*self.values[*d].topic == topic && &*self.values[*d].key == key;
        dots.iter().find(presence).cloned()
    }

    fn check_room(&self, topic: &str, key: &str) -> Result<(), PresenceError> {
        let keys = self.topics.get(topic);
        let metas = keys.and_then(|k| k.get(key)).map_or(0, Vec::len);
        if metas >= self.limits.max_metas_per_key {
            return Err(PresenceError::TooManyMetas(self.limits.max_metas_per_key));
        }
        if self.counts.get(topic).copied().unwrap_or(0) >= self.limits.max_per_topic {
            return Err(PresenceError::TopicFull(self.limits.max_per_topic));
        }
        Ok(())
    }

    fn add(
        &mut self,
        owner: Owner,
        topic: &str,
        key: &str,
        meta: Map<String, Value>,
        prev: Option<&str>,
    ) -> Result<Presence, PresenceError> {
        let dot = Dot { replica: self.replica.clone(), clock: self.clock + 1 };
        let phx_ref = phx_ref(&dot);
        let meta = encode_meta(meta, &phx_ref, prev, self.limits.max_meta_bytes)?;
        self.clock += 1;
        let presence =
            Presence { topic: topic.into(), key: key.into(), owner, phx_ref: phx_ref.into(), meta };
        self.context.add(dot.clone());
        self.delta.context.add(dot.clone());
        self.delta.values.insert(dot.clone(), presence.clone());
        self.insert(dot, presence.clone());
        Ok(presence)
    }

    fn insert(&mut self, dot: Dot, presence: Presence) {
        *self.counts.entry(presence.topic.clone()).or_default() += 1;
        let keys = self.topics.entry(presence.topic.clone()).or_default();
        keys.entry(presence.key.clone()).or_default().push(dot.clone());
        if presence.owner != REMOTE_OWNER {
            self.owners.entry(presence.owner).or_default().push(dot.clone());
        }
        self.values.insert(dot, presence);
    }

    /// Drops the value of `dot` (which must be held) and records the remove in the delta.
    fn remove(&mut self, dot: &Dot) -> Presence {
        let presence = self.values.remove(dot).expect("removing a held dot");
        self.unindex(dot, &presence);
        self.delta.values.remove(dot);
        self.delta.context.add(dot.clone());
        presence
    }

    fn unindex(&mut self, dot: &Dot, presence: &Presence) {
        if let Some(keys) = self.topics.get_mut(&presence.topic) {
            if let Some(dots) = keys.get_mut(&presence.key) {
                dots.retain(|d| d != dot);
                if dots.is_empty() {
                    keys.remove(&presence.key);
                }
            }
            if keys.is_empty() {
                self.topics.remove(&presence.topic);
                self.counts.remove(&presence.topic);
            } else if let Some(count) = self.counts.get_mut(&presence.topic) {
                *count -= 1;
            }
        }
        if let Some(dots) = self.owners.get_mut(&presence.owner) {
            dots.retain(|d| d != dot);
            if dots.is_empty() {
                self.owners.remove(&presence.owner);
            }
        }
    }
}

/// The meta as a JSON object with `phx_ref` (and `phx_ref_prev`), checked against the size
/// limit, which counts the user's fields only.
fn encode_meta(
    mut meta: Map<String, Value>,
    phx_ref: &str,
    prev: Option<&str>,
    max_bytes: usize,
) -> Result<Arc<str>, PresenceError> {
    meta.remove("phx_ref");
    meta.remove("phx_ref_prev");
    let user = serde_json::to_string(&meta).expect("a JSON map encodes");
    if user.len() > max_bytes {
        return Err(PresenceError::MetaTooLarge(max_bytes));
    }
    meta.insert("phx_ref".into(), phx_ref.into());
    if let Some(prev) = prev {
        meta.insert("phx_ref_prev".into(), prev.into());
    }
    Ok(serde_json::to_string(&meta).expect("a JSON map encodes").into())
}

/// An opaque, unique `phx_ref`: URL-safe base64 of a hash of the replica (which includes its
/// start time) and the dot's clock, 16 characters like Phoenix's.
pub fn phx_ref(dot: &Dot) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dot.replica.hash(&mut hasher);
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&(hasher.finish() as u32).to_be_bytes());
    bytes[4..].copy_from_slice(&dot.clock.to_be_bytes());
    base64url(&bytes)
}

fn base64url(bytes: &[u8; 12]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(16);
    for chunk in bytes.chunks(3) {
        let n = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(ALPHABET[(n >> shift & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests;
