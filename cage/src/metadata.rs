//! File metadata as a caged program sees it: what `stat`, `statx`,
//! `statfs`, directory listings and descriptor links may show.
//!
//! The kernel's answers carry the host in three ways: device numbers (the
//! cage's tmpfs mounts get anonymous numbers from a host-wide pool, bound
//! host directories carry the host disk's), inode numbers (a host file's
//! comes from how that host was installed; pipes, sockets and `/proc`
//! entries draw theirs from a host-wide counter) and times (the kernel
//! stamps what the workload writes with the host's wall clock; a host
//! file's change and access times say when that host installed or read
//! it). The supervisor passes every such answer through here at the call's
//! exit, and this module rewrites those fields:
//!
//! - *devices* are numbered in the order the cage mounted them (read once
//!   per run from the workload's `mountinfo`, which the cage's fixed mount
//!   sequence orders); devices that are not mounted (pipes, sockets) come
//!   after, in the order the process first shows them;
//! - *inodes* are replaced by virtual numbers, in the order the process
//!   first shows them. The cage's own tmpfs mounts number their files in
//!   creation order, but two processes creating files at once (`a > x &
//!   b > y`) create them in the order the host ran them, so those are
//!   virtual too.
//!
//! Numbers given in the order things are first shown are kept per process
//! ([`Shown`]), inherited at fork: with one table for the whole run, two
//! processes running at once (a shell pipeline) would take numbers in the
//! order the host's scheduler ran them. A process's own order is fixed by
//! its program and what it was shown, and its parent's table at the fork
//! by the parent's. Within a process a number names one object; the same
//! host file may show different numbers in two processes that first showed
//! it at different points, as two processes on two machines would.
//! - *times* are the logical epoch, the moment the run starts, except
//!   those the workload set itself on its own files (`utimensat` with a
//!   time it chose, which can only come from the logical clock or its
//!   inputs, both long before the real start; the kernel's own stamps are
//!   all after it). Root filesystem files are dated at the epoch too: their
//!   change and access times say when a host installed or read them, and
//!   their modification times, years after the logical epoch, would be in
//!   the workload's future (tools warn, `ls` reads the clock for each);
//! - *link counts* of that everything else are 1 (as on filesystems that
//!   do not count subdirectories): `/proc`'s counts the host's processes.
//!
//! This module only computes; it never touches a process.

use std::collections::HashMap;

/// Byte layout of `struct stat` on x86-64.
mod stat {
    pub const SIZE: usize = 144;
    pub const DEV: usize = 0;
    pub const INO: usize = 8;
    pub const NLINK: usize = 16;
    pub const ATIME: usize = 72;
    pub const MTIME: usize = 88;
    pub const CTIME: usize = 104;
}

/// Byte layout of `struct statx`; the kernel writes 256 bytes.
mod statx {
    pub const SIZE: usize = 256;
    pub const MASK: usize = 0;
    pub const NLINK: usize = 16;
    pub const INO: usize = 32;
    pub const ATIME: usize = 64;
    pub const BTIME: usize = 80;
    pub const CTIME: usize = 96;
    pub const MTIME: usize = 112;
    pub const DEV_MAJOR: usize = 136;
    pub const DEV_MINOR: usize = 140;
    pub const MNT_ID: usize = 144;
    pub const WANT_NLINK: u32 = 0x4;
    pub const WANT_ATIME: u32 = 0x20;
    pub const WANT_MTIME: u32 = 0x40;
    pub const WANT_CTIME: u32 = 0x80;
    pub const WANT_INO: u32 = 0x100;
    pub const WANT_BTIME: u32 = 0x800;
    pub const WANT_MNT_ID: u32 = 0x1000;
    pub const WANT_MNT_ID_UNIQUE: u32 = 0x4000;
}

/// Byte layout of `struct statfs` on x86-64.
mod statfs {
    pub const SIZE: usize = 120;
    pub const TYPE: usize = 0;
    pub const BLOCKS: usize = 16;
    pub const FREE_COUNTS_END: usize = 56;
    pub const FSID: usize = 56;
    pub const FLAGS: usize = 80;
    /// `ST_NODEV`: every tmpfs the cage mounts has it; the device nodes
    /// bound from the host's devtmpfs (tmpfs too, inside) do not.
    pub const NODEV: u64 = 4;
}

pub(crate) const STAT_SIZE: usize = stat::SIZE;
pub(crate) const STATX_SIZE: usize = statx::SIZE;
pub(crate) const STATFS_SIZE: usize = statfs::SIZE;

/// `statfs`'s type for tmpfs (and devtmpfs, which is tmpfs inside).
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Times at most this long before the cage's root last changed are the
/// kernel's stamps from setting the run up: seconds.
const STAMP_MARGIN_SECS: i64 = 60;
/// Most devices and mounts numbered in one run; past it, every other one
/// shares the last number (a bound, not a case that occurs).
const DEVICES_MAX: usize = 4096;
/// Most inodes numbered in one run; past it, the rest share one number.
const INODES_MAX: usize = 1 << 20;

/// What a device holds, which decides how its files' fields are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A tmpfs the cage mounted: the root, `/in`, `/out`, `/tmp`, ...
    Cage,
    /// The root filesystem's files (a host directory or an unpacked image).
    Image,
    /// `/proc`, device nodes, pipes, sockets: nothing of the host may show.
    Synthetic,
}

#[derive(Clone, Copy)]
struct Device {
    minor: u32,
    kind: Kind,
    /// In the mount table (not a pipe's or socket's device).
    mounted: bool,
}

/// What one run shows the same to all its processes: the mounted devices
/// and mounts, numbered by the mount table, and how times show.
pub(crate) struct Metadata {
    /// The logical epoch, in seconds.
    epoch_secs: i64,
    /// Kernel time stamps at or after this (seconds) are the run's own.
    stamped_since: i64,
    /// Mounted devices by real device number; loaded at the first use.
    devices: Option<HashMap<u64, Device>>,
    /// By real mount id, from `mountinfo`.
    mount_ids: HashMap<u64, u64>,
}

/// The numbers one process has given in the order it first showed things:
/// a child starts with a copy of its parent's at the fork (persistent
/// maps, so the copy is O(1) however much the parent has shown).
#[derive(Clone, Default)]
pub(crate) struct Shown {
    /// Devices that are not mounted (pipefs, sockfs), by real number.
    devices: imbl::HashMap<u64, u32>,
    /// Mounts not in the mount table the run started with, by real id.
    mount_ids: imbl::HashMap<u64, u64>,
    /// By real device number (0 for devices not mounted) and inode.
    inodes: imbl::HashMap<(u64, u64), u64>,
}

/// What the supervisor reads of the workload's mounts, once per run.
pub(crate) struct Mounts {
    /// The text of `/proc/PID/mountinfo` (empty if it could not be read).
    pub(crate) mountinfo: String,
    /// The change time (seconds) of the workload's root directory: the
    /// kernel stamped it while the cage was set up, with the same clock
    /// that stamps the workload's files (the supervisor's own clock may
    /// be another: `faketime`).
    pub(crate) root_changed: i64,
}

impl Metadata {
    pub(crate) fn new(epoch_secs: u64) -> Self {
        Self { epoch_secs: epoch_secs as i64, stamped_since: i64::MAX, devices: None, mount_ids: HashMap::new() }
    }

    /// Number the devices and mounts of the workload's mount namespace in
    /// the order they were mounted.
    fn load(&mut self, mounts: &Mounts) {
        self.stamped_since = mounts.root_changed.saturating_sub(STAMP_MARGIN_SECS);
        let mut devices = HashMap::new();
        for line in mounts.mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(separator) = fields.iter().position(|field| *field == "-") else { continue };
            let (Some(id), Some(numbers), Some(point), Some(fstype)) =
                (fields.first(), fields.get(2), fields.get(4), fields.get(separator + 1))
            else {
                continue;
            };
            let Some((major, minor)) = numbers.split_once(':') else { continue };
            let (Ok(major), Ok(minor), Ok(id)) = (major.parse(), minor.parse(), id.parse::<u64>()) else { continue };
            let synthetic = ["/proc", "/dev", "/sys"]
                .iter()
                .any(|top| *point == *top || point.strip_prefix(top).is_some_and(|rest| rest.starts_with('/')));
            let kind = match (*fstype, synthetic) {
                (_, true) => Kind::Synthetic,
                ("tmpfs", false) => Kind::Cage,
                _ => Kind::Image,
            };
            let count = devices.len();
            devices.entry(libc::makedev(major, minor)).or_insert(Device {
                minor: virtual_number(count),
                kind,
                mounted: true,
            });
            let count = self.mount_ids.len();
            self.mount_ids.entry(id).or_insert(u64::from(virtual_number(count)));
        }
        self.devices = Some(devices);
    }

    fn device(&mut self, shown: &mut Shown, real: u64, mounts: impl FnOnce() -> Mounts) -> Device {
        if self.devices.is_none() {
            self.load(&mounts());
        }
        let devices = self.devices.as_ref().expect("loaded above");
        if let Some(device) = devices.get(&real) {
            return *device;
        }
        let count = devices.len() + shown.devices.len();
        let minor = *shown.devices.entry(real).or_insert(virtual_number(count));
        Device { minor, kind: Kind::Synthetic, mounted: false }
    }

    /// The mount id shown for a real one.
    fn mount_id(&self, shown: &mut Shown, real: u64) -> u64 {
        if let Some(id) = self.mount_ids.get(&real) {
            return *id;
        }
        let count = self.mount_ids.len() + shown.mount_ids.len();
        *shown.mount_ids.entry(real).or_insert(u64::from(virtual_number(count)))
    }

    /// The inode number shown for `ino` on a device of `kind`. Devices
    /// that are not mounted (pipefs, sockfs) share one counter in the
    /// kernel, so they share key 0 here too: a `pipe:[N]` link names the
    /// same inode its `fstat` does.
    fn inode(shown: &mut Shown, real_device: u64, device: Device, ino: u64) -> u64 {
        let key = (if device.mounted { real_device } else { 0 }, ino);
        let count = shown.inodes.len();
        if count >= INODES_MAX {
            return *shown.inodes.get(&key).unwrap_or(&(INODES_MAX as u64));
        }
        *shown.inodes.entry(key).or_insert(count as u64 + 1)
    }

    /// A time as shown: `(seconds, nanoseconds)` of a file on `kind`.
    fn time(&self, kind: Kind, (secs, nanos): (i64, u32)) -> (i64, u32) {
        if kind == Kind::Cage && secs < self.stamped_since {
            (secs, nanos)
        } else {
            (self.epoch_secs, 0)
        }
    }

    /// Rewrite a `struct stat` the kernel returned to a process that has
    /// shown `shown`; `mounts` reads the workload's mounts if they are
    /// needed.
    pub(crate) fn stat(&mut self, shown: &mut Shown, buffer: &mut [u8; STAT_SIZE], mounts: impl FnOnce() -> Mounts) {
        let real = u64_at(buffer, stat::DEV);
        let device = self.device(shown, real, mounts);
        put_u64(buffer, stat::DEV, libc::makedev(0, device.minor));
        let ino = Self::inode(shown, real, device, u64_at(buffer, stat::INO));
        put_u64(buffer, stat::INO, ino);
        if device.kind == Kind::Synthetic {
            put_u64(buffer, stat::NLINK, 1);
        }
        for at in [stat::ATIME, stat::MTIME, stat::CTIME] {
            let (secs, nanos) = self.time(device.kind, (u64_at(buffer, at) as i64, u64_at(buffer, at + 8) as u32));
            put_u64(buffer, at, secs as u64);
            put_u64(buffer, at + 8, u64::from(nanos));
        }
    }

    /// Rewrite a `struct statx` the kernel returned.
    pub(crate) fn statx(&mut self, shown: &mut Shown, buffer: &mut [u8; STATX_SIZE], mounts: impl FnOnce() -> Mounts) {
        let mask = u32_at(buffer, statx::MASK);
        let real = libc::makedev(u32_at(buffer, statx::DEV_MAJOR), u32_at(buffer, statx::DEV_MINOR));
        let device = self.device(shown, real, mounts);
        put_u32(buffer, statx::DEV_MAJOR, 0);
        put_u32(buffer, statx::DEV_MINOR, device.minor);
        if mask & statx::WANT_INO != 0 {
            let ino = Self::inode(shown, real, device, u64_at(buffer, statx::INO));
            put_u64(buffer, statx::INO, ino);
        }
        if mask & statx::WANT_NLINK != 0 && device.kind == Kind::Synthetic {
            put_u32(buffer, statx::NLINK, 1);
        }
        if mask & (statx::WANT_MNT_ID | statx::WANT_MNT_ID_UNIQUE) != 0 {
            let id = self.mount_id(shown, u64_at(buffer, statx::MNT_ID));
            put_u64(buffer, statx::MNT_ID, id);
        }
        let times = [
            (statx::WANT_ATIME, statx::ATIME),
            (statx::WANT_BTIME, statx::BTIME),
            (statx::WANT_CTIME, statx::CTIME),
            (statx::WANT_MTIME, statx::MTIME),
        ];
        for (want, at) in times {
            if mask & want != 0 {
                let (secs, nanos) = self.time(device.kind, (u64_at(buffer, at) as i64, u32_at(buffer, at + 8)));
                put_u64(buffer, at, secs as u64);
                put_u32(buffer, at + 8, nanos);
            }
        }
    }

    /// Rewrite a `struct statfs`: no filesystem id (tmpfs draws a random
    /// one), and no free or total counts for filesystems the cage did not
    /// make (a host disk's say how full that host is; the host's devtmpfs,
    /// how much memory it has).
    pub(crate) fn statfs(buffer: &mut [u8; STATFS_SIZE]) {
        let cage_made =
            u64_at(buffer, statfs::TYPE) as i64 == TMPFS_MAGIC && u64_at(buffer, statfs::FLAGS) & statfs::NODEV != 0;
        if !cage_made {
            buffer[statfs::BLOCKS..statfs::FREE_COUNTS_END].fill(0);
        }
        put_u64(buffer, statfs::FSID, 0);
    }

    /// The inode number a directory listing shows for entry `ino` of a
    /// directory on device `real_device`: the one `stat` shows.
    pub(crate) fn listed_inode(
        &mut self,
        shown: &mut Shown,
        real_device: u64,
        ino: u64,
        mounts: impl FnOnce() -> Mounts,
    ) -> u64 {
        let device = self.device(shown, real_device, mounts);
        Self::inode(shown, real_device, device, ino)
    }

    /// Rewrite a descriptor link's target (`pipe:[N]`, `socket:[N]`) with
    /// the inode number `fstat` shows for it.
    pub(crate) fn link(shown: &mut Shown, target: &str) -> Option<String> {
        let (kind, rest) = target.split_once(":[")?;
        let ino: u64 = rest.strip_suffix(']')?.parse().ok()?;
        let unmounted = Device { minor: 0, kind: Kind::Synthetic, mounted: false };
        let virtual_ino = Self::inode(shown, 0, unmounted, ino);
        Some(format!("{kind}:[{virtual_ino}]"))
    }
}

/// The `count`-th virtual number (from 1), bounded.
fn virtual_number(count: usize) -> u32 {
    count.min(DEVICES_MAX) as u32 + 1
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
100 99 0:50 / / rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k
101 100 8:1 /usr /usr ro,nosuid,nodev - ext4 /dev/sda1 rw
102 100 8:1 /etc /etc ro,nosuid,nodev - ext4 /dev/sda1 rw
103 100 0:51 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw
104 100 0:5 /null /dev/null rw,nosuid - devtmpfs udev rw
105 100 0:52 / /proc rw,nosuid,nodev,noexec - proc proc rw
";
    const EPOCH: u64 = 946_684_800;
    const LONG_AGO: i64 = 1_600_000_000;
    const SET_UP: i64 = 1_800_000_000;

    fn mounts() -> Mounts {
        Mounts { mountinfo: MOUNTINFO.to_owned(), root_changed: SET_UP }
    }

    fn stat_of(dev: u64, ino: u64, [atime, mtime, ctime]: [i64; 3]) -> [u8; STAT_SIZE] {
        let mut buffer = [0u8; STAT_SIZE];
        put_u64(&mut buffer, stat::DEV, dev);
        put_u64(&mut buffer, stat::INO, ino);
        for (at, secs) in [(stat::ATIME, atime), (stat::MTIME, mtime), (stat::CTIME, ctime)] {
            put_u64(&mut buffer, at, secs as u64);
            put_u64(&mut buffer, at + 8, 7);
        }
        buffer
    }

    fn shown(metadata: &mut Metadata, seen: &mut Shown, mut buffer: [u8; STAT_SIZE]) -> (u64, u64, [i64; 3]) {
        metadata.stat(seen, &mut buffer, mounts);
        let times = [stat::ATIME, stat::MTIME, stat::CTIME].map(|at| u64_at(&buffer, at) as i64);
        (u64_at(&buffer, stat::DEV), u64_at(&buffer, stat::INO), times)
    }

    #[test]
    fn devices_inodes_and_times_show_no_host() {
        let mut metadata = Metadata::new(EPOCH);
        let seen = &mut Shown::default();
        let now = SET_UP + 10;
        let epoch = EPOCH as i64;
        // A file the workload wrote in /tmp: a virtual inode number; the
        // kernel's stamps become the epoch; a time the workload set itself
        // stays.
        let written = stat_of(libc::makedev(0, 51), 7, [now, LONG_AGO, now]);
        assert_eq!(shown(&mut metadata, seen, written), (libc::makedev(0, 3), 1, [epoch, LONG_AGO, epoch]));
        // A host file: a virtual inode, dated at the epoch; a second device
        // number for the same disk is the same.
        let host = stat_of(libc::makedev(8, 1), 123_456, [now, LONG_AGO, LONG_AGO + 5]);
        assert_eq!(shown(&mut metadata, seen, host), (libc::makedev(0, 2), 2, [epoch; 3]));
        let other = stat_of(libc::makedev(8, 1), 99, [LONG_AGO; 3]);
        assert_eq!(shown(&mut metadata, seen, other).1, 3, "numbered in the order first shown");
        assert_eq!(shown(&mut metadata, seen, host).1, 2, "the same file, the same number");
        // A device node and a pipe: nothing of the host.
        let null = stat_of(libc::makedev(0, 5), 4, [LONG_AGO; 3]);
        assert_eq!(shown(&mut metadata, seen, null), (libc::makedev(0, 4), 4, [epoch; 3]));
        let pipe = stat_of(libc::makedev(0, 14), 987_654, [now; 3]);
        assert_eq!(shown(&mut metadata, seen, pipe), (libc::makedev(0, 6), 5, [epoch; 3]), "after the mounted devices");
        assert_eq!(Metadata::link(seen, "pipe:[987654]").as_deref(), Some("pipe:[5]"), "as its fstat shows it");
        assert_eq!(Metadata::link(seen, "socket:[5]").as_deref(), Some("socket:[6]"));
        assert_eq!(Metadata::link(seen, "/usr/bin/ls"), None);
        // /proc's link count counts the host's processes.
        let mut proc_root = stat_of(libc::makedev(0, 52), 1, [now; 3]);
        put_u64(&mut proc_root, stat::NLINK, 612);
        metadata.stat(seen, &mut proc_root, mounts);
        assert_eq!(u64_at(&proc_root, stat::NLINK), 1);
    }

    #[test]
    fn statx_rewrites_only_what_was_filled() {
        let mut metadata = Metadata::new(EPOCH);
        let mut buffer = [0u8; STATX_SIZE];
        put_u32(&mut buffer, statx::MASK, statx::WANT_INO | statx::WANT_MTIME | statx::WANT_MNT_ID);
        put_u32(&mut buffer, statx::DEV_MAJOR, 8);
        put_u32(&mut buffer, statx::DEV_MINOR, 1);
        put_u64(&mut buffer, statx::INO, 555);
        put_u64(&mut buffer, statx::MTIME, LONG_AGO as u64);
        put_u64(&mut buffer, statx::ATIME, 123);
        put_u64(&mut buffer, statx::MNT_ID, 102);
        metadata.statx(&mut Shown::default(), &mut buffer, mounts);
        assert_eq!((u32_at(&buffer, statx::DEV_MAJOR), u32_at(&buffer, statx::DEV_MINOR)), (0, 2));
        assert_eq!(u64_at(&buffer, statx::INO), 1);
        assert_eq!(u64_at(&buffer, statx::MTIME), EPOCH);
        assert_eq!(u64_at(&buffer, statx::ATIME), 123, "not asked for, not filled, left");
        assert_eq!(u64_at(&buffer, statx::MNT_ID), 3, "the third mount");
    }

    #[test]
    fn listings_show_the_same_inodes_as_stat() {
        let mut metadata = Metadata::new(EPOCH);
        let seen = &mut Shown::default();
        let host = libc::makedev(8, 1);
        let listed = (metadata.listed_inode(seen, host, 300, mounts), metadata.listed_inode(seen, host, 200, mounts));
        assert_eq!(listed, (1, 2));
        let a = stat_of(host, 200, [LONG_AGO; 3]);
        assert_eq!(shown(&mut metadata, seen, a).1, 2);
        // The cage's own tmpfs's files get virtual numbers too.
        assert_eq!(metadata.listed_inode(seen, libc::makedev(0, 51), 9, mounts), 3);
    }

    /// Two processes running at once take numbers from their own tables,
    /// so which of them the host ran first changes nothing either sees.
    #[test]
    fn numbers_follow_each_process_not_the_interleaving() {
        let host = libc::makedev(8, 1);
        let pipefs = libc::makedev(0, 14);
        let (a, b, pipe) =
            (stat_of(host, 500, [LONG_AGO; 3]), stat_of(host, 600, [LONG_AGO; 3]), stat_of(pipefs, 9, [LONG_AGO; 3]));
        let interleavings = [[0, 1, 2, 3], [2, 3, 0, 1], [0, 2, 1, 3], [2, 0, 3, 1]];
        let mut seen_by = Vec::new();
        for order in interleavings {
            let mut metadata = Metadata::new(EPOCH);
            let mut parent = Shown::default();
            assert_eq!(shown(&mut metadata, &mut parent, a).1, 1);
            // The fork: the child starts with what its parent has shown.
            let mut child = parent.clone();
            let mut results = [(0, 0); 4];
            for step in order {
                // Steps 0 and 1 are the parent's (b, then the pipe); 2
                // and 3 the child's (the pipe, then a).
                let (process, buffer) = match step {
                    0 => (&mut parent, b),
                    1 => (&mut parent, pipe),
                    2 => (&mut child, pipe),
                    _ => (&mut child, a),
                };
                let (dev, ino, _) = shown(&mut metadata, process, buffer);
                results[step] = (dev, ino);
            }
            seen_by.push(results);
        }
        assert!(seen_by.windows(2).all(|pair| pair[0] == pair[1]), "{seen_by:?}");
        let [b_in_parent, pipe_in_parent, pipe_in_child, a_in_child] = seen_by[0];
        assert_eq!(a_in_child.1, 1, "inherited from the parent");
        assert_eq!((b_in_parent.1, pipe_in_parent.1, pipe_in_child.1), (2, 3, 2));
        assert_eq!(pipe_in_parent.0, pipe_in_child.0, "the first device after the mounted ones, in both");
    }

    #[test]
    fn statfs_shows_counts_only_for_the_cages_own_filesystems() {
        let statfs_of = |kind: i64, flags: u64| {
            let mut buffer = [0u8; STATFS_SIZE];
            put_u64(&mut buffer, statfs::TYPE, kind as u64);
            put_u64(&mut buffer, statfs::BLOCKS, 1000);
            put_u64(&mut buffer, statfs::FSID, 0xdead_beef);
            put_u64(&mut buffer, statfs::FLAGS, flags);
            Metadata::statfs(&mut buffer);
            (u64_at(&buffer, statfs::BLOCKS), u64_at(&buffer, statfs::FSID))
        };
        assert_eq!(statfs_of(TMPFS_MAGIC, statfs::NODEV), (1000, 0));
        assert_eq!(statfs_of(TMPFS_MAGIC, 0), (0, 0), "devtmpfs");
        assert_eq!(statfs_of(0xef53, statfs::NODEV), (0, 0), "a host disk");
    }
}
