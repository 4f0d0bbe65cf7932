// Many tenants at once: random tenants from TENANT_LIST (53 by default: acme, globex, initech and
// t00000..t00049), named by Host subdomain or custom domain on the plain listener (HTTP/1.1) and by
// SNI + Host over TLS (k6 negotiates HTTP/2 by ALPN); half the requests carry the tenant's own JWT.
// A trickle of bad requests checks that the mix never blurs tenants: another tenant's token
// (403 tenant_mismatch) and a forged signature (401 invalid_token).
//   k6 run -e TOKENS=tokens.json loadtest/tenant-mix.js     (TOKENS: {"acme": "<jwt>", ...})
// Driven by loadtest/tenant-mix.sh, which starts the upstream and the gateway. Loopback only.
import http from "k6/http";
import { check } from "k6";

const PLAIN = __ENV.PLAIN || "http://127.0.0.1:18080";
const TLS_PORT = __ENV.TLS_PORT || "18443";
const DURATION = __ENV.DURATION || "20s";
const H1_RATE = Number(__ENV.H1_RATE || 300);
const TLS_RATE = Number(__ENV.TLS_RATE || 300);
const BAD_RATE = Number(__ENV.BAD_RATE || 10);
const P99_MS = Number(__ENV.P99_MS || 50);
const TOKENS = JSON.parse(open(__ENV.TOKENS));
const TENANTS = Object.keys(TOKENS);
const FILLER = /^t\d{5}$/; // filler tenants also have a custom domain, tNNNNN.example.test

const hosts = {};
for (const t of TENANTS) hosts[`${t}.gw.test`] = "127.0.0.1";

export const options = {
  hosts,
  insecureSkipTLSVerify: true,
  discardResponseBodies: true,
  summaryTrendStats: ["avg", "med", "p(90)", "p(99)", "max"],
  scenarios: {
    h1_plain: { executor: "constant-arrival-rate", rate: H1_RATE, timeUnit: "1s", duration: DURATION,
                preAllocatedVUs: 30, maxVUs: 200, exec: "plain" },
    h2_tls: { executor: "constant-arrival-rate", rate: TLS_RATE, timeUnit: "1s", duration: DURATION,
              preAllocatedVUs: 30, maxVUs: 200, exec: "tls" },
    refused: { executor: "constant-arrival-rate", rate: BAD_RATE, timeUnit: "1s", duration: DURATION,
               preAllocatedVUs: 5, maxVUs: 20, exec: "refused" },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    checks: ["rate>0.99"],
    "http_req_duration{scenario:h1_plain}": [`p(99)<${P99_MS}`],
    "http_req_duration{scenario:h2_tls}": [`p(99)<${P99_MS}`],
    "http_req_duration{scenario:refused}": [`p(99)<${P99_MS}`],
  },
};

const pick = (a) => a[Math.floor(Math.random() * a.length)];
const auth = (t) => ({ Authorization: `Bearer ${TOKENS[t]}` });

export function plain() {
  const t = pick(TENANTS);
  const byDomain = FILLER.test(t) && Math.random() < 0.3;
  const headers = { Host: byDomain ? `${t}.example.test` : `${t}.gw.test`, ...(Math.random() < 0.5 ? auth(t) : {}) };
  const r = http.get(`${PLAIN}/items/${Math.floor(Math.random() * 1000)}`, { headers, tags: { kind: "h1" } });
  check(r, {
    "h1 200": (x) => x.status === 200,
    "h1 x-request-id": (x) => !!x.headers["X-Request-Id"],
  });
}

export function tls() {
  const t = pick(TENANTS);
  const headers = Math.random() < 0.5 ? auth(t) : {};
  const r = http.get(`https://${t}.gw.test:${TLS_PORT}/items/${Math.floor(Math.random() * 1000)}`,
                     { headers, tags: { kind: "h2" } });
  check(r, {
    "tls 200": (x) => x.status === 200,
    "tls is HTTP/2": (x) => x.proto === "HTTP/2.0",
  });
}

const expect = (code) => ({ responseCallback: http.expectedStatuses(code) });

export function refused() {
  const t = pick(TENANTS);
  let other = pick(TENANTS);
  while (other === t) other = pick(TENANTS);
  if (Math.random() < 0.5) {
    const r = http.get(`https://${t}.gw.test:${TLS_PORT}/`, { headers: auth(other), tags: { kind: "mismatch" }, ...expect(403) });
    check(r, { "other tenant's token: 403": (x) => x.status === 403 });
  } else {
    const forged = TOKENS[t].replace(/\.[^.]*$/, ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    const r = http.get(`${PLAIN}/`, { headers: { Host: `${t}.gw.test`, Authorization: `Bearer ${forged}` },
                                      tags: { kind: "forged" }, ...expect(401) });
    check(r, { "forged token: 401": (x) => x.status === 401 });
  }
}

export function handleSummary(data) {
  const m = data.metrics;
  const v = (name, stat) => (m[name] ? m[name].values[stat] : null);
  const checks = {};
  for (const g of [data.root_group, ...(data.root_group.groups || [])])
    for (const c of g.checks || []) checks[c.name] = { passes: c.passes, fails: c.fails };
  const out = {
    duration_s: data.state.testRunDurationMs / 1000,
    tenants: TENANTS.length,
    requests: v("http_reqs", "count"),
    req_per_s: v("http_reqs", "rate"),
    failed_rate: v("http_req_failed", "rate"),
    h1_plain_ms: { p50: v("http_req_duration{scenario:h1_plain}", "med"), p99: v("http_req_duration{scenario:h1_plain}", "p(99)") },
    h2_tls_ms: { p50: v("http_req_duration{scenario:h2_tls}", "med"), p99: v("http_req_duration{scenario:h2_tls}", "p(99)") },
    refused_ms: { p50: v("http_req_duration{scenario:refused}", "med"), p99: v("http_req_duration{scenario:refused}", "p(99)") },
    checks,
    thresholds_ok: Object.values(m).every((x) => !x.thresholds || Object.values(x.thresholds).every((t) => t.ok)),
  };
  const r2 = (x) => (x == null ? "-" : x.toFixed(2));
  const text = [
    `tenant-mix: ${out.requests} requests in ${out.duration_s.toFixed(1)} s (${out.req_per_s.toFixed(0)}/s) over ${out.tenants} tenants; failed ${(100 * out.failed_rate).toFixed(2)} %`,
    `  h1 plain  p50 ${r2(out.h1_plain_ms.p50)} ms  p99 ${r2(out.h1_plain_ms.p99)} ms`,
    `  h2 TLS    p50 ${r2(out.h2_tls_ms.p50)} ms  p99 ${r2(out.h2_tls_ms.p99)} ms`,
    `  refused   p50 ${r2(out.refused_ms.p50)} ms  p99 ${r2(out.refused_ms.p99)} ms`,
    ...Object.entries(checks).map(([k, c]) => `  check ${k}: ${c.passes} passed, ${c.fails} failed`),
    `  thresholds: ${out.thresholds_ok ? "all passed" : "FAILED"}`,
  ].join("\n") + "\n";
  const file = __ENV.OUT || "loadtest/results/tenant-mix-summary.json";
  return { [file]: JSON.stringify(out, null, 2), stdout: text };
}
