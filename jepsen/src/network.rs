//! Where the nodes run, and how the links between them are cut and degraded.
//!
//! - `netns` (the default): each node in its own network namespace, with a
//!   veth pair to a bridge in a hub namespace; the host reaches the bridge
//!   through one more veth pair, so clients (on the host) reach every node
//!   and no rule of the host's own firewall is involved. Partitions are
//!   iptables rules inside the receiving node's namespace; delay and loss
//!   (`delay`) apply to everything the hub's bridge forwards, clients'
//!   packets included, as `tc netem` on every node would.
//! - `loopback`: each node on its own loopback address; partitions, delay
//!   and loss are iptables rules in the host's `INPUT` between the nodes'
//!   addresses (clients dial from 127.0.0.1 and are not delayed).
//! - `docker`: each node a container of an image built from the `docklock`
//!   binary and the libraries it links (`docker import` of a tarball: no
//!   registry needed), on a private bridge network with a fixed address per
//!   node and its data directory mounted from the host. Partitions, delay
//!   and loss are iptables rules in the host's `FORWARD` between containers
//!   (bridged packets pass it); pause is the cgroup freezer (`docker pause`).
//!
//! Every name the harness creates starts with [`PREFIX`] (namespaces,
//! interfaces, containers, networks, images carry it or the
//! [`DOCKER_LABEL`]), so `docklock-jepsen clean` finds what a killed run
//! left. A [`Backend`] removes what it created when it drops.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use docklock_node::launcher::{AddressPlan, LocalCluster, LocalNode, Wrapper};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::delay::{Counts, Delayer, IMPAIRMENT};
use crate::firewall::{iptables_ok_in, Firewall, Hook};

/// Prefix of every namespace, interface, container, network and image name.
pub const PREFIX: &str = "dlj";
/// Label on every container and network of the Docker backend.
pub const DOCKER_LABEL: &str = "docklock-jepsen";
/// The port every node listens on when it has an address of its own.
const PORT: u16 = 7000;
/// The netfilter queue of the hub namespace's delay rule (the hub is the
/// run's own, so any number will do).
const HUB_QUEUE: u16 = 0;

/// Which backend runs the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Network namespaces and a bridge.
    Netns,
    /// Loopback addresses on the host.
    Loopback,
    /// Docker containers on a private network.
    Docker,
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "netns" => Ok(Self::Netns),
            "loopback" => Ok(Self::Loopback),
            "docker" => Ok(Self::Docker),
            other => Err(format!("unknown backend {other:?}; known: netns, loopback, docker")),
        }
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A /24 under 10.0.0.0/8 that no route of the host uses yet.
fn free_subnet() -> anyhow::Result<Ipv4Addr> {
    let routes = run("ip", &["-4", "route", "show", "table", "all"])?;
    for _ in 0..64 {
        let candidate = Ipv4Addr::new(10, 201 + rand::random::<u8>() % 50, rand::random::<u8>(), 0);
        let [a, b, c, _] = candidate.octets();
        if !routes.contains(&format!("{a}.{b}.{c}.")) {
            return Ok(candidate);
        }
    }
    bail!("no free 10.x.y.0/24 subnet found for the cluster")
}

/// The network namespaces of one run: a hub holding the bridge, one
/// namespace per node address (slot), created when a node first starts
/// there. A replacement node started on a removed node's address reuses its
/// slot.
struct Namespaces {
    tag: String,
    subnet: Ipv4Addr,
    slots: Mutex<BTreeSet<u8>>,
}

impl Namespaces {
    fn hub(&self) -> String {
        format!("{}h", self.tag)
    }

    fn slot_name(&self, host: u8) -> String {
        format!("{}n{host}", self.tag)
    }

    fn create(tag: String) -> anyhow::Result<Self> {
        let subnet = free_subnet()?;
        let namespaces = Self { tag, subnet, slots: Mutex::new(BTreeSet::new()) };
        let (hub, host_side) = (namespaces.hub(), namespaces.tag.clone());
        let [a, b, c, _] = subnet.octets();
        run("ip", &["netns", "add", &hub])?;
        run("ip", &["link", "add", &host_side, "type", "veth", "peer", "name", "host", "netns", &hub])?;
        run("ip", &["addr", "add", &format!("{a}.{b}.{c}.1/24"), "dev", &host_side])?;
        run("ip", &["link", "set", "dev", &host_side, "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "dev", "br0", "up"])?;
        run("ip", &["-n", &hub, "link", "set", "dev", "host", "master", "br0", "up"])?;
        Ok(namespaces)
    }

    /// The namespace of the node at `ip`, created on first use.
    fn ensure_slot(&self, ip: Ipv4Addr) -> anyhow::Result<String> {
        let host = ip.octets()[3];
        let name = self.slot_name(host);
        let mut slots = self.slots.lock().expect("slot set lock");
        if slots.contains(&host) {
            return Ok(name);
        }
        let (hub, port) = (self.hub(), format!("n{host}"));
        run("ip", &["netns", "add", &name])?;
        slots.insert(host);
        run("ip", &["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &name])?;
        run("ip", &["-n", &hub, "link", "set", "dev", &port, "master", "br0", "up"])?;
        run("ip", &["-n", &name, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        run("ip", &["-n", &name, "link", "set", "dev", "eth0", "up"])?;
        run("ip", &["-n", &name, "link", "set", "dev", "lo", "up"])?;
        Ok(name)
    }

    fn slot_names(&self) -> Vec<String> {
        self.slots.lock().expect("slot set lock").iter().map(|host| self.slot_name(*host)).collect()
    }

    /// Agents start in their slot's namespace (entered between fork and
    /// exec: the one `unsafe` block of the harness).
    #[allow(unsafe_code)]
    fn wrapper(self: &Arc<Self>) -> Wrapper {
        let namespaces = self.clone();
        Arc::new(move |node: &LocalNode, mut command: Command| {
            let name = namespaces.ensure_slot(node.ip()?)?;
            let netns = File::open(Path::new("/run/netns").join(&name))
                .with_context(|| format!("cannot open network namespace {name}"))?;
            // SAFETY: the hook runs in the forked child before exec; it only
            // makes the setns system call on a descriptor opened before the
            // fork, and allocates nothing.
            unsafe {
                command.pre_exec(move || setns(&netns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
            }
            Ok(command)
        })
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces and their veth peers.
        for name in self.slot_names().into_iter().chain([self.hub()]) {
            if let Err(error) = run("ip", &["netns", "del", &name]) {
                eprintln!("warning: could not remove network namespace {name}: {error:#}");
            }
        }
    }
}

/// The Docker backend's network, image and containers.
struct Docker {
    tag: String,
    subnet: Ipv4Addr,
    image: String,
}

impl Docker {
    fn container(&self, ip: Ipv4Addr) -> String {
        format!("{}n{}", self.tag, ip.octets()[3])
    }

    fn create(tag: String, binary: &Path) -> anyhow::Result<Self> {
        run("docker", &["info", "--format", "{{.ServerVersion}}"]).context("the Docker engine does not answer")?;
        let subnet = free_subnet()?;
        let image = format!("{PREFIX}-docklock:{tag}");
        let docker = Self { tag, subnet, image };
        docker.build_image(binary)?;
        let [a, b, c, _] = subnet.octets();
        run(
            "docker",
            &[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &format!("{a}.{b}.{c}.0/24"),
                "--gateway",
                &format!("{a}.{b}.{c}.1"),
                "--label",
                &format!("{DOCKER_LABEL}={}", docker.tag),
                &docker.tag,
            ],
        )?;
        Ok(docker)
    }

    /// `docker import` of a root holding the binary and the shared
    /// libraries `ldd` names (no base image: none can be pulled here).
    fn build_image(&self, binary: &Path) -> anyhow::Result<()> {
        let stage = tempfile::tempdir()?;
        let copy = |from: &Path, to: &Path| -> anyhow::Result<()> {
            let target = stage.path().join(to.strip_prefix("/").unwrap_or(to));
            std::fs::create_dir_all(target.parent().context("a file has a parent")?)?;
            std::fs::copy(from, &target).with_context(|| format!("cannot copy {}", from.display()))?;
            Ok(())
        };
        copy(binary, Path::new("/docklock"))?;
        let libraries = run("ldd", &[&binary.display().to_string()])?;
        for line in libraries.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
            if path.starts_with('/') {
                copy(Path::new(path), Path::new(path))?;
            }
        }
        std::fs::create_dir_all(stage.path().join("tmp"))?;
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(stage.path())
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run tar")?;
        let archive = tar.stdout.take().context("tar's output")?;
        let imported = Command::new("docker")
            .args(["import", "--change", "ENTRYPOINT [\"/docklock\"]", "-", &self.image])
            .stdin(archive)
            .output()
            .context("cannot run docker import")?;
        tar.wait()?;
        if !imported.status.success() {
            bail!("docker import: {}", String::from_utf8_lossy(&imported.stderr).trim());
        }
        Ok(())
    }

    fn wrapper(self: &Arc<Self>, mount: PathBuf) -> Wrapper {
        let docker = self.clone();
        Arc::new(move |node: &LocalNode, command: Command| {
            let ip = node.ip()?;
            let name = docker.container(ip);
            // The container of the node's previous life may still be being
            // removed (`--rm` is asynchronous).
            let _ = run("docker", &["rm", "-f", &name]);
            let mut wrapped = Command::new("docker");
            wrapped
                .args(["run", "--rm", "--name", &name, "--network", &docker.tag, "--ip", &ip.to_string()])
                .args(["--label", &format!("{DOCKER_LABEL}={}", docker.tag)])
                .arg("-v")
                .arg(format!("{0}:{0}", mount.display()));
            for (key, value) in command.get_envs() {
                if let Some(value) = value {
                    let (key, value) = (key.to_string_lossy(), value.to_string_lossy());
                    wrapped.args(["-e", &format!("{key}={value}")]);
                }
            }
            wrapped.arg(&docker.image).args(command.get_args());
            Ok(wrapped)
        })
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let label = format!("label={DOCKER_LABEL}={}", self.tag);
        if let Ok(ids) = run("docker", &["ps", "-aq", "--filter", &label]) {
            for id in ids.split_whitespace() {
                let _ = run("docker", &["rm", "-f", id]);
            }
        }
        for (what, name) in [("network", &self.tag), ("image", &self.image)] {
            if let Err(error) = run("docker", &[what, "rm", name]) {
                eprintln!("warning: could not remove docker {what} {name}: {error:#}");
            }
        }
    }
}

enum Inner {
    Netns(Arc<Namespaces>),
    Loopback,
    Docker(Arc<Docker>),
}

/// A run's nodes' network: created before the cluster, removed on drop.
pub struct Backend {
    inner: Inner,
    /// The nodes' /24.
    subnet: Ipv4Addr,
    /// The host firewall (loopback and Docker backends), installed at the
    /// first fault that needs it.
    firewall: Option<Firewall>,
    /// The host netfilter queue of the delay rule (loopback and Docker).
    host_queue: u16,
    /// The running delayer, while packets are delayed.
    delayer: Option<Delayer>,
}

impl Backend {
    /// Create the network for a run and describe (without starting) a
    /// cluster of `size` nodes on it under `dir` (an absolute path).
    pub fn create(
        kind: BackendKind,
        binary: &Path,
        dir: &Path,
        size: u64,
        extra_args: &[&str],
    ) -> anyhow::Result<(Self, LocalCluster)> {
        let tag = format!("{PREFIX}{:04x}", rand::random::<u16>());
        let (inner, plan, wrapper) = match kind {
            BackendKind::Loopback => (Inner::Loopback, AddressPlan::random_loopback(), None),
            BackendKind::Netns => {
                let namespaces = Arc::new(Namespaces::create(tag)?);
                let plan = AddressPlan { network: namespaces.subnet, port: Some(PORT) };
                let wrapper = namespaces.wrapper();
                (Inner::Netns(namespaces), plan, Some(wrapper))
            }
            BackendKind::Docker => {
                let docker = Arc::new(Docker::create(tag, binary)?);
                let plan = AddressPlan { network: docker.subnet, port: Some(PORT) };
                let wrapper = docker.wrapper(dir.to_owned());
                (Inner::Docker(docker), plan, Some(wrapper))
            }
        };
        let backend = Self {
            inner,
            subnet: plan.network,
            firewall: None,
            // Shared with whatever else queues on the host: pick one at random.
            host_queue: 10_000 + rand::random::<u16>() % 50_000,
            delayer: None,
        };
        let cluster = LocalCluster::with_plan(binary, dir, size, extra_args, plan, wrapper)?;
        Ok((backend, cluster))
    }

    /// Send `signal` to node `id`'s agent (Docker: to its container).
    pub fn signal(&self, cluster: &LocalCluster, id: u64, signal: Signal) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Docker(docker) => {
                let verb = match signal {
                    Signal::SIGSTOP => "pause",
                    Signal::SIGCONT => "unpause",
                    other => bail!("the docker backend does not send {other}"),
                };
                run("docker", &[verb, &docker.container(cluster.ip(id)?)]).map(drop)
            }
            Inner::Netns(_) | Inner::Loopback => {
                if let Some(pid) = cluster.nodes.get(&id).and_then(LocalNode::pid) {
                    kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
                }
                Ok(())
            }
        }
    }

    /// kill -9 node `id` and reap it.
    pub fn kill(&self, cluster: &mut LocalCluster, id: u64) -> anyhow::Result<()> {
        if let Inner::Docker(docker) = &self.inner {
            // Killing the `docker run` client would leave the container.
            let _ = run("docker", &["kill", "--signal", "KILL", &docker.container(cluster.ip(id)?)]);
        }
        cluster.kill(id)
    }

    /// Cut the links in `cuts`: each `(to, from)` pair drops every packet
    /// node `from` sends node `to`.
    pub fn cut(&mut self, cluster: &LocalCluster, cuts: &[(u64, u64)]) -> anyhow::Result<()> {
        for (to, from) in cuts {
            let (to_ip, from_ip) = (cluster.ip(*to)?, cluster.ip(*from)?);
            match &self.inner {
                Inner::Netns(namespaces) => {
                    let netns = namespaces.ensure_slot(to_ip)?;
                    iptables_ok_in(Some(&netns), &["-A", "INPUT", "-s", &from_ip.to_string(), "-j", "DROP"])?;
                }
                Inner::Loopback | Inner::Docker(_) => self.firewall()?.cut(from_ip, to_ip)?,
            }
        }
        Ok(())
    }

    /// Restore every link.
    pub fn heal(&self) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Netns(namespaces) => {
                for netns in namespaces.slot_names() {
                    iptables_ok_in(Some(&netns), &["-F", "INPUT"])?;
                }
                Ok(())
            }
            Inner::Loopback | Inner::Docker(_) => self.firewall.as_ref().map_or(Ok(()), Firewall::heal),
        }
    }

    /// The host firewall, installed on first use.
    fn firewall(&mut self) -> anyhow::Result<&Firewall> {
        if self.firewall.is_none() {
            let hook = if matches!(self.inner, Inner::Loopback) { Hook::Input } else { Hook::Forward };
            self.firewall = Some(Firewall::install(hook)?);
        }
        Ok(self.firewall.as_ref().expect("installed above"))
    }

    /// Start delaying and dropping packets between the nodes
    /// ([`IMPAIRMENT`]); `seed` drives the delays and drops.
    pub fn start_delay(&mut self, seed: u64) -> anyhow::Result<()> {
        if self.delayer.is_some() {
            return Ok(());
        }
        let hub = match &self.inner {
            Inner::Netns(namespaces) => Some(namespaces.hub()),
            Inner::Loopback | Inner::Docker(_) => None,
        };
        let queue = if hub.is_some() { HUB_QUEUE } else { self.host_queue };
        let delayer =
            Delayer::start(hub.as_ref().map(|hub| Path::new("/run/netns").join(hub)), queue, IMPAIRMENT, seed)?;
        match &hub {
            Some(hub) => {
                let queue = queue.to_string();
                let rule = ["-A", "FORWARD", "-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"];
                iptables_ok_in(Some(hub), &rule)?;
            }
            None => {
                let subnet = self.subnet;
                self.firewall()?.queue(subnet, queue)?;
            }
        }
        self.delayer = Some(delayer);
        Ok(())
    }

    /// Stop delaying packets (on the loopback and Docker backends this also
    /// removes any cut: one fault is active at a time); what was done.
    pub fn stop_delay(&mut self) -> anyhow::Result<Counts> {
        let Some(delayer) = self.delayer.take() else { return Ok(Counts::default()) };
        match &self.inner {
            Inner::Netns(namespaces) => iptables_ok_in(Some(&namespaces.hub()), &["-F", "FORWARD"])?,
            Inner::Loopback | Inner::Docker(_) => self.firewall.as_ref().map_or(Ok(()), Firewall::heal)?,
        }
        delayer.stop()
    }
}

/// Names of namespaces a run left behind.
pub fn leftover_namespaces() -> Vec<String> {
    let listed = run("ip", &["netns", "list"]).unwrap_or_default();
    listed
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Ids of containers, networks and images a run left behind (empty if no
/// Docker engine answers).
pub fn leftover_docker() -> Vec<String> {
    let label = format!("label={DOCKER_LABEL}");
    let repository = format!("{PREFIX}-docklock");
    let mut found = Vec::new();
    for (what, args) in [
        ("container", ["ps", "-aq", "--filter", label.as_str()].as_slice()),
        ("network", ["network", "ls", "-q", "--filter", label.as_str()].as_slice()),
        ("image", ["images", "-q", repository.as_str()].as_slice()),
    ] {
        let ids = run("docker", args).unwrap_or_default();
        found.extend(ids.split_whitespace().map(|id| format!("{what} {id}")));
    }
    found
}

/// Remove every leftover namespace, container, network and image.
pub fn clean() -> anyhow::Result<()> {
    for name in leftover_namespaces() {
        run("ip", &["netns", "del", &name])?;
    }
    for leftover in leftover_docker() {
        let (what, id) = leftover.split_once(' ').expect("formatted above");
        let args: &[&str] = match what {
            "container" => &["rm", "-f", id],
            "network" => &["network", "rm", id],
            _ => &["rmi", "-f", id],
        };
        run("docker", args)?;
    }
    Ok(())
}
