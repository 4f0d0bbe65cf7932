'use strict';
// The shared vectors (middleware/testvectors/signatures.json) against this package.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const m = require('..');

const DOC = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'testvectors', 'signatures.json'), 'utf8'));
const hmacKeys = Object.fromEntries(Object.entries(DOC.keys).filter(([, v]) => v.algorithm === 'hmac-sha256').map(([k, v]) => [k, v.secret]));
const fields = (r) => ({ requestId: r.request_id, method: r.method, authority: r.authority, pathAndQuery: r.path_and_query,
  tenant: r.tenant, plan: r.plan, subject: r.subject_header, source: r.source });

test('canonical strings and subject encoding', () => {
  for (const v of DOC.signatures) {
    assert.equal(m.encodeSubject(v.subject), v.subject_header, v.name);
    assert.equal(m.decodeSubject(v.subject_header), v.subject, v.name);
    assert.equal(m.canonical(v.version, v.ts, fields(v), v.audience).toString('utf8'), v.canonical, v.name);
  }
});

test('verify vectors', () => {
  for (const v of DOC.verify) {
    const verifier = new m.Verifier({ hmacKeys, jwks: DOC.jwks, audience: v.verifier.audience, maxSkewS: v.verifier.max_skew_s });
    if (v.valid) {
      assert.doesNotThrow(() => verifier.check(v.header, fields(v.request), v.now), v.name);
    } else {
      assert.throws(() => verifier.check(v.header, fields(v.request), v.now),
        (e) => e instanceof m.SignatureError && e.reason === v.reason, `${v.name}: expected ${v.reason}`);
    }
  }
});

test('Ed25519 key from the vectors PEM and raw bytes agree with the JWKS', () => {
  const k2 = DOC.keys.k2;
  const fromPem = new m.Verifier({ ed25519Keys: { k2: k2.public_key_pem } });
  const fromRaw = new m.Verifier({ ed25519Keys: { k2: Buffer.from(k2.public_key_b64url, 'base64url') } });
  for (const v of DOC.signatures.filter((s) => s.kid === 'k2')) {
    fromPem.check(v.header, fields(v), v.ts);
    fromRaw.check(v.header, fields(v), v.ts);
  }
});

test('envelope vectors', () => {
  for (const v of DOC.envelopes) {
    assert.equal(m.envelopeCanonical(v.envelope).toString('utf8'), v.canonical, v.name);
    const c = v.context;
    const made = m.makeEnvelope(v.payload, { tenant: c.tenant, plan: c.plan, subject: c.subject, requestId: c.request_id }, v.service_key, v.issued_at);
    assert.deepEqual(made, v.envelope, v.name);
    assert.deepEqual(m.openEnvelope(v.envelope, { serviceKey: v.service_key }), v.envelope);
  }
  for (const v of DOC.envelope_rejections) {
    assert.throws(() => m.openEnvelope(v.envelope, { serviceKey: v.service_key }), m.EnvelopeError, v.name);
  }
});

test('JCS vectors', () => {
  for (const v of DOC.jcs) assert.equal(m.canonicalJson(v.input), v.output);
  assert.equal(m.canonicalJson([2 ** 53, 1e21, 1e-7, -0]), '[9007199254740992,1e+21,1e-7,0]');
  assert.throws(() => m.canonicalJson(NaN), TypeError);
});
