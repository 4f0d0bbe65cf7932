// Fair share of a saturated pool (issue 15): tenant "light" sends LIGHT_RATE req/s while tenant
// "heavy" floods at HEAVY_RATE req/s, within its rate limit, a pool that serves 8 requests at a
// time (20 ms each: 400/s). Driven by loadtest/fair-share.sh, which starts the upstreams, the
// gateway and HAProxy and picks the paths; loopback only, bounded in time.
//   k6 run -e MODE=cap loadtest/fair-share.js
// MODE (paths as routed in fair-share.sh's gateway config and HAProxy config):
//   calm          light -> /cap (the measured pool); heavy -> /fast (a pool that answers at once)
//   nocap         light and heavy -> /nocap (the same upstream, no `capacity`)
//   cap           light and heavy -> /cap (`capacity: { max_in_flight: 8, queue_ms: 1000 }`)
//   haproxy-calm  as calm, through HAProxy (BASE=http://127.0.0.1:18081)
//   haproxy       as cap, through HAProxy (light in a priority class, server maxconn 8)
//   weights       tenants w1 (weight 1) and w3 (weight 3) each flood /cap at WEIGHT_RATE
// Rates are counted over responses that complete between WARM_S and DURATION_S (the queue has
// filled and nothing is draining yet); light's latency is over all its requests.
import http from "k6/http";
import { Counter, Trend } from "k6/metrics";

const BASE = __ENV.BASE || "http://127.0.0.1:18080";
const MODE = __ENV.MODE || "cap";
const LIGHT_RATE = Number(__ENV.LIGHT_RATE || 40);
const HEAVY_RATE = Number(__ENV.HEAVY_RATE || 800);
const WEIGHT_RATE = Number(__ENV.WEIGHT_RATE || 600);
const DURATION_S = Number(__ENV.DURATION_S || 15);
const WARM_S = Number(__ENV.WARM_S || 3);
const HEAVY_MAX_VUS = Number(__ENV.HEAVY_MAX_VUS || 1500);

const PATHS = {
  calm: { light: "/cap", heavy: "/fast" },
  nocap: { light: "/nocap", heavy: "/nocap" },
  cap: { light: "/cap", heavy: "/cap" },
  "haproxy-calm": { light: "/slow", heavy: "/fast" },
  haproxy: { light: "/slow", heavy: "/slow" },
  weights: { w1: "/cap", w3: "/cap" },
}[MODE];
if (!PATHS) throw new Error(`unknown MODE ${MODE}`);

const lightLatency = new Trend("light_latency", true);
const counters = {};
for (const t of ["light", "heavy", "w1", "w3"]) {
  counters[t] = {
    sent: new Counter(`${t}_sent`),
    ok: new Counter(`${t}_ok`),               // 200, whole run
    okWindow: new Counter(`${t}_ok_window`),  // 200 completed inside [WARM_S, DURATION_S]
    s503: new Counter(`${t}_503`),
    other: new Counter(`${t}_other`),         // anything else: 4xx, 5xx other than 503, errors
  };
}

// Light gets all its VUs up front (enough for 40/s at 5 s each, the no-capacity run), so that it
// is never short of one; the floods start with 1.2 s worth and may grow to HEAVY_MAX_VUS, which
// bounds how many of a flood's requests are in flight at once (iterations past it are dropped,
// and counted per scenario).
const arrival = (rate, exec, preAllocatedVUs, maxVUs) => ({
  executor: "constant-arrival-rate", rate, timeUnit: "1s", duration: `${DURATION_S}s`,
  preAllocatedVUs, maxVUs, exec, gracefulStop: "5s",
});
const flood = (rate, exec) => arrival(rate, exec, Math.min(HEAVY_MAX_VUS, Math.ceil(rate * 1.2)), HEAVY_MAX_VUS);
const scenarios = {};
if (MODE === "weights") {
  scenarios.w1 = flood(WEIGHT_RATE, "w1");
  scenarios.w3 = flood(WEIGHT_RATE, "w3");
} else {
  const vus = Math.ceil(LIGHT_RATE * 5);
  scenarios.light = arrival(LIGHT_RATE, "light", vus, vus);
  scenarios.heavy = flood(HEAVY_RATE, "heavy");
}

export const options = {
  scenarios,
  discardResponseBodies: true,
  summaryTrendStats: ["med", "p(99)", "max"],
  // Never fail: only here so that the summary carries the dropped iterations per scenario.
  thresholds: Object.fromEntries(Object.keys(scenarios).map((s) => [`dropped_iterations{scenario:${s}}`, ["count>=0"]])),
};

export function setup() {
  return { t0: Date.now() };
}

function hit(tenant, t0) {
  const c = counters[tenant];
  c.sent.add(1);
  const r = http.get(`${BASE}${PATHS[tenant]}`, { headers: { Host: `${tenant}.gw.test` } });
  const at = (Date.now() - t0) / 1000;
  if (r.status === 200) {
    c.ok.add(1);
    if (at >= WARM_S && at <= DURATION_S) c.okWindow.add(1);
  } else if (r.status === 503) c.s503.add(1);
  else c.other.add(1);
  return r;
}

export function light(data) {
  const r = hit("light", data.t0);
  lightLatency.add(r.timings.duration);
}
export function heavy(data) { hit("heavy", data.t0); }
export function w1(data) { hit("w1", data.t0); }
export function w3(data) { hit("w3", data.t0); }

export function handleSummary(data) {
  const m = data.metrics;
  const n = (name) => (m[name] ? m[name].values.count : 0);
  const window = DURATION_S - WARM_S;
  const out = { mode: MODE };
  if (m.light_latency) {
    out.light_p50_ms = m.light_latency.values.med;
    out.light_p99_ms = m.light_latency.values["p(99)"];
    out.light_max_ms = m.light_latency.values.max;
  }
  for (const t of ["light", "heavy", "w1", "w3"]) {
    if (!n(`${t}_sent`)) continue;
    out[`${t}_sent`] = n(`${t}_sent`);
    out[`${t}_ok`] = n(`${t}_ok`);
    out[`${t}_served_per_s`] = n(`${t}_ok_window`) / window;
    out[`${t}_503`] = n(`${t}_503`);
    out[`${t}_other`] = n(`${t}_other`);
    out[`${t}_failed`] = n(`${t}_503`) + n(`${t}_other`);
    out[`${t}_dropped`] = n(`dropped_iterations{scenario:${t}}`);  // not sent: no VU free
  }
  const file = __ENV.OUT || `loadtest/results/fair-share-${MODE}.json`;
  return { [file]: JSON.stringify(out, null, 2), stdout: JSON.stringify(out) + "\n" };
}
