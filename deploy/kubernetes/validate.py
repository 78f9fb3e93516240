"""Checks validate.sh runs in its virtualenv (PyYAML, jsonschema).

  validate.py twins CRD FILE...    the CRD's schema is one the API server
                                   takes (structural), and every FILE holds
                                   DigitalTwins valid against it
  validate.py k8s-sd CONFIG OUT    the kubernetes_sd_configs of a
                                   prometheus.yml, for a promtool built
                                   without them: checks them, and writes
                                   OUT, CONFIG with static targets instead

Prints one line per file ("ok" or "FAIL" first) and exits 1 on any failure.
"""

import copy
import os
import re
import sys

import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What metadata.name of a twin must be (the twin spec's rule) and what a
# namespace must be: an RFC 1123 label.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# The fields of apiextensions.k8s.io/v1 JSONSchemaProps, less those the API
# server refuses in a v1 CRD ($ref, definitions, id, $schema,
# patternProperties, dependencies, additionalItems). Any other key (const,
# $defs, examples…) is not part of a CRD schema: dropped or refused.
ALLOWED = {
    "description", "type", "format", "title", "default", "maximum",
    "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength",
    "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "multipleOf", "enum", "maxProperties", "minProperties", "required",
    "items", "allOf", "oneOf", "anyOf", "not", "properties",
    "additionalProperties", "externalDocs", "example", "nullable",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
}
JUNCTORS = ("allOf", "anyOf", "oneOf")
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def rel(path):
    return os.path.relpath(os.path.abspath(path), ROOT)


def report(path, problems, what):
    if problems:
        print(f"FAIL  {rel(path)}  {what}")
        for p in problems:
            print(f"        {p}")
    else:
        print(f"ok    {rel(path)}  {what}")
    return not problems


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- The CRD ---------------------------------------------------------------

def structural_problems(schema):
    """The API server's rules for a v1 CRD schema (structural schemas), as
    far as they concern a schema this project generates."""
    problems = []

    def junctor_members(node):
        for j in JUNCTORS:
            for member in node.get(j, []):
                yield member
        if isinstance(node.get("not"), dict):
            yield node["not"]

    def check_inside_junctor(node, path, parent, int_or_string):
        # Only constraints may stand inside anyOf/allOf/oneOf/not: the
        # shape (type, properties' existence, defaults…) is declared outside.
        for key in node:
            if key not in ALLOWED:
                problems.append(f"{path}: `{key}` is not allowed in a CRD schema")
        for key in ("type", "default", "additionalProperties", "nullable", "description"):
            if key in node and not (key == "type" and int_or_string):
                problems.append(f"{path}: `{key}` inside anyOf/allOf/oneOf/not")
        for name in node.get("properties", {}):
            if name not in parent.get("properties", {}):
                problems.append(f"{path}: property `{name}` only inside a junctor")
        if "items" in node and "items" not in parent:
            problems.append(f"{path}: `items` only inside a junctor")
        for sub in junctor_members(node):
            check_inside_junctor(sub, path, parent, False)

    def walk(node, path, needs_type):
        if not isinstance(node, dict):
            problems.append(f"{path}: not a schema object")
            return
        for key in node:
            if key not in ALLOWED:
                problems.append(f"{path}: `{key}` is not allowed in a CRD schema")
        if node.get("uniqueItems") is True:
            problems.append(f"{path}: uniqueItems: true is refused in a v1 CRD")
        free = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields")
        if needs_type and not node.get("type") and not free:
            problems.append(f"{path}: no `type`")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both `properties` and `additionalProperties`")
        int_or_string = bool(node.get("x-kubernetes-int-or-string"))
        for j in JUNCTORS:
            for i, member in enumerate(node.get(j, [])):
                allowed = int_or_string and j == "anyOf" and node[j] == INT_OR_STRING
                check_inside_junctor(member, f"{path}.{j}[{i}]", node, allowed)
        if isinstance(node.get("not"), dict):
            check_inside_junctor(node["not"], f"{path}.not", node, False)
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}", True)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*", True)
        if "items" in node:
            walk(node["items"], f"{path}[]", True)

    walk(schema, "openAPIV3Schema", True)
    if schema.get("type") != "object":
        problems.append("openAPIV3Schema: the root must be `type: object`")
    meta = schema.get("properties", {}).get("metadata")
    if meta is not None:
        extra = set(meta.get("properties", {})) - {"name", "generateName"}
        extra |= set(meta) - {"type", "description", "properties"}
        if extra:
            problems.append(
                f"openAPIV3Schema.metadata: only name and generateName may be constrained, not {sorted(extra)}")
    return problems


def to_json_schema(node):
    """An OpenAPI v3.0 CRD schema as a draft-4 JSON Schema (draft 4 has
    OpenAPI 3.0's boolean exclusiveMinimum/Maximum). Objects that name their
    properties get additionalProperties: false, as the API server's strict
    field validation (kubectl's default) refuses unknown fields."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in JUNCTORS:
            out[key] = [to_json_schema(v) for v in value]
        elif key in ("nullable", "format", "default", "example") or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        # Whatever its anyOf says (kube-rs empties it), the API server takes
        # an integer or a string, not a fraction.
        out = {"allOf": [out, {"anyOf": copy.deepcopy(INT_OR_STRING)}]}
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def twin_schema(crd, version):
    versions = {v.get("name"): v for v in crd["spec"].get("versions", [])}
    if version not in versions:
        return None, f"the CRD has no version {version} (it has {sorted(versions)})"
    if not versions[version].get("served"):
        return None, f"the CRD does not serve {version}"
    schema = to_json_schema(versions[version]["schema"]["openAPIV3Schema"])
    props = schema.setdefault("properties", {})
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    props["apiVersion"] = {"enum": [f"{group}/{version}"]}
    props["kind"] = {"enum": [kind]}
    # The API server checks metadata itself; the twin spec adds that the name
    # is a DNS label (it names MQTT clients, files and URLs on the hosts).
    props["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
            "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    jsonschema.Draft4Validator.check_schema(schema)
    return schema, None


def twins(crd_path, files):
    ok = True
    try:
        docs = load_all(crd_path)
    except (OSError, yaml.YAMLError) as e:
        return report(crd_path, [str(e)], "the DigitalTwin CRD")
    crds = [d for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        return report(crd_path, ["expected one CustomResourceDefinition"], "the DigitalTwin CRD")
    crd = crds[0]
    problems = []
    for v in crd["spec"].get("versions", []):
        schema = v.get("schema", {}).get("openAPIV3Schema")
        if schema is None:
            problems.append(f"version {v.get('name')}: no openAPIV3Schema")
        else:
            problems += [f"version {v.get('name')}: {p}" for p in structural_problems(schema)]
    ok &= report(crd_path, problems, "CRD schema is structural (the API server's rules)")
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]

    for path in files:
        problems = []
        try:
            docs = load_all(path)
        except (OSError, yaml.YAMLError) as e:
            docs, problems = [], [str(e)]
        if not docs and not problems:
            problems.append("no document")
        for doc in docs:
            api = doc.get("apiVersion", "") if isinstance(doc, dict) else ""
            if not isinstance(doc, dict) or doc.get("kind") != kind or not api.startswith(group + "/"):
                problems.append(f"not a {kind} of {group}")
                continue
            schema, why = twin_schema(crd, api.split("/", 1)[1])
            if why:
                problems.append(why)
                continue
            name = doc.get("metadata", {}).get("name", "?")
            for e in sorted(jsonschema.Draft4Validator(schema).iter_errors(doc), key=lambda e: list(e.path)):
                where = ".".join(str(p) for p in e.path) or "(document)"
                problems.append(f"{name}: {where}: {e.message}")
        ok &= report(path, problems, f"{kind} valid against the CRD schema")
    return ok


# --- Prometheus ------------------------------------------------------------

# kubernetes_sd_config's fields and roles (Prometheus' configuration docs).
SD_FIELDS = {
    "api_server", "role", "kubeconfig_file", "namespaces", "selectors",
    "attach_metadata", "basic_auth", "authorization", "oauth2", "proxy_url",
    "no_proxy", "proxy_from_environment", "proxy_connect_header",
    "follow_redirects", "enable_http2", "tls_config",
}
SD_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}


def k8s_sd(config_path, out_path):
    problems = []
    with open(config_path) as f:
        config = yaml.safe_load(f)
    base = os.path.dirname(os.path.abspath(config_path))
    # promtool resolves rule files against the file that names them; the
    # copy lives elsewhere.
    config["rule_files"] = [
        p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
        for p in config.get("rule_files", [])
    ]
    found = 0
    for job in config.get("scrape_configs", []):
        sds = job.pop("kubernetes_sd_configs", None)
        if sds is None:
            continue
        for i, sd in enumerate(sds):
            found += 1
            where = f"{job.get('job_name')}.kubernetes_sd_configs[{i}]"
            for key in set(sd) - SD_FIELDS:
                problems.append(f"{where}: unknown field `{key}`")
            if sd.get("role") not in SD_ROLES:
                problems.append(f"{where}: role must be one of {sorted(SD_ROLES)}")
            names = sd.get("namespaces", {})
            if set(names) - {"names", "own_namespace"}:
                problems.append(f"{where}.namespaces: only names and own_namespace")
            for n in names.get("names", []):
                if not re.match(DNS_LABEL, str(n)):
                    problems.append(f"{where}.namespaces: `{n}` is not a namespace name")
            for s in sd.get("selectors", []):
                if set(s) - {"role", "label", "field"} or s.get("role") not in SD_ROLES:
                    problems.append(f"{where}.selectors: {s} needs a role and only label, field")
                elif sd.get("role") == "pod" and s["role"] != "pod":
                    problems.append(f"{where}.selectors: a pod discovery selects pods")
        # A stand-in target, so promtool checks the rest of the job.
        job["static_configs"] = [{"targets": ["wasmtwin-host-0:8080"]}]
    if not found:
        problems.append("no kubernetes_sd_configs")
    with open(out_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return report(config_path, problems, "kubernetes_sd_configs (fields and roles as Prometheus documents them)")


def main(argv):
    if len(argv) >= 3 and argv[1] == "twins":
        return 0 if twins(argv[2], argv[3:]) else 1
    if len(argv) == 4 and argv[1] == "k8s-sd":
        return 0 if k8s_sd(argv[2], argv[3]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
