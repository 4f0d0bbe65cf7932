#!/usr/bin/env bash
# Checks deploy/: Prometheus rules (`promtool check rules`, `promtool test rules`), every
# Kubernetes manifest a kustomization lists against the Kubernetes schemas in strict mode
# (kubernetes-validate), the shutdown timings the Deployment and the config must agree on, and
# that the config in the ConfigMap compiles (`tenant-gateway check`). Installs promtool and
# kubernetes-validate where absent. Run from anywhere: `bash deploy/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION="${K8S_VERSION:-1.33.0}"

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "installing kubernetes-validate"
  python3 -m pip install -q kubernetes-validate
fi

echo "== promtool"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)

echo "== Kubernetes manifests (strict, Kubernetes $K8S_VERSION)"
# kustomize itself is not installable from the registries we use: walk each kustomization's
# resources (files, and directories holding a kustomization) and validate every file listed.
# Patches are partial objects; each must name a resource of the base it patches.
mapfile -t manifests < <(python3 - <<'PY'
import os, sys, yaml
seen, out = set(), []
def walk(d):
    d = os.path.normpath(d)
    if d in seen:
        return []
    seen.add(d)
    k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
    found = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(d, r))
        if os.path.isdir(p):
            found += walk(p)
        elif os.path.isfile(p):
            found.append(p)
        else:
            sys.exit(f"{d}/kustomization.yaml lists a missing resource: {r}")
    names = set()
    for f in found:
        for doc in yaml.safe_load_all(open(f)):
            if doc:
                names.add((doc["kind"], doc["metadata"]["name"]))
    for p in k.get("patches", []):
        for doc in yaml.safe_load_all(open(os.path.join(d, p["path"]))):
            if (doc["kind"], doc["metadata"]["name"]) not in names:
                sys.exit(f"{d}: patch {p['path']} names no resource of its base")
    return found
for root, dirs, files in os.walk("deploy/kubernetes"):
    if "kustomization.yaml" in files:
        out += walk(root)
for f in sorted(set(out)):
    print(f)
PY
)
((${#manifests[@]} >= 10)) || { echo "only ${#manifests[@]} manifests found"; exit 1; }
kubernetes-validate --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
echo "${#manifests[@]} manifests valid"

echo "== shutdown timings and the ConfigMap's config"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import sys, yaml
work = sys.argv[1]
cm = yaml.safe_load(open("deploy/kubernetes/base/configmap.yaml"))
cfg = yaml.safe_load(cm["data"]["gateway.yaml"])
dep = yaml.safe_load(open("deploy/kubernetes/base/deployment.yaml"))
pod = dep["spec"]["template"]["spec"]
gw = next(c for c in pod["containers"] if c["name"] == "gateway")
grace_s = cfg["limits"]["shutdown_grace_ms"] / 1000
sleep_s = gw["lifecycle"]["preStop"]["sleep"]["seconds"]
total = pod["terminationGracePeriodSeconds"]
print(f"preStop {sleep_s} s + shutdown_grace {grace_s} s < terminationGracePeriodSeconds {total} s")
assert sleep_s > 0 and sleep_s + grace_s < total, "the kubelet would SIGKILL before the drain ends"
assert dep["spec"]["replicas"] == 3
sc = gw["securityContext"]
assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert all("subPath" not in m for m in gw["volumeMounts"]), "subPath mounts are never updated"
# The probes' port is the scrape-only listener, never the control one.
port = {p["name"]: p["containerPort"] for p in gw["ports"]}[gw["readinessProbe"]["httpGet"]["port"]]
assert cfg["admin"]["metrics_bind"].endswith(f":{port}"), "probes must hit admin.metrics_bind"
assert cfg["admin"]["bind"].startswith("127.0.0.1:"), "the control listener stays on loopback"
# The same config with the mounted paths pointing at throwaway files, for `tenant-gateway check`.
text = cm["data"]["gateway.yaml"].replace("/etc/tenant-gateway/secrets/", f"{work}/secrets/")
text = text.replace("/etc/tenant-gateway/tls/tls.crt", f"{work}/certs/default.crt")
text = text.replace("/etc/tenant-gateway/tls/tls.key", f"{work}/certs/default.key")
assert "/etc/tenant-gateway" not in text, "a mounted path this check does not stand in for"
open(f"{work}/gateway.yaml", "w").write(text)
PY
mkdir -p "$work/secrets"
for f in signing-k1 jwt-hs-1 admin-token; do
  head -c 32 /dev/urandom | base64 >"$work/secrets/$f"
done
cargo run --locked --quiet -- dev-certs --out "$work/certs" --domain gw.example.com >/dev/null
cargo run --locked --quiet -- check --config "$work/gateway.yaml"
echo "deploy: all checks passed"
