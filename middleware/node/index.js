'use strict';
// Verified tenant context for services behind tenant-gateway: Express/Connect middleware,
// AsyncLocalStorage, signed job envelopes. No dependency beyond Node's built-ins.

const crypto = require('node:crypto');
const { AsyncLocalStorage } = require('node:async_hooks');

const DEFAULT_MAX_SKEW_S = 300;
const DEFAULT_REPLAY_CACHE_SIZE = 100000;
const JWKS_REFETCH_INTERVAL_MS = 30000;
const HMAC_SHA256 = 'hmac-sha256';
const ED25519 = 'ed25519';
const ERROR_BODY = '{"error":"invalid_tenant_signature"}';

const storage = new AsyncLocalStorage();

class SignatureError extends Error {
  constructor(reason) {
    super(`invalid tenant signature: ${reason}`);
    this.name = 'SignatureError';
    this.reason = reason;
  }
}

class EnvelopeError extends Error {
  constructor(message) {
    super(message);
    this.name = 'EnvelopeError';
  }
}

// ---- encoding helpers ------------------------------------------------------------------------

const B64URL = /^[A-Za-z0-9_-]+$/;

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** Strict base64url without padding; a non-canonical spelling is refused. */
function b64urlDecode(text) {
  if (typeof text !== 'string' || !B64URL.test(text) || text.length % 4 === 1) {
    throw new SignatureError('malformed');
  }
  const raw = Buffer.from(text, 'base64url');
  if (raw.toString('base64url') !== text) throw new SignatureError('malformed');
  return raw;
}

/** The subject as the gateway sends and signs it: bytes outside 0x21..0x7E and '%' become %XX. */
function encodeSubject(subject) {
  let out = '';
  for (const b of Buffer.from(subject, 'utf8')) {
    out += b >= 0x21 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Inverse of encodeSubject (what handlers see); invalid encodings or UTF-8 are refused. */
function decodeSubject(value) {
  if (!value.includes('%')) return value;
  const bytes = [];
  for (let i = 0; i < value.length; ) {
    if (value[i] === '%') {
      const h = value.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(h)) throw new SignatureError('malformed');
      bytes.push(parseInt(h, 16));
      i += 3;
    } else {
      const c = value.charCodeAt(i);
      if (c > 0x7f) throw new SignatureError('malformed');
      bytes.push(c);
      i += 1;
    }
  }
  try {
    return UTF8.decode(Uint8Array.from(bytes));
  } catch {
    throw new SignatureError('malformed');
  }
}

// ---- the signature ---------------------------------------------------------------------------

/**
 * The bytes the gateway signs. `f` holds the header values as received:
 * { requestId, method, authority, pathAndQuery, tenant, plan, subject (encoded, or ''), source }.
 */
function canonical(version, ts, f, audience) {
  const lines = [
    version,
    String(ts),
    f.requestId,
    f.method,
    f.authority.toLowerCase(),
    f.pathAndQuery,
    f.tenant,
    f.plan,
    f.subject || '',
  ];
  if (version === 'v2') lines.push(f.source || '', audience || '');
  return Buffer.from(lines.join('\n'), 'utf8');
}

/** Parses `v1;kid=;ts=;sig=` or `v2;kid=;alg=;ts=;aud=;sig=` (fields in exactly that order). */
function parseHeader(value) {
  const parts = value.split(';');
  const version = parts[0];
  let names;
  if (version === 'v1') names = ['kid', 'ts', 'sig'];
  else if (version === 'v2') names = ['kid', 'alg', 'ts', 'aud', 'sig'];
  else throw new SignatureError(/^v[0-9]+$/.test(version) ? 'version' : 'malformed');
  if (parts.length !== names.length + 1) throw new SignatureError('malformed');
  const got = {};
  names.forEach((name, i) => {
    const part = parts[i + 1];
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq) !== name || eq === part.length - 1) throw new SignatureError('malformed');
    got[name] = part.slice(eq + 1);
  });
  if (!/^[0-9]{1,15}$/.test(got.ts)) throw new SignatureError('malformed');
  const alg = got.alg === undefined ? HMAC_SHA256 : got.alg;
  if (alg !== HMAC_SHA256 && alg !== ED25519) throw new SignatureError('alg');
  return { version, kid: got.kid, alg, ts: Number(got.ts), aud: got.aud === undefined ? null : got.aud, sig: got.sig };
}

function ed25519Key(material) {
  if (material instanceof crypto.KeyObject) return material;
  if (material && typeof material === 'object' && !Buffer.isBuffer(material) && !(material instanceof Uint8Array)) {
    if (material.kty !== 'OKP' || material.crv !== 'Ed25519') throw new Error('not an OKP/Ed25519 JWK');
    b64urlDecode(material.x);
    return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: material.x }, format: 'jwk' });
  }
  const buf = typeof material === 'string' ? Buffer.from(material) : Buffer.from(material);
  if (buf.length === 32) {
    return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(buf) }, format: 'jwk' });
  }
  const key = crypto.createPublicKey(buf);
  if (key.asymmetricKeyType !== 'ed25519') throw new Error('PEM is not an Ed25519 public key');
  return key;
}

/** The OKP/Ed25519 signing keys of a JWKS document, by kid (other keys are ignored). */
function keysFromJwks(doc) {
  const out = new Map();
  for (const jwk of (doc && Array.isArray(doc.keys) ? doc.keys : [])) {
    if (!jwk || typeof jwk !== 'object' || !jwk.kid) continue;
    if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519') continue;
    if ((jwk.use ?? 'sig') !== 'sig' || (jwk.alg ?? 'EdDSA') !== 'EdDSA') continue;
    try {
      out.set(String(jwk.kid), ed25519Key(jwk));
    } catch {
      // skip a broken key
    }
  }
  return out;
}

/** Signatures accepted within the skew window; bounded (the oldest go first). */
class ReplayGuard {
  constructor(capacity = DEFAULT_REPLAY_CACHE_SIZE) {
    this.capacity = capacity;
    this.seen = new Map(); // sig -> expiry (unix s), in insertion order
  }

  get size() {
    return this.seen.size;
  }

  checkAndRemember(sig, expiresAt, now) {
    for (const [s, exp] of this.seen) {
      if (exp >= now) break;
      this.seen.delete(s);
    }
    const exp = this.seen.get(sig);
    if (exp !== undefined && exp >= now) return false;
    this.seen.delete(sig);
    this.seen.set(sig, expiresAt);
    while (this.seen.size > this.capacity) this.seen.delete(this.seen.keys().next().value);
    return true;
  }
}

async function fetchJson(url) {
  const res = await fetch(url, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`JWKS fetch: HTTP ${res.status}`);
  return res.json();
}

class Verifier {
  constructor(opts = {}) {
    const { hmacKeys, jwks = null, audience = null, maxSkewS = DEFAULT_MAX_SKEW_S, ed25519Keys,
      replayCacheSize = DEFAULT_REPLAY_CACHE_SIZE, clock = () => Date.now() / 1000, jwksFetch = fetchJson } = opts;
    this.hmac = new Map(Object.entries(hmacKeys || {}).map(([k, v]) => [k, Buffer.from(v)]));
    this.ed = new Map(Object.entries(ed25519Keys || {}).map(([k, v]) => [k, ed25519Key(v)]));
    this.jwksUrl = typeof jwks === 'string' ? jwks : null;
    if (jwks && typeof jwks === 'object') for (const [k, v] of keysFromJwks(jwks)) this.ed.set(k, v);
    const clash = [...this.hmac.keys()].filter((k) => this.ed.has(k));
    if (clash.length) throw new Error(`kid used for both an HMAC and an Ed25519 key: ${clash.join(', ')}`);
    if (!this.hmac.size && !this.ed.size && !this.jwksUrl) throw new Error('no keys: give hmacKeys, jwks or ed25519Keys');
    this.audience = audience ?? null;
    this.maxSkewS = maxSkewS;
    this.replay = new ReplayGuard(replayCacheSize);
    this.clock = clock;
    this.jwksFetch = jwksFetch;
    this.jwksFetchedAt = null;
    this.jwksInFlight = null;
  }

  knows(kid) {
    return this.hmac.has(kid) || this.ed.has(kid);
  }

  mayRefresh() {
    return this.jwksUrl !== null && (this.jwksFetchedAt === null || Date.now() - this.jwksFetchedAt >= JWKS_REFETCH_INTERVAL_MS);
  }

  /** Fetches the JWKS URL (at most every 30 s; concurrent callers share one fetch). */
  refreshJwks() {
    if (this.jwksInFlight) return this.jwksInFlight;
    if (!this.mayRefresh()) return Promise.resolve(false);
    this.jwksFetchedAt = Date.now();
    this.jwksInFlight = (async () => {
      try {
        const fresh = keysFromJwks(await this.jwksFetch(this.jwksUrl));
        for (const k of this.hmac.keys()) fresh.delete(k);
        this.ed = fresh;
        return true;
      } catch {
        return false; // unreachable JWKS: keep the keys we have
      } finally {
        this.jwksInFlight = null;
      }
    })();
    return this.jwksInFlight;
  }

  /** Everything but the replay guard; throws SignatureError, returns the parsed header. */
  check(header, fields, now = this.clock()) {
    if (!header) throw new SignatureError('missing');
    const p = parseHeader(header);
    if (p.version === 'v1' && this.audience !== null) throw new SignatureError('audience');
    if (this.hmac.has(p.kid)) {
      if (p.alg !== HMAC_SHA256) throw new SignatureError('alg');
    } else if (this.ed.has(p.kid)) {
      if (p.alg !== ED25519) throw new SignatureError('alg');
    } else {
      throw new SignatureError('unknown_kid');
    }
    if (this.audience !== null && p.aud !== this.audience) throw new SignatureError('audience');
    if (Math.abs(p.ts - now) > this.maxSkewS) throw new SignatureError('stale');
    const sig = b64urlDecode(p.sig);
    const data = canonical(p.version, p.ts, fields, p.aud);
    if (p.alg === HMAC_SHA256) {
      const expected = crypto.createHmac('sha256', this.hmac.get(p.kid)).update(data).digest();
      if (sig.length !== expected.length || !crypto.timingSafeEqual(sig, expected)) throw new SignatureError('mismatch');
    } else if (sig.length !== 64 || !crypto.verify(null, data, this.ed.get(p.kid), sig)) {
      throw new SignatureError('mismatch');
    }
    return p;
  }

  /** check(), then the replay guard (a signature is accepted once per window). */
  verify(header, fields, now = this.clock()) {
    const p = this.check(header, fields, now);
    if (!this.replay.checkAndRemember(p.sig, p.ts + this.maxSkewS, now)) throw new SignatureError('replay');
    return p;
  }
}

/** A header value like the gateway's (tests, benchmarks). key: HMAC secret or Ed25519 private KeyObject. */
function sign(version, kid, key, ts, fields, { alg = HMAC_SHA256, audience = '' } = {}) {
  const data = canonical(version, ts, fields, audience);
  const sig = alg === HMAC_SHA256 ? crypto.createHmac('sha256', key).update(data).digest() : crypto.sign(null, data, key);
  return version === 'v1'
    ? `v1;kid=${kid};ts=${ts};sig=${b64url(sig)}`
    : `v2;kid=${kid};alg=${alg};ts=${ts};aud=${audience};sig=${b64url(sig)}`;
}

// ---- the middleware --------------------------------------------------------------------------

/** The tenant of the request or job being handled, or null outside one. */
function currentTenant() {
  return storage.getStore() ?? null;
}

const COVERED = ['x-tenant-signature', 'x-tenant-id', 'x-tenant-plan', 'x-tenant-subject', 'x-tenant-source', 'x-request-id', 'host'];
const NON_ASCII = /[^\x00-\x7f]/;

function collect(req) {
  const distinct = req.headersDistinct;
  const out = {};
  for (const name of COVERED) {
    const values = distinct ? distinct[name] : req.headers[name] === undefined ? undefined : [req.headers[name]];
    if (values === undefined) continue;
    if (values.length !== 1 || NON_ASCII.test(values[0])) throw new SignatureError('malformed');
    out[name] = values[0];
  }
  return out;
}

/**
 * Express/Connect middleware: `app.use(tenantContext({ hmacKeys, jwks, audience, maxSkewS }))`.
 * jwks is a JWKS object or a URL (the gateway's admin /.well-known/tenant-signing-keys), fetched on
 * first use and again for an unknown kid at most every 30 s. With an audience, v1 is refused.
 */
function tenantContext(opts = {}) {
  const verifier = opts.verifier || new Verifier(opts);
  const exempt = new Set(opts.exemptPaths || []);
  const onReject = opts.onReject || null;

  async function verifyRequest(req) {
    const h = collect(req);
    const header = h['x-tenant-signature'];
    if (!header) throw new SignatureError('missing');
    if (verifier.jwksUrl !== null) {
      const { kid } = parseHeader(header);
      if (!verifier.knows(kid) && verifier.mayRefresh()) await verifier.refreshJwks();
    }
    for (const name of ['x-request-id', 'host', 'x-tenant-id', 'x-tenant-plan']) {
      if (h[name] === undefined) throw new SignatureError('malformed');
    }
    const fields = {
      requestId: h['x-request-id'],
      method: req.method,
      authority: h.host,
      pathAndQuery: req.originalUrl || req.url,
      tenant: h['x-tenant-id'],
      plan: h['x-tenant-plan'],
      subject: h['x-tenant-subject'] ?? '',
      source: h['x-tenant-source'] ?? '',
    };
    verifier.verify(header, fields);
    return Object.freeze({
      tenant: fields.tenant,
      plan: fields.plan,
      subject: h['x-tenant-subject'] === undefined ? null : decodeSubject(h['x-tenant-subject']),
      source: fields.source,
      requestId: fields.requestId,
    });
  }

  function middleware(req, res, next) {
    const path = (req.originalUrl || req.url || '/').split('?')[0];
    if (exempt.has(path)) return next();
    verifyRequest(req).then(
      (ctx) => {
        req.tenant = ctx;
        storage.run(ctx, next);
      },
      (err) => {
        if (!(err instanceof SignatureError)) return next(err);
        if (onReject) onReject(req, err.reason);
        res.statusCode = 401;
        res.setHeader('content-type', 'application/json');
        res.setHeader('content-length', Buffer.byteLength(ERROR_BODY));
        res.end(ERROR_BODY);
      },
    );
  }
  middleware.verifier = verifier;
  return middleware;
}

// ---- job envelopes ---------------------------------------------------------------------------

/**
 * RFC 8785 (JCS): keys sorted by UTF-16 code units, no whitespace, numbers and strings as
 * JSON.stringify writes them. Same bytes as the Python package's canonical_json.
 */
function canonicalJson(value) {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('NaN and Infinity are not JSON');
      return JSON.stringify(value); // ECMAScript number formatting, as RFC 8785 prescribes
    case 'string':
      return JSON.stringify(value);
    case 'object':
      if (Array.isArray(value)) return '[' + value.map((v) => canonicalJson(v === undefined ? null : v)).join(',') + ']';
      if (typeof value.toJSON === 'function') return canonicalJson(value.toJSON());
      return '{' + Object.keys(value).filter((k) => value[k] !== undefined).sort()
        .map((k) => JSON.stringify(k) + ':' + canonicalJson(value[k])).join(',') + '}';
    default:
      throw new TypeError(`not JSON-serialisable: ${typeof value}`);
  }
}

function envelopeCanonical(env) {
  const body = {
    tenant: env.tenant,
    plan: env.plan,
    subject: env.subject ?? null,
    request_id: env.request_id,
    issued_at: env.issued_at,
    payload: env.payload,
  };
  return Buffer.from('job-v1\n' + canonicalJson(body), 'utf8');
}

function serviceKeyBytes(serviceKey) {
  const key = Buffer.from(serviceKey ?? '');
  if (!key.length) throw new Error('serviceKey must not be empty');
  return key;
}

function makeEnvelope(payload, ctx, serviceKey, issuedAt) {
  const env = {
    v: 1,
    tenant: ctx.tenant,
    plan: ctx.plan,
    subject: ctx.subject ?? null,
    request_id: ctx.requestId,
    issued_at: issuedAt ?? Math.floor(Date.now() / 1000),
    payload,
  };
  env.sig = b64url(crypto.createHmac('sha256', serviceKeyBytes(serviceKey)).update(envelopeCanonical(env)).digest());
  return env;
}

/** A signed, JSON-serialisable envelope carrying the current tenant with `payload`. */
function jobEnvelope(payload, { serviceKey, issuedAt } = {}) {
  const ctx = currentTenant();
  if (!ctx) throw new Error('jobEnvelope() needs a tenant context (call it while handling a request or job)');
  return makeEnvelope(payload, ctx, serviceKey, issuedAt);
}

/** Checks shape and signature (constant time); throws EnvelopeError. */
function openEnvelope(env, { serviceKey, maxAgeS = null, now = Date.now() / 1000 } = {}) {
  if (!env || typeof env !== 'object' || env.v !== 1) throw new EnvelopeError('not a v1 job envelope');
  for (const name of ['tenant', 'plan', 'request_id', 'sig']) {
    if (typeof env[name] !== 'string' || !env[name]) throw new EnvelopeError(`envelope field '${name}' missing or not a string`);
  }
  if (env.subject !== null && env.subject !== undefined && typeof env.subject !== 'string') {
    throw new EnvelopeError("envelope field 'subject' must be a string or null");
  }
  if (!Number.isSafeInteger(env.issued_at)) throw new EnvelopeError("envelope field 'issued_at' must be an integer");
  if (!('payload' in env)) throw new EnvelopeError('envelope has no payload');
  let expected;
  try {
    expected = crypto.createHmac('sha256', serviceKeyBytes(serviceKey)).update(envelopeCanonical(env)).digest();
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) throw new EnvelopeError(`envelope payload cannot be canonicalised: ${e.message}`);
    throw e;
  }
  const got = Buffer.from(env.sig, 'utf8');
  const want = Buffer.from(b64url(expected), 'utf8');
  if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) throw new EnvelopeError('envelope signature does not verify');
  if (maxAgeS !== null && now - env.issued_at > maxAgeS) throw new EnvelopeError('envelope is older than maxAgeS');
  return env;
}

/**
 * Verifies `env`, then returns fn(payload) run inside AsyncLocalStorage with the envelope's tenant
 * (source "job"); an async fn keeps it across its awaits. The outer context is untouched.
 */
function runInTenant(env, fn, { serviceKey, maxAgeS = null } = {}) {
  const e = openEnvelope(env, { serviceKey, maxAgeS });
  const ctx = Object.freeze({ tenant: e.tenant, plan: e.plan, subject: e.subject ?? null, source: 'job', requestId: e.request_id });
  return storage.run(ctx, fn, e.payload);
}

module.exports = {
  tenantContext,
  currentTenant,
  jobEnvelope,
  runInTenant,
  Verifier,
  ReplayGuard,
  SignatureError,
  EnvelopeError,
  canonical,
  parseHeader,
  sign,
  encodeSubject,
  decodeSubject,
  keysFromJwks,
  canonicalJson,
  envelopeCanonical,
  makeEnvelope,
  openEnvelope,
  storage,
};
