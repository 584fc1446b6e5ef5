#!/usr/bin/env bash
# Offline checks of the observability artifacts; no container is started.
# Needs promtool (Debian: apt-get install prometheus), docker-compose or
# `docker compose`, and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== promtool check config"
# rule_files in prometheus.yml are resolved relative to the config file.
promtool check config deploy/prometheus/prometheus.yml

echo "== promtool check rules"
promtool check rules deploy/prometheus/rules.yml

echo "== promtool test rules"
promtool test rules deploy/prometheus/rules_test.yml

echo "== compose config"
if command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f docker-compose.yml config -q
elif docker compose version >/dev/null 2>&1; then
    docker compose -f docker-compose.yml config -q
else
    echo "validate: neither docker-compose nor 'docker compose' is installed" >&2
    exit 1
fi
echo "docker-compose.yml is valid"
# The watch service's privileges are the DaemonSet's (checked below).
python3 - docker-compose.yml <<'PY'
import sys, yaml
watch = yaml.safe_load(open(sys.argv[1]))["services"]["watch"]
assert watch["cap_drop"] == ["ALL"], watch
assert set(watch["cap_add"]) == {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE",
    "DAC_READ_SEARCH", "SETUID", "SETGID", "SETPCAP"}, watch["cap_add"]
assert watch["pid"] == "host" and watch["network_mode"] == "host", watch
print("docker-compose.yml: watch has the least privileges")
PY

echo "== kubernetes"
python3 - deploy/kubernetes/*.yaml <<'PY'
import sys, yaml
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        assert doc["kind"] and doc["spec"], path
        c = doc["spec"]["template"]["spec"]["containers"][0]
        caps = c["securityContext"]["capabilities"]
        assert caps["drop"] == ["ALL"] and not c["securityContext"]["privileged"], path
        # The least watch needs (see the manifest's comment): nothing added to
        # it goes unnoticed.
        want = {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH",
                "SETUID", "SETGID", "SETPCAP"}
        assert set(caps["add"]) == want, (path, caps["add"])
        spec = doc["spec"]["template"]["spec"]
        assert spec.get("hostPID") and spec.get("hostNetwork"), path
    print(f"{path} is valid YAML with least privileges")
PY

echo "== dashboard JSON"
python3 -m json.tool dashboards/clientgone.json >/dev/null
echo "dashboards/clientgone.json is valid JSON"

echo "== dashboard PromQL"
# Every panel query, with the dashboard variables substituted, must parse
# (checked by promtool as recording rules) and filter on $job and $instance,
# and on $route where the metric has http_route; the gRPC metrics (rpc_server_*
# and their method:/method_cause: rules) have no http_route and filter on
# $rpc_method instead.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - dashboards/clientgone.json "$tmp/dashboard_rules.yml" <<'PY'
import json, re, sys

dash = json.load(open(sys.argv[1]))
exprs = []
def walk(node, title=""):
    if isinstance(node, dict):
        title = node.get("title", title)
        if isinstance(node.get("expr"), str):
            exprs.append((title, node["expr"]))
        for v in node.values():
            walk(v, title)
    elif isinstance(node, list):
        for v in node:
            walk(v, title)
walk(dash.get("panels", []))
if not exprs:
    sys.exit("validate: the dashboard has no queries")

subst = {"job": ".*", "instance": ".*", "route": ".*", "rpc_method": ".*",
         "__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
def substitute(expr):
    return re.sub(r"\$\{?(\w+)\}?", lambda m: subst[m.group(1)], expr)

bad = []
lines = ["groups:", "  - name: dashboard", "    rules:"]
for i, (title, expr) in enumerate(exprs):
    for name in re.findall(
            r"\b((?:(?:route|method|method_cause):)?(?:http|rpc)_server_[\w:]*)(?!\w|:|\{)", expr):
        bad.append(f"{title}: {name} has no label filter")
    selectors = re.findall(r"[\w:]+\{[^}]*\}", expr)
    for sel in selectors:
        if 'job=~"$job"' not in sel or 'instance=~"$instance"' not in sel:
            bad.append(f"{title}: {sel} does not filter on $job and $instance")
        if re.match(r"(?:\w+:)?rpc_server_", sel):
            if 'rpc_method=~"$rpc_method"' not in sel:
                bad.append(f"{title}: {sel} does not filter on $rpc_method")
        elif not sel.startswith(("http_server_open_connections", "http_server_connection_")) \
                and 'http_route=~"$route"' not in sel:
            bad.append(f"{title}: {sel} does not filter on $route")
    if not selectors:
        bad.append(f"{title}: {expr} has no label filter")
    lines.append(f"      - record: dashboard:query_{i}")
    lines.append(f"        expr: {json.dumps(substitute(expr))}")
if bad:
    sys.exit("validate:\n  " + "\n  ".join(bad))
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print(f"{len(exprs)} dashboard queries filter on $job, $instance and $route or $rpc_method")
PY
promtool check rules "$tmp/dashboard_rules.yml"

echo "validate: all checks passed"
