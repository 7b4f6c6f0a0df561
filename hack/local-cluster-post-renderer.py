#!/usr/bin/env python3
"""A Helm post-renderer for charts that were not written for kwarm's local cluster (the peers').

The local cluster has no kube-proxy, so a pod cannot reach the API server through the `kubernetes`
Service: every Deployment is moved onto the host network with KUBERNETES_SERVICE_HOST/PORT pointing
at the API server on 127.0.0.1:6443 and pinned to the real node, as kwarm's own
deploy/helm/ci/local-cluster-values.yaml does with values. Nothing else is changed.

    helm install NAME CHART ... --post-renderer hack/local-cluster-post-renderer.py
"""
import sys

import yaml

API_ENV = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
           {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}]


def adapt(doc):
    if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
        return doc
    pod = doc.setdefault("spec", {}).setdefault("template", {}).setdefault("spec", {})
    pod["hostNetwork"] = True
    pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    pod.setdefault("nodeSelector", {})["kubernetes.io/hostname"] = "127.0.0.1"
    for container in pod.get("containers", []):
        env = [e for e in container.get("env", []) if e.get("name") not in {e["name"] for e in API_ENV}]
        container["env"] = env + API_ENV
    return doc


def main():
    docs = [adapt(d) for d in yaml.safe_load_all(sys.stdin) if d is not None]
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
