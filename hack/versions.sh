# Versions of everything hack/ builds from the Go module proxy. Bumping one rebuilds only it.
# shellcheck shell=bash
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
