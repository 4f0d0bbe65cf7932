//! Phase "route": the tenant's own routes first, then the global ones; within each table the
//! longest matching `path_prefix` wins (tables are sorted longest first at compile time).

use crate::error::GatewayError;
use crate::snapshot::{Route, Snapshot, Tenant};

pub fn select_route<'a>(
    snap: &'a Snapshot,
    tenant: &'a Tenant,
    path: &str,
) -> Result<&'a Route, GatewayError> {
    let own = tenant.routes.as_deref().unwrap_or(&[]);
    own.iter()
        .chain(snap.routes.iter())
        .find(|r| path.starts_with(&*r.path_prefix))
        .ok_or(GatewayError::NoRoute)
}
