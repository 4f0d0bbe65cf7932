//! Signed tenant headers: the gateway signs, upstream services verify.
//!
//! The implementation lives in the workspace crate `tenant-gateway-signing` (`signing/`), which
//! the Rust middleware (`middleware/rust`, crate `tenant-context`) uses too, so signer and
//! verifier are one piece of code. This module re-exports all of it, so
//! `tenant_gateway::signing::{SigningKey, Signer, Verifier, ...}` keeps working. Formats:
//! v1 (HMAC-SHA256) and v2 (HMAC-SHA256 or Ed25519, with source and audience), as in SPEC
//! "What the upstream receives" and "Signatures, second version".

pub use tenant_gateway_signing::*;
