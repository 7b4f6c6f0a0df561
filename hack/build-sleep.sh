#!/usr/bin/env bash
# Build the sleep holder (sleep/: a static, no_std, libc-free binary) in release mode, for x86_64
# and aarch64, into _output/bin: sleep-amd64 and sleep-arm64 (named by the OCI architecture
# docker/sleep.Dockerfile copies for each platform), and sleep, the host's (x86_64) copy that
# sleep/tests/ and the local cluster use.
# Usage: hack/build-sleep.sh [amd64|arm64]...   (from any directory; default: both)
#   SLEEP_AARCH64_RUSTC, SLEEP_AARCH64_CARGO   the aarch64 toolchain (default /usr/bin/rustc and
#                                              /usr/bin/cargo, where rustc-web and cargo-web put them)
#
# x86_64 is built by the rustup toolchain. rustup here has no aarch64 target, so aarch64 is built
# by Debian's rustc-web (pinned: SLEEP_AARCH64_RUST_VERSION in hack/versions.sh), which builds
# `core` from its own library source (-Zbuild-std; RUSTC_BOOTSTRAP=1 allows that flag on a
# stable compiler), and linked by the rustup toolchain's rust-lld: no aarch64 C toolchain needed.
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

MAX_SIZE=2048
SLEEP_DIR="$ROOT_DIR/sleep"
OUT_DIR="$ROOT_DIR/_output/bin"
AARCH64_RUSTC="${SLEEP_AARCH64_RUSTC:-/usr/bin/rustc}"
AARCH64_CARGO="${SLEEP_AARCH64_CARGO:-/usr/bin/cargo}"

# publish ARCH FILE: install FILE as _output/bin/sleep-ARCH and report its size
publish() {
  local arch="$1" file="$2" size
  mkdir -p "$OUT_DIR"
  install -m 0755 "$file" "$OUT_DIR/sleep-$arch"
  size="$(stat -c %s "$OUT_DIR/sleep-$arch")"
  log "_output/bin/sleep-$arch: $size bytes (target: at most $MAX_SIZE)"
  [ "$size" -le "$MAX_SIZE" ] || log "warning: the $arch sleep binary is over $MAX_SIZE bytes"
}

build_amd64() {
  # An explicit target dir: a CARGO_TARGET_DIR shared with the manager would work too, but this
  # keeps the path of the result known.
  cargo build --release --locked --manifest-path "$SLEEP_DIR/Cargo.toml" --target-dir "$SLEEP_DIR/target"
  publish amd64 "$SLEEP_DIR/target/release/sleep"
  install -m 0755 "$OUT_DIR/sleep-amd64" "$OUT_DIR/sleep"
}

# The rustc-web toolchain, checked: the pinned version, with the library source -Zbuild-std reads.
check_aarch64_toolchain() {
  local fix="run hack/install-deps.sh (Debian packages rustc-web, cargo-web, rust-web-src)"
  [ -x "$AARCH64_RUSTC" ] && [ -x "$AARCH64_CARGO" ] || die "no $AARCH64_RUSTC or $AARCH64_CARGO for the aarch64 sleep: $fix"
  local version
  version="$("$AARCH64_RUSTC" --version)"
  [[ "$version" == "rustc $SLEEP_AARCH64_RUST_VERSION "* ]] ||
    die "the aarch64 sleep is built with rustc $SLEEP_AARCH64_RUST_VERSION (hack/versions.sh), $AARCH64_RUSTC is: $version"
  local src
  src="$("$AARCH64_RUSTC" --print sysroot)/lib/rustlib/src/rust/library"
  [ -f "$src/core/Cargo.toml" ] || die "no Rust library source at $src for -Zbuild-std: $fix"
}

build_arm64() {
  check_aarch64_toolchain
  # rust-lld from the rustup toolchain (the one on PATH), driven as ld.lld (see sleep/build.rs)
  local lld
  lld="$(cd "$ROOT_DIR" && rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
  [ -x "$lld" ] || die "no rust-lld at $lld (it comes with the rustup toolchain)"
  local target=aarch64-unknown-linux-gnu target_dir="$SLEEP_DIR/target/aarch64"
  # A target dir of its own: another compiler, and -Zbuild-std's own core.
  RUSTC="$AARCH64_RUSTC" RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="$lld" \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C linker-flavor=ld.lld -C relocation-model=static -C target-feature=+crt-static" \
    "$AARCH64_CARGO" build --release --locked --manifest-path "$SLEEP_DIR/Cargo.toml" --target-dir "$target_dir" \
    --target "$target" -Zbuild-std=core,compiler_builtins -Zbuild-std-features=compiler-builtins-mem
  local built="$target_dir/$target/release/sleep" trimmed="$target_dir/sleep.trimmed"
  trim_to_segments "$built" "$trimmed"
  publish arm64 "$trimmed"
}

# trim_to_segments IN OUT: OUT is IN without the bytes past its last loaded segment. With
# `-z nosectionheader` (sleep/build.rs) lld writes no section headers but still sizes the file as
# if it did: those bytes are zeros that nothing maps. Anything else there stops the build.
trim_to_segments() {
  local in="$1" out="$2" end=0 headers segment offset filesz
  headers="$(readelf -lW "$in")"
  local -a segments
  lines segments awk '$1 == "LOAD" {print $2, $5}' <<<"$headers"
  for segment in "${segments[@]}"; do
    read -r offset filesz <<<"$segment"
    ((offset + filesz > end)) && end=$((offset + filesz))
  done
  ((end > 0)) || die "$in: no loaded segment (readelf -lW)"
  [ -z "$(tail -c +$((end + 1)) "$in" | tr -d '\0')" ] || die "$in: unexpected data past its last segment (offset $end)"
  head -c "$end" "$in" >"$out"
}

main() {
  local arches=("$@")
  [ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
  local arch
  for arch in "${arches[@]}"; do
    case "$arch" in
      amd64) build_amd64 ;;
      arm64) build_arm64 ;;
      *) die "usage: hack/build-sleep.sh [amd64|arm64]...; unknown architecture: $arch" ;;
    esac
  done
}

main "$@"
