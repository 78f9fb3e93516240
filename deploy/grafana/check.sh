#!/usr/bin/env bash
# Checks the Grafana dashboard offline: it is JSON with the fields Grafana
# needs, and every query in it is PromQL that Prometheus parses (each one,
# with the dashboard's variables filled in, becomes a recording rule for
# `promtool check rules`). Which series the queries name is checked by the
# unit test `every_metric_the_alerting_rules_and_dashboard_name_is_exposed`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rules="$(mktemp --suffix=.yml)"
trap 'rm -f "$rules"' EXIT
python3 - "$here/wasmtwin-fleet.json" "$rules" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
for field in ("title", "uid", "panels", "templating", "schemaVersion"):
    if field not in dashboard:
        sys.exit(f"dashboard: no `{field}`")
rules = []
for panel in dashboard["panels"]:
    if not panel.get("targets"):
        sys.exit(f"panel {panel.get('title')!r}: no query")
    for target in panel["targets"]:
        expr = (target["expr"].replace("$__rate_interval", "1m")
                .replace("$twin", ".*"))
        rules.append({"record": f"dashboard:query_{len(rules)}", "expr": expr})
with open(sys.argv[2], "w") as out:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, out)
print(f"{len(dashboard['panels'])} panels, {len(rules)} queries")
PY
promtool check rules "$rules"
