//! The decision cache: the outcome of a Cedar evaluation, keyed by every input of it.
//!
//! One cache belongs to one [`Snapshot`](crate::snapshot::Snapshot) and dies with it, so the
//! store's revision (principals, groups, entities, assignments, policies) is part of every
//! key without being written down. The rest of the key is everything else the evaluation
//! reads: principal, action, resource, the parents the route claims, the roles in force
//! (which already reflect the clock, MFA, band and device conditions of the assignments) and
//! the context values the action's policies read (those they do not read are left out, so
//! that, say, the minute or the client IP does not split entries for an action whose
//! policies never look at them), and, in cached state mode, the version of each user,
//! service or entity fetched for the decision (a cache that outlives an eviction then never
//! answers for a version it did not see), and the digest of a principal taken from its
//! token's claims (two tokens of one subject with different claims never share an entry).
//! INVARIANT: a new input of the evaluation must join
//! [`KeyRef`], or the cache would answer for a request it has not seen.
//!
//! Entries are found by a keyed hash of the borrowed key and then compared field by field,
//! so a hit allocates nothing and a hash collision is only a miss.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use super::{ContextValue, Decision, Fetched, RequestFacts};
use crate::slice::ContextAttrs;
use portcullis_model::EntityRef;

/// How many decisions one snapshot keeps.
pub const DECISION_CACHE_ENTRIES: u64 = 16_384;

/// The inputs of one evaluation, borrowed from the request.
#[derive(Debug, Hash)]
pub(super) struct KeyRef<'a> {
    pub(super) principal: &'a EntityRef,
    pub(super) action: &'a str,
    pub(super) resource: &'a EntityRef,
    pub(super) route_parents: &'a [EntityRef],
    pub(super) roles: &'a [&'a str],
    pub(super) facts: ContextKey<'a>,
    pub(super) versions: Versions<'a>,
    /// The digest of the claimed principal, when the decision read one.
    pub(super) claimed: Option<&'a [u8; 32]>,
}

/// The revisions of the principals and entities fetched for a decision (empty in full state
/// mode). With the principal and the resource in the key, they name every version the
/// decision read: the keys fetched follow from the versions.
#[derive(Debug)]
pub(super) struct Versions<'a>(pub(super) &'a [Arc<Fetched>]);

impl std::hash::Hash for Versions<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.0.len());
        for fetched in self.0 {
            state.write_i64(fetched.revision);
        }
    }
}

/// The context values of [`RequestFacts`] that reach Cedar (`now` reaches it only through
/// the roles in force and the local time).
#[derive(Debug, Hash, PartialEq, Eq)]
pub(super) struct ContextKey<'a> {
    hour: u8,
    minute: u8,
    weekday: u8,
    risk_score: i64,
    mfa: bool,
    band: &'a str,
    ip: Option<&'a str>,
    device_id: Option<&'a str>,
    extra: &'a [(String, ContextValue)],
}

impl<'a> ContextKey<'a> {
    /// The facts the evaluation sees when its policies read the context attributes `read`:
    /// the others are left at a zero value.
    pub(super) fn of(facts: &'a RequestFacts, read: ContextAttrs) -> Self {
        let time = &facts.local_time;
        Self {
            hour: if_read(read, ContextAttrs::HOUR, time.hour),
            minute: if_read(read, ContextAttrs::MINUTE, time.minute),
            weekday: if_read(read, ContextAttrs::WEEKDAY, time.weekday),
            risk_score: if_read(read, ContextAttrs::RISK_SCORE, facts.risk_score),
            mfa: if_read(read, ContextAttrs::MFA, facts.mfa),
            band: if_read(read, ContextAttrs::BAND, facts.band.as_str()),
            ip: if_read(read, ContextAttrs::IP, facts.ip.as_deref()),
            // `device_trusted` is the device id checked against the principal's devices (the
            // principal is in the key).
            device_id: facts.device_id.as_deref().filter(|_| {
                read.intersects(ContextAttrs::DEVICE_ID.union(ContextAttrs::DEVICE_TRUSTED))
            }),
            extra: if_read(read, ContextAttrs::EXTRA, facts.extra.as_slice()),
        }
    }
}

/// `value` when `attr` is among the attributes `read`, else its zero value.
fn if_read<T: Default>(read: ContextAttrs, attr: ContextAttrs, value: T) -> T {
    if read.contains(attr) {
        value
    } else {
        T::default()
    }
}

/// [`KeyRef`], owned.
#[derive(Debug)]
struct Key {
    principal: EntityRef,
    action: String,
    resource: EntityRef,
    route_parents: Vec<EntityRef>,
    roles: Vec<String>,
    hour: u8,
    minute: u8,
    weekday: u8,
    risk_score: i64,
    mfa: bool,
    band: String,
    ip: Option<String>,
    device_id: Option<String>,
    extra: Vec<(String, ContextValue)>,
    versions: Vec<portcullis_model::Revision>,
    claimed: Option<[u8; 32]>,
}

impl Key {
    fn of(k: &KeyRef<'_>) -> Self {
        let f = &k.facts;
        Self {
            principal: k.principal.clone(),
            action: k.action.to_owned(),
            resource: k.resource.clone(),
            route_parents: k.route_parents.to_vec(),
            roles: k.roles.iter().map(|r| (*r).to_owned()).collect(),
            hour: f.hour,
            minute: f.minute,
            weekday: f.weekday,
            risk_score: f.risk_score,
            mfa: f.mfa,
            band: f.band.to_owned(),
            ip: f.ip.map(str::to_owned),
            device_id: f.device_id.map(str::to_owned),
            extra: f.extra.to_vec(),
            versions: k.versions.0.iter().map(|f| f.revision).collect(),
            claimed: k.claimed.copied(),
        }
    }

    fn matches(&self, k: &KeyRef<'_>) -> bool {
        self.principal == *k.principal
            && self.action == k.action
            && self.resource == *k.resource
            && self.route_parents == k.route_parents
            && self.roles.len() == k.roles.len()
            && self.roles.iter().zip(k.roles).all(|(a, b)| a == b)
            && self.claimed.as_ref() == k.claimed
            && self.versions.len() == k.versions.0.len()
            && self
                .versions
                .iter()
                .zip(k.versions.0)
                .all(|(a, b)| *a == b.revision)
            && ContextKey {
                hour: self.hour,
                minute: self.minute,
                weekday: self.weekday,
                risk_score: self.risk_score,
                mfa: self.mfa,
                band: &self.band,
                ip: self.ip.as_deref(),
                device_id: self.device_id.as_deref(),
                extra: &self.extra,
            } == k.facts
    }
}

#[derive(Debug)]
struct Entry {
    key: Key,
    decision: Decision,
}

/// Decisions of one snapshot.
#[derive(Debug)]
pub(crate) struct DecisionCache {
    entries: moka::sync::Cache<u64, Arc<Entry>>,
    hasher: RandomState,
}

impl DecisionCache {
    pub(crate) fn new() -> Self {
        Self {
            entries: moka::sync::Cache::new(DECISION_CACHE_ENTRIES),
            hasher: RandomState::new(),
        }
    }

    /// The decision made earlier for exactly these inputs.
    pub(super) fn get(&self, key: &KeyRef<'_>) -> Option<Decision> {
        let entry = self.entries.get(&self.hasher.hash_one(key))?;
        entry.key.matches(key).then(|| entry.decision.clone())
    }

    /// Remembers `decision` for these inputs.
    pub(super) fn insert(&self, key: &KeyRef<'_>, decision: &Decision) {
        self.entries.insert(
            self.hasher.hash_one(key),
            Arc::new(Entry {
                key: Key::of(key),
                decision: decision.clone(),
            }),
        );
    }
}
