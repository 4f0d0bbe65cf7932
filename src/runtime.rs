//! Runtime state that outlives snapshots, keyed by identity.
//!
//! A snapshot is config: it is compiled, swapped in, and dropped. What the running gateway
//! learns while serving (limiter buckets, concurrency slots, counters, endpoint health and
//! in-flight counts, round-robin cursors, fair-share queues, pooled clients, verified tokens,
//! fetched key sets) lives here instead, in registries keyed by what identifies it: a tenant
//! and the limit that matters, a pool and an endpoint and its TLS settings, a token section.
//! `compile` looks state up by key, creating it when the key is new, so a reload keeps
//! whatever it did not change and nothing is patched across by hand. A registry holds only weak
//! references: state whose key no snapshot uses any more is dropped with the last snapshot
//! that used it.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::fairshare::FairQueue;
use crate::limits::{Concurrency, FallbackLimiter, Rate, TenantLimiter, TenantStats};
use crate::token::TokenCache;
use crate::upstream::{EndpointState, PoolState, UpstreamClient};

/// Shared state by key; weak, so it lives exactly as long as some snapshot uses it.
pub struct Registry<K, V> {
    map: Mutex<HashMap<K, Weak<V>>>,
}

impl<K: Eq + Hash, V> Default for Registry<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V> Registry<K, V> {
    /// The live state for `key`, or a new one made by `make`.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get(&key).and_then(Weak::upgrade) {
            return v;
        }
        let v = Arc::new(make());
        map.insert(key, Arc::downgrade(&v));
        v
    }

    /// Forgets keys whose state is gone (called once per compile).
    pub fn prune(&self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, v| v.strong_count() > 0);
    }

    /// Keys with live state.
    pub fn live(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|v| v.strong_count() > 0).count()
    }
}

/// What identifies an endpoint's health: the pool, the endpoint URL and the pool's TLS settings.
pub type EndpointKey = (Box<str>, String, Option<String>);

/// What identifies a pooled client: connect timeout, HTTP/2 prior knowledge, TLS settings,
/// the nameservers that resolve its hostnames.
pub type ClientKey = (Duration, bool, Option<String>, Vec<SocketAddr>);

/// Every registry of the running gateway.
#[derive(Default)]
pub struct Runtime {
    pub tenant_stats: Registry<Box<str>, TenantStats>,
    /// (tenant, rate).
    pub limiters: Registry<(Box<str>, Rate), TenantLimiter>,
    /// The cluster fallback's share of a tenant's rate, by (tenant, rate).
    pub fallbacks: Registry<(Box<str>, Rate), FallbackLimiter>,
    pub concurrency: Registry<Box<str>, Concurrency>,
    pub endpoints: Registry<EndpointKey, EndpointState>,
    pub pools: Registry<Box<str>, PoolState>,
    pub queues: Registry<Box<str>, FairQueue>,
    pub clients: Registry<ClientKey, UpstreamClient>,
    /// Verified tokens, by a hash of the token section and the key material it names.
    pub token_caches: Registry<u64, TokenCache>,
    /// The fetched key set of `jwks_url`, by the same hash.
    pub jwks: Registry<u64, crate::token::jwks::RemoteJwks>,
    /// The resolver of upstream hostnames and their answers, by `dns.nameservers`.
    pub dns: Registry<Vec<SocketAddr>, crate::dns::Dns>,
}

impl Runtime {
    /// Forgets every key whose state no snapshot holds any more.
    pub fn prune(&self) {
        self.tenant_stats.prune();
        self.limiters.prune();
        self.fallbacks.prune();
        self.concurrency.prune();
        self.endpoints.prune();
        self.pools.prune();
        self.queues.prune();
        self.clients.prune();
        self.token_caches.prune();
        self.jwks.prune();
        self.dns.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn state_lives_as_long_as_someone_holds_it() {
        let r: Registry<&str, AtomicUsize> = Registry::default();
        let a = r.get_or_insert_with("a", || AtomicUsize::new(7));
        let again = r.get_or_insert_with("a", || AtomicUsize::new(0));
        assert!(Arc::ptr_eq(&a, &again), "the same key finds the same state");
        assert_eq!(r.live(), 1);
        drop((a, again));
        assert_eq!(r.live(), 0);
        let fresh = r.get_or_insert_with("a", || AtomicUsize::new(0));
        assert_eq!(fresh.load(std::sync::atomic::Ordering::Relaxed), 0);
        r.prune();
        assert_eq!(r.live(), 1);
    }
}
