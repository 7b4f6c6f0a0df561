//! Link the `sleep` binary statically, without libc or C start files, into as few bytes as the
//! linker allows (see `link.ld`). Only the binary gets these arguments; the library and the tests
//! link normally.
fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let target = (var("CARGO_CFG_TARGET_ARCH"), var("CARGO_CFG_TARGET_OS"));
    assert!(
        target == ("x86_64".into(), "linux".into()),
        "the sleep holder uses x86_64 Linux system calls; cannot build it for {target:?}"
    );
    let dir = var("CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--gc-sections,-n,--build-id=none,--no-eh-frame-hdr",
        &format!("-Wl,-T,{dir}/link.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
