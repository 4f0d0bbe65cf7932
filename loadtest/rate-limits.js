// Per-tenant rate limits, several quotas at once: each tenant in QUOTAS is driven at 2x its
// quota for DURATION_S seconds; admitted (200) and refused (429) responses are counted per tenant
// (Counters tagged tenant=...). Expected admitted rate: quota + burst / duration (the bucket
// starts full). Thresholds: each tenant's admitted rate within +-TOLERANCE_PCT (default 10) of
// that, nothing but 200/429, every 429 with Retry-After.
//   k6 run -e QUOTAS=rl20:20:20,rl50:50:25 loadtest/rate-limits.js     (tenant:per_second:burst)
// Driven by loadtest/rate-limits.sh, which writes the matching gateway config. Loopback only.
import http from "k6/http";
import { check } from "k6";
import exec from "k6/execution";
import { Counter } from "k6/metrics";

const BASE = __ENV.BASE || "http://127.0.0.1:18080";
const D = Number(__ENV.DURATION_S || 20);
const TOL = Number(__ENV.TOLERANCE_PCT || 10) / 100;
const QUOTAS = (__ENV.QUOTAS || "rl20:20:20,rl50:50:25,rl100:100:50").split(",").map((s) => {
  const [tenant, q, b] = s.split(":");
  return { tenant, quota: Number(q), burst: Number(b) };
});
const expected = (x) => x.quota + x.burst / D;

const admitted = new Counter("admitted");
const limited = new Counter("limited");
const other = new Counter("other");

const scenarios = {};
const thresholds = { other: ["count==0"], checks: ["rate==1"] };
for (const x of QUOTAS) {
  scenarios[x.tenant] = {
    executor: "constant-arrival-rate", rate: 2 * x.quota, timeUnit: "1s", duration: `${D}s`,
    preAllocatedVUs: 10, maxVUs: 100, exec: "drive", tags: { tenant: x.tenant },
  };
  // Counter "rate" is count / elapsed test time: evaluated at the end, that is the admitted rate.
  const e = expected(x);
  thresholds[`admitted{tenant:${x.tenant}}`] = [`rate>=${(e * (1 - TOL)).toFixed(3)}`, `rate<=${(e * (1 + TOL)).toFixed(3)}`];
  thresholds[`limited{tenant:${x.tenant}}`] = ["count>0"]; // 2x the quota must be refused in part
}

export const options = { scenarios, thresholds, discardResponseBodies: true };

export function drive() {
  const tenant = exec.scenario.name;
  const r = http.get(`${BASE}/`, { headers: { Host: `${tenant}.gw.test` }, tags: { tenant },
                                   responseCallback: http.expectedStatuses(200, 429) });
  if (r.status === 200) admitted.add(1, { tenant });
  else if (r.status === 429) {
    limited.add(1, { tenant });
    check(r, { "429 has Retry-After": (x) => !!x.headers["Retry-After"] });
  } else other.add(1, { tenant });
}

export function handleSummary(data) {
  const m = data.metrics;
  const count = (name) => (m[name] ? m[name].values.count : 0);
  const tenants = QUOTAS.map((x) => {
    const adm = count(`admitted{tenant:${x.tenant}}`);
    const lim = count(`limited{tenant:${x.tenant}}`);
    const rate = adm / D;
    const exp = expected(x);
    return {
      tenant: x.tenant, quota_per_s: x.quota, burst: x.burst, offered_per_s: 2 * x.quota,
      sent: adm + lim, admitted: adm, limited: lim,
      admitted_per_s: rate, expected_per_s: exp, deviation_pct: (100 * (rate - exp)) / exp,
      admitted_minus_burst_per_s: (adm - x.burst) / D,
      within_tolerance: Math.abs(rate - exp) <= TOL * exp,
    };
  });
  const out = {
    duration_s: D, tolerance_pct: TOL * 100, other_statuses: count("other"), tenants,
    ok: count("other") === 0 && tenants.every((t) => t.within_tolerance),
  };
  const lines = tenants.map((t) =>
    `  ${t.tenant.padEnd(8)} quota ${String(t.quota_per_s).padStart(4)}/s burst ${String(t.burst).padStart(4)}: ` +
    `sent ${t.sent}, admitted ${t.admitted} (${t.admitted_per_s.toFixed(1)}/s; expected ${t.expected_per_s.toFixed(1)}/s, ` +
    `${t.deviation_pct >= 0 ? "+" : ""}${t.deviation_pct.toFixed(1)} %; minus the burst ${t.admitted_minus_burst_per_s.toFixed(1)}/s), 429: ${t.limited}`);
  const text = [`rate-limits: each tenant at 2x its quota for ${D} s`, ...lines,
    `  other statuses: ${out.other_statuses}; all within +-${out.tolerance_pct} %: ${out.ok ? "yes" : "NO"}`].join("\n") + "\n";
  const json = JSON.stringify(out, null, 2);
  const files = { "loadtest/results/rate-limits-summary.json": json, stdout: text };
  if (__ENV.OUT) files[__ENV.OUT] = json;
  return files;
}
