"""Offline checks of the Kubernetes manifests in deploy/k8s (run by scripts/k8s-validate).

    validate.py --version 1.37.0 [--version 1.30.0] [--rendered DIR=FILE ...] MANIFEST ...

1. Every YAML document parses, with duplicate keys refused (PyYAML would silently keep
   the last one; the API server's strict field validation refuses them).
2. Every Kubernetes object validates against the JSON schemas that kubernetes-validate
   ships for each --version, in strict mode (unknown fields are errors). A kind or
   apiVersion without a schema is an error too (the kubernetes-validate command line only
   warns about it and exits 0).
3. Kustomize files (kustomization.yaml, Component) have no Kubernetes schema: they are
   checked for the files and directories they list; rendering them is left to
   `kubectl kustomize` in scripts/k8s-validate, whose output comes back here as
   --rendered: it is validated like the rest, and every object of the manifests must be
   in it except the Secret template.
4. Project rules the schemas cannot state (deploy/k8s/README.md): grace period >
   preStop sleep + SHUTDOWN_TIMEOUT, RUN_MIGRATIONS=false on the pods of Deployments, the
   restricted security context, requests and limits on every container; Service and PDB
   selectors that match a workload's pods; the HPA's target exists and leaves
   spec.replicas to it, minReplicas >= 2.

Exit status 1 on any problem, each one printed.
"""

import argparse
import os
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

KUSTOMIZE_API = "kustomize.config.k8s.io/"
# Objects that are deliberately not part of the kustomization.
NOT_RENDERED = {("Secret", "storefront-secrets")}
WORKLOADS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(path, problems):
    """The documents of `path` as (index, object) pairs; None documents skipped."""
    try:
        with open(path) as f:
            docs = list(yaml.load_all(f, Loader=StrictLoader))
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"{path}: {e}")
        return []
    out = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            problems.append(f"{path} (document {i + 1}): not an object with apiVersion and kind")
            continue
        out.append((i, doc))
    return out


def name_of(doc):
    return (doc.get("metadata") or {}).get("name", "?")


def check_kustomization(path, doc, problems):
    base = os.path.dirname(path)
    listed = list(doc.get("resources") or []) + list(doc.get("components") or [])
    for entry in listed:
        target = os.path.join(base, entry)
        if not os.path.exists(target):
            problems.append(f"{path}: lists {entry!r}, which does not exist")
    print(f"ok    {path}: {doc['kind']} (no Kubernetes schema; " + (f"the {len(listed)} entries it lists exist)" if listed else "lists no files)"))


def every_error(doc, version):
    """All schema errors of `doc`, not only the first (kubernetes_validate.validate stops
    at the first); the schema files are located as kubernetes_validate 1.37 does."""
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    full = [v for v in kv.all_versions() if kv.major_minor(v) == kv.major_minor(version)][-1]
    folder = f"kubernetes-json-schema/v{full}-local-strict"
    schema = kv.schema_contents(f"{folder}/{doc['kind'].lower()}-{api}.json", version)
    definitions = kv.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))


def check_schema(path, doc, versions, problems):
    label = f"{path}: {doc['kind']}/{name_of(doc)}"
    before = len(problems)
    for version in versions:
        try:
            used = kv.validate(doc, version, strict=True)
        except kv.ValidationError:
            for e in every_error(doc, version):
                where = "/".join(str(p) for p in e.path) or "(top level)"
                problems.append(f"{label} against {version}: at {where}: {e.message}")
            continue
        except (kv.SchemaNotFoundError, kv.VersionNotSupportedError, kv.InvalidSchemaError) as e:
            problems.append(f"{label} against {version}: {e.message}")
            continue
        if used != kv.major_minor(version):
            problems.append(f"{label}: asked for {version}, the schemas used were {used}")
    if len(problems) == before:
        print(f"ok    {label} (strict, Kubernetes {', '.join(versions)})")


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", str(text).strip())
    if not m:
        return None
    n = int(m.group(1))
    return n * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def pod_spec(doc):
    spec = doc.get("spec") or {}
    return (spec.get("template") or {}).get("spec")


def check_rules(objects, problems):
    """Rules that the schemas cannot state, over every object of the manifests."""
    config = {}
    for path, doc in objects:
        if doc["kind"] == "ConfigMap" and name_of(doc) == "storefront-config":
            config = doc.get("data") or {}
    shutdown = duration_seconds(config.get("SHUTDOWN_TIMEOUT", "30s"))
    checked = 0
    for path, doc in objects:
        if doc["kind"] not in WORKLOADS:
            continue
        pod = pod_spec(doc)
        label = f"{path}: {doc['kind']}/{name_of(doc)}"
        if not pod:
            problems.append(f"{label}: no pod template")
            continue
        checked += 1
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{label}: securityContext.runAsNonRoot must be true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{label}: securityContext.seccompProfile.type must be RuntimeDefault")
        for c in pod.get("containers") or []:
            cl = f"{label} container {c.get('name')}"
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cl}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cl}: readOnlyRootFilesystem must be true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{cl}: capabilities.drop must include ALL")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        problems.append(f"{cl}: resources.{kind}.{r} missing")
            if doc["kind"] == "Deployment":
                env = {e.get("name"): e.get("value") for e in c.get("env") or []}
                if env.get("RUN_MIGRATIONS", config.get("RUN_MIGRATIONS")) != "false":
                    problems.append(f"{cl}: RUN_MIGRATIONS must be \"false\" (the migration Job migrates)")
                grace = pod.get("terminationGracePeriodSeconds", 30)
                pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command") or []
                sleep = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" and pre[1].isdigit() else 0
                if shutdown is None:
                    problems.append(f"{label}: SHUTDOWN_TIMEOUT {config.get('SHUTDOWN_TIMEOUT')!r} not understood")
                elif not grace > sleep + shutdown:
                    problems.append(
                        f"{cl}: terminationGracePeriodSeconds ({grace}) must exceed preStop sleep ({sleep}) "
                        f"+ SHUTDOWN_TIMEOUT ({shutdown:g})"
                    )
    # Selectors and references: a typo there is valid YAML that silently does nothing (a
    # Service without endpoints, a PDB that protects no pod, an HPA scaling nothing).
    workloads = {(d["kind"], name_of(d)): d for _, d in objects if d["kind"] in WORKLOADS}
    pod_labels = [((pod_spec_meta(d).get("labels")) or {}) for d in workloads.values()]
    for path, doc in objects:
        label = f"{path}: {doc['kind']}/{name_of(doc)}"
        spec = doc.get("spec") or {}
        if doc["kind"] == "Service":
            selector = spec.get("selector") or {}
        elif doc["kind"] == "PodDisruptionBudget":
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
        elif doc["kind"] == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            target = workloads.get((ref.get("kind"), ref.get("name")))
            if target is None:
                problems.append(f"{label}: scales {ref.get('kind')}/{ref.get('name')}, which is not in deploy/k8s")
            elif "replicas" in (target.get("spec") or {}):
                problems.append(
                    f"{label}: its target sets spec.replicas, which every apply would reset (leave it to the HPA)"
                )
            if (spec.get("minReplicas") or 1) < 2:
                problems.append(f"{label}: minReplicas must be at least 2")
            continue
        else:
            continue
        if not selector or not any(selector.items() <= labels.items() for labels in pod_labels):
            problems.append(f"{label}: selector {selector} matches the pods of no workload")
    return checked


def pod_spec_meta(doc):
    return ((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", action="append", required=True, help="Kubernetes version, e.g. 1.37.0")
    ap.add_argument("--rendered", action="append", default=[], metavar="DIR=FILE",
                    help="FILE holds the output of `kubectl kustomize DIR`")
    ap.add_argument("manifests", nargs="+")
    args = ap.parse_args()

    problems = []
    objects = []
    for path in args.manifests:
        for _, doc in load(path, problems):
            if doc["apiVersion"].startswith(KUSTOMIZE_API):
                check_kustomization(path, doc, problems)
            else:
                check_schema(path, doc, args.version, problems)
                objects.append((path, doc))

    rendered = set()
    for entry in args.rendered:
        directory, _, path = entry.partition("=")
        for _, doc in load(path, problems):
            check_schema(f"kustomize {directory}", doc, args.version, problems)
            rendered.add((doc["kind"], name_of(doc)))
    if args.rendered:
        missing = {(d["kind"], name_of(d)) for _, d in objects} - rendered - NOT_RENDERED
        for kind, name in sorted(missing):
            problems.append(f"{kind}/{name} is in deploy/k8s but in no kustomization")

    if not problems:
        checked = check_rules(objects, problems)
        if not problems:
            print(f"ok    project rules over {checked} workloads")

    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"FAIL  {p}", file=sys.stderr)
        return 1
    print(f"all {len(objects)} objects valid" + (f", {len(rendered)} rendered" if args.rendered else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
