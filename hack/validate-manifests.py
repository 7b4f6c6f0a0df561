#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests against Kubernetes' OpenAPI schemas, offline.

Usage: validate-manifests.py --kubernetes-version 1.34 [--skip-kind KIND]... FILE...

Each FILE holds YAML or JSON documents (a v1 List is opened into its items). Every object is checked
with kubernetes-validate's strict schemas (an unknown field is an error). A kind named by
--skip-kind (custom resources: kubernetes-validate has no schema for them) is skipped and named in
the output; any other object without a schema (a wrong apiVersion or kind) is an error. Prints one
line per problem and a summary; exit 1 when anything failed. Runs in the linters' venv
(hack/install-deps.sh), which has kubernetes-validate and PyYAML.
"""

import argparse
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError


def objects(path):
    with open(path, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            if doc.get("kind") == "List" and "items" in doc:
                yield from doc["items"] or []
            else:
                yield doc


def name_of(obj):
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name', '?')}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--skip-kind", action="append", default=[])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    checked, failed, skipped = 0, 0, {}
    for path in args.files:
        for obj in objects(path):
            what = f"{path}: {name_of(obj)}"
            if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
                print(f"ERROR {what}: not a Kubernetes object (no apiVersion or kind)")
                failed += 1
                continue
            if obj["kind"] in args.skip_kind:
                skipped.setdefault(obj["kind"], []).append(what)
                continue
            checked += 1
            try:
                kubernetes_validate.validate(obj, args.kubernetes_version, strict=True)
            except ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(top)"
                print(f"ERROR {what}: {where}: {e.message}")
                failed += 1
            except SchemaNotFoundError as e:
                print(f"ERROR {what}: {e.message} (a custom resource? name its kind with --skip-kind)")
                failed += 1
    for kind, where in sorted(skipped.items()):
        print(f"skipped {len(where)} {kind} (a custom resource: no schema in kubernetes-validate)")
    print(f"manifests: {checked} objects checked against Kubernetes {args.kubernetes_version}, "
          f"{failed} failed, {sum(map(len, skipped.values()))} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
