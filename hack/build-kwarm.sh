#!/usr/bin/env bash
# Build the manager as a static binary (glibc, crt-static) into _output/bin/kwarm, for the
# FROM-scratch image in docker/kwarm.Dockerfile.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# A separate target dir keeps the static build from invalidating the normal one.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
  --target x86_64-unknown-linux-gnu --target-dir target/static --bin kwarm
mkdir -p _output/bin
# copy then rename: the old binary may be running (a cp over it fails with "Text file busy")
cp target/static/x86_64-unknown-linux-gnu/release/kwarm _output/bin/.kwarm.new
mv -f _output/bin/.kwarm.new _output/bin/kwarm
echo "_output/bin/kwarm: $(stat -c %s _output/bin/kwarm) bytes"
# The image is FROM scratch: it carries the build machine's CA bundle (Debian's ca-certificates),
# so digest checks can reach registries over HTTPS.
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || { echo "error: $ca is missing (apt-get install ca-certificates; hack/install-deps.sh does)" >&2; exit 1; }
cp "$ca" _output/ca-certificates.crt
