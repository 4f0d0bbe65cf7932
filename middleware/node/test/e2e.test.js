'use strict';
// End to end: the real tenant-gateway binary in front of a real Express app.
// The binary is target/debug/tenant-gateway or target/release/tenant-gateway at the repository
// root (middleware/test.sh builds it first); without one the test is skipped. Mode v1 uses the
// gateway's HMAC v1 signatures; mode v2 its Ed25519 v2 signatures for pool "shared", verified with
// the keys fetched from the gateway's admin JWKS, audience checked.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const { spawn } = require('node:child_process');
const m = require('..');
const { makeApp, splitApp, SERVICE_KEY } = require('./app');
const { listen, send, isRefused } = require('./helpers');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BINARY = ['debug', 'release'].map((k) => path.join(ROOT, 'target', k, 'tenant-gateway')).find((p) => fs.existsSync(p));
const SECRET = 'e2e-signing-secret-0123456789abcdef';
const JWT_SECRET = 'e2e-jwt-secret-0123456789abcdef0123';
const DOMAIN = 'gw.test';
const ED = crypto.createPrivateKey({
  key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), crypto.createHash('sha256').update('e2e k2 node').digest()]),
  format: 'der', type: 'pkcs8',
});

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function jwt(claims) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = enc({ alg: 'HS256', typ: 'JWT', kid: 'dev-hs' });
  const body = enc(claims);
  return `${head}.${body}.${crypto.createHmac('sha256', JWT_SECRET).update(`${head}.${body}`).digest('base64url')}`;
}
const bearer = (tenant, sub) => 'Bearer ' + jwt({ iss: 'https://auth.test/', aud: 'gateway', exp: Math.floor(Date.now() / 1000) + 600, tenant_id: tenant, sub });

function gatewayConfig(d, mode, gw, admin, app) {
  const keys = `    - { id: k1, secret_file: ${d}/signing.key }\n`;
  let signing = 'signing:\n  active_key: k1\n  keys:\n' + keys;
  let poolKey = '';
  if (mode === 'v2') {
    signing = 'signing:\n  version: 2\n  active_key: k1\n  keys:\n' + keys + `    - { id: k2, algorithm: ed25519, private_key_file: ${d}/k2.pem }\n`;
    poolKey = ', signing_key: k2';
  }
  return `version: 1
listeners:
  - { name: http, bind: "127.0.0.1:${gw}" }
admin: { bind: "127.0.0.1:${admin}" }
tenancy:
  base_domains: [${DOMAIN}]
  sources: [host, token]
token:
  tenant_claim: tenant_id
  issuer: https://auth.test/
  audience: gateway
  algorithms: [HS256]
  keys:
    - { kid: dev-hs, secret_file: ${d}/jwt.key }
${signing}plans:
  free: { timeouts: { connect_ms: 1000, request_ms: 5000 } }
  enterprise: { timeouts: { connect_ms: 1000, request_ms: 5000 } }
upstreams:
  shared: { endpoints: ["http://127.0.0.1:${app}"]${poolKey} }
routes:
  - { path_prefix: /, upstream: shared }
tenants:
  acme: { plan: enterprise }
  globex: { plan: free }
`;
}

async function startStack(mode, t) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `gw-node-${mode}-`));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  fs.writeFileSync(path.join(d, 'signing.key'), SECRET);
  fs.writeFileSync(path.join(d, 'jwt.key'), JWT_SECRET);
  fs.writeFileSync(path.join(d, 'k2.pem'), ED.export({ format: 'pem', type: 'pkcs8' }));
  const gw = await freePort();
  const admin = await freePort();
  let normal;
  let strict;
  if (mode === 'v2') {
    const opts = { hmacKeys: { k1: SECRET }, jwks: `http://127.0.0.1:${admin}/.well-known/tenant-signing-keys` };
    normal = makeApp({ ...opts, audience: 'shared' });
    strict = makeApp({ ...opts, audience: 'acme-dedicated' });
  } else {
    normal = makeApp({ hmacKeys: { k1: SECRET } });
    strict = makeApp({ hmacKeys: { k1: SECRET }, audience: 'shared' });
  }
  const srv = await listen(splitApp(normal, strict));
  t.after(() => srv.close());
  const app = srv.address().port;
  const cfg = path.join(d, 'gateway.yaml');
  fs.writeFileSync(cfg, gatewayConfig(d, mode, gw, admin, app));
  const log = fs.openSync(path.join(d, 'gateway.log'), 'w');
  const proc = spawn(BINARY, ['run', '--config', cfg], { stdio: ['ignore', log, log], env: { ...process.env, RUST_LOG: 'warn' } });
  t.after(() => { proc.kill('SIGTERM'); fs.closeSync(log); });
  const deadline = Date.now() + 30000;
  for (;;) {
    try {
      if ((await send(admin, 'GET', '/readyz', { host: '127.0.0.1' })).status === 200) break;
    } catch { /* not yet */ }
    if (proc.exitCode !== null || Date.now() > deadline) {
      throw new Error('gateway did not become ready:\n' + fs.readFileSync(path.join(d, 'gateway.log'), 'utf8'));
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { mode, gw, admin, app, normal };
}

const viaGateway = (s, p, { tenant = 'acme', method = 'GET', body, headers = {} } = {}) =>
  send(s.gw, method, p, { host: `${tenant}.${DOMAIN}:${s.gw}`, ...headers }, body);

for (const mode of ['v1', 'v2']) {
  test(`end to end through the gateway (${mode})`, { skip: BINARY ? false : 'no gateway binary at target/{debug,release}/tenant-gateway: run `cargo build` first' }, async (t) => {
    const s = await startStack(mode, t);

    await t.test('the tenant reaches the handler', async () => {
      let r = await viaGateway(s, '/whoami');
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual([r.body.tenant, r.body.plan, r.body.subject, r.body.source], ['acme', 'enterprise', null, 'host']);
      const sig = r.body.received['x-tenant-signature'];
      assert.ok(sig.startsWith(`${mode};`), sig);
      if (mode === 'v2') { // the pool's key k2: Ed25519, verified through the JWKS
        assert.ok(sig.startsWith('v2;kid=k2;alg=ed25519;') && sig.includes(';aud=shared;'), sig);
      }
      r = await viaGateway(s, '/api/orders?limit=10&cursor=a%2Fb', { tenant: 'globex', headers: { authorization: bearer('globex', 'user-7') } });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual([r.body.tenant, r.body.plan, r.body.subject, r.body.source], ['globex', 'free', 'user-7', 'host,token']);
    });

    await t.test('a non-ASCII subject arrives percent-encoded and is decoded', async () => {
      const r = await viaGateway(s, '/whoami', { headers: { authorization: bearer('acme', 'zoë') } });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.subject, 'zoë');
      assert.equal(r.body.received['x-tenant-subject'], 'zo%C3%AB');
    });

    await t.test('forged, stale, replayed, missing signatures are refused by the app', async () => {
      const r = await viaGateway(s, '/whoami');
      assert.equal(r.status, 200);
      const got = r.body.received;
      const direct = (h) => send(s.app, 'GET', '/whoami', h);
      assert.ok(isRefused(await direct(got)), 'replayed');
      assert.ok(isRefused(await direct({ ...got, 'x-tenant-id': 'globex' })), 'forged tenant');
      const sig = got['x-tenant-signature'];
      assert.ok(isRefused(await direct({ ...got, 'x-tenant-signature': sig.slice(0, -3) + (sig.endsWith('AAA') ? 'BBB' : 'AAA') })));
      const { 'x-tenant-signature': _, ...unsigned } = got;
      assert.ok(isRefused(await direct(unsigned)), 'missing');
      const minted = (ts, rid) => {
        const f = { requestId: rid, method: 'GET', authority: got.host, pathAndQuery: '/whoami', tenant: 'acme', plan: 'enterprise', subject: '', source: got['x-tenant-source'] };
        const h = mode === 'v2' ? m.sign('v2', 'k2', ED, ts, f, { alg: 'ed25519', audience: 'shared' }) : m.sign('v1', 'k1', SECRET, ts, f);
        return { ...got, 'x-request-id': rid, 'x-tenant-signature': h };
      };
      const now = Math.floor(Date.now() / 1000);
      assert.ok(isRefused(await direct(minted(now - 1000, 'stale-1'))), 'stale');
      assert.ok(isRefused(await direct(minted(now + 1000, 'future-1'))), 'future');
      assert.equal((await direct(minted(now, 'fresh-1'))).status, 200, 'control: fresh passes');
    });

    await t.test('a wrong audience is refused', async () => {
      if (mode === 'v2') {
        assert.ok(isRefused(await viaGateway(s, '/strict/whoami')), 'signed for pool shared, app expects acme-dedicated');
        return;
      }
      assert.ok(isRefused(await viaGateway(s, '/strict/whoami')), 'v1 names no audience');
      const host = `acme.${DOMAIN}:${s.gw}`;
      const v2 = (aud, rid) => {
        const f = { requestId: rid, method: 'GET', authority: host, pathAndQuery: '/strict/whoami', tenant: 'acme', plan: 'enterprise', subject: '', source: 'host' };
        return { host, 'x-request-id': rid, 'x-tenant-id': 'acme', 'x-tenant-plan': 'enterprise', 'x-tenant-source': 'host',
          'x-tenant-signature': m.sign('v2', 'k1', SECRET, Math.floor(Date.now() / 1000), f, { audience: aud }) };
      };
      assert.ok(isRefused(await send(s.app, 'GET', '/strict/whoami', v2('acme-dedicated', 'aud-1'))));
      assert.equal((await send(s.app, 'GET', '/strict/whoami', v2('shared', 'aud-2'))).status, 200);
    });

    await t.test('jobs carry their tenant, interleaved on one worker, nothing leaks', async () => {
      s.normal.jobs.length = 0;
      const order = ['acme', 'globex', 'acme', 'globex'];
      for (const [i, tenant] of order.entries()) {
        const r = await viaGateway(s, '/jobs', { tenant, method: 'POST', body: { n: i, for: tenant } });
        assert.equal(r.status, 200, JSON.stringify(r.body));
      }
      const queued = JSON.parse(JSON.stringify(s.normal.jobs.splice(0))); // as read back from a queue
      const plans = { acme: 'enterprise', globex: 'free' };
      // One worker, async jobs of two tenants interleaving at every await.
      const job = async (p) => {
        const seen = [];
        for (let i = 0; i < 3; i++) { seen.push(m.currentTenant().tenant); await new Promise((r) => setTimeout(r, 1)); }
        return [p.for, m.currentTenant().plan, m.currentTenant().source, seen];
      };
      assert.equal(m.currentTenant(), null);
      const out = await Promise.all(queued.map((e) => m.runInTenant(e, job, { serviceKey: SERVICE_KEY })));
      assert.deepEqual(out, order.map((tn) => [tn, plans[tn], 'job', [tn, tn, tn]]));
      // Sequentially, synchronous jobs: the worker sees no tenant between them.
      for (const e of queued) {
        assert.equal(m.currentTenant(), null);
        assert.equal(m.runInTenant(e, (p) => `${m.currentTenant().tenant}:${p.n}`, { serviceKey: SERVICE_KEY }), `${e.tenant}:${e.payload.n}`);
      }
      assert.equal(m.currentTenant(), null);
      // Tampered envelopes run nothing.
      const ran = [];
      for (const change of [{ tenant: 'globex' }, { payload: { n: 0, for: 'globex' } }, { plan: 'free' }]) {
        assert.throws(() => m.runInTenant({ ...queued[0], ...change }, (p) => ran.push(p), { serviceKey: SERVICE_KEY }), m.EnvelopeError);
      }
      assert.throws(() => m.runInTenant(queued[0], (p) => ran.push(p), { serviceKey: 'another service' }), m.EnvelopeError);
      assert.deepEqual(ran, []);
    });
  });
}
