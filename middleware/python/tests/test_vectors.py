"""The shared vectors (middleware/testvectors/signatures.json) against this package."""

import json

import pytest

from tenant_gateway_context import EnvelopeError, SignatureError, SignedFields, Verifier, canonical_json
from tenant_gateway_context.envelope import envelope_canonical, make_envelope, open_envelope
from tenant_gateway_context.signature import canonical, decode_subject, encode_subject

from conftest import VECTORS

DOC = json.loads(VECTORS.read_text(encoding="utf-8"))


def hmac_keys(doc):
    return {k: v["secret"].encode() for k, v in doc["keys"].items() if v["algorithm"] == "hmac-sha256"}


def fields(r):
    return SignedFields(r["request_id"], r["method"], r["authority"], r["path_and_query"], r["tenant"], r["plan"],
                        r["subject_header"], r["source"])


@pytest.mark.parametrize("v", DOC["signatures"], ids=lambda v: v["name"])
def test_canonical_and_subject_encoding(v):
    assert encode_subject(v["subject"]) == v["subject_header"]
    assert decode_subject(v["subject_header"]) == v["subject"]
    assert canonical(v["version"], v["ts"], fields(v), v["audience"]).decode("utf-8") == v["canonical"]


@pytest.mark.parametrize("v", DOC["verify"], ids=lambda v: v["name"])
def test_verify_vectors(v):
    verifier = Verifier(hmac_keys(DOC), DOC["jwks"], v["verifier"]["audience"], v["verifier"]["max_skew_s"])
    if v["valid"]:
        verifier.check(v["header"], fields(v["request"]), now=v["now"])
    else:
        with pytest.raises(SignatureError) as e:
            verifier.check(v["header"], fields(v["request"]), now=v["now"])
        assert e.value.reason == v["reason"]


@pytest.mark.parametrize("v", DOC["envelopes"], ids=lambda v: v["name"])
def test_envelope_vectors(v):
    assert envelope_canonical(v["envelope"]).decode("utf-8") == v["canonical"]
    c = v["context"]
    made = make_envelope(v["payload"], tenant=c["tenant"], plan=c["plan"], subject=c["subject"],
                         request_id=c["request_id"], service_key=v["service_key"], issued_at=v["issued_at"])
    assert made == v["envelope"]
    assert open_envelope(v["envelope"], service_key=v["service_key"]) == v["envelope"]


@pytest.mark.parametrize("v", DOC["envelope_rejections"], ids=lambda v: v["name"])
def test_envelope_rejections(v):
    with pytest.raises(EnvelopeError):
        open_envelope(v["envelope"], service_key=v["service_key"])


@pytest.mark.parametrize("v", DOC["jcs"], ids=lambda v: v["output"][:30])
def test_jcs(v):
    assert canonical_json(v["input"]) == v["output"]


def test_jcs_floats_match_ecmascript():
    cases = {1.0: "1", 0.1: "0.1", 1e21: "1e+21", 1e20: "100000000000000000000", 1e-7: "1e-7",
             123.456: "123.456", 5e-324: "5e-324", 1e16: "10000000000000000", 0.000001234: "0.000001234",
             -2.5: "-2.5", 1.7976931348623157e308: "1.7976931348623157e+308"}
    for x, s in cases.items():
        assert canonical_json(x) == s
    assert canonical_json([2**53, 10**21]) == "[9007199254740992,1e+21]"
    with pytest.raises(ValueError):
        canonical_json(2**53 + 1)
    with pytest.raises(ValueError):
        canonical_json(float("nan"))
