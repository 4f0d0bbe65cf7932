// Cluster accuracy: one tenant driven at RATE req/s (3x its 100/s quota by default), spread
// round-robin over the replicas in BASES. Reports the admitted rate against the quota.
// Driven by loadtest/cluster.sh. Loopback only; bounded in time.
import http from "k6/http";
import { Counter } from "k6/metrics";

const BASES = (__ENV.BASES || "http://127.0.0.1:18080,http://127.0.0.1:18081,http://127.0.0.1:18082").split(",");
const admitted = new Counter("admitted");
const limited = new Counter("limited");
const other = new Counter("other");

export const options = {
  scenarios: {
    hot: {
      executor: "constant-arrival-rate", rate: Number(__ENV.RATE || 300), timeUnit: "1s",
      duration: __ENV.DURATION || "30s", preAllocatedVUs: 30, maxVUs: 200,
    },
  },
  discardResponseBodies: true,
  thresholds: { other: ["count==0"] },
};

export default function () {
  const r = http.get(`${BASES[__ITER % BASES.length]}/c`, { headers: { Host: "hot.gw.test" } });
  if (r.status === 200) admitted.add(1);
  else if (r.status === 429) limited.add(1);
  else other.add(1);
}

export function handleSummary(data) {
  const v = (n) => (data.metrics[n] ? data.metrics[n].values.count : 0);
  const seconds = data.state.testRunDurationMs / 1000;
  const out = { seconds, admitted: v("admitted"), limited: v("limited"), other: v("other"),
    admitted_per_s: v("admitted") / seconds };
  return { [__ENV.OUT || "loadtest/results/cluster.json"]: JSON.stringify(out, null, 2),
    stdout: JSON.stringify(out) + "\n" };
}
