"""Verified tenant context for services behind tenant-gateway.

    from tenant_gateway_context import TenantContextMiddleware, current_tenant, job_envelope, run_in_tenant
"""

from .envelope import EnvelopeError, canonical_json
from .middleware import TenantContext, TenantContextMiddleware, current_tenant, job_envelope, run_in_tenant
from .signature import SignatureError, SignedFields, Verifier, decode_subject, encode_subject

__version__ = "0.1.0"

__all__ = [
    "TenantContextMiddleware",
    "TenantContext",
    "current_tenant",
    "job_envelope",
    "run_in_tenant",
    "Verifier",
    "SignedFields",
    "SignatureError",
    "EnvelopeError",
    "canonical_json",
    "encode_subject",
    "decode_subject",
]
