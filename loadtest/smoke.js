// k6 smoke test: a few virtual users against a running gateway (e.g. `tenant-gateway demo`),
// mixing tenants by Host on the plain listener. Loopback only; bounded in time.
//   k6 run loadtest/smoke.js            (BASE=http://127.0.0.1:8080 DOMAIN=gw.localhost by default)
import http from "k6/http";
import { check } from "k6";

const BASE = __ENV.BASE || "http://127.0.0.1:8080";
const DOMAIN = __ENV.DOMAIN || "gw.localhost";
const TENANTS = (__ENV.TENANTS || "acme,globex").split(",");

export const options = {
  vus: 4,
  duration: __ENV.DURATION || "10s",
  thresholds: {
    http_req_failed: ["rate<0.001"],
    http_req_duration: ["p(99)<50"],
    checks: ["rate>0.999"],
  },
};

export default function () {
  const tenant = TENANTS[__ITER % TENANTS.length];
  const res = http.get(`${BASE}/smoke`, { headers: { Host: `${tenant}.${DOMAIN}` } });
  check(res, {
    "status 200": (r) => r.status === 200,
    "request id returned": (r) => !!r.headers["X-Request-Id"],
  });
}

export function handleSummary(data) {
  return { "loadtest/results/smoke-summary.json": JSON.stringify(data, null, 2) };
}
