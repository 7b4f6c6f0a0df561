#!/usr/bin/env bash
# Build the sleep holder (sleep/: a static, no_std, libc-free x86_64 binary) in release mode and
# copy it to _output/bin/sleep, where docker/sleep.Dockerfile and sleep/tests/ look for it.
# Usage: hack/build-sleep.sh   (from any directory)
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

MAX_SIZE=2048
target_dir="$ROOT_DIR/sleep/target"
out_dir="$ROOT_DIR/_output/bin"

# An explicit target dir: a CARGO_TARGET_DIR shared with the manager would work too, but this
# keeps the path of the result known.
cargo build --release --locked --manifest-path "$ROOT_DIR/sleep/Cargo.toml" --target-dir "$target_dir"
mkdir -p "$out_dir"
install -m 0755 "$target_dir/release/sleep" "$out_dir/sleep"
size="$(stat -c %s "$out_dir/sleep")"
log "_output/bin/sleep: $size bytes (target: at most $MAX_SIZE)"
if [ "$size" -gt "$MAX_SIZE" ]; then
  log "warning: the sleep binary is over $MAX_SIZE bytes"
fi
