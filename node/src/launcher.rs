//! Local multi-process clusters: each node a real `docklock agent` process
//! with its own address and data directory. Used by `docklock demo`, the
//! integration tests and the chaos harness (which runs the agents in network
//! namespaces or containers through a [`Wrapper`]). Every child is killed
//! when the cluster drops.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use docklock_proto::client::{Client, ClientOptions};

/// One node of a [`LocalCluster`].
#[derive(Debug)]
pub struct LocalNode {
    /// Node id.
    pub id: u64,
    /// Its address.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stderr goes.
    pub log_path: PathBuf,
    child: Option<Child>,
    joined: bool,
}

impl LocalNode {
    /// Whether its process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Its process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The IP address it listens on.
    pub fn ip(&self) -> anyhow::Result<Ipv4Addr> {
        let host = self.addr.rsplit_once(':').map_or(self.addr.as_str(), |(host, _)| host);
        host.parse().with_context(|| format!("node {}'s address {} is not IPv4", self.id, self.addr))
    }
}

/// Builds the command that starts an agent from its plain command line
/// (`binary agent --id ...`, with its environment): the chaos harness wraps
/// it to enter a network namespace or to run it in a container. Called
/// before every start of the node.
pub type Wrapper = Arc<dyn Fn(&LocalNode, Command) -> anyhow::Result<Command> + Send + Sync>;

/// Where a cluster's nodes listen: node `id` gets host `10 + id` in a /24.
#[derive(Debug, Clone, Copy)]
pub struct AddressPlan {
    /// The /24 (its last octet is ignored).
    pub network: Ipv4Addr,
    /// One port for every node (each has its own address), or `None` for a
    /// free port picked on this host at start-up.
    pub port: Option<u16>,
}

impl AddressPlan {
    /// A random `127.a.b.0/24` loopback block with free ports, so that links
    /// between two nodes can be cut by address without touching any other
    /// cluster.
    pub fn random_loopback() -> Self {
        let block = [rand::random::<u8>() % 250 + 1, rand::random::<u8>() % 250 + 1];
        Self { network: Ipv4Addr::new(127, block[0], block[1], 0), port: None }
    }

    /// The address of node `id`.
    pub fn ip(&self, id: u64) -> anyhow::Result<Ipv4Addr> {
        let [a, b, c, _] = self.network.octets();
        Ok(Ipv4Addr::new(a, b, c, host_of(id)?))
    }

    fn addr(&self, id: u64) -> anyhow::Result<String> {
        let ip = self.ip(id)?;
        let port = match self.port {
            Some(port) => port,
            None => free_port(ip)?,
        };
        Ok(format!("{ip}:{port}"))
    }
}

/// A cluster of local agent processes, addressed by an [`AddressPlan`].
pub struct LocalCluster {
    binary: PathBuf,
    dir: PathBuf,
    plan: AddressPlan,
    wrapper: Option<Wrapper>,
    initial_cluster: String,
    extra_args: Vec<String>,
    initial_args: Vec<String>,
    env: Vec<(String, String)>,
    node_env: Vec<(u64, String, String)>,
    /// The nodes by id.
    pub nodes: BTreeMap<u64, LocalNode>,
}

/// A free port on `ip`. The port is released before use, so another process
/// could take it in between; tests tolerate that rare race by failing loudly.
pub fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Host part of node `id`'s address in its cluster's block.
fn host_of(id: u64) -> anyhow::Result<u8> {
    u8::try_from(10 + id).ok().filter(|host| *host < 255).context("local clusters have at most 244 nodes")
}

/// Timing flags that keep elections quick on a loaded two-core machine.
pub const FAST_TIMING: [&str; 4] = ["--heartbeat-ms", "100", "--election-timeout-ms", "600"];

/// The peer secret's file name in a local cluster's directory.
const PEER_SECRET_FILE: &str = "peer.secret";

impl LocalCluster {
    /// Describe (without starting) a cluster of `size` initial members on a
    /// random loopback block under `dir`, run from `binary`, each agent given
    /// `extra_args`.
    pub fn new(binary: &Path, dir: &Path, size: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::with_plan(binary, dir, size, extra_args, AddressPlan::random_loopback(), None)
    }

    /// As [`LocalCluster::new`], with the addresses of `plan` and every
    /// agent's command passed through `wrapper`.
    pub fn with_plan(
        binary: &Path,
        dir: &Path,
        size: u64,
        extra_args: &[&str],
        plan: AddressPlan,
        wrapper: Option<Wrapper>,
    ) -> anyhow::Result<Self> {
        let mut nodes = BTreeMap::new();
        for id in 1..=size {
            nodes.insert(id, Self::describe(dir, id, plan.addr(id)?));
        }
        let initial_cluster =
            nodes.values().map(|node| format!("{}={}", node.id, node.addr)).collect::<Vec<_>>().join(",");
        // Its members authenticate each other as a real cluster's do.
        let peer_secret = dir.join(PEER_SECRET_FILE);
        if !peer_secret.exists() {
            let secret: [u8; 32] = rand::random();
            std::fs::write(&peer_secret, secret).with_context(|| format!("cannot write {}", peer_secret.display()))?;
        }
        let peer_secret_env = ("DOCKLOCK_PEER_SECRET_FILE".to_owned(), peer_secret.display().to_string());
        Ok(Self {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            plan,
            wrapper,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            initial_args: Vec::new(),
            // Its nodes share one machine, so each serves on one thread
            // (ARCHITECTURE.md, "Threads"); a `--threads` flag overrides it.
            env: vec![("DOCKLOCK_THREADS".to_owned(), "1".to_owned()), peer_secret_env],
            node_env: Vec::new(),
            nodes,
        })
    }

    /// The peer secret file its members are given.
    pub fn peer_secret_path(&self) -> PathBuf {
        self.dir.join(PEER_SECRET_FILE)
    }

    /// The IP address node `id` listens on.
    pub fn ip(&self, id: u64) -> anyhow::Result<Ipv4Addr> {
        self.nodes.get(&id).with_context(|| format!("no node {id}"))?.ip()
    }

    /// The address plan.
    pub fn plan(&self) -> AddressPlan {
        self.plan
    }

    fn describe(dir: &Path, id: u64, addr: String) -> LocalNode {
        LocalNode {
            id,
            addr,
            data_dir: dir.join(format!("node-{id}")),
            log_path: dir.join(format!("node-{id}.log")),
            child: None,
            joined: false,
        }
    }

    /// Give the initial members this first admin public key file.
    pub fn set_admin_key(&mut self, public_key: &Path) {
        self.initial_args = vec!["--admin-key".to_owned(), public_key.display().to_string()];
    }

    /// Set an environment variable for node `id` whenever it starts from now on.
    pub fn set_node_env(&mut self, id: u64, key: &str, value: &str) {
        self.node_env.push((id, key.to_owned(), value.to_owned()));
    }

    /// Set an environment variable for every agent started from now on (the
    /// chaos harness tags its agents this way to find leftovers).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Start every node.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.start(id)?;
        }
        Ok(())
    }

    /// Start (or restart) node `id` with its original flags.
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get(&id).with_context(|| format!("no node {id}"))?;
        let bootstrap = if node.joined {
            let target = self
                .nodes
                .values()
                .find(|n| n.id != id && n.child.is_some())
                .context("no other running node to join through")?;
            vec!["--join".to_owned(), target.addr.clone()]
        } else {
            let mut args = vec!["--initial-cluster".to_owned(), self.initial_cluster.clone()];
            args.extend(self.initial_args.iter().cloned());
            args
        };
        let child = self.spawn(id, &bootstrap)?;
        self.nodes.get_mut(&id).expect("checked above").child = Some(child);
        Ok(())
    }

    fn spawn(&self, id: u64, bootstrap: &[String]) -> anyhow::Result<Child> {
        let node = &self.nodes[&id];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("cannot open {}", node.log_path.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("agent")
            .args(["--id", &id.to_string(), "--listen", &node.addr])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(bootstrap)
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(self.node_env.iter().filter(|(node, _, _)| *node == id).map(|(_, k, v)| (k, v)));
        if let Some(wrapper) = &self.wrapper {
            command = wrapper(node, command)?;
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {:?}", command.get_program()))
    }

    /// Add and start a new node that joins through the existing members.
    pub fn add_joining_node(&mut self, id: u64) -> anyhow::Result<()> {
        let addr = self.plan.addr(id)?;
        self.add_joining_node_at(id, addr)
    }

    /// Add and start a new node `id` listening on `addr` (for instance the
    /// address of a node removed before, as a replacement on the same host)
    /// that joins through the existing members.
    pub fn add_joining_node_at(&mut self, id: u64, addr: String) -> anyhow::Result<()> {
        if self.nodes.contains_key(&id) {
            bail!("node {id} exists");
        }
        if self.nodes.values().any(|node| node.addr == addr) {
            bail!("address {addr} is taken");
        }
        let mut node = Self::describe(&self.dir, id, addr);
        node.joined = true;
        self.nodes.insert(id, node);
        self.start(id)
    }

    /// kill -9 node `id` and forget it (its data directory stays on disk).
    pub fn forget(&mut self, id: u64) -> anyhow::Result<LocalNode> {
        self.kill(id)?;
        self.nodes.remove(&id).with_context(|| format!("no node {id}"))
    }

    /// kill -9 node `id` and reap it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).with_context(|| format!("no node {id}"))?;
        if let Some(mut child) = node.child.take() {
            child.kill().ok();
            child.wait().context("reap killed node")?;
        }
        Ok(())
    }

    /// Every node's address.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|node| node.addr.clone()).collect()
    }

    /// Address of node `id`.
    pub fn addr(&self, id: u64) -> &str {
        &self.nodes[&id].addr
    }

    /// A client of every node.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.endpoints(), ClientOptions::default())?)
    }

    /// A client of node `id` alone.
    pub fn client_of(&self, id: u64) -> anyhow::Result<Client> {
        Ok(Client::new(vec![self.addr(id).to_owned()], ClientOptions::default())?)
    }

    /// Wait until the running nodes agree on one leader among `candidates`
    /// (any node if empty), and return its id.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let probe = Client::new(self.endpoints(), ClientOptions::default())?;
        loop {
            let mut seen = Vec::new();
            let running: Vec<String> =
                self.nodes.values_mut().filter_map(|n| n.is_running().then(|| n.addr.clone())).collect();
            for addr in &running {
                if let Ok(status) = probe.status_of(addr).await {
                    seen.push(status.leader_id);
                }
            }
            if let Some(Some(leader)) = seen.first() {
                let agreed = seen.len() == running.len() && seen.iter().all(|s| *s == Some(*leader));
                if agreed && running.contains(&self.nodes[leader].addr) {
                    return Ok(*leader);
                }
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {timeout:?}; nodes report {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until node `id` has applied registry revision `revision`.
    pub async fn wait_for_revision(&self, id: u64, revision: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let probe = self.client_of(id)?;
        loop {
            let applied = probe.status_of(self.addr(id)).await.map(|s| s.revision);
            if matches!(applied, Ok(applied) if applied >= revision) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {id} did not reach revision {revision} within {timeout:?} (at {applied:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The tail of node `id`'s log, for failure messages.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                child.kill().ok();
                child.wait().ok();
            }
        }
    }
}
