'use strict';
// Verification cost per request: node bench/verify.js (from middleware/node).
// Times Verifier.verify (parse, key lookup, skew, HMAC or Ed25519, replay guard) on fresh
// signatures, and the whole middleware on a fake request object (no sockets, no framework).
const crypto = require('node:crypto');
const m = require('..');

const N = 20000;
const SECRET = 'bench-secret-0123456789abcdef';
const ED = crypto.createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.alloc(32)]), format: 'der', type: 'pkcs8' });
const JWKS = { keys: [{ ...crypto.createPublicKey(ED).export({ format: 'jwk' }), kid: 'k2' }] };

function cases(version, alg, kid, key) {
  const now = Math.floor(Date.now() / 1000);
  return Array.from({ length: N }, (_, i) => {
    const f = { requestId: `req-${i}`, method: 'GET', authority: 'acme.gw.test', pathAndQuery: `/api/orders?page=${i}`, tenant: 'acme', plan: 'enterprise', subject: 'user-7', source: 'host,token' };
    return [m.sign(version, kid, key, now, f, { alg, audience: 'shared' }), f];
  });
}

function bench(label, version, alg, kid, key) {
  const v = new m.Verifier({ hmacKeys: { k1: SECRET }, jwks: JWKS, replayCacheSize: N });
  const data = cases(version, alg, kid, key);
  const t0 = process.hrtime.bigint();
  for (const [h, f] of data) v.verify(h, f);
  const us = Number(process.hrtime.bigint() - t0) / 1000 / N;
  console.log(`${label.padEnd(28)} ${us.toFixed(1).padStart(7)} µs/request`);
}

async function middlewareBench() {
  const mw = m.tenantContext({ hmacKeys: { k1: SECRET }, replayCacheSize: N });
  const reqs = cases('v1', 'hmac-sha256', 'k1', SECRET).map(([h, f]) => {
    const headers = { host: f.authority, 'x-request-id': f.requestId, 'x-tenant-id': 'acme', 'x-tenant-plan': 'enterprise', 'x-tenant-subject': 'user-7', 'x-tenant-source': 'host,token', 'x-tenant-signature': h };
    return { method: 'GET', url: f.pathAndQuery, headers, headersDistinct: Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, [v]])) };
  });
  const res = { setHeader() {}, end() { throw new Error('refused'); } };
  const t0 = process.hrtime.bigint();
  for (const req of reqs) await new Promise((resolve) => mw(req, res, resolve));
  const us = Number(process.hrtime.bigint() - t0) / 1000 / N;
  console.log(`${'middleware, v1 HMAC'.padEnd(28)} ${us.toFixed(1).padStart(7)} µs/request`);
}

console.log(`Node ${process.version}, ${N} requests each`);
bench('v1 HMAC-SHA256', 'v1', 'hmac-sha256', 'k1', SECRET);
bench('v2 HMAC-SHA256', 'v2', 'hmac-sha256', 'k1', SECRET);
bench('v2 Ed25519', 'v2', 'ed25519', 'k2', ED);
middlewareBench();
