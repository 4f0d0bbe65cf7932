// Types for tenant-gateway-context.
import type { KeyObject } from 'node:crypto';
import type { AsyncLocalStorage } from 'node:async_hooks';
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface TenantContext {
  readonly tenant: string;
  readonly plan: string;
  /** Decoded subject (e.g. "zoë"); null when the gateway saw no token. */
  readonly subject: string | null;
  /** x-tenant-source, e.g. "sni,host,token"; "job" inside runInTenant. */
  readonly source: string;
  readonly requestId: string;
}

export interface Jwk { kty: string; crv?: string; kid?: string; x?: string; alg?: string; use?: string }
export interface Jwks { keys: Jwk[] }
export type Ed25519KeyMaterial = KeyObject | Jwk | Buffer | Uint8Array | string;

export interface VerifierOptions {
  /** HMAC secrets by kid. */
  hmacKeys?: Record<string, string | Buffer> | null;
  /** A JWKS document, or its URL (fetched lazily, refetched on an unknown kid at most every 30 s). */
  jwks?: Jwks | string | null;
  /** Expected audience (upstream pool); when set, v1 signatures are refused. */
  audience?: string | null;
  /** Accepted clock skew, seconds (default 300). */
  maxSkewS?: number;
  /** Ed25519 public keys by kid: raw 32 bytes, PEM, JWK or KeyObject. */
  ed25519Keys?: Record<string, Ed25519KeyMaterial>;
  /** Replay-guard capacity (default 100000 signatures; the oldest are dropped first). */
  replayCacheSize?: number;
  clock?: () => number;
  jwksFetch?: (url: string) => Promise<Jwks>;
}

export interface TenantContextOptions extends VerifierOptions {
  /** Paths (exact, without query) served without a signature and without a tenant. */
  exemptPaths?: string[];
  onReject?: (req: IncomingMessage, reason: string) => void;
  verifier?: Verifier;
}

/** The fields a signature covers, as received (subject percent-encoded, or ''). */
export interface SignedFields {
  requestId: string;
  method: string;
  authority: string;
  pathAndQuery: string;
  tenant: string;
  plan: string;
  subject?: string;
  source?: string;
}

export interface ParsedSignature {
  version: 'v1' | 'v2';
  kid: string;
  alg: 'hmac-sha256' | 'ed25519';
  ts: number;
  aud: string | null;
  sig: string;
}

export interface JobEnvelope<P = unknown> {
  v: 1;
  tenant: string;
  plan: string;
  subject: string | null;
  request_id: string;
  issued_at: number;
  payload: P;
  sig: string;
}

export type Middleware = ((req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void) & {
  verifier: Verifier;
};

export function tenantContext(opts?: TenantContextOptions): Middleware;
export function currentTenant(): TenantContext | null;
export function jobEnvelope<P>(payload: P, opts: { serviceKey: string | Buffer; issuedAt?: number }): JobEnvelope<P>;
export function runInTenant<P, R>(
  env: JobEnvelope<P>,
  fn: (payload: P) => R,
  opts: { serviceKey: string | Buffer; maxAgeS?: number | null },
): R;

export class SignatureError extends Error {
  reason: string;
}
export class EnvelopeError extends Error {}

export class ReplayGuard {
  constructor(capacity?: number);
  readonly size: number;
  checkAndRemember(sig: string, expiresAt: number, now: number): boolean;
}

export class Verifier {
  constructor(opts?: VerifierOptions);
  readonly jwksUrl: string | null;
  readonly replay: ReplayGuard;
  knows(kid: string): boolean;
  mayRefresh(): boolean;
  refreshJwks(): Promise<boolean>;
  check(header: string | undefined | null, fields: SignedFields, now?: number): ParsedSignature;
  verify(header: string | undefined | null, fields: SignedFields, now?: number): ParsedSignature;
}

export function canonical(version: 'v1' | 'v2', ts: number, fields: SignedFields, audience?: string | null): Buffer;
export function parseHeader(value: string): ParsedSignature;
export function sign(
  version: 'v1' | 'v2',
  kid: string,
  key: string | Buffer | KeyObject,
  ts: number,
  fields: SignedFields,
  opts?: { alg?: 'hmac-sha256' | 'ed25519'; audience?: string },
): string;
export function encodeSubject(subject: string): string;
export function decodeSubject(value: string): string;
export function keysFromJwks(doc: Jwks): Map<string, KeyObject>;
export function canonicalJson(value: unknown): string;
export function envelopeCanonical(env: Omit<JobEnvelope, 'v' | 'sig'>): Buffer;
export function makeEnvelope<P>(
  payload: P,
  ctx: Pick<TenantContext, 'tenant' | 'plan' | 'subject' | 'requestId'>,
  serviceKey: string | Buffer,
  issuedAt?: number,
): JobEnvelope<P>;
export function openEnvelope<P>(
  env: JobEnvelope<P>,
  opts: { serviceKey: string | Buffer; maxAgeS?: number | null; now?: number },
): JobEnvelope<P>;
export const storage: AsyncLocalStorage<TenantContext>;
