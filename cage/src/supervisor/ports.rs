//! Ephemeral ports, chosen by the cage: the kernel picks a random free
//! port when an IPv4 or IPv6 socket is bound to port 0, or connects or
//! listens unbound, and a program (or its peer, in `accept` or
//! `getpeername`) sees it. Here the supervisor binds such a socket itself
//! first, through a duplicate of the workload's descriptor (a socket
//! belongs to the network namespace it was made in, so binding it from
//! outside binds it there), to the next port of the process's own
//! sequence: a function of its place in the process tree and how many it
//! has taken, the same on every run. A port in use is skipped for the
//! next (deterministic unless two processes take ports at the same time
//! and meet). A datagram socket sending unbound gets its port the same
//! way at a `sendto` that names an address (the filter sends only those
//! here) or a `sendmsg` that does (its address is inside a structure the
//! filter cannot read, so every `sendmsg` stops here and is looked at: one
//! stop more per call for programs that write through it).

use std::os::fd::{AsRawFd, OwnedFd};

use sha3::{Digest as _, Sha3_256};

use super::{read_bytes, tracee_descriptor, Supervisor};
use crate::witness::Record;

/// The range ports are taken from: Linux's default ephemeral range.
const FIRST_PORT: u16 = 32_768;
const PORTS: u16 = 28_232;
/// Ports in use tried before the call is answered `EADDRINUSE`.
const TRIES_MAX: u32 = 64;

impl Supervisor<'_> {
    /// At the seccomp stop of a `bind`, `connect`, `listen`, an
    /// addressed `sendto` or a `sendmsg`: bind the
    /// socket to a port of the process's sequence if the kernel would
    /// otherwise pick one. The call then runs (a `bind` to port 0 is
    /// answered instead: it is done).
    pub(super) fn choose_port(&mut self, pid: libc::pid_t, number: i64, regs: libc::user_regs_struct) {
        // A `sendmsg` names an address in the `msg_name` pointer that
        // starts its `msghdr`; without one (a connected socket's write, or
        // descriptors passed) the kernel binds nothing.
        if number == libc::SYS_sendmsg {
            let named = read_bytes(pid, regs.rsi, 8).is_some_and(|name| name.iter().any(|byte| *byte != 0));
            if !named {
                return self.proceed(pid, 0);
            }
        }
        let Ok(socket) = tracee_descriptor(pid, regs.rdi as i32) else { return self.proceed(pid, 0) };
        let Some(family) = inet_stream_or_datagram(&socket) else { return self.proceed(pid, 0) };
        let wanted = match number {
            libc::SYS_bind => {
                let length = (regs.rdx as usize).min(std::mem::size_of::<libc::sockaddr_in6>());
                match read_bytes(pid, regs.rsi, length).and_then(|bytes| Address::parse(&bytes)) {
                    Some(address) if address.family == family && address.port() == 0 => address,
                    _ => return self.proceed(pid, 0),
                }
            }
            // The kernel would bind an unbound socket at connect, listen or
            // an addressed send.
            _ if bound_port(&socket) == Some(0) => Address::any(family),
            _ => return self.proceed(pid, 0),
        };
        let name = super::syscalls::name(number).unwrap_or("unknown");
        self.written.clear();
        let result = self.bind_next_port(pid, &socket, wanted);
        if number == libc::SYS_bind || result < 0 {
            // The port is what the emulation wrote; `bind` returns 0.
            return self.skip_with(pid, regs, name, result.min(0));
        }
        let port = (result as u16).to_be_bytes().to_vec();
        if self.event(Record::Call { name: format!("{name} port"), result: 0, data: port }, pid) {
            self.proceed(pid, 0);
        }
    }

    /// Bind `socket` to `address` with the process's next free port: the
    /// port, or `-errno`.
    fn bind_next_port(&mut self, pid: libc::pid_t, socket: &OwnedFd, mut address: Address) -> i64 {
        for _ in 0..TRIES_MAX {
            let process = self.process(pid);
            let port = nth_port(&process.path, process.ports_taken);
            process.ports_taken = process.ports_taken.wrapping_add(1);
            address.set_port(port);
            // SAFETY: bind on a descriptor this thread owns, with an
            // address of the length given.
            let bound = unsafe { libc::bind(socket.as_raw_fd(), address.bytes.as_ptr().cast(), address.length) };
            if bound == 0 {
                self.written.extend_from_slice(&port.to_be_bytes());
                return i64::from(port);
            }
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
            if errno != libc::EADDRINUSE {
                return -i64::from(errno);
            }
        }
        -i64::from(libc::EADDRINUSE)
    }
}

/// The `n`-th port of the process at `path` in the process tree.
fn nth_port(path: &[u32], n: u32) -> u16 {
    let mut hasher = Sha3_256::new();
    hasher.update(b"docklock-port-v1");
    for rank in path {
        hasher.update(rank.to_be_bytes());
    }
    hasher.update(n.to_be_bytes());
    let digest = hasher.finalize();
    FIRST_PORT + u16::from_be_bytes([digest[0], digest[1]]) % PORTS
}

/// The socket's family if it is an IPv4 or IPv6 stream or datagram socket.
fn inet_stream_or_datagram(socket: &OwnedFd) -> Option<u16> {
    let mut kind: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int to `kind` on a descriptor this
    // thread owns.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    if got != 0 || !matches!(kind, libc::SOCK_STREAM | libc::SOCK_DGRAM) {
        return None;
    }
    let (family, _) = local_address(socket)?;
    matches!(i32::from(family), libc::AF_INET | libc::AF_INET6).then_some(family)
}

/// The socket's bound port (0 if unbound).
fn bound_port(socket: &OwnedFd) -> Option<u16> {
    local_address(socket).map(|(_, port)| port)
}

fn local_address(socket: &OwnedFd) -> Option<(u16, u16)> {
    let mut storage = [0u8; std::mem::size_of::<libc::sockaddr_in6>()];
    let mut length = storage.len() as libc::socklen_t;
    // SAFETY: getsockname writes at most `length` bytes to `storage`.
    if unsafe { libc::getsockname(socket.as_raw_fd(), storage.as_mut_ptr().cast(), &mut length) } != 0 {
        return None;
    }
    // The kernel says how long the whole address is, which for a Unix
    // socket bound to a long path is more than `storage` holds (and then
    // not an address this parses).
    let address = Address::parse(storage.get(..length as usize)?)?;
    Some((address.family, address.port()))
}

/// An IPv4 or IPv6 socket address, as bytes the kernel takes.
struct Address {
    family: u16,
    bytes: [u8; std::mem::size_of::<libc::sockaddr_in6>()],
    length: libc::socklen_t,
}

impl Address {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let family = u16::from_ne_bytes(bytes.get(..2)?.try_into().ok()?);
        let length = match i32::from(family) {
            libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
            libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
            _ => return None,
        };
        let mut address = Self { family, bytes: [0; std::mem::size_of::<libc::sockaddr_in6>()], length: length as _ };
        address.bytes[..length].copy_from_slice(bytes.get(..length)?);
        Some(address)
    }

    /// The wildcard address of `family`, port 0.
    fn any(family: u16) -> Self {
        let mut bytes = [0u8; std::mem::size_of::<libc::sockaddr_in6>()];
        bytes[..2].copy_from_slice(&family.to_ne_bytes());
        let length = if i32::from(family) == libc::AF_INET {
            std::mem::size_of::<libc::sockaddr_in>()
        } else {
            std::mem::size_of::<libc::sockaddr_in6>()
        };
        Self { family, bytes, length: length as _ }
    }

    /// Both families keep the port, in network order, at bytes 2..4.
    fn port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    fn set_port(&mut self, port: u16) {
        self.bytes[2..4].copy_from_slice(&port.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_process_and_stay_in_range() {
        let first = nth_port(&[1, 2], 0);
        assert_eq!(first, nth_port(&[1, 2], 0));
        assert_ne!(first, nth_port(&[1, 3], 0), "another process, another sequence");
        assert_ne!(first, nth_port(&[1, 2], 1));
        assert!((0..1000).map(|n| nth_port(&[1], n)).all(|port| (FIRST_PORT..FIRST_PORT + PORTS).contains(&port)));
    }

    #[test]
    fn addresses_parse_and_take_a_port() {
        let mut v4 = Address::any(libc::AF_INET as u16);
        assert_eq!((v4.port(), v4.length as usize), (0, std::mem::size_of::<libc::sockaddr_in>()));
        v4.set_port(40_000);
        let again = Address::parse(&v4.bytes[..v4.length as usize]).unwrap();
        assert_eq!(again.port(), 40_000);
        assert!(Address::parse(&(libc::AF_UNIX as u16).to_ne_bytes()).is_none());
        assert!(Address::parse(&(libc::AF_INET6 as u16).to_ne_bytes()).is_none(), "too short");
    }
}
