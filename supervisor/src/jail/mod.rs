//! The VMM jail (Linux), in the spirit of Firecracker's jailer.
//!
//! Every VMM process is started with, in this order (each layer and what it
//! stops):
//! - **rlimits**: open files ≤ [`MAX_OPEN_FILES`] (no fd exhaustion of the
//!   host), processes ≤ [`MAX_PROCESSES`] for non-root users (no fork bomb),
//!   core dumps off (guest memory never lands in a core file).
//! - **mount + pid namespaces** (where the host permits): the VMM's mount
//!   table is private (mounts it could make never reach the host) and it is
//!   pid 1 of its own pid namespace (it cannot see or signal host processes by
//!   pid). Needs CAP_SYS_ADMIN; without it clawpen says so in the log and
//!   runs the VMM without them.
//! - **no_new_privs**: nothing the VMM executes can gain privileges (setuid
//!   binaries, file capabilities).
//! - **seccomp** ([`seccomp`]): only the system calls a VMM needs; others fail
//!   with EPERM.
//! - **file descriptors**: everything but stdin/stdout/stderr is closed on
//!   exec; the working directory is the VM's directory.
//!
//! With namespaces the spawned child forks once more inside the new pid
//! namespace and waits for the VMM (the grandchild), passing on its exit
//! status; the VMM dies with it (`PR_SET_PDEATHSIG`). The VM's pid is the
//! VMM's host pid, found through `/proc/CHILD/task/CHILD/children`.

pub mod seccomp;

use std::sync::Arc;
use std::time::Duration;

use seccompiler::BpfProgram;

/// Environment switch: `CLAWPEN_JAIL=off` runs VMMs unjailed (debugging only).
pub const JAIL_ENV: &str = "CLAWPEN_JAIL";
pub const MAX_OPEN_FILES: u64 = 4096;
pub const MAX_PROCESSES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("the jailed process {pid} did not start its VMM within {waited:?}")]
    NoVmm { pid: u32, waited: Duration },
}

/// What the jail applies; built once, applied to every VMM spawn.
#[derive(Clone)]
pub struct Jail {
    filter: Option<Arc<BpfProgram>>,
    namespaces: bool,
}

impl std::fmt::Debug for Jail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jail")
            .field("seccomp", &self.filter.is_some())
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

impl Jail {
    /// No jail at all (`CLAWPEN_JAIL=off`).
    pub fn off() -> Self {
        Self {
            filter: None,
            namespaces: false,
        }
    }

    /// The full jail, with namespaces only if a probe shows the host permits
    /// them (logged when it does not).
    pub fn detect() -> Result<Self, JailError> {
        if std::env::var(JAIL_ENV).is_ok_and(|v| v == "off") {
            tracing::warn!("{JAIL_ENV}=off: VMMs run without the jail");
            return Ok(Self::off());
        }
        let filter = Some(Arc::new(seccomp::vmm_filter()?));
        let with_ns = Self {
            filter: filter.clone(),
            namespaces: true,
        };
        match with_ns.probe() {
            Ok(()) => Ok(with_ns),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "this host does not let clawpen give VMMs their own mount and pid \
                     namespaces; VMMs run jailed without them"
                );
                Ok(Self {
                    filter,
                    namespaces: false,
                })
            }
        }
    }

    /// Runs `true` in the jail: does the host allow what we ask?
    fn probe(&self) -> std::io::Result<()> {
        let mut command = std::process::Command::new("true");
        self.apply(&mut command);
        let status = command.status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "jailed `true` exited {status}"
            )))
        }
    }

    /// Installs the jail on `command` (runs in the child between fork and exec).
    pub fn apply(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let filter = self.filter.clone();
        let namespaces = self.namespaces;
        // SAFETY: the closure runs in the forked child before exec. It only
        // makes async-signal-safe system calls (setrlimit, unshare, mount,
        // fork, waitpid, _exit, prctl, close_range, seccomp) on data prepared
        // before the fork, and allocates nothing.
        unsafe {
            command.pre_exec(move || enter(filter.as_deref(), namespaces));
        }
    }

    /// The host pid of the VMM for a spawned child `pid`: the child itself, or
    /// with namespaces the grandchild it forked.
    pub async fn vmm_pid(&self, pid: u32) -> Result<u32, JailError> {
        if !self.namespaces {
            return Ok(pid);
        }
        let waited = Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(vmm) = children.split_whitespace().find_map(|c| c.parse().ok()) {
                return Ok(vmm);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(JailError::NoVmm { pid, waited });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we pass; no memory is retained.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// The child side of [`Jail::apply`]. Allocation-free.
fn enter(filter: Option<&BpfProgram>, namespaces: bool) -> std::io::Result<()> {
    if filter.is_none() && !namespaces {
        return Ok(());
    }
    set_limit(libc::RLIMIT_NOFILE, MAX_OPEN_FILES)?;
    set_limit(libc::RLIMIT_NPROC, MAX_PROCESSES)?;
    set_limit(libc::RLIMIT_CORE, 0)?;
    if namespaces {
        // SAFETY: plain system calls on constant arguments.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
        }
        // The new pid namespace applies to children: fork the VMM into it and
        // stay behind as its waiting parent.
        // SAFETY: fork in a single-threaded post-fork child; both sides only
        // make async-signal-safe calls afterwards.
        let vmm = unsafe { libc::fork() };
        if vmm == -1 {
            return Err(std::io::Error::last_os_error());
        }
        if vmm > 0 {
            // Keep nothing open: in particular not the pipe through which the
            // spawner learns that exec happened (it reads until every copy is
            // closed, and this process never execs).
            // SAFETY: close_range with constant arguments.
            unsafe {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            }
            wait_and_exit(vmm);
        }
        // The waiting parent only ends after us, unless killed: then we go too.
        // (Its pid is outside our namespace, so getppid() says 0 here and
        // cannot tell whether it is still alive.)
        // SAFETY: prctl with constant arguments.
        unsafe {
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        }
    }
    // SAFETY: prctl and close_range with constant arguments.
    unsafe {
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        // Everything above stderr closes at exec, whatever leaked its CLOEXEC.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    if let Some(filter) = filter {
        seccompiler::apply_filter(filter).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// The waiting parent: passes on the VMM's exit status, never returns.
fn wait_and_exit(vmm: libc::pid_t) -> ! {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into our local.
        let r = unsafe { libc::waitpid(vmm, &mut status, 0) };
        if r == vmm {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(1) };
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // SAFETY: _exit never returns.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ptrace(PTRACE_TRACEME) from Python: 0 unjailed, EPERM when jailed.
    const PTRACE: &str = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
        r = libc.syscall(101, 0, 0, 0, 0); print(r, ctypes.get_errno())";

    fn run(jail: &Jail, script: &str) -> String {
        // The system python, not a version-manager shim script.
        let python = ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("python3");
        let mut command = std::process::Command::new(python);
        command.args(["-c", script]);
        jail.apply(&mut command);
        let out = command.output().expect("python3 runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn a_syscall_outside_the_allow_list_is_stopped() {
        assert_eq!(run(&Jail::off(), PTRACE), "0 0");
        let jail = Jail::detect().unwrap();
        assert_eq!(run(&jail, PTRACE), format!("-1 {}", libc::EPERM));
    }

    #[test]
    fn jailed_process_has_no_new_privs_seccomp_and_limits() {
        let jail = Jail::detect().unwrap();
        let status = run(
            &jail,
            "print(open('/proc/self/status').read()); print(open('/proc/self/limits').read())",
        );
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert!(status.contains("Seccomp:\t2"), "{status}");
        assert!(status.contains("Max core file size        0"), "{status}");
        assert!(
            status.contains(&format!("Max open files            {MAX_OPEN_FILES}")),
            "{status}"
        );
    }
}
