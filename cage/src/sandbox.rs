//! Process isolation: fork, namespaces, the new root, limits, exec.
//!
//! The runner's process may be multi-threaded, so after `fork` the children
//! call only raw system calls on data prepared before the fork (no
//! allocation, no locks). Two children: the *keeper* (in the host PID
//! namespace) creates the user, mount, PID, network, UTS and IPC namespaces,
//! waits for the runner to write its uid/gid maps, forks the *workload*
//! (PID 1 of the new PID namespace) and reports its wait status through a
//! pipe. The init forks the workload, which announces itself to the
//! runner's supervisor over a socket (the kernel translates its pid into
//! the runner's PID namespace), waits to be seized with ptrace, and only
//! then installs its seccomp filters and execs. The keeper and the init die
//! with their parent (`PR_SET_PDEATHSIG`), and when the init dies the kernel
//! kills everything left in the namespace, so killing the keeper ends the
//! whole run.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::cgroup::Cgroup;
use crate::supervisor::EPOCH_SECS;

/// The uid and gid the workload runs as inside its user namespace.
pub const CAGE_UID: u32 = 1000;
/// The fixed hostname inside the cage.
pub const HOSTNAME: &str = "docklock";

/// A bind mount into the new root.
pub(crate) struct Bind {
    pub(crate) source: CString,
    pub(crate) target: CString,
    pub(crate) writable: bool,
    /// A device node (bound without `nodev`).
    pub(crate) device: bool,
    /// Mount flags locked on the source that a read-only remount must keep.
    pub(crate) locked: libc::c_ulong,
}

/// An entry of the new root's skeleton: a mount point or a symlink.
pub(crate) enum Node {
    Dir(CString),
    /// An empty file (a mount point).
    File(CString),
    /// A file with these contents and mode, dated at the logical epoch.
    Contents(CString, Vec<u8>, libc::mode_t),
    /// A symlink at the first path pointing to the second.
    Symlink(CString, CString),
}

/// Everything the children need, built before the fork.
pub(crate) struct Plan {
    /// An empty host directory; the init mounts the new root (a tmpfs,
    /// so the host's disk sees none of it) there.
    pub(crate) root: CString,
    /// The root tmpfs's mount options: its size and file count are fixed,
    /// so `statfs` shows the spec's, not a share of the host's memory.
    pub(crate) root_options: CString,
    /// The root's mount points and symlinks, made in that tmpfs.
    pub(crate) skeleton: Vec<Node>,
    pub(crate) binds: Vec<Bind>,
    pub(crate) tmpfs: Vec<(CString, CString)>,
    pub(crate) proc_dir: CString,
    /// An empty directory of the root: the init mounts a small tmpfs
    /// there, makes `proc_files` in it, binds each over the file of the
    /// new procfs of the same name, then detaches the tmpfs and removes
    /// the directory. (Binding files of the root and unlinking them would
    /// leave " (deleted)" in every path of them the kernel shows.)
    pub(crate) proc_source: CString,
    /// Files to bind over procfs files: (where it is made, under
    /// `proc_source`; what it holds; the procfs file it covers).
    pub(crate) proc_files: Vec<(CString, Vec<u8>, CString)>,
    pub(crate) program: CString,
    pub(crate) argv: Vec<CString>,
    pub(crate) envp: Vec<CString>,
    pub(crate) cwd: CString,
    pub(crate) rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// seccomp BPF programs, installed in order right before exec.
    pub(crate) filters: Vec<Vec<libc::sock_filter>>,
    /// The CPU the workload runs on: the supervisor's, so each ptrace stop
    /// switches between two tasks of one CPU instead of waking another
    /// (measured: 60 µs per trapped call across CPUs, 23 µs on one).
    pub(crate) cpu: Option<libc::cpu_set_t>,
}

/// Locked mount flags of the filesystem holding `path`.
pub(crate) fn locked_flags(path: &Path) -> io::Result<libc::c_ulong> {
    let c_path = cstring(path.as_os_str().as_encoded_bytes())?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let pairs = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(pairs.iter().filter(|(st, _)| stat.f_flag & st != 0).fold(0, |flags, (_, ms)| flags | ms))
}

/// A C string, refusing interior NULs.
pub(crate) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path or argument contains NUL"))
}

/// A pipe whose ends close on exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The descriptors of a started run, held by the runner.
pub(crate) struct Started {
    /// The keeper's pid (in the host PID namespace), reaped by the runner.
    pub(crate) keeper: libc::pid_t,
    /// Read end of the workload's stdout.
    pub(crate) stdout: OwnedFd,
    /// Read end of the workload's stderr.
    pub(crate) stderr: OwnedFd,
    /// Read end of the init's report: the workload's wait status (4 bytes).
    pub(crate) status: OwnedFd,
    /// Read end of a setup failure report (step and errno, 8 bytes); EOF
    /// with nothing means the exec happened.
    pub(crate) setup_error: OwnedFd,
    /// The keeper as a pidfd: signalling it is safe after it is reaped.
    pub(crate) keeper_fd: OwnedFd,
    /// The supervisor's end of the workload's announcement socket.
    pub(crate) announce: OwnedFd,
    /// Write end of the init's last wait: closing it (after the outputs
    /// were read through the init's root) lets the namespace end.
    pub(crate) collected: OwnedFd,
}

/// Steps of the workload's setup, reported (with errno) when one fails.
#[derive(Clone, Copy)]
#[repr(i32)]
enum Step {
    JoinCgroup,
    Unshare,
    WaitMaps,
    Fork,
    PrivateMounts,
    BindRoot,
    BindHost,
    ReadOnly,
    Tmpfs,
    Proc,
    Pivot,
    DetachOld,
    RootReadOnly,
    Hostname,
    Loopback,
    Identity,
    Supervisor,
    Seccomp,
    Exec,
}

/// What each step is called in a setup failure, by its number.
const STEP_NAMES: [&str; 19] = [
    "join the run's cgroup",
    "unshare namespaces",
    "wait for id maps",
    "fork",
    "make mounts private",
    "build the new root",
    "bind a host directory",
    "make a bind read-only",
    "mount a tmpfs",
    "mount /proc",
    "pivot into the new root",
    "detach the old root",
    "make the root read-only",
    "set the hostname",
    "bring up loopback",
    "set limits and identity",
    "wait for the supervisor",
    "install the seccomp policy",
    "exec the program",
];

/// Start the keeper and, through it, the workload.
pub(crate) fn start(plan: &Plan, cgroup: Option<&Cgroup>) -> io::Result<Started> {
    let (stdout_read, stdout_write) = pipe()?;
    // A larger pipe means fewer wake-ups for a loud program; best effort.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(stdout_write.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let (stderr_read, stderr_write) = pipe()?;
    let (status_read, status_write) = pipe()?;
    let (error_read, error_write) = pipe()?;
    let (ready_read, ready_write) = pipe()?;
    let (maps_read, maps_write) = pipe()?;
    let (announce, announce_child) = announce_socket()?;
    let (collected_read, collected_write) = pipe()?;
    let dev_null = std::fs::File::open("/dev/null")?;
    let argv: Vec<*const libc::c_char> =
        plan.argv.iter().map(|arg| arg.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> =
        plan.envp.iter().map(|var| var.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let filters: Vec<libc::sock_fprog> = plan
        .filters
        .iter()
        .map(|program| libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() })
        .collect();
    let fds = ChildFds {
        stdin: dev_null.as_raw_fd(),
        stdout: stdout_write.as_raw_fd(),
        stderr: stderr_write.as_raw_fd(),
        status: status_write.as_raw_fd(),
        error: error_write.as_raw_fd(),
        ready: ready_write.as_raw_fd(),
        maps: maps_read.as_raw_fd(),
        announce: announce_child.as_raw_fd(),
        collected: collected_read.as_raw_fd(),
    };

    let mut keep =
        [fds.stdin, fds.stdout, fds.stderr, fds.status, fds.error, fds.ready, fds.maps, fds.announce, fds.collected];
    keep.sort_unstable();
    // SAFETY: getpid has no preconditions.
    let runner = unsafe { libc::getpid() };
    // The keeper joins a v1 cgroup itself, at no cost; a v2 one only the
    // runner can move it into, below, and that waits.
    let cgroup_tasks = match cgroup.map(Cgroup::self_join) {
        Some(Some(files)) => files?,
        _ => Vec::new(),
    };
    let runner_admits = cgroup.filter(|_| cgroup_tasks.is_empty());

    // SAFETY: fork in a possibly multi-threaded process: the child below
    // calls only async-signal-safe system calls on memory prepared above,
    // and leaves with execve or _exit.
    let keeper = unsafe { libc::fork() };
    if keeper < 0 {
        return Err(io::Error::last_os_error());
    }
    if keeper == 0 {
        // SAFETY: in the freshly forked child; see `keeper_main`.
        unsafe {
            keeper_main(&Child {
                plan,
                fds: &fds,
                keep: &keep,
                runner,
                cgroup_tasks: &cgroup_tasks,
                argv: &argv,
                envp: &envp,
                filters: &filters,
            })
        }
    }
    drop((
        stdout_write,
        stderr_write,
        status_write,
        error_write,
        ready_write,
        maps_read,
        announce_child,
        collected_read,
    ));
    // SAFETY: pidfd_open on our own unreaped child.
    let keeper_fd = unsafe { libc::syscall(libc::SYS_pidfd_open, keeper, 0) };
    if keeper_fd < 0 {
        let error = io::Error::last_os_error();
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(keeper, libc::SIGKILL);
            libc::waitpid(keeper, std::ptr::null_mut(), 0);
        }
        return Err(error);
    }
    // SAFETY: pidfd_open returned a fresh descriptor that nothing else owns.
    let keeper_fd = unsafe { OwnedFd::from_raw_fd(keeper_fd as RawFd) };

    // The keeper has unshared: write its id maps (only a process outside
    // the new user namespace may map ids other than its own).
    // Into the run's cgroup too (v2), before it forks anything.
    let mut byte = [0u8; 1];
    if read_full(&ready_read, &mut byte).unwrap_or(0) == 1 {
        let admitted = runner_admits.map_or(Ok(()), |cgroup| cgroup.add(keeper));
        if let Err(error) = admitted.and_then(|()| write_id_maps(keeper)).and_then(|()| write_full(&maps_write, &[1])) {
            // SAFETY: kill and waitpid on our own child.
            unsafe {
                libc::kill(keeper, libc::SIGKILL);
                libc::waitpid(keeper, std::ptr::null_mut(), 0);
            }
            return Err(error);
        }
    }
    drop(maps_write);
    Ok(Started {
        keeper,
        collected: collected_write,
        stdout: stdout_read,
        stderr: stderr_read,
        status: status_read,
        setup_error: error_read,
        keeper_fd,
        announce,
    })
}

/// A socket pair for the workload's announcement; the supervisor's end
/// receives the sender's credentials, its pid translated by the kernel.
fn announce_socket() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two fresh descriptors that nothing else owns.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid pointer to an int of the given size.
    let set = unsafe {
        libc::setsockopt(
            ours.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((ours, theirs))
}

/// Wait for the workload's announcement: its pid in our PID namespace, or
/// `None` if it never came (the setup failed first).
pub(crate) fn await_workload(announce: &OwnedFd) -> io::Result<Option<libc::pid_t>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // Room for one SCM_CREDENTIALS message, aligned as cmsghdr needs.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control);
    let received = loop {
        // SAFETY: message points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(announce.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    if received == 0 {
        return Ok(None);
    }
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled in.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_CREDENTIALS {
                let credentials = libc::CMSG_DATA(header).cast::<libc::ucred>().read_unaligned();
                return Ok(Some(credentials.pid));
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Err(io::Error::other("the workload's announcement carried no credentials"))
}

/// Let the announced workload go on to its filters and exec.
pub(crate) fn release_workload(announce: &OwnedFd) -> io::Result<()> {
    write_full(announce, &[1])
}

fn write_id_maps(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    // SAFETY: getegid has no preconditions.
    let egid = unsafe { libc::getegid() };
    // As root, the workload's ids map to `nobody` on the host; otherwise
    // the kernel allows mapping only our own ids.
    let (outside_uid, outside_gid) = if euid == 0 { (65534, 65534) } else { (euid, egid) };
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("{CAGE_UID} {outside_uid} 1\n"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("{CAGE_UID} {outside_gid} 1\n"))?;
    Ok(())
}

pub(crate) fn read_full(fd: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buffer.len() {
        // SAFETY: the pointer and length describe the unread tail of buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buffer[done..].as_mut_ptr().cast(), buffer.len() - done) };
        match n {
            0 => break,
            n if n < 0 => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            n => done += n as usize,
        }
    }
    Ok(done)
}

/// One read; retried on EINTR.
pub(crate) fn read_some(fd: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn write_full(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: the pointer and length describe bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n == bytes.len() as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the children read, prepared before the fork.
#[derive(Clone, Copy)]
struct Child<'a> {
    plan: &'a Plan,
    fds: &'a ChildFds,
    /// The descriptors of `fds`, sorted.
    keep: &'a [RawFd],
    /// The runner's pid: the keeper's parent while the run lives.
    runner: libc::pid_t,
    /// Files the keeper writes "0" to, to move itself into the run's
    /// cgroup (see `Cgroup::self_join`).
    cgroup_tasks: &'a [CString],
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    filters: &'a [libc::sock_fprog],
}

struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    status: RawFd,
    error: RawFd,
    ready: RawFd,
    maps: RawFd,
    announce: RawFd,
    collected: RawFd,
}

/// Report a failed setup step and leave.
///
/// SAFETY (for callers): only in a forked child.
unsafe fn fail(fds: &ChildFds, step: Step) -> ! {
    let errno = *libc::__errno_location();
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&(step as i32).to_be_bytes());
    report[4..].copy_from_slice(&errno.to_be_bytes());
    libc::write(fds.error, report.as_ptr().cast(), report.len());
    libc::_exit(127)
}

/// The keeper: namespaces, then the workload, then its status.
///
/// SAFETY (for callers): only in a freshly forked child of `start`.
unsafe fn keeper_main(child: &Child<'_>) -> ! {
    let fds = child.fds;
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    // Close every descriptor but ours first: a run started at the same
    // time on another thread has its pipe ends in this copy of the table,
    // and holding them would keep that run's reads from ending.
    let mut low = 3;
    for &fd in child.keep {
        if fd > low {
            libc::syscall(libc::SYS_close_range, low as u32, (fd - 1) as u32, 0);
        }
        low = low.max(fd + 1);
    }
    libc::syscall(libc::SYS_close_range, low as u32, u32::MAX, 0);
    // Into the run's cgroup before anything of the run is forked, and
    // before the new user namespace takes the runner's rights over it.
    for tasks in child.cgroup_tasks {
        let fd = libc::open(tasks.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            fail(fds, Step::JoinCgroup);
        }
        libc::close(fd);
    }
    // No supplementary groups in the cage: a root runner's group 0 would
    // otherwise go with the workload (the namespace denies setgroups
    // later), and host files readable by group root would be readable
    // to it. A runner that is not root cannot drop them (this fails), and
    // its groups are its own to give. The raw call: this process has one
    // thread, and libc's wrapper would signal threads that are not here.
    libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
    let namespaces = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC;
    if libc::unshare(namespaces) != 0 {
        fail(fds, Step::Unshare);
    }
    libc::write(fds.ready, [1u8].as_ptr().cast(), 1);
    let mut byte = [0u8; 1];
    if libc::read(fds.maps, byte.as_mut_ptr().cast(), 1) != 1 {
        fail(fds, Step::WaitMaps);
    }
    // Only the cage's uid is mapped in the namespace: the init's new inodes
    // (the root's skeleton) need it as their owner. The filesystem ids
    // alone change; capabilities stay. Changing them clears the
    // parent-death signal, so it is set again, and a parent that died in
    // between is noticed.
    libc::setfsuid(CAGE_UID);
    libc::setfsgid(CAGE_UID);
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    if libc::getppid() != child.runner {
        libc::_exit(127);
    }
    let init = libc::fork();
    if init < 0 {
        fail(fds, Step::Fork);
    }
    if init == 0 {
        init_main(child);
    }
    // The keeper only waits now: holding no pipe ends, it cannot keep the
    // runner's reads open.
    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0);
    let mut status = 0;
    while libc::waitpid(init, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    libc::_exit(0)
}

/// Write all of `bytes` to `fd` (a tmpfs file: short writes only come in
/// pieces of very large files).
///
/// SAFETY (for callers): `fd` is an open descriptor.
unsafe fn write_all(fd: libc::c_int, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        if written <= 0 {
            return false;
        }
        bytes = &bytes[written as usize..];
    }
    true
}

/// Make the file `path` holding `bytes`, with `mode`, dated at the
/// logical epoch (the time of making would show through stat).
///
/// SAFETY (for callers): only in a forked child (raw calls, no allocation).
unsafe fn make_file(path: &CString, bytes: &[u8], mode: libc::mode_t) -> bool {
    let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, mode);
    if fd < 0 {
        return false;
    }
    let written = write_all(fd, bytes);
    let epoch = libc::timespec { tv_sec: EPOCH_SECS as libc::time_t, tv_nsec: 0 };
    let dated = libc::futimens(fd, [epoch, epoch].as_ptr()) == 0;
    // The mode again: the umask may have taken bits off.
    let moded = libc::fchmod(fd, mode) == 0;
    libc::close(fd);
    written && dated && moded
}

/// The init: PID 1 of the new PID namespace. Builds the new root, forks
/// the workload, reaps it, ends whatever it left running, reports its
/// status, and keeps the namespace (and so `/out`, a tmpfs only it can
/// see) alive until the runner has read the outputs.
///
/// SAFETY (for callers): only in the keeper's freshly forked child.
unsafe fn init_main(child: &Child<'_>) -> ! {
    let (plan, fds) = (child.plan, child.fds);
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    let null: *const libc::c_char = std::ptr::null();
    let none: *const libc::c_void = std::ptr::null();
    if libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, none) != 0 {
        fail(fds, Step::PrivateMounts);
    }
    let root_flags = libc::MS_NOSUID | libc::MS_NODEV;
    if libc::mount(
        c"tmpfs".as_ptr(),
        plan.root.as_ptr(),
        c"tmpfs".as_ptr(),
        root_flags,
        plan.root_options.as_ptr().cast(),
    ) != 0
    {
        fail(fds, Step::BindRoot);
    }
    for node in &plan.skeleton {
        let made = match node {
            Node::Dir(path) => libc::mkdir(path.as_ptr(), 0o755),
            Node::File(path) => {
                let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                if fd >= 0 {
                    libc::close(fd);
                }
                fd
            }
            Node::Contents(path, bytes, mode) => {
                if !make_file(path, bytes, *mode) {
                    fail(fds, Step::BindRoot);
                }
                0
            }
            Node::Symlink(path, target) => libc::symlink(target.as_ptr(), path.as_ptr()),
        };
        if made < 0 {
            fail(fds, Step::BindRoot);
        }
    }
    for bind in &plan.binds {
        if libc::mount(bind.source.as_ptr(), bind.target.as_ptr(), null, libc::MS_BIND | libc::MS_REC, none) != 0 {
            fail(fds, Step::BindHost);
        }
        let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | bind.locked;
        if !bind.device {
            flags |= libc::MS_NODEV;
        }
        if !bind.writable {
            flags |= libc::MS_RDONLY;
        }
        if libc::mount(null, bind.target.as_ptr(), null, flags, none) != 0 {
            fail(fds, Step::ReadOnly);
        }
    }
    for (target, options) in &plan.tmpfs {
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        if libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), flags, options.as_ptr().cast()) != 0 {
            fail(fds, Step::Tmpfs);
        }
    }
    let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if libc::mount(c"proc".as_ptr(), plan.proc_dir.as_ptr(), c"proc".as_ptr(), proc_flags, none) != 0 {
        fail(fds, Step::Proc);
    }
    let source_options = c"size=1m,nr_inodes=64,mode=0755";
    if libc::mount(
        c"tmpfs".as_ptr(),
        plan.proc_source.as_ptr(),
        c"tmpfs".as_ptr(),
        proc_flags,
        source_options.as_ptr().cast(),
    ) != 0
    {
        fail(fds, Step::Proc);
    }
    for (source, contents, target) in &plan.proc_files {
        let read_only = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | proc_flags;
        if !make_file(source, contents, 0o444)
            || libc::mount(source.as_ptr(), target.as_ptr(), null, libc::MS_BIND, none) != 0
            || libc::mount(null, target.as_ptr(), null, read_only, none) != 0
        {
            fail(fds, Step::Proc);
        }
    }
    if libc::umount2(plan.proc_source.as_ptr(), libc::MNT_DETACH) != 0 || libc::rmdir(plan.proc_source.as_ptr()) != 0 {
        fail(fds, Step::Proc);
    }
    if libc::chdir(plan.root.as_ptr()) != 0
        || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".old".as_ptr()) != 0
        || libc::chdir(c"/".as_ptr()) != 0
    {
        fail(fds, Step::Pivot);
    }
    if libc::umount2(c"/.old".as_ptr(), libc::MNT_DETACH) != 0 {
        fail(fds, Step::DetachOld);
    }
    let root_flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    if libc::mount(null, c"/".as_ptr(), null, root_flags, none) != 0 {
        fail(fds, Step::RootReadOnly);
    }
    let host = HOSTNAME.as_bytes();
    if libc::sethostname(host.as_ptr().cast(), host.len()) != 0
        || libc::setdomainname(host.as_ptr().cast(), host.len()) != 0
    {
        fail(fds, Step::Hostname);
    }
    if !loopback_up() {
        fail(fds, Step::Loopback);
    }
    let workload = libc::fork();
    if workload < 0 {
        fail(fds, Step::Fork);
    }
    if workload == 0 {
        workload_main(child);
    }
    for fd in [fds.stdin, fds.stdout, fds.stderr, fds.error, fds.ready, fds.maps, fds.announce] {
        libc::close(fd);
    }
    let mut workload_status = None;
    loop {
        let mut status = 0;
        let pid = libc::waitpid(-1, &mut status, 0);
        if pid == workload {
            workload_status = Some(status);
            // The workload is done: so is everything it started (a
            // signal from PID 1 reaches every other process here).
            libc::kill(-1, libc::SIGKILL);
        }
        if pid < 0 && *libc::__errno_location() != libc::EINTR {
            break; // ECHILD: the namespace holds only us.
        }
    }
    let Some(status) = workload_status else { libc::_exit(126) };
    libc::write(fds.status, status.to_be_bytes().as_ptr().cast(), 4);
    let mut byte = [0u8; 1];
    while libc::read(fds.collected, byte.as_mut_ptr().cast(), 1) < 0 && *libc::__errno_location() == libc::EINTR {}
    libc::_exit(0)
}

/// The workload (PID 2): limits, identity, descriptors, exec.
///
/// SAFETY (for callers): only in the init's freshly forked child.
unsafe fn workload_main(child: &Child<'_>) -> ! {
    let Child { plan, fds, argv, envp, filters, .. } = *child;
    for (resource, limit) in &plan.rlimits {
        if libc::setrlimit(*resource, limit) != 0 {
            fail(fds, Step::Identity);
        }
    }
    libc::umask(0o022);
    if libc::chdir(plan.cwd.as_ptr()) != 0
        || libc::setresgid(CAGE_UID, CAGE_UID, CAGE_UID) != 0
        || libc::setresuid(CAGE_UID, CAGE_UID, CAGE_UID) != 0
        || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
    {
        fail(fds, Step::Identity);
    }
    if libc::dup2(fds.stdin, 0) < 0 || libc::dup2(fds.stdout, 1) < 0 || libc::dup2(fds.stderr, 2) < 0 {
        fail(fds, Step::Identity);
    }
    // Every other descriptor closes at exec (the error pipe too, which is
    // how the runner learns the exec happened).
    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    if let Some(cpu) = &plan.cpu {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), cpu);
    }
    // Fixed addresses (no ASLR) and a time-stamp counter that faults, so
    // the supervisor answers it; both survive exec.
    if libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) < 0
        || libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_SIGSEGV, 0, 0, 0) != 0
    {
        fail(fds, Step::Identity);
    }
    // Announce ourselves and wait until the supervisor has seized us: from
    // the filters on, traced and denied calls stop at the supervisor.
    let mut byte = [1u8];
    if libc::write(fds.announce, byte.as_ptr().cast(), 1) != 1
        || libc::read(fds.announce, byte.as_mut_ptr().cast(), 1) != 1
    {
        fail(fds, Step::Supervisor);
    }
    // Last before exec: from here every call the workload makes, the exec
    // and its loader included, is filtered.
    for filter in filters {
        let installed =
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, filter as *const libc::sock_fprog);
        if installed != 0 {
            fail(fds, Step::Seccomp);
        }
    }
    libc::execve(plan.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(fds, Step::Exec)
}

/// Bring `lo` up in the new network namespace.
///
/// SAFETY (for callers): async-signal-safe; raw syscalls only.
unsafe fn loopback_up() -> bool {
    let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if socket < 0 {
        return false;
    }
    let mut request: libc::ifreq = std::mem::zeroed();
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    let mut ok = libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) == 0;
    if ok {
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        ok = libc::ioctl(socket, libc::SIOCSIFFLAGS, &request) == 0;
    }
    libc::close(socket);
    ok
}

/// Name a setup failure report.
pub(crate) fn describe_setup_error(report: &[u8; 8]) -> String {
    let step = i32::from_be_bytes(report[..4].try_into().expect("4 bytes"));
    let errno = i32::from_be_bytes(report[4..].try_into().expect("4 bytes"));
    let name = usize::try_from(step).ok().and_then(|i| STEP_NAMES.get(i)).copied().unwrap_or("unknown step");
    format!("{name}: {}", io::Error::from_raw_os_error(errno))
}
