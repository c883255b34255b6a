//! Command-line parsing and the client commands.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use docklock_proto::client::{Client, ClientOptions};
use docklock_proto::v1::{self, cas_request, MemberRole};
use docklock_raft::network::PeerSecret;
use docklock_raft::store::StoreConfig;
use docklock_raft::RaftSettings;
use serde::Deserialize;
use serde_json::json;
use tonic::Code;

use crate::agent::{parse_initial_cluster, Agent, AgentConfig, Bootstrap};
use crate::api::ApiLimits;
use crate::artifacts::StoreLimits;
use crate::worker::WorkerConfig;
use docklock_scheduler::liveness::Timing;

/// DockLock: run signed workloads deterministically and prove what ran.
#[derive(Parser, Debug)]
#[command(name = "docklock", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    Agent(Box<AgentArgs>),
    /// Inspect and change cluster membership.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Read and write variables.
    Kv {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Generate and show signing keys.
    Key {
        #[command(subcommand)]
        command: crate::cli_audit::KeyCommand,
    },
    /// List, add and revoke identities.
    Identity {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::cli_audit::IdentityCommand,
    },
    /// Submit and inspect signed agreements.
    Agreement {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::cli_audit::AgreementCommand,
    },
    /// Upload, download and list content-addressed artifacts.
    Artifact {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::cli_runs::ArtifactCommand,
    },
    /// Upload a spec's local files, sign it and submit it; with --wait,
    /// follow it to its verdict (exit 0 verified, 8 otherwise).
    Run {
        #[command(flatten)]
        client: ClientArgs,
        /// The spec (YAML); `program`, `image` and `inputs` may name local
        /// files, relative to the spec, which are uploaded first.
        spec: PathBuf,
        /// The signer's key pair file.
        #[arg(long)]
        key: PathBuf,
        /// Follow the agreement to its verdict.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
    /// Replay an agreement's run locally in the cage (its witness log and
    /// inputs fetched from the cluster) and check the root it committed;
    /// exits 5 on a mismatch.
    Verify {
        #[command(flatten)]
        client: ClientArgs,
        /// Agreement id.
        id: String,
        /// Replay this node's run (default: the first revealed).
        #[arg(long)]
        node: Option<u64>,
    },
    /// List, drain, undrain and remove workers.
    Node {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::cli_nodes::NodeCommand,
    },
    /// Proofs from the audit ledger, and their offline verification.
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: crate::cli_audit::AuditCommand,
    },
    /// Run a program in the cage, or inspect a witness log.
    Cage {
        #[command(subcommand)]
        command: crate::cli_cage::CageCommand,
    },
    /// Start an embedded 3-node cluster on loopback and show it working.
    Demo(crate::demo::DemoArgs),
}

/// Output format of read commands.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// One JSON document.
    Json,
}

/// How client commands reach the cluster.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Cluster endpoints, HOST:PORT, comma separated; tried in turn.
    #[arg(long, env = "DOCKLOCK_ENDPOINTS", default_value = "127.0.0.1:7001", value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub output: Output,
    /// Time one call may take, all retries included, in milliseconds.
    #[arg(long, env = "DOCKLOCK_TIMEOUT_MS", default_value_t = 15_000, global = true)]
    pub timeout_ms: u64,
}

impl ClientArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let options = ClientOptions { deadline: Duration::from_millis(self.timeout_ms), ..ClientOptions::default() };
        Ok(Client::new(self.endpoints.clone(), options)?)
    }
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Leader, term and every member's role and log position.
    Status,
    /// Add a node as a learner (it must be running).
    AddLearner {
        /// Node id.
        id: u64,
        /// Its address, HOST:PORT.
        addr: String,
    },
    /// Promote a learner to voter.
    Promote {
        /// Node id.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// Node id.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Write a value.
    Put {
        /// Variable name.
        key: String,
        /// Value (UTF-8 text).
        value: String,
    },
    /// Read a value (linearizable unless --stale).
    Get {
        /// Variable name.
        key: String,
        /// Answer from the contacted node's local state.
        #[arg(long)]
        stale: bool,
    },
    /// Delete a variable.
    Delete {
        /// Variable name.
        key: String,
    },
    /// List variables by prefix.
    List {
        /// Name prefix (empty lists everything).
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many (0 lists all, page by page).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Answer from the contacted node's local state.
        #[arg(long)]
        stale: bool,
    },
    /// Compare-and-set: write NEW only if the current value is --expect
    /// (or the version is --expect-version, or the key is absent).
    Cas {
        /// Variable name.
        key: String,
        /// New value.
        new: String,
        /// Expected current value.
        #[arg(long, group = "expectation")]
        expect: Option<String>,
        /// Expected current version.
        #[arg(long, group = "expectation")]
        expect_version: Option<u64>,
        /// Expect the key not to exist.
        #[arg(long, group = "expectation")]
        expect_absent: bool,
    },
}

/// `docklock agent` flags. Every flag may also come from the environment
/// (`DOCKLOCK_*`) or a TOML file (`--config`), in that order of precedence.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// TOML file with any of these settings (snake_case names).
    #[arg(long, env = "DOCKLOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Node id, 1 or more.
    #[arg(long, env = "DOCKLOCK_ID")]
    id: Option<u64>,
    /// Address to listen on, HOST:PORT.
    #[arg(long, env = "DOCKLOCK_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address others reach this node at (default: --listen).
    #[arg(long, env = "DOCKLOCK_ADVERTISE")]
    advertise: Option<String>,
    /// Data directory.
    #[arg(long, env = "DOCKLOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Static initial members: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long, env = "DOCKLOCK_INITIAL_CLUSTER", conflicts_with = "join")]
    initial_cluster: Option<String>,
    /// Join a running cluster through this member, HOST:PORT.
    #[arg(long, env = "DOCKLOCK_JOIN")]
    join: Option<String>,
    /// Cluster name (part of the cluster id).
    #[arg(long, env = "DOCKLOCK_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Largest variable value, in bytes (default 1 MiB).
    #[arg(long, env = "DOCKLOCK_VALUE_BYTES_MAX")]
    value_bytes_max: Option<usize>,
    /// Leader heartbeat period, in milliseconds.
    #[arg(long, env = "DOCKLOCK_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Minimum election timeout, in milliseconds.
    #[arg(long, env = "DOCKLOCK_ELECTION_TIMEOUT_MS")]
    election_timeout_ms: Option<u64>,
    /// Entries between snapshots.
    #[arg(long, env = "DOCKLOCK_SNAPSHOT_ENTRIES")]
    snapshot_entries: Option<u64>,
    /// Applied requests between snapshots.
    #[arg(long, env = "DOCKLOCK_SNAPSHOT_REQUESTS")]
    snapshot_requests: Option<u64>,
    /// Entries kept in the log behind a snapshot.
    #[arg(long, env = "DOCKLOCK_LOG_ENTRIES_KEPT")]
    log_entries_kept: Option<u64>,
    /// sled page cache, in bytes.
    #[arg(long, env = "DOCKLOCK_CACHE_BYTES")]
    cache_bytes: Option<u64>,
    /// Public key file of the first admin (initial members; part of the
    /// cluster id, so every initial member must give the same key).
    #[arg(long, env = "DOCKLOCK_ADMIN_KEY")]
    admin_key: Option<PathBuf>,
    /// File holding the secret (32 bytes or more) every member of the
    /// cluster holds: Raft messages without its tag are refused. Make one
    /// with `head -c 32 /dev/urandom > peer.secret` and give every member a
    /// copy. Without it any process that can reach the port can steer Raft.
    #[arg(long, env = "DOCKLOCK_PEER_SECRET_FILE")]
    peer_secret_file: Option<PathBuf>,
    /// Milliseconds between ledger checkpoints while the ledger grows.
    #[arg(long, env = "DOCKLOCK_CHECKPOINT_INTERVAL_MS")]
    checkpoint_interval_ms: Option<u64>,
    /// Do not work: vote and serve only, take no placements.
    #[arg(long, env = "DOCKLOCK_NO_WORKER", conflicts_with = "worker_only")]
    no_worker: bool,
    /// Work only: no Raft, no registry replica; register and heartbeat
    /// through the members given with --join (HOST:PORT,...). An admin must
    /// first add DATA_DIR/node.key.pub with role node.
    #[arg(long, env = "DOCKLOCK_WORKER_ONLY", requires = "join")]
    worker_only: bool,
    /// Worker type: compute, storage, gateway, validator or hybrid (default hybrid).
    #[arg(long, env = "DOCKLOCK_NODE_TYPE")]
    node_type: Option<String>,
    /// Worker zone (failure domain; default "default").
    #[arg(long, env = "DOCKLOCK_ZONE")]
    zone: Option<String>,
    /// Worker label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// CPU offered, in thousandths of a core (default: the host's cores).
    #[arg(long, env = "DOCKLOCK_CPU_MILLIS")]
    cpu_millis: Option<u64>,
    /// Memory offered, MiB (default: the host's).
    #[arg(long, env = "DOCKLOCK_MEMORY_MIB")]
    memory_mib: Option<u64>,
    /// Base worker heartbeat interval in a small cluster, in milliseconds;
    /// a node is down after three intervals of silence. The interval grows
    /// with the number of workers (the leader takes at most 2,000/s).
    #[arg(long, env = "DOCKLOCK_WORKER_HEARTBEAT_MS")]
    worker_heartbeat_ms: Option<u64>,
    /// Largest artifact this node stores, in bytes (default 1 GiB).
    #[arg(long, env = "DOCKLOCK_ARTIFACT_BYTES_MAX")]
    artifact_bytes_max: Option<u64>,
    /// Largest total of this node's artifact store, in bytes (default 16 GiB).
    #[arg(long, env = "DOCKLOCK_STORE_BYTES_MAX")]
    store_bytes_max: Option<u64>,
    /// Seconds an artifact no agreement refers to is kept after it was last
    /// stored, uploaded or asked about (default 3600). Member nodes collect;
    /// worker-only nodes keep everything.
    #[arg(long, env = "DOCKLOCK_ARTIFACT_GC_GRACE_SECS")]
    artifact_gc_grace_secs: Option<u64>,
    /// Seconds between artifact collections (default 300; 0: never).
    #[arg(long, env = "DOCKLOCK_ARTIFACT_GC_INTERVAL_SECS")]
    artifact_gc_interval_secs: Option<u64>,
    /// Threads that serve the node's network and Raft work (default: one
    /// per core). 1 runs them all on one thread, which is faster when
    /// several nodes share a small machine (BENCHMARKS.md, issue 2); cage
    /// runs and file work have threads of their own either way.
    #[arg(long, env = "DOCKLOCK_THREADS")]
    threads: Option<usize>,
    /// Log filter (tracing env-filter syntax); RUST_LOG overrides it.
    #[arg(long, env = "DOCKLOCK_LOG", default_value = "info,openraft=warn,sled=warn,h2=warn,tower=warn")]
    log: String,
}

/// The same settings read from a TOML file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    id: Option<u64>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    initial_cluster: Option<String>,
    join: Option<String>,
    cluster_name: Option<String>,
    value_bytes_max: Option<usize>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    snapshot_entries: Option<u64>,
    snapshot_requests: Option<u64>,
    log_entries_kept: Option<u64>,
    cache_bytes: Option<u64>,
    admin_key: Option<PathBuf>,
    peer_secret_file: Option<PathBuf>,
    checkpoint_interval_ms: Option<u64>,
    no_worker: Option<bool>,
    node_type: Option<String>,
    zone: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    cpu_millis: Option<u64>,
    memory_mib: Option<u64>,
    worker_heartbeat_ms: Option<u64>,
    artifact_bytes_max: Option<u64>,
    store_bytes_max: Option<u64>,
    artifact_gc_grace_secs: Option<u64>,
    artifact_gc_interval_secs: Option<u64>,
    threads: Option<usize>,
}

/// Most threads `--threads` may ask for.
const THREADS_MAX: usize = 1_024;

/// Artifact store bounds and retention: the given ones, else the defaults.
fn store_limits(
    artifact_bytes_max: Option<u64>,
    store_bytes_max: Option<u64>,
    gc_grace_secs: Option<u64>,
    gc_interval_secs: Option<u64>,
) -> StoreLimits {
    let defaults = StoreLimits::default();
    StoreLimits {
        artifact_bytes_max: artifact_bytes_max.unwrap_or(defaults.artifact_bytes_max),
        store_bytes_max: store_bytes_max.unwrap_or(defaults.store_bytes_max),
        gc_grace: gc_grace_secs.map_or(defaults.gc_grace, Duration::from_secs),
        gc_interval: gc_interval_secs.map_or(defaults.gc_interval, Duration::from_secs),
    }
}

/// A worker-only node's settings.
struct WorkerOnlyConfig {
    store_limits: StoreLimits,
    id: u64,
    listen: SocketAddr,
    advertise: String,
    data_dir: PathBuf,
    endpoints: Vec<String>,
    worker: WorkerConfig,
}

impl AgentArgs {
    fn resolve_worker_only(self) -> anyhow::Result<WorkerOnlyConfig> {
        let id = self.id.context("--id is required")?;
        if id == 0 {
            bail!("node id 0 is reserved; ids start at 1");
        }
        let listen = self.listen.context("--listen is required")?;
        let data_dir = self.data_dir.context("--data-dir is required")?;
        let endpoints: Vec<String> =
            self.join.context("--join is required")?.split(',').map(str::trim).map(str::to_owned).collect();
        let worker =
            WorkerConfig::detect(self.node_type.as_deref(), self.zone, &self.labels, self.cpu_millis, self.memory_mib)?;
        let advertise = self.advertise.unwrap_or_else(|| listen.to_string());
        let store_limits = store_limits(
            self.artifact_bytes_max,
            self.store_bytes_max,
            self.artifact_gc_grace_secs,
            self.artifact_gc_interval_secs,
        );
        Ok(WorkerOnlyConfig { store_limits, id, listen, advertise, data_dir, endpoints, worker })
    }

    fn file(&self) -> anyhow::Result<AgentFile> {
        let Some(path) = &self.config else { return Ok(AgentFile::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// The runtime the agent runs on: `--threads`, else one thread per core.
    fn runtime(&self, file: &AgentFile) -> anyhow::Result<tokio::runtime::Runtime> {
        let mut builder = match self.threads.or(file.threads) {
            None => tokio::runtime::Builder::new_multi_thread(),
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            Some(threads) if (2..=THREADS_MAX).contains(&threads) => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads);
                builder
            }
            Some(_) => bail!("--threads must be between 1 and {THREADS_MAX}"),
        };
        builder.enable_all().build().context("cannot start the async runtime")
    }

    fn resolve(self, file: AgentFile) -> anyhow::Result<AgentConfig> {
        let id = self.id.or(file.id).context("--id is required")?;
        let listen = self.listen.or(file.listen).context("--listen is required")?;
        let data_dir = self.data_dir.or(file.data_dir).context("--data-dir is required")?;
        let advertise = self.advertise.or(file.advertise).unwrap_or_else(|| listen.to_string());
        let bootstrap = match (self.initial_cluster.or(file.initial_cluster), self.join.or(file.join)) {
            (Some(members), None) => Bootstrap::Initial(parse_initial_cluster(&members)?),
            (None, Some(target)) => Bootstrap::Join(target),
            (Some(_), Some(_)) => bail!("give either --initial-cluster or --join, not both"),
            (None, None) => {
                bail!("give --initial-cluster (a new cluster) or --join (an existing one)")
            }
        };
        if let Bootstrap::Initial(members) = &bootstrap {
            if members.get(&id).is_some_and(|addr| *addr != advertise) {
                bail!("node {id} is listed at {} in the initial cluster but advertises {advertise}", members[&id]);
            }
        }
        let defaults = RaftSettings::default();
        let raft = RaftSettings {
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(defaults.heartbeat_ms),
            election_timeout_ms: self
                .election_timeout_ms
                .or(file.election_timeout_ms)
                .unwrap_or(defaults.election_timeout_ms),
            snapshot_entries: self.snapshot_entries.or(file.snapshot_entries).unwrap_or(defaults.snapshot_entries),
            snapshot_requests: self.snapshot_requests.or(file.snapshot_requests).unwrap_or(defaults.snapshot_requests),
            log_entries_kept: self.log_entries_kept.or(file.log_entries_kept).unwrap_or(defaults.log_entries_kept),
        };
        let mut limits = ApiLimits::default();
        if let Some(bytes) = self.value_bytes_max.or(file.value_bytes_max) {
            if bytes == 0 || bytes > docklock_raft::registry::VALUE_BYTES_MAX {
                bail!("--value-bytes-max must be between 1 and {}", docklock_raft::registry::VALUE_BYTES_MAX);
            }
            limits.value_bytes_max = bytes;
        }
        let mut store = StoreConfig::default();
        if let Some(bytes) = self.cache_bytes.or(file.cache_bytes) {
            store.cache_bytes = bytes;
        }
        let admin_key = self.admin_key.or(file.admin_key);
        if admin_key.is_some() && matches!(bootstrap, Bootstrap::Join(_)) {
            bail!("--admin-key is for initial members; a joining node learns the admins from the cluster");
        }
        let peer_secret = self
            .peer_secret_file
            .or(file.peer_secret_file)
            .map(|path| PeerSecret::read(&path))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let checkpoint_interval_ms = self.checkpoint_interval_ms.or(file.checkpoint_interval_ms).unwrap_or(1_000);
        if !(10..=3_600_000).contains(&checkpoint_interval_ms) {
            bail!("--checkpoint-interval-ms must be between 10 and 3600000");
        }
        let worker_heartbeat_ms = self.worker_heartbeat_ms.or(file.worker_heartbeat_ms).unwrap_or(1_000);
        if !(50..=60_000).contains(&worker_heartbeat_ms) {
            bail!("--worker-heartbeat-ms must be between 50 and 60000");
        }
        let heartbeat_timing = Timing { base_interval_ms: worker_heartbeat_ms, ..Timing::default() };
        let no_worker = self.no_worker || file.no_worker.unwrap_or(false);
        let mut labels: Vec<String> = file.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.extend(self.labels);
        let worker = (!no_worker)
            .then(|| {
                WorkerConfig::detect(
                    self.node_type.or(file.node_type).as_deref(),
                    self.zone.or(file.zone),
                    &labels,
                    self.cpu_millis.or(file.cpu_millis),
                    self.memory_mib.or(file.memory_mib),
                )
            })
            .transpose()?;
        let store_limits = store_limits(
            self.artifact_bytes_max.or(file.artifact_bytes_max),
            self.store_bytes_max.or(file.store_bytes_max),
            self.artifact_gc_grace_secs.or(file.artifact_gc_grace_secs),
            self.artifact_gc_interval_secs.or(file.artifact_gc_interval_secs),
        );
        let config = AgentConfig {
            store_limits,
            worker,
            heartbeat_timing,
            admin_key,
            peer_secret,
            checkpoint_interval: Duration::from_millis(checkpoint_interval_ms),
            id,
            listen,
            advertise,
            data_dir,
            cluster_name: self.cluster_name.or(file.cluster_name).unwrap_or_else(|| "docklock".to_owned()),
            bootstrap,
            raft,
            limits,
            store,
        };
        config.validate()?;
        Ok(config)
    }
}

impl Cli {
    /// Whether this command only asks and prints. Piped into `head`, such
    /// a command should end quietly when the pipe closes, by SIGPIPE's
    /// default action as every Unix tool does, instead of panicking in
    /// `println!` on the EPIPE that Rust's ignored SIGPIPE turns it into.
    /// Commands that run servers, the cage or replays keep SIGPIPE ignored:
    /// a signal must not end them half-way through writing a witness log
    /// or with children to stop.
    pub fn prints_only(&self) -> bool {
        match &self.command {
            Command::Agent(_) | Command::Demo(_) | Command::Run { .. } | Command::Verify { .. } => false,
            Command::Cage { command } => matches!(command, crate::cli_cage::CageCommand::Inspect { .. }),
            _ => true,
        }
    }

    /// Run the command now if it needs no async runtime from the caller
    /// (`cage`, `key`, and `agent`, which builds its own per `--threads`);
    /// otherwise hand it back.
    pub fn run_without_runtime(self) -> Result<anyhow::Result<()>, Cli> {
        match self.command {
            Command::Cage { command } => Ok(crate::cli_cage::cage(command)),
            Command::Key { command } => Ok(crate::cli_audit::key(command)),
            Command::Agent(args) => Ok(agent(*args)),
            command => Err(Cli { command }),
        }
    }
}

/// A settings error, reported as bad usage (exit 2).
fn usage_error(error: anyhow::Error) -> anyhow::Error {
    UsageError(one_line(&error)).into()
}

/// The agent, on a runtime of its own sized by `--threads`.
fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let file = args.file().map_err(usage_error)?;
    let runtime = args.runtime(&file).map_err(usage_error)?;
    runtime.block_on(run_agent(args, file))
}

/// Run a parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // On the caller's runtime: the binary starts agents through
        // `run_without_runtime`, which sizes one per `--threads`.
        Command::Agent(args) => {
            let file = args.file().map_err(usage_error)?;
            run_agent(*args, file).await
        }
        Command::Cluster { client, command } => cluster(&client, command).await,
        Command::Kv { client, command } => kv(&client, command).await,
        Command::Key { command } => crate::cli_audit::key(command),
        Command::Identity { client, command } => crate::cli_audit::identity(&client, command).await,
        Command::Agreement { client, command } => crate::cli_audit::agreement(&client, command).await,
        Command::Node { client, command } => crate::cli_nodes::run(&client, command).await,
        Command::Artifact { client, command } => crate::cli_runs::artifact(&client, command).await,
        Command::Verify { client, id, node } => {
            let id = docklock_proto::agreement::AgreementId::from_hex(&id).map_err(UsageError)?;
            crate::cli_runs::verify(&client, &id, node).await
        }
        Command::Run { client, spec, key, wait, wait_secs } => {
            crate::cli_runs::run(&client, &spec, &key, wait, Duration::from_secs(wait_secs)).await
        }
        Command::Audit { client, command } => crate::cli_audit::audit(&client, command).await,
        Command::Cage { command } => crate::cli_cage::cage(command),
        Command::Demo(args) => crate::demo::run(args).await,
    }
}

async fn run_agent(args: AgentArgs, file: AgentFile) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("invalid --log filter")?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if args.worker_only {
        let config = args.resolve_worker_only().map_err(usage_error)?;
        return run_worker_only(config).await;
    }
    let config = args.resolve(file).map_err(usage_error)?;
    let agent = Agent::start(config).await?;
    tracing::info!(node = agent.node.id, "serving");
    wait_for_signal().await;
    tracing::info!("shutting down");
    agent.stop().await
}

async fn run_worker_only(config: WorkerOnlyConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let worker = crate::worker::WorkerOnly::start(
        config.id,
        &config.data_dir,
        config.advertise,
        config.endpoints,
        config.worker,
        config.store_limits,
    )
    .await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(crate::artifacts::ArtifactsService::server(worker.store.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let working = tokio::spawn(worker.clone().run());
    tracing::info!(node = config.id, "serving as a worker only");
    wait_for_signal().await;
    tracing::info!("shutting down");
    worker.stop();
    server.abort();
    working.abort();
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn role_name(role: i32) -> &'static str {
    match MemberRole::try_from(role) {
        Ok(MemberRole::Voter) => "voter",
        Ok(MemberRole::Learner) => "learner",
        _ => "unknown",
    }
}

async fn cluster(args: &ClientArgs, command: ClusterCommand) -> anyhow::Result<()> {
    let client = args.client()?;
    match command {
        ClusterCommand::Status => cluster_status(&client, args.output).await,
        ClusterCommand::AddLearner { id, addr } => print_membership(&client.add_learner(id, &addr, "").await?),
        ClusterCommand::Promote { id } => print_membership(&client.promote(id).await?),
        ClusterCommand::Remove { id } => print_membership(&client.remove(id).await?),
    }
}

fn print_membership(response: &v1::MembershipResponse) -> anyhow::Result<()> {
    println!("membership changed at log index {}", response.index);
    for member in &response.members {
        println!("  node {} {} {}", member.id, member.addr, role_name(member.role));
    }
    Ok(())
}

/// Ask one node for the membership, then every member for its own state.
async fn cluster_status(client: &Client, output: Output) -> anyhow::Result<()> {
    let first = client.status().await?;
    let mut rows = Vec::new();
    for member in &first.members {
        let own = client.status_of(&member.addr).await;
        rows.push((member.clone(), own));
    }
    if output == Output::Json {
        let members: Vec<_> = rows
            .iter()
            .map(|(member, own)| {
                let mut row = json!({
                    "id": member.id,
                    "addr": member.addr,
                    "role": role_name(member.role),
                    "reachable": own.is_ok(),
                });
                if let Ok(own) = own {
                    row["state"] = json!(own.state);
                    row["term"] = json!(own.term);
                    row["last_log_index"] = json!(own.last_log_index);
                    row["last_applied_index"] = json!(own.last_applied_index);
                    row["snapshot_index"] = json!(own.snapshot_index);
                }
                if let Err(status) = own {
                    row["error"] = json!(status.message());
                }
                row
            })
            .collect();
        let document = json!({
            "cluster_id": first.cluster_id,
            "leader_id": first.leader_id,
            "leader_addr": first.leader_addr,
            "term": first.term,
            "members": members,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!("cluster {}", first.cluster_id);
    match first.leader_id {
        Some(leader) => println!("leader  node {leader} at {} (term {})", first.leader_addr, first.term),
        None => println!("leader  none known (term {})", first.term),
    }
    println!("{:<6} {:<22} {:<8} {:<10} {:>10} {:>12}", "ID", "ADDRESS", "ROLE", "STATE", "LAST LOG", "LAST APPLIED");
    for (member, own) in rows {
        match own {
            Ok(own) => println!(
                "{:<6} {:<22} {:<8} {:<10} {:>10} {:>12}",
                member.id,
                member.addr,
                role_name(member.role),
                own.state,
                own.last_log_index,
                own.last_applied_index
            ),
            Err(status) => println!(
                "{:<6} {:<22} {:<8} unreachable: {}",
                member.id,
                member.addr,
                role_name(member.role),
                status.message()
            ),
        }
    }
    Ok(())
}

fn kv_json(kv: &v1::KeyValue) -> serde_json::Value {
    let mut document = json!({
        "key": kv.key,
        "version": kv.version,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
    });
    match std::str::from_utf8(&kv.value) {
        Ok(text) => document["value"] = json!(text),
        Err(_) => document["value_hex"] = json!(hex::encode(&kv.value)),
    }
    document
}

async fn kv(args: &ClientArgs, command: KvCommand) -> anyhow::Result<()> {
    let client = args.client()?;
    let json_output = args.output == Output::Json;
    match command {
        KvCommand::Put { key, value } => {
            let response = client.put(&key, value.into_bytes()).await?;
            let kv = response.kv.unwrap_or_default();
            if json_output {
                println!("{}", kv_json(&kv));
            } else {
                println!("OK revision {} version {}", response.revision, kv.version);
            }
        }
        KvCommand::Get { key, stale } => {
            let kv = client.get(&key, stale).await?;
            if json_output {
                println!("{}", kv_json(&kv));
            } else {
                println!("{}", String::from_utf8_lossy(&kv.value));
            }
        }
        KvCommand::Delete { key } => {
            let response = client.delete(&key).await?;
            match (json_output, &response.prev) {
                (true, _) => println!("{}", json!({"deleted": response.prev.is_some(), "revision": response.revision})),
                (false, Some(_)) => println!("deleted {key}"),
                (false, None) => println!("{key} did not exist"),
            }
        }
        KvCommand::List { prefix, limit, stale } => kv_list(&client, &prefix, limit, stale, json_output).await?,
        KvCommand::Cas { key, new, expect, expect_version, expect_absent } => {
            let expectation = match (expect, expect_version, expect_absent) {
                (Some(value), None, false) => cas_request::Expect::ExpectValue(value.into_bytes()),
                (None, Some(version), false) => cas_request::Expect::ExpectVersion(version),
                (None, None, true) => cas_request::Expect::ExpectAbsent(true),
                _ => bail!("give one of --expect, --expect-version or --expect-absent"),
            };
            let response = client.cas(&key, expectation, new.into_bytes()).await?;
            let kv = response.kv.unwrap_or_default();
            if json_output {
                println!("{}", kv_json(&kv));
            } else {
                println!("OK revision {} version {}", response.revision, kv.version);
            }
        }
    }
    Ok(())
}

async fn kv_list(client: &Client, prefix: &str, limit: usize, stale: bool, json_output: bool) -> anyhow::Result<()> {
    let mut start_after = String::new();
    let mut listed = Vec::new();
    loop {
        let want = if limit == 0 { 1_000 } else { (limit - listed.len()).min(1_000) };
        let page = client.list(prefix, &start_after, u32::try_from(want)?, stale).await?;
        if let Some(last) = page.kvs.last() {
            start_after.clone_from(&last.key);
        }
        listed.extend(page.kvs);
        if !page.more || (limit != 0 && listed.len() >= limit) {
            break;
        }
    }
    if json_output {
        println!("{}", serde_json::to_string_pretty(&listed.iter().map(kv_json).collect::<Vec<_>>())?);
    } else {
        for kv in &listed {
            println!("{}\t{}", kv.key, String::from_utf8_lossy(&kv.value));
        }
    }
    Ok(())
}

/// The error and its causes on one line.
pub fn one_line(error: &anyhow::Error) -> String {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return format!("{} ({:?})", status.message(), status.code());
    }
    error.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// Flags or configuration that cannot work; exits 2 like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// An agreement whose run ended other than `verified`; exits 8.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotVerified(pub String);

/// The documented exit code for `error`.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.is::<UsageError>() {
        return 2;
    }
    if error.is::<crate::cli_audit::VerificationFailed>() {
        return 5;
    }
    if error.is::<NotVerified>() {
        return 8;
    }
    if let Some(verdict) = error.downcast_ref::<crate::cli_cage::VerdictNotOk>() {
        return verdict.1;
    }
    match error.downcast_ref::<tonic::Status>().map(tonic::Status::code) {
        Some(Code::NotFound) => 3,
        Some(Code::FailedPrecondition) => 4,
        Some(Code::InvalidArgument) => 2,
        Some(Code::AlreadyExists) => 6,
        Some(Code::Unauthenticated | Code::PermissionDenied) => 7,
        _ => 1,
    }
}
