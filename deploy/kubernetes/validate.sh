#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests, run by CI; no cluster needed.
#  1. every kustomization here renders (kubectl kustomize);
#  2. every object rendered is valid for Kubernetes $K8S_VERSION, unknown
#     fields refused (kubernetes-validate --strict; it knows no DigitalTwin,
#     which step 3 checks);
#  3. the CRD's schema is structural, and every example DigitalTwin (here
#     and in deploy/examples) is valid against it (validate.py);
#  4. the Prometheus configuration loads (promtool check config).
# Prints one line per file and exits 1 if any check fails. Needs kubectl,
# python3 with venv, promtool, and PyPI the first time (the virtualenv is
# kept in ${TMPDIR:-/tmp} for the next runs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
K8S_VERSION=1.33.0
# Pinned, with everything they pull in, so that a new release cannot change
# the verdict.
PINS=(
  kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4
  referencing==0.37.0 jsonschema-specifications==2025.9.1 rpds-py==2026.9.1
  attrs==26.1.0 importlib_resources==7.1.0 packaging==26.4
  typing_extensions==4.16.0
)

passed=0 failed=0
die() { printf 'validate.sh: %s\n' "$*" >&2; exit 2; }
ok() { printf 'ok    %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$1"; shift; [ $# = 0 ] || printf '%s\n' "$@" | sed 's/^/        /'; failed=$((failed + 1)); }
rel() { realpath --relative-to="$root" "$1"; }

# --- tools ----------------------------------------------------------------
if ! command -v kubectl >/dev/null; then
  echo "validate.sh: no kubectl; trying apt-get install -y kubectl" >&2
  if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
  $sudo apt-get install -y -qq kubectl >/dev/null 2>&1 || true
  command -v kubectl >/dev/null || die "kubectl is needed (kubectl kustomize) and apt-get could not \
install it: Debian has no kubectl package (its kubernetes-client is 1.20, too old). Add the \
Kubernetes apt repository, or put kubectl 1.27 or later on PATH: https://kubernetes.io/docs/tasks/tools/"
fi
# `labels:` with includeTemplates needs kustomize v5 (kubectl 1.27 on).
kustomize=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v//p')
case "$kustomize" in
  [5-9].* | [1-9][0-9].*) ;;
  *) die "kubectl's kustomize is ${kustomize:-older than v5 (kubectl names no version)}; these manifests need v5 (kubectl 1.27 or later)" ;;
esac
command -v promtool >/dev/null || die "promtool is needed (Debian: apt-get install prometheus)"

venv="${TMPDIR:-/tmp}/wasmtwin-validate-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-12)"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >/dev/null 2>&1 \
    || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" \
    || die "pip could not install ${PINS[*]}"
  touch "$venv/.complete"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- 1 and 2: render, then validate every object --------------------------
# kubernetes-validate warns about kinds it has no schema for; a DigitalTwin
# is the only one expected.
expected='^WARN .* Couldn'"'"'t find schema for kind DigitalTwin with api version wasmtwin\.dev/'
n=0
while IFS= read -r dir; do
  n=$((n + 1))
  out="$work/$n.yaml"
  label="$(rel "$dir")/"
  if ! kubectl kustomize "$dir" >"$out" 2>"$work/err"; then
    mapfile -t why <"$work/err"
    fail "$label  kubectl kustomize" "${why[@]}"
    continue
  fi
  set +e
  report=$("$venv/bin/kubernetes-validate" --strict -k "$K8S_VERSION" --quiet "$out" 2>&1)
  rc=$?
  set -e
  unexpected=$(printf '%s\n' "$report" | grep -v -e "$expected" -e '^$' | sed "s|$out|$label|g" || true)
  objects=$(grep -c '^kind: ' "$out" || true)
  dts=$(grep -c '^kind: DigitalTwin$' "$out" || true)
  if [ "$rc" != 0 ] || [ -n "$unexpected" ]; then
    mapfile -t why <<<"$unexpected"
    fail "$label  kubectl kustomize, kubernetes-validate --strict $K8S_VERSION" "${why[@]}"
  elif [ "$objects" = 0 ]; then
    fail "$label  kubectl kustomize" "renders nothing"
  else
    plural=s; [ "$objects" != 1 ] || plural=
    if [ "$dts" = 0 ]; then
      ok "$label  $objects object$plural rendered, valid for Kubernetes $K8S_VERSION"
    else
      ok "$label  $objects object$plural rendered: $dts DigitalTwin(s), checked against the CRD" \
        "below; the rest valid for Kubernetes $K8S_VERSION"
    fi
  fi
done < <(find "$here" -name kustomization.yaml -printf '%h\n' | sort)

# --- 3: the CRD and the example twins -------------------------------------
crd="$here/crd/digitaltwins.yaml"
if [ ! -f "$crd" ]; then
  fail "$(rel "$crd")  missing" "write it with: wasmtwin operator --crd > $(rel "$crd")"
else
  twins=()
  for f in "$here"/examples/*.yaml "$root"/deploy/examples/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || twins+=("$f")
  done
  set +e
  "$venv/bin/python" "$here/validate.py" twins "$crd" "${twins[@]}" >"$work/twins" 2>"$work/err"
  rc=$?
  set -e
  cat "$work/twins"
  passed=$((passed + $(grep -c '^ok ' "$work/twins" || true)))
  failed=$((failed + $(grep -c '^FAIL ' "$work/twins" || true)))
  if [ "$rc" != 0 ] && ! grep -q '^FAIL ' "$work/twins"; then
    mapfile -t why <"$work/err"
    fail "$(rel "$crd")  validate.py twins stopped" "${why[@]}"
  fi
fi

# --- 4: Prometheus ---------------------------------------------------------
scrape="$here/prometheus/scrape.yml"
set +e
report=$(promtool check config "$scrape" 2>&1)
rc=$?
set -e
if [ "$rc" = 0 ]; then
  ok "$(rel "$scrape")  promtool check config (and the rule files it names)"
elif grep -q 'field kubernetes_sd_configs not found' <<<"$report"; then
  # Debian builds Prometheus without Kubernetes discovery: check that part
  # here, and the rest with promtool on a copy that has static targets.
  set +e
  "$venv/bin/python" "$here/validate.py" k8s-sd "$scrape" "$work/scrape.yml" >"$work/sd" 2>&1
  sd=$?
  report=$(promtool check config "$work/scrape.yml" 2>&1)
  rc=$?
  set -e
  if [ "$sd" = 0 ] && [ "$rc" = 0 ]; then
    ok "$(rel "$scrape")  promtool check config (and its rule files); this promtool has no" \
      "Kubernetes discovery, so kubernetes_sd_configs checked by validate.py"
  else
    mapfile -t why < <(sed '1d; s/^ *//' "$work/sd"
      [ "$rc" = 0 ] || sed "s|$work/scrape.yml|$(rel "$scrape")|g" <<<"$report")
    fail "$(rel "$scrape")  promtool check config" "${why[@]}"
  fi
else
  mapfile -t why <<<"$report"
  fail "$(rel "$scrape")  promtool check config" "${why[@]}"
fi

printf 'validate.sh: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" = 0 ]
