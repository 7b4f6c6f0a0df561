//! Process tests of the built `sleep` binary: the one hack/build-sleep.sh writes to
//! `_output/bin/sleep` (the host's), `_output/bin/sleep-ARCH` with `SLEEP_ARCH=amd64|arm64`, or
//! the one named by `SLEEP_BIN` (of `SLEEP_ARCH`, default the host's).
//!
//! A binary of another architecture than the host's runs under qemu-user (`qemu-aarch64`,
//! `qemu-x86_64`): the same tests, with the emulator as the process that gets the signals. What
//! qemu cannot show is which handlers the program installed (it catches every signal itself), so
//! there readiness is qemu's mirror of our SIGCHLD `SIG_IGN`, the last disposition we set.
//!
//! The PID 1 tests run it as PID 1 of a new PID namespace with `unshare --pid --fork --mount-proc`
//! (root only); they say SKIPPED on stderr and pass when that is not possible here.
//! Time is printed, and only bounded generously: these tests check behaviour, not speed.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

const MAX_SIZE: u64 = 2048;
/// How long anything that should be quick may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

const SIGINT: u32 = 2;
const SIGTERM: u32 = 15;
const SIGCHLD: u32 = 17;

/// An architecture the holder is built for.
struct Arch {
    /// The OCI name, as in `_output/bin/sleep-ARCH` and `SLEEP_ARCH`.
    oci: &'static str,
    /// Rust's name, as in `std::env::consts::ARCH`.
    rust: &'static str,
    /// The ELF `e_machine`.
    machine: u16,
    /// The qemu-user emulator that runs it on another host.
    qemu: &'static str,
}

const ARCHES: [Arch; 2] = [
    Arch { oci: "amd64", rust: "x86_64", machine: 62, qemu: "qemu-x86_64" },
    Arch { oci: "arm64", rust: "aarch64", machine: 183, qemu: "qemu-aarch64" },
];

/// The architecture under test: `SLEEP_ARCH`, by default the host's.
fn arch() -> &'static Arch {
    static ARCH: OnceLock<&'static Arch> = OnceLock::new();
    ARCH.get_or_init(|| {
        let wanted = std::env::var("SLEEP_ARCH").ok();
        let found = ARCHES.iter().find(|a| match &wanted {
            Some(name) => a.oci == name,
            None => a.rust == std::env::consts::ARCH,
        });
        found.unwrap_or_else(|| panic!("SLEEP_ARCH={wanted:?}: expected amd64 or arm64"))
    })
}

/// The emulator the binary under test needs on this host, if any.
fn runner() -> Option<&'static Path> {
    static RUNNER: OnceLock<Option<PathBuf>> = OnceLock::new();
    RUNNER
        .get_or_init(|| {
            let arch = arch();
            if arch.rust == std::env::consts::ARCH {
                return None;
            }
            let found = std::env::var_os("PATH")
                .into_iter()
                .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                .map(|dir| dir.join(arch.qemu))
                .find(|candidate| candidate.is_file());
            let qemu = found.unwrap_or_else(|| {
                panic!(
                    "{} is not on PATH: the {} binary needs it here (hack/install-deps.sh)",
                    arch.qemu, arch.oci
                )
            });
            Some(fs::canonicalize(qemu).unwrap())
        })
        .as_deref()
}

/// The words that run the binary under test: the emulator, if needed, and the binary.
fn argv() -> Vec<&'static Path> {
    runner().into_iter().chain([bin()]).collect()
}

/// A command running `program` (the binary under test or a copy of it), under the emulator if
/// needed.
fn command_for(program: &Path) -> Command {
    match runner() {
        Some(qemu) => {
            let mut command = Command::new(qemu);
            command.arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The binary under test. Without `SLEEP_BIN`, refuses a build older than the sources: testing a
/// stale build would prove nothing.
fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let default = match std::env::var_os("SLEEP_ARCH") {
            Some(_) => format!("../_output/bin/sleep-{}", arch().oci),
            None => "../_output/bin/sleep".to_string(),
        };
        let (path, check_fresh) = match std::env::var_os("SLEEP_BIN") {
            Some(path) => (PathBuf::from(path), false),
            None => (crate_dir.join(default), true),
        };
        let built = fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{}: {e}; run hack/build-sleep.sh or set SLEEP_BIN", path.display()));
        if check_fresh {
            let sources = ["src/main.rs", "src/lib.rs", "build.rs", "link.ld", "Cargo.toml"];
            for source in sources.map(|s| crate_dir.join(s)) {
                let changed = fs::metadata(&source).and_then(|m| m.modified()).unwrap();
                assert!(
                    changed <= built,
                    "{} is newer than {}: run hack/build-sleep.sh (or set SLEEP_BIN)",
                    source.display(),
                    path.display()
                );
            }
        }
        fs::canonicalize(&path).unwrap()
    })
}

fn run(args: &[&str]) -> Output {
    command_for(bin()).args(args).output().unwrap()
}

fn spawn(args: &[&str]) -> Child {
    command_for(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit, at most `limit`; kills it and fails the test when it does not.
fn wait_at_most(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        sleep(Duration::from_millis(2));
    }
}

/// Polls `cond` until it holds; fails the test after [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting until {what}");
        sleep(Duration::from_millis(2));
    }
}

fn send(pid: u32, sig: u32) {
    let status = Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{sig} {pid}: {status}");
}

/// A line of /proc/PID/status, e.g. `SigCgt`; `None` once the process is gone.
fn proc_status(pid: u32, key: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let prefix = format!("{key}:");
    status.lines().find_map(|line| line.strip_prefix(&prefix)).map(|value| value.trim().to_string())
}

/// Whether the signal bit is set in a /proc/PID/status mask such as `SigCgt` (caught) or `SigIgn`.
fn has_signal(pid: u32, key: &str, sig: u32) -> bool {
    proc_status(pid, key)
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// Whether `pid` runs the binary under test with its signal dispositions in place: only then
/// may a test send it a signal (a PID 1 drops signals it does not handle yet). Under an emulator,
/// SIGCHLD ignored says so: the program ignores it right after installing its handlers, and qemu
/// passes an ignored disposition on to the kernel (it catches all the others itself).
fn ready(pid: u32) -> bool {
    let exe = runner().unwrap_or(bin());
    if !fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|path| path == exe) {
        return false;
    }
    if runner().is_some() {
        return has_signal(pid, "SigIgn", SIGCHLD);
    }
    has_signal(pid, "SigCgt", SIGTERM)
        && has_signal(pid, "SigCgt", SIGINT)
        && has_signal(pid, "SigIgn", SIGCHLD)
}

/// Host PIDs of the children of `parent`, from /proc/*/stat (this kernel may lack
/// /proc/PID/task/TID/children).
fn children(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        // pid (comm) state ppid …; comm may hold spaces and parentheses, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn binary_is_small_and_static() {
    let bytes = fs::read(bin()).unwrap();
    eprintln!("{}: {} bytes", bin().display(), bytes.len());
    assert!(bytes.len() as u64 <= MAX_SIZE, "{} bytes, over {MAX_SIZE}", bytes.len());
    // ELF64, little endian, the architecture under test, ET_EXEC (not a PIE, which would need a
    // dynamic loader)
    assert_eq!(&bytes[..6], b"\x7fELF\x02\x01", "not a little-endian ELF64 file");
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(u16_at(16), 2, "e_type is not ET_EXEC");
    assert_eq!(u16_at(18), arch().machine, "e_machine is not {}'s", arch().oci);
    // No PT_INTERP (3) nor PT_DYNAMIC (2): nothing to load but the file itself.
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    let types: Vec<u32> = (0..phnum as usize).map(|i| u32_at(phoff + i * phentsize)).collect();
    assert!(!types.contains(&3), "has PT_INTERP: {types:?}");
    assert!(!types.contains(&2), "has PT_DYNAMIC: {types:?}");
    // PT_GNU_STACK present (non-executable stack).
    assert!(types.contains(&0x6474e551), "no PT_GNU_STACK: {types:?}");
}

#[test]
fn sleeps_for_the_duration() {
    for (arg, want) in [
        ("100ms", Duration::from_millis(100)),
        ("0.15s", Duration::from_millis(150)),
        ("50ms50ms", Duration::from_millis(100)),
        ("100000µs", Duration::from_millis(100)),
        ("300us", Duration::from_micros(300)),
        ("10ns", Duration::from_nanos(10)),
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
    ] {
        let start = Instant::now();
        let out = run(&[arg]);
        let took = start.elapsed();
        eprintln!("sleep {arg}: {took:?}, {}", out.status);
        assert!(out.status.success(), "sleep {arg}: {}", out.status);
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "sleep {arg}: {out:?}");
        assert!(took >= want, "sleep {arg} took only {took:?}");
        assert!(took < want + PATIENCE, "sleep {arg} took {took:?}");
    }
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        &["1"][..],
        &["10"],
        &[""],
        &["-1s"],
        &["1d"],
        &["1h30"],
        &["forever"],
        &["inf"],
        &["--help"],
        &["1h", "30m"],
        &["infinity", "1s"],
        &["--copy-to"],
        &["--copy-to", ""],
        &["--copy-to", "/tmp/a", "/tmp/b"],
        &["9223372036854775808ns"],
        &["1", "2", "3", "4", "5"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "sleep {args:?}: {}", out.status);
        assert!(stderr.starts_with("usage: sleep "), "sleep {args:?}: {stderr:?}");
        assert!(stderr.contains("--copy-to PATH"), "sleep {args:?}: {stderr:?}");
        assert!(out.stdout.is_empty(), "sleep {args:?}: wrote to stdout");
    }
}

/// A fresh directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kwarm-sleep-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn copy_to_writes_an_identical_runnable_copy_with_mode_0555() {
    let dir = temp_dir("copy");
    let dest = dir.join("sleep");
    let dest_str = dest.to_str().unwrap();
    let original = fs::read(bin()).unwrap();

    // Twice: the second time over the read-only first copy. The last time with a umask that
    // would take the execute bits away from a plain open(2).
    for umask in ["022", "022", "077"] {
        let out = Command::new("sh")
            .args(["-c", &format!("umask {umask}; exec \"$@\""), "sh"])
            .args(argv())
            .args(["--copy-to", dest_str])
            .output()
            .unwrap();
        assert!(out.status.success(), "--copy-to (umask {umask}): {out:?}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
        assert_eq!(fs::read(&dest).unwrap(), original, "the copy differs");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o555, "mode {mode:o} (umask {umask})");
    }
    let out = command_for(&dest).arg("10ms").output().unwrap();
    assert!(out.status.success(), "the copy does not run: {out:?}");
    let out = command_for(&dest).arg("bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "the copy: {out:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn copy_to_reports_failure() {
    let dir = temp_dir("copy-fail");
    let missing = dir.join("no/such/dir/sleep");
    let missing = missing.to_str().unwrap();
    for (dest, errno) in [(missing, "2"), (dir.to_str().unwrap(), "17")] {
        let out = run(&["--copy-to", dest]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("--copy-to {dest}: {}, {stderr:?}", out.status);
        assert_eq!(out.status.code(), Some(1), "--copy-to {dest}: {out:?}");
        assert_eq!(stderr, format!("sleep: cannot copy to {dest}: errno {errno}\n"));
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_argument_and_infinity_sleep_until_a_signal() {
    for (args, sig) in [(&[][..], SIGTERM), (&["infinity"], SIGINT), (&["720h"], SIGTERM)] {
        let mut child = spawn(args);
        let pid = child.id();
        wait_until("the handlers are installed", || ready(pid));
        sleep(Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "sleep {args:?} exited early");
        let start = Instant::now();
        send(pid, sig);
        let status = wait_at_most(&mut child, PATIENCE, "after the signal");
        eprintln!("sleep {args:?}: {status} {:?} after signal {sig}", start.elapsed());
        assert!(status.success(), "sleep {args:?}, signal {sig}: {status}");
    }
}

#[test]
fn other_signals_keep_it_sleeping() {
    // SIGCHLD is ignored; SIGSTOP/SIGCONT interrupt the sleep, which must go on for its full time.
    let start = Instant::now();
    let mut child = spawn(&["300ms"]);
    let pid = child.id();
    wait_until("the handlers are installed", || ready(pid));
    send(pid, SIGCHLD);
    send(pid, 19); // SIGSTOP
    send(pid, 18); // SIGCONT
    let status = wait_at_most(&mut child, PATIENCE, "sleep 300ms");
    let took = start.elapsed();
    eprintln!("sleep 300ms with SIGCHLD, SIGSTOP, SIGCONT: {status} after {took:?}");
    assert!(status.success(), "{status}");
    assert!(took >= Duration::from_millis(300), "woke early: {took:?}");
}

/// `unshare --pid --fork --mount-proc PROGRAM ARGS… [EMULATOR] BIN`: the program becomes PID 1 of
/// a new PID namespace and is expected to exec the binary under test (its last arguments, the
/// words of [`argv`]). Killed on drop (a failed test leaves nothing behind): SIGKILL to PID 1 ends
/// the whole namespace.
struct Namespace {
    unshare: Child,
}

impl Namespace {
    /// `None` (and SKIPPED on stderr) where PID namespaces cannot be made: not root, no unshare.
    fn start(program: &[&str], stdout: Stdio) -> Option<Namespace> {
        let probe = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: cannot run `unshare --pid --fork --mount-proc` here (needs root)");
            return None;
        }
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .args(program)
            .args(argv())
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .unwrap();
        Some(Namespace { unshare })
    }

    /// The host PID of the namespace's PID 1 (unshare's only child), once it runs our binary
    /// with its signal dispositions in place.
    fn pid1(&self) -> u32 {
        let mut pid1 = 0;
        wait_until("PID 1 runs sleep with its handlers installed", || {
            pid1 = children(self.unshare.id()).first().copied().unwrap_or(0);
            pid1 != 0 && ready(pid1)
        });
        let nspid = proc_status(pid1, "NSpid").unwrap_or_default();
        assert!(nspid.ends_with("\t1"), "not PID 1 of its namespace: NSpid {nspid:?}");
        pid1
    }

    /// Sends `sig` to PID 1 and returns how unshare (which passes on PID 1's status) ended.
    fn signal(&mut self, pid1: u32, sig: u32) -> ExitStatus {
        let start = Instant::now();
        send(pid1, sig);
        let status = wait_at_most(&mut self.unshare, PATIENCE, "PID 1 after the signal");
        eprintln!("PID 1: {status} {:?} after signal {sig}", start.elapsed());
        status
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if self.unshare.try_wait().is_ok_and(|status| status.is_none()) {
            for pid in children(self.unshare.id()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}

fn exits_0_on_signal_as_pid1(sig: u32) {
    let Some(mut ns) = Namespace::start(&["sh", "-c", "exec \"$@\" infinity", "sh"], Stdio::null()) else {
        return;
    };
    let pid1 = ns.pid1();
    sleep(Duration::from_millis(100));
    assert!(ns.unshare.try_wait().unwrap().is_none(), "PID 1 exited early");
    let status = ns.signal(pid1, sig);
    assert!(status.success(), "PID 1, signal {sig}: {status}");
}

#[test]
fn exits_0_on_sigterm_as_pid1() {
    exits_0_on_signal_as_pid1(SIGTERM);
}

#[test]
fn exits_0_on_sigint_as_pid1() {
    exits_0_on_signal_as_pid1(SIGINT);
}

/// A process that loses its parent is handed to PID 1; when it exits, PID 1 must reap it.
#[test]
fn reaps_orphans_as_pid1() {
    // The subshell starts a second sleep and exits, so that one is reparented to PID 1, which
    // then becomes our sleep.
    let script = "(\"$@\" 1h &); exec \"$@\"";
    let Some(mut ns) = Namespace::start(&["sh", "-c", script, "sh"], Stdio::null()) else {
        return;
    };
    let pid1 = ns.pid1();
    let orphans = children(pid1);
    assert_eq!(orphans.len(), 1, "children of PID 1: {orphans:?}");
    let orphan = orphans[0];
    send(orphan, 9); // SIGKILL: it exits, and would stay a zombie if nobody reaped it
    wait_until("the orphan is reaped", || {
        proc_status(orphan, "State").is_none() // gone; a zombie would show "Z (zombie)"
    });
    let status = ns.signal(pid1, SIGTERM);
    assert!(status.success(), "{status}");
}

/// A zombie that PID 1 already had when it exec'd sleep is reaped too. (A shell cannot set this
/// up: dash reaps its background children by itself. Perl does not.)
#[test]
fn reaps_earlier_zombies_as_pid1() {
    if Command::new("perl").arg("-v").output().is_err() {
        eprintln!("SKIPPED: no perl to make a zombie with");
        return;
    }
    // Fork a child that exits at once, wait until it is a zombie, print its PID, exec sleep.
    let script = r#"
        my @bin = @ARGV;
        my $pid = fork() // die "fork: $!";
        if ($pid == 0) { exec(@bin, "0") or die "exec: $!"; }
        my $state = "";
        for (1 .. 100000) {
            open(my $f, "<", "/proc/$pid/stat") or die "/proc/$pid/stat: $!";
            $state = (split(/ /, <$f>))[2];
            last if $state eq "Z";
        }
        $| = 1;
        print "$pid $state\n";
        exec(@bin) or die "exec: $!";
    "#;
    let Some(mut ns) = Namespace::start(&["perl", "-e", script], Stdio::piped()) else {
        return;
    };
    let mut line = String::new();
    let stdout = ns.unshare.stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.ends_with(" Z\n"), "the child did not become a zombie: {line:?}");
    let pid1 = ns.pid1();
    wait_until("the earlier zombie is reaped", || children(pid1).is_empty());
    let status = ns.signal(pid1, SIGTERM);
    assert!(status.success(), "{status}");
}
