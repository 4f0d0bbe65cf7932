// Steady traffic for two tenants while loadtest/reload-under-load.sh rewrites the config and
// sends SIGHUP 50 times, then SIGTERM at TERM_AT seconds. Counts every request by phase:
// before SIGTERM nothing may fail; after it, requests on connections already accepted must
// finish, and new connections are refused (counted apart). Loopback only; bounded in time.
import http from "k6/http";
import { Counter } from "k6/metrics";

const BASE = __ENV.BASE || "http://127.0.0.1:18080";
const TERM_AT = Number(__ENV.TERM_AT || 25);
const START = Date.now();

const sent = new Counter("sent");
const failedReload = new Counter("failed_during_reloads");
const failedDrain = new Counter("failed_during_drain");
const refusedDrain = new Counter("refused_after_sigterm");

export const options = {
  scenarios: {
    steady: {
      executor: "constant-arrival-rate", rate: Number(__ENV.RATE || 300), timeUnit: "1s",
      duration: __ENV.DURATION || "30s", preAllocatedVUs: 20, maxVUs: 200,
    },
  },
  discardResponseBodies: true,
  thresholds: { failed_during_reloads: ["count==0"] },
};

const TENANTS = ["acme", "globex"];

export default function () {
  const tenant = TENANTS[__ITER % TENANTS.length];
  const beforeTerm = (Date.now() - START) / 1000 < TERM_AT;
  const r = http.get(`${BASE}/r`, { headers: { Host: `${tenant}.gw.test` }, timeout: "5s" });
  sent.add(1);
  if (r.status === 200) return;
  if (beforeTerm) {
    failedReload.add(1);
  } else if (r.status === 0 && /connection refused/.test(r.error)) {
    refusedDrain.add(1); // never accepted: the listener is closed
  } else {
    failedDrain.add(1);
  }
}

export function handleSummary(data) {
  const v = (name) => (data.metrics[name] ? data.metrics[name].values.count : 0);
  const out = {
    sent: v("sent"),
    failed_during_reloads: v("failed_during_reloads"),
    failed_during_drain: v("failed_during_drain"),
    refused_after_sigterm: v("refused_after_sigterm"),
  };
  return {
    [__ENV.OUT || "loadtest/results/reload-under-load.json"]: JSON.stringify(out, null, 2),
    stdout: JSON.stringify(out) + "\n",
  };
}
