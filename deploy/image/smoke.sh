#!/usr/bin/env bash
# The image's round trip, as CI runs it: build it (build.sh), push it to a
# local registry (Debian's docker-registry) and pull it back with skopeo,
# unpack it with umoci and run it with crun, a real OCI runtime, with its
# root filesystem read-only and a scratch volume on /data; the host must
# answer /readyz. Needs: umoci skopeo crun docker-registry curl (Debian).
#
#   deploy/image/smoke.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."

binary=${1:-target/release/wasmtwin}
work=$(mktemp -d)
registry_pid=
container=wasmtwin-smoke-$$
# crun 1.8 refuses cgroups in hybrid mode (v1 controllers plus a v2
# hierarchy holding one, as on machines like these); it runs here in a
# mount namespace of its own where the v2 hierarchy is not mounted.
crun() {
  if [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]; then
    unshare --mount --propagation private sh -c 'umount /sys/fs/cgroup/unified && exec crun "$@"' crun "$@"
  else
    command crun "$@"
  fi
}
cleanup() {
  crun kill "$container" KILL 2>/dev/null || true
  crun delete --force "$container" 2>/dev/null || true
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "--- build"
deploy/image/build.sh "$binary" "$work/oci" smoke

echo "--- push to a local registry, pull back"
registry_port=$(free_port)
cat >"$work/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$registry_port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$registry_port/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
skopeo copy --quiet --dest-tls-verify=false \
  "oci:$work/oci:smoke" "docker://127.0.0.1:$registry_port/wasmtwin:smoke"
skopeo copy --quiet --src-tls-verify=false \
  "docker://127.0.0.1:$registry_port/wasmtwin:smoke" "oci:$work/pulled:smoke"

echo "--- unpack and run with crun"
umoci unpack --image "$work/pulled:smoke" "$work/bundle" >/dev/null
mkdir -p "$work/data" "$work/secrets"
chown 65532:65532 "$work/data"
"$binary" keygen --out "$work/trust" >/dev/null 2>&1
rm "$work/trust/wasmtwin.key"
printf 'smoke-test-token' >"$work/secrets/wasmtwin-token"
http_port=$(free_port)
# The image's own process and user; what a pod spec would add: the host's
# network (so the test can reach it), a read-only root, a volume on /data,
# a token.
python3 - "$work" "$http_port" <<'EOF'
import json, sys
work, port = sys.argv[1], sys.argv[2]
path = f"{work}/bundle/config.json"
config = json.load(open(path))
process = config["process"]
# The image's own command, but for the address.
assert process["user"]["uid"] == 65532, process["user"]
assert process["args"][:2] == ["/usr/local/bin/wasmtwin", "host"], process["args"]
process["args"] = [f"127.0.0.1:{port}" if a == "0.0.0.0:8080" else a for a in process["args"]]
process["terminal"] = False
config["root"]["readonly"] = True
config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
for source, destination, mode in [(f"{work}/data", "/data", "rw"),
                                  (f"{work}/trust", "/etc/wasmtwin/trust", "ro"),
                                  (f"{work}/secrets", "/run/secrets", "ro")]:
    config["mounts"].append({"destination": destination, "type": "bind", "source": source,
                             "options": ["rbind", mode]})
json.dump(config, open(path, "w"), indent=2)
EOF
crun run --detach --bundle "$work/bundle" "$container" >"$work/container.log" 2>&1 || {
  echo "crun could not start the container:" >&2; cat "$work/container.log" >&2; exit 1; }
for _ in $(seq 150); do
  if curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; then
    # The API is there and takes the token from the mounted secret.
    curl -fsS -H 'Authorization: Bearer smoke-test-token' "http://127.0.0.1:$http_port/v1/twins" >/dev/null
    state=$(crun state "$container")
    echo "the container answers /readyz and its API: $(python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["status"], "pid", s["pid"])' <<<"$state"), $(stat -c 'uid %u' "/proc/$(python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])' <<<"$state")" 2>/dev/null || echo 'uid ?')"
    exit 0
  fi
  sleep 0.2
done
echo "the container did not answer /readyz within 30 s" >&2
crun state "$container" >&2 || true
cat "$work/container.log" >&2
exit 1
