'use strict';
// The middleware in process (Express on a loopback port), with locally minted signatures.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const m = require('..');
const { makeApp, SERVICE_KEY } = require('./app');
const { listen, send, isRefused } = require('./helpers');

const SECRET = 'unit-test-secret';
const ED = crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.alloc(32, 7)]), format: 'der', type: 'pkcs8' });
const JWK = { ...crypto.createPublicKey(ED).export({ format: 'jwk' }), kid: 'k2', alg: 'EdDSA', use: 'sig' };
let seq = 0;

function headers(path = '/whoami', o = {}) {
  const { method = 'GET', version = 'v1', kid = 'k1', alg = 'hmac-sha256', key = SECRET, aud = 'shared', ts = Math.floor(Date.now() / 1000),
    subject = null, tenant = 'acme', plan = 'enterprise', source = 'host', host = 'acme.gw.test' } = o;
  const rid = o.requestId || `req-${++seq}`;
  const f = { requestId: rid, method, authority: host, pathAndQuery: path, tenant, plan, subject: subject ? m.encodeSubject(subject) : '', source };
  const h = { host, 'x-request-id': rid, 'x-tenant-id': tenant, 'x-tenant-plan': plan, 'x-tenant-source': source,
    'x-tenant-signature': m.sign(version, kid, key, ts, f, { alg, audience: aud }) };
  if (subject) h['x-tenant-subject'] = m.encodeSubject(subject);
  return h;
}


test('middleware', async (t) => {
  const app = makeApp({ hmacKeys: { k1: SECRET }, jwks: { keys: [JWK] }, exemptPaths: ['/healthz'] });
  const srv = await listen(app);
  const port = srv.address().port;
  t.after(() => srv.close());

  await t.test('tenant reaches the handler, subject decoded', async () => {
    const r = await send(port, 'GET', '/whoami', headers('/whoami', { subject: 'zoë', source: 'host,token' }));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual([r.body.tenant, r.body.plan, r.body.subject, r.body.source, r.body.reqTenant], ['acme', 'enterprise', 'zoë', 'host,token', 'acme']);
    assert.equal(r.body.received['x-tenant-subject'], 'zo%C3%AB');
    assert.equal(m.currentTenant(), null);
  });

  await t.test('v2 Ed25519 with a query string', async () => {
    const p = '/api/orders?limit=10&cursor=a%2Fb';
    const r = await send(port, 'GET', p, headers(p, { version: 'v2', kid: 'k2', alg: 'ed25519', key: ED }));
    assert.equal(r.status, 200, JSON.stringify(r.body));
  });

  await t.test('missing, forged, stale, replayed, unknown kid, alg confusion, duplicates: 401', async () => {
    const now = Math.floor(Date.now() / 1000);
    assert.ok(isRefused(await send(port, 'GET', '/whoami', { host: 'acme.gw.test' })));
    const h = headers();
    assert.ok(isRefused(await send(port, 'GET', '/whoami', { ...h, 'x-tenant-id': 'globex' })));
    assert.equal((await send(port, 'GET', '/whoami', h)).status, 200);
    assert.ok(isRefused(await send(port, 'GET', '/whoami', h)), 'replay');
    assert.ok(isRefused(await send(port, 'GET', '/whoami', headers('/whoami', { ts: now - 301 }))));
    assert.ok(isRefused(await send(port, 'GET', '/whoami', headers('/whoami', { ts: now + 301 }))));
    assert.ok(isRefused(await send(port, 'GET', '/whoami', headers('/whoami', { key: 'guess' }))));
    assert.ok(isRefused(await send(port, 'GET', '/whoami', headers('/whoami', { kid: 'k9' }))));
    assert.ok(isRefused(await send(port, 'GET', '/whoami', headers('/whoami', { version: 'v2', kid: 'k2', key: JWK.x }))));
    const dup = [...Object.entries(headers()), ['x-tenant-signature', 'v1;kid=k1;ts=1;sig=AA']];
    assert.ok(isRefused(await send(port, 'GET', '/whoami', dup)));
    assert.deepEqual((await send(port, 'GET', '/healthz', { host: 'x' })).body, { ok: true });
  });

  await t.test('jobs carry the tenant; tampered envelopes refused', async () => {
    const r = await send(port, 'POST', '/jobs', headers('/jobs', { method: 'POST', subject: 'zoë' }), { order: 1 });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const env = r.body;
    assert.deepEqual([env.tenant, env.subject, env.payload], ['acme', 'zoë', { order: 1 }]);
    const seen = m.runInTenant(env, (p) => [m.currentTenant(), p], { serviceKey: SERVICE_KEY });
    assert.deepEqual(seen, [{ tenant: 'acme', plan: 'enterprise', subject: 'zoë', source: 'job', requestId: env.request_id }, { order: 1 }]);
    assert.equal(m.currentTenant(), null);
    assert.throws(() => m.runInTenant({ ...env, tenant: 'globex' }, () => 1, { serviceKey: SERVICE_KEY }), m.EnvelopeError);
    assert.throws(() => m.jobEnvelope({}, { serviceKey: SERVICE_KEY }), /needs a tenant context/);
  });
});

test('audience: v2 checked, v1 refused', async (t) => {
  const srv = await listen(makeApp({ hmacKeys: { k1: SECRET }, jwks: { keys: [JWK] }, audience: 'shared' }));
  const port = srv.address().port;
  t.after(() => srv.close());
  assert.equal((await send(port, 'GET', '/whoami', headers('/whoami', { version: 'v2', kid: 'k2', alg: 'ed25519', key: ED }))).status, 200);
  assert.ok(isRefused(await send(port, 'GET', '/whoami', headers('/whoami', { version: 'v2', kid: 'k2', alg: 'ed25519', key: ED, aud: 'other' }))));
  assert.ok(isRefused(await send(port, 'GET', '/whoami', headers())));
  assert.equal((await send(port, 'GET', '/whoami', headers('/whoami', { version: 'v2' }))).status, 200);
});

test('JWKS URL: fetched lazily, refetched on unknown kid at most every 30 s', async () => {
  const calls = [];
  const v = new m.Verifier({ jwks: 'http://gw.invalid/jwks', jwksFetch: async (u) => { calls.push(u); return { keys: [JWK] }; } });
  assert.ok(!v.knows('k2') && v.mayRefresh());
  const [a, b] = await Promise.all([v.refreshJwks(), v.refreshJwks()]);
  assert.ok(a && b && v.knows('k2'));
  assert.equal(await v.refreshJwks(), false);
  assert.equal(calls.length, 1);
  v.jwksFetchedAt -= 31000;
  assert.equal(await v.refreshJwks(), true);
  assert.equal(calls.length, 2);
});

test('replay guard is bounded and forgets expired signatures', () => {
  const g = new m.ReplayGuard(3);
  for (let i = 0; i < 5; i++) assert.ok(g.checkAndRemember(`s${i}`, 100, 0));
  assert.equal(g.size, 3);
  assert.ok(!g.checkAndRemember('s4', 100, 1));
  assert.ok(g.checkAndRemember('s0', 100, 1), 'evicted, oldest first');
  assert.ok(g.checkAndRemember('new', 300, 101));
  assert.equal(g.size, 1);
});

test('runInTenant: async fns keep their tenant, outer context restored', async () => {
  const outer = { tenant: 'globex', plan: 'free', subject: null, source: 'host', requestId: 'r0' };
  await m.storage.run(outer, async () => {
    const e1 = m.jobEnvelope({ n: 1 }, { serviceKey: 'k', issuedAt: 1 });
    const e2 = m.makeEnvelope({ n: 2 }, { tenant: 'acme', plan: 'enterprise', subject: null, requestId: 'r1' }, 'k');
    const job = async (p) => {
      const seen = [];
      for (let i = 0; i < 3; i++) { seen.push(m.currentTenant().tenant); await new Promise((r) => setImmediate(r)); }
      return [p.n, seen];
    };
    const out = await Promise.all([m.runInTenant(e1, job, { serviceKey: 'k' }), m.runInTenant(e2, job, { serviceKey: 'k' })]);
    assert.deepEqual(out, [[1, ['globex', 'globex', 'globex']], [2, ['acme', 'acme', 'acme']]]);
    assert.equal(m.currentTenant(), outer);
    assert.throws(() => m.runInTenant(e1, (p) => p, { serviceKey: 'k', maxAgeS: 60 }), m.EnvelopeError);
  });
});
