//! Phase "route": the tenant's own routes first, then the global ones; within each table the
//! longest matching `path_prefix` wins (tables are sorted longest first at compile time).
//! Prefixes match on segment boundaries of the normalised path (`normalize::prefix_matches`).
//!
//! Requirements cannot be lost: whichever table picks the upstream, every global route whose
//! prefix covers the path adds its `require` to the chosen route's own.

use crate::error::GatewayError;
use crate::normalize::{prefix_matches, requirement_covers};
use crate::snapshot::{Route, Snapshot, Tenant};

/// What a request must carry besides a tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requirements {
    pub token: bool,
    pub apikey: bool,
}

impl Requirements {
    fn add(&mut self, r: &Route) {
        self.token |= r.require_token;
        self.apikey |= r.require_apikey;
    }
}

/// The route for `path` (a `normalize::match_path`) and everything the request must carry.
pub fn select_route<'a>(
    snap: &'a Snapshot,
    tenant: &'a Tenant,
    path: &str,
) -> Result<(&'a Route, Requirements), GatewayError> {
    let own = tenant.routes.as_deref().unwrap_or(&[]);
    let route = own
        .iter()
        .chain(snap.routes.iter())
        .find(|r| prefix_matches(&r.path_prefix, path))
        .ok_or(GatewayError::NoRoute)?;
    Ok((route, requirements(snap, route, path)))
}

/// The route's own requirements plus those of every global route that covers `path`.
pub fn requirements(snap: &Snapshot, route: &Route, path: &str) -> Requirements {
    let mut req = Requirements::default();
    req.add(route);
    if snap.global_requirements {
        for g in snap.routes.iter() {
            if (g.require_token || g.require_apikey) && requirement_covers(&g.path_prefix, path) {
                req.add(g);
            }
        }
    }
    req
}

/// One line of `check --explain`: for a tenant, where a prefix goes and what it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub prefix: String,
    pub upstream: String,
    /// `true` when the tenant's own table picks the upstream.
    pub own_route: bool,
    pub requirements: Requirements,
}

/// Every prefix of the tenant's and the global tables, as the tenant's requests meet them.
pub fn explain(snap: &Snapshot, tenant: &Tenant) -> Vec<Explained> {
    let own = tenant.routes.as_deref().unwrap_or(&[]);
    let mut prefixes: Vec<&str> = own
        .iter()
        .chain(snap.routes.iter())
        .map(|r| &*r.path_prefix)
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    prefixes
        .into_iter()
        .filter_map(|p| {
            let (route, requirements) = select_route(snap, tenant, p).ok()?;
            Some(Explained {
                prefix: p.to_owned(),
                upstream: route.upstream.name.to_string(),
                own_route: own.iter().any(|r| std::ptr::eq(r, route)),
                requirements,
            })
        })
        .collect()
}
