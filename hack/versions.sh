# Versions of everything hack/ builds from the Go module proxy. Bumping one rebuilds only it.
# shellcheck shell=bash
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
# Bump when hack/build-bins.sh builds helm differently: the cached binary is helm-$HELM_VERSION-b$HELM_BUILD.
HELM_BUILD="${HELM_BUILD:-2}"

# The Rust that builds the aarch64 sleep holder (hack/build-sleep.sh): Debian's rustc-web,
# cargo-web and rust-web-src (hack/install-deps.sh), whose library source lets -Zbuild-std build
# `core` for aarch64, which the rustup toolchain here has no target for. Only that build uses it.
SLEEP_AARCH64_RUST_VERSION="${SLEEP_AARCH64_RUST_VERSION:-1.96.0}"

# The Python linters of `make lint` (hack/lint-manifests.sh), from PyPI into a venv under the cache
# that hack/install-deps.sh makes (its name carries these versions). kubernetes-validate carries
# Kubernetes' OpenAPI schemas: its release matching KUBE_VERSION's minor validates for it.
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.34.1}"
YAMLLINT_VERSION="${YAMLLINT_VERSION:-1.38.0}"
