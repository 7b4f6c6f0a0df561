//! Link the `sleep` binary statically, without libc or C start files, into as few bytes as the
//! linker allows (see `link.ld`). Only the binary gets these arguments; the library and the tests
//! link normally.
//!
//! The arguments are spelled for the linker rustc calls: `cc` (the default; `-Wl,` passes them
//! on), or `ld.lld` itself when the build says `-C linker-flavor=ld.lld` (hack/build-sleep.sh
//! does for aarch64, linked by rust-lld on an x86_64 host that has no aarch64 C toolchain).
fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let (arch, os) = (var("CARGO_CFG_TARGET_ARCH"), var("CARGO_CFG_TARGET_OS"));
    assert!(
        matches!(arch.as_str(), "x86_64" | "aarch64") && os == "linux",
        "the sleep holder uses x86_64 and aarch64 Linux system calls; cannot build it for {arch} {os}"
    );
    let lld = var("CARGO_ENCODED_RUSTFLAGS").split('\x1f').any(|flag| flag.ends_with("linker-flavor=ld.lld"));
    let dir = var("CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link.ld");
    let script = format!("{dir}/link.ld");
    let args: &[&str] = if lld {
        &[
            "-static",
            "--no-pie",
            "--gc-sections",
            "-n",
            "--build-id=none",
            "--no-eh-frame-hdr",
            "-z",
            "nosectionheader",
            "-T",
            &script,
        ]
    } else {
        &[
            "-nostartfiles",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--gc-sections,-n,--build-id=none,--no-eh-frame-hdr",
            &format!("-Wl,-T,{script}"),
        ]
    };
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
