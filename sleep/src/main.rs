//! kwarm's image holder: `sleep [DURATION|infinity]` and `sleep --copy-to PATH`.
//!
//! A static x86_64 or aarch64 Linux executable without libc, a couple of KiB in size. It keeps a
//! pod's container running (so the kubelet does not collect its image), exits 0 at once on SIGTERM
//! or SIGINT even as PID 1, and reaps orphans as PID 1, so it also serves as a pod sandbox "pause".
//! The two architectures share everything but the `sys` module: system call numbers, the
//! instruction that makes the call, the entry point and the signal trampoline.
//! Argument parsing is pure and lives in the library (`src/lib.rs`), tested on the host.
#![no_std]
#![no_main]

use kwarm_sleep::{Action, parse_args};
use sys::{exit, syscall3, syscall4};

const USAGE: &[u8] = b"usage: sleep [DURATION|infinity]\n       sleep --copy-to PATH\n\
DURATION: Go syntax, e.g. 720h, 1h30m, 1.5s, 100ms, 300us, 10ns\n";

// Linux constants shared by x86_64 and aarch64 (both use the generic values).
const SIGINT: usize = 2;
const SIGTERM: usize = 15;
const SIGCHLD: usize = 17;
const SIG_IGN: usize = 1;
const SA_RESTORER: usize = 0x0400_0000;
const EINTR: isize = 4;
const WNOHANG: usize = 1;
const O_RDONLY: usize = 0;
const O_WRONLY: usize = 0o1;
const O_CREAT: usize = 0o100;
const O_EXCL: usize = 0o200;
const O_CLOEXEC: usize = 0o2000000;
const MODE: usize = 0o555;

// All the unsafe code of the program is below: the system call instruction (in `sys`: the
// syscall functions, `exit` and `restore`), the entry point, and reading argv.

/// x86_64: system call numbers, the `syscall` instruction, the entry point and the signal
/// trampoline.
#[cfg(target_arch = "x86_64")]
mod sys {
    use core::arch::{asm, naked_asm};

    pub const SYS_WRITE: usize = 1;
    pub const SYS_CLOSE: usize = 3;
    pub const SYS_RT_SIGACTION: usize = 13;
    pub const SYS_NANOSLEEP: usize = 35;
    pub const SYS_SENDFILE: usize = 40;
    pub const SYS_WAIT4: usize = 61;
    pub const SYS_FCHMOD: usize = 91;
    const SYS_OPEN: usize = 2;
    const SYS_RT_SIGRETURN: usize = 15;
    const SYS_PAUSE: usize = 34;
    const SYS_UNLINK: usize = 87;
    const SYS_EXIT_GROUP: usize = 231;

    /// `syscall` with four arguments. It returns the raw result, a negated errno on failure.
    ///
    /// # Safety
    /// The caller must pass arguments that are valid for system call `n`: pointers must point to
    /// memory of the size and mutability that the kernel reads or writes for that call.
    #[inline]
    pub unsafe fn syscall4(n: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
        let ret;
        // SAFETY: the caller upholds the system call's contract; `syscall` clobbers only rcx and
        // r11 besides rax, and does not touch the user stack.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a1,
                in("rsi") a2,
                in("rdx") a3,
                in("r10") a4,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// [`syscall4`] with three arguments.
    ///
    /// # Safety
    /// As for [`syscall4`].
    #[inline]
    pub unsafe fn syscall3(n: usize, a1: usize, a2: usize, a3: usize) -> isize {
        let ret;
        // SAFETY: as in `syscall4`.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a1,
                in("rsi") a2,
                in("rdx") a3,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// open(2) of the C string at `path`.
    ///
    /// # Safety
    /// `path` must point to a NUL-terminated string.
    #[inline]
    pub unsafe fn open(path: usize, flags: usize, mode: usize) -> isize {
        // SAFETY: the caller passes a C string.
        unsafe { syscall3(SYS_OPEN, path, flags, mode) }
    }

    /// unlink(2) of the C string at `path`.
    ///
    /// # Safety
    /// `path` must point to a NUL-terminated string.
    #[inline]
    pub unsafe fn unlink(path: usize) -> isize {
        // SAFETY: the caller passes a C string.
        unsafe { syscall3(SYS_UNLINK, path, 0, 0) }
    }

    /// Waits for a signal that is handled.
    #[inline]
    pub fn pause() {
        // SAFETY: pause takes no arguments.
        unsafe { syscall3(SYS_PAUSE, 0, 0, 0) };
    }

    /// Ends the process (all threads) with this exit code.
    pub fn exit(code: usize) -> ! {
        // SAFETY: exit_group takes a number and does not return.
        unsafe { asm!("syscall", in("rax") SYS_EXIT_GROUP, in("rdi") code, options(noreturn, nostack)) }
    }

    /// Entry point: the kernel jumps here with argc, argv[], NULL, envp[]… on the stack, which
    /// is 16-byte aligned; `call` pushes a return address, so `start` sees the usual ABI
    /// alignment.
    #[unsafe(naked)]
    #[unsafe(no_mangle)]
    extern "C" fn _start() -> ! {
        naked_asm!("mov rdi, rsp", "call {start}", start = sym super::start)
    }

    /// Signal trampoline for SA_RESTORER: a handler that returns comes here, and rt_sigreturn
    /// resumes the interrupted code. (`on_terminate` never returns, but the kernel demands one.)
    #[unsafe(naked)]
    pub extern "C" fn restore() -> ! {
        naked_asm!("mov eax, {n}", "syscall", n = const SYS_RT_SIGRETURN)
    }
}

/// aarch64: system call numbers (the generic table: no open, unlink or pause, their `*at` and
/// `ppoll` forms instead), the `svc` instruction, the entry point and the signal trampoline.
#[cfg(target_arch = "aarch64")]
mod sys {
    use core::arch::{asm, naked_asm};

    pub const SYS_WRITE: usize = 64;
    pub const SYS_CLOSE: usize = 57;
    pub const SYS_RT_SIGACTION: usize = 134;
    pub const SYS_NANOSLEEP: usize = 101;
    pub const SYS_SENDFILE: usize = 71;
    pub const SYS_WAIT4: usize = 260;
    pub const SYS_FCHMOD: usize = 52;
    const SYS_UNLINKAT: usize = 35;
    const SYS_OPENAT: usize = 56;
    const SYS_PPOLL: usize = 73;
    const SYS_RT_SIGRETURN: usize = 139;
    const SYS_EXIT_GROUP: usize = 94;
    /// The `dirfd` of the `*at` calls that means "relative to the working directory".
    const AT_FDCWD: usize = -100isize as usize;

    /// `svc #0` with four arguments. It returns the raw result, a negated errno on failure.
    ///
    /// # Safety
    /// The caller must pass arguments that are valid for system call `n`: pointers must point to
    /// memory of the size and mutability that the kernel reads or writes for that call.
    #[inline]
    pub unsafe fn syscall4(n: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
        let ret;
        // SAFETY: the caller upholds the system call's contract; the kernel preserves every
        // register but x0 (the result) and does not touch the user stack.
        unsafe {
            asm!(
                "svc #0",
                in("x8") n,
                inlateout("x0") a1 as isize => ret,
                in("x1") a2,
                in("x2") a3,
                in("x3") a4,
                options(nostack),
            );
        }
        ret
    }

    /// [`syscall4`] with three arguments.
    ///
    /// # Safety
    /// As for [`syscall4`].
    #[inline]
    pub unsafe fn syscall3(n: usize, a1: usize, a2: usize, a3: usize) -> isize {
        let ret;
        // SAFETY: as in `syscall4`.
        unsafe {
            asm!(
                "svc #0",
                in("x8") n,
                inlateout("x0") a1 as isize => ret,
                in("x1") a2,
                in("x2") a3,
                options(nostack),
            );
        }
        ret
    }

    /// open(2) of the C string at `path`, as openat(2) from the working directory.
    ///
    /// # Safety
    /// `path` must point to a NUL-terminated string.
    #[inline]
    pub unsafe fn open(path: usize, flags: usize, mode: usize) -> isize {
        // SAFETY: the caller passes a C string.
        unsafe { syscall4(SYS_OPENAT, AT_FDCWD, path, flags, mode) }
    }

    /// unlink(2) of the C string at `path`, as unlinkat(2) from the working directory.
    ///
    /// # Safety
    /// `path` must point to a NUL-terminated string.
    #[inline]
    pub unsafe fn unlink(path: usize) -> isize {
        // SAFETY: the caller passes a C string.
        unsafe { syscall3(SYS_UNLINKAT, AT_FDCWD, path, 0) }
    }

    /// Waits for a signal that is handled: ppoll(2) on no descriptors, without a timeout or a
    /// signal mask, is pause(2).
    #[inline]
    pub fn pause() {
        // SAFETY: no pointers (NULL fds, timeout and mask).
        unsafe { syscall4(SYS_PPOLL, 0, 0, 0, 0) };
    }

    /// Ends the process (all threads) with this exit code.
    pub fn exit(code: usize) -> ! {
        // SAFETY: exit_group takes a number and does not return.
        unsafe { asm!("svc #0", in("x8") SYS_EXIT_GROUP, in("x0") code, options(noreturn, nostack)) }
    }

    /// Entry point: the kernel jumps here with sp pointing at argc, argv[], NULL, envp[]…, 16-byte
    /// aligned as the ABI wants; `bl` pushes nothing.
    #[unsafe(naked)]
    #[unsafe(no_mangle)]
    extern "C" fn _start() -> ! {
        naked_asm!("mov x0, sp", "bl {start}", start = sym super::start)
    }

    /// Signal trampoline for SA_RESTORER: a handler that returns comes here, and rt_sigreturn
    /// resumes the interrupted code. (`on_terminate` never returns, but keeping the trampoline
    /// ours makes no assumption about a vDSO.)
    #[unsafe(naked)]
    pub extern "C" fn restore() -> ! {
        naked_asm!("mov x8, #{n}", "svc #0", n = const SYS_RT_SIGRETURN)
    }
}

fn write_err(msg: &[u8]) {
    // SAFETY: pointer and length of a live slice.
    unsafe { syscall3(sys::SYS_WRITE, 2, msg.as_ptr() as usize, msg.len()) };
}

/// Reads argc and argv from the initial stack, then does what the arguments ask.
extern "C" fn start(sp: *const usize) -> ! {
    // SAFETY: the kernel puts argc at the top of the initial stack, followed by argc pointers to
    // NUL-terminated strings that stay valid for the life of the process.
    let (argc, argv) = unsafe { (*sp, sp.add(1) as *const *const u8) };
    let arg = |i: usize| -> &[u8] {
        if i >= argc {
            return &[];
        }
        // SAFETY: i < argc, see above.
        let c = unsafe { *argv.add(i) };
        let mut len = 0;
        // SAFETY: the string is NUL-terminated, so every byte up to the NUL is readable. (A
        // volatile read, or LLVM turns the loop into a call to libc's strlen, which we lack.)
        while unsafe { c.add(len).read_volatile() } != 0 {
            len += 1;
        }
        // SAFETY: the `len` bytes before the NUL are readable and never change.
        unsafe { core::slice::from_raw_parts(c, len) }
    };
    // Up to three arguments after the program name: any more is as bad as three.
    let args = [arg(1), arg(2), arg(3)];
    let n = argc.saturating_sub(1).min(args.len());
    match parse_args(&args[..n]) {
        // The path comes from argv, so a NUL follows it and its pointer is a C string.
        Some(Action::CopyTo(path)) => {
            if let Err(errno) = copy_self(path.as_ptr()) {
                write_err(b"sleep: cannot copy to ");
                write_err(path);
                write_errno(errno);
                exit(1)
            }
            exit(0)
        }
        Some(Action::Sleep(duration)) => {
            install_signals();
            let Some(nanos) = duration else {
                loop {
                    // It returns when a signal was handled; the ones we handle exit, the rest
                    // leave us sleeping.
                    sys::pause();
                }
            };
            let mut ts = [nanos / 1_000_000_000, nanos % 1_000_000_000];
            let ts = ts.as_mut_ptr() as usize;
            // SAFETY: `ts` is a live struct timespec. The kernel reads the request, then writes
            // what is left of it into the same struct if the sleep is interrupted: go on with it.
            while unsafe { syscall3(sys::SYS_NANOSLEEP, ts, ts, 0) } == -EINTR {}
            exit(0)
        }
        None => {
            write_err(USAGE);
            exit(2)
        }
    }
}

/// Writes ": errno N" and a newline, for a negated errno (at most 4095).
fn write_errno(errno: isize) {
    let mut buf = *b": errno     \n";
    let mut n = errno.unsigned_abs();
    let mut start = buf.len() - 1;
    while n > 0 && start > 8 {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    write_err(&buf[..8]);
    write_err(&buf[start..]);
}

/// The kernel's `struct sigaction` on x86_64 and aarch64 (handler, flags, restorer, 64-bit mask).
#[repr(C)]
struct SigAction {
    handler: usize,
    flags: usize,
    restorer: usize,
    mask: u64,
}

/// SIGTERM and SIGINT exit 0 through a real handler: a signal left at its default action is
/// dropped when sent to PID 1 of a PID namespace. SIGCHLD is ignored, so that the kernel reaps
/// every child we get as PID 1 (orphans of the pod's other processes) right when it exits.
fn install_signals() {
    let mut act = SigAction {
        handler: on_terminate as *const () as usize,
        flags: SA_RESTORER,
        restorer: sys::restore as *const () as usize,
        mask: 0,
    };
    // SAFETY (all three): pointer to a live struct sigaction, no old action wanted, 8-byte mask.
    unsafe { syscall4(sys::SYS_RT_SIGACTION, SIGTERM, &raw const act as usize, 0, 8) };
    unsafe { syscall4(sys::SYS_RT_SIGACTION, SIGINT, &raw const act as usize, 0, 8) };
    act.handler = SIG_IGN;
    unsafe { syscall4(sys::SYS_RT_SIGACTION, SIGCHLD, &raw const act as usize, 0, 8) };
    // Ignoring SIGCHLD does not reap children that were zombies already (a PID 1 that exec'd us
    // may have had some): collect those now.
    // SAFETY: no status or rusage wanted, so no pointers.
    while unsafe { syscall3(sys::SYS_WAIT4, usize::MAX, 0, WNOHANG) } > 0 {}
}

/// SIGTERM and SIGINT handler: exit 0 at once.
extern "C" fn on_terminate(_sig: i32) -> ! {
    exit(0)
}

/// Copies /proc/self/exe to the C string at `path` with mode 0555; `Err` holds a negated errno.
/// An existing file is unlinked first, so a read-only or running copy is replaced, not rewritten.
fn copy_self(path: *const u8) -> Result<(), isize> {
    let ok = |ret: isize| if ret < 0 { Err(ret) } else { Ok(ret as usize) };
    let path = path as usize;
    let exe = c"/proc/self/exe".as_ptr() as usize;
    // SAFETY (all calls below): `exe` and `path` are C strings (`path` by contract of this
    // function), every other argument is a number.
    let src = ok(unsafe { sys::open(exe, O_RDONLY | O_CLOEXEC, 0) })?;
    // ENOENT is the usual answer; any other problem shows at open.
    unsafe { sys::unlink(path) };
    let flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
    let dst = ok(unsafe { sys::open(path, flags, MODE) })?;
    // sendfile between regular files copies in the kernel, from the file offset of `src` (no
    // offset pointer); 0 means end of file.
    while ok(unsafe { syscall4(sys::SYS_SENDFILE, dst, src, 0, 1 << 30) })? != 0 {}
    // open's mode went through the umask.
    ok(unsafe { syscall3(sys::SYS_FCHMOD, dst, MODE, 0) })?;
    ok(unsafe { syscall3(sys::SYS_CLOSE, dst, 0, 0) }).map(drop)
}

/// `cargo test` also builds this binary (though the tests run the release build, see tests/), and
/// compiles the library with unwinding for the test harness; its unwind tables name this symbol.
/// Nothing here ever unwinds: a panic exits. Unoptimized builds only.
#[cfg(debug_assertions)]
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(101)
}
