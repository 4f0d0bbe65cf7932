// Noisy neighbour: tenant A floods at A_RATE req/s (10x its quota by default) while tenant B
// sends a steady, in-quota B_RATE req/s. Reports B's latency and A's admitted rate.
//   k6 run -e A_RATE=1000 loadtest/noisy-neighbour.js     (A_RATE=0: baseline, B alone)
// Driven by loadtest/noisy-neighbour.sh, which starts the gateway and upstream. Loopback only.
import http from "k6/http";
import { check } from "k6";
import { Counter, Trend } from "k6/metrics";

const BASE = __ENV.BASE || "http://127.0.0.1:18080";
const A_RATE = Number(__ENV.A_RATE ?? 1000);
const B_RATE = Number(__ENV.B_RATE ?? 50);
const DURATION = __ENV.DURATION || "20s";
const MODE = A_RATE > 0 ? "flood" : "baseline";

const bLatency = new Trend("b_latency", true);
const aAdmitted = new Counter("a_admitted");
const aLimited = new Counter("a_limited");
const bFailed = new Counter("b_failed");

const scenarios = {
  tenant_b: {
    executor: "constant-arrival-rate", rate: B_RATE, timeUnit: "1s", duration: DURATION,
    preAllocatedVUs: 20, maxVUs: 100, exec: "tenantB",
  },
};
if (A_RATE > 0) {
  scenarios.tenant_a = {
    executor: "constant-arrival-rate", rate: A_RATE, timeUnit: "1s", duration: DURATION,
    preAllocatedVUs: 50, maxVUs: 400, exec: "tenantA",
  };
}

export const options = {
  scenarios,
  discardResponseBodies: true,
  summaryTrendStats: ["avg", "min", "med", "max", "p(90)", "p(95)", "p(99)"],
  thresholds: {
    b_failed: ["count==0"],          // B is never refused
    "b_latency": ["p(99)<100"],       // and stays fast
  },
};

export function tenantA() {
  const r = http.get(`${BASE}/a`, { headers: { Host: "noisy.gw.test" } });
  if (r.status === 200) aAdmitted.add(1);
  else if (r.status === 429) aLimited.add(1);
}

export function tenantB() {
  const r = http.get(`${BASE}/b`, { headers: { Host: "quiet.gw.test" } });
  bLatency.add(r.timings.duration);
  if (!check(r, { "B 200": (x) => x.status === 200 })) bFailed.add(1);
}

export function handleSummary(data) {
  const m = data.metrics;
  const seconds = data.state.testRunDurationMs / 1000;
  const out = {
    mode: MODE,
    b_p50_ms: m.b_latency.values["med"],
    b_p99_ms: m.b_latency.values["p(99)"],
    b_failed: m.b_failed ? m.b_failed.values.count : 0,
    a_admitted_per_s: m.a_admitted ? m.a_admitted.values.count / seconds : 0,
    a_limited_per_s: m.a_limited ? m.a_limited.values.count / seconds : 0,
  };
  const file = __ENV.OUT || `loadtest/results/noisy-neighbour-${MODE}.json`;
  return { [file]: JSON.stringify(out, null, 2), stdout: JSON.stringify(out) + "\n" };
}
