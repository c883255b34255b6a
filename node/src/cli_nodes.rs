//! `docklock node ...`: list workers, drain, undrain and remove them.

use clap::Subcommand;
use docklock_proto::node::MACHINE_LABEL;
use docklock_proto::v1::{self, nodes_client::NodesClient};
use serde_json::json;

use crate::cli::{ClientArgs, Output};

/// `docklock node ...`
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Every worker with its status, zone, capacity and placements.
    List,
    /// Stop placing on a node and move its placements off.
    Drain {
        /// Node id.
        id: u64,
    },
    /// Let a drained node take new placements again.
    Undrain {
        /// Node id.
        id: u64,
    },
    /// Remove a worker for good (its placements move; the id is not reused).
    Remove {
        /// Node id.
        id: u64,
    },
    /// Pause placement for maintenance: admitted agreements wait, lost
    /// replicas are not replaced, until `resume-scheduling`.
    PauseScheduling,
    /// Resume placement: everything waiting is placed in bounded batches.
    ResumeScheduling,
    /// Set the ring's virtual nodes per core of capacity (1 to 256; default
    /// 32): more spreads load more evenly, fewer makes the ring smaller.
    ConfigureRing {
        /// Virtual nodes per core.
        #[arg(long)]
        vnodes_per_core: u32,
    },
}

fn node_json(node: &v1::NodeInfo) -> serde_json::Value {
    json!({
        "id": node.id,
        "address": node.address,
        "node_type": node.node_type,
        "zone": node.zone,
        "labels": node.labels,
        "cpu_millis": node.cpu_millis,
        "memory_mib": node.memory_mib,
        "features": node.features,
        "status": node.status,
        "draining": node.draining,
        "placements": node.placements,
        "registered_event": node.registered_event,
        "status_event": node.status_event,
        "heard_ms_ago": node.heard_ms_ago,
    })
}

fn print_node(node: &v1::NodeInfo, output: Output) {
    if output == Output::Json {
        println!("{}", node_json(node));
    } else {
        let draining = if node.draining { ", draining" } else { "" };
        println!("node {} is {}{draining}, {} placements", node.id, node.status, node.placements);
    }
}

fn print_scheduling(info: &v1::SchedulingInfo, output: Output) {
    if output == Output::Json {
        println!(
            "{}",
            json!({"paused": info.paused, "unsettled": info.unsettled, "vnodes_per_core": info.vnodes_per_core})
        );
    } else {
        let state = if info.paused { "paused" } else { "running" };
        println!(
            "scheduling {state}, {} virtual nodes per core; {} agreements wait for placement",
            info.vnodes_per_core, info.unsettled
        );
    }
}

/// Run `docklock node ...`.
pub async fn run(args: &ClientArgs, command: NodeCommand) -> anyhow::Result<()> {
    let client = args.client()?;
    let node = match command {
        NodeCommand::List => {
            let list = client.list_nodes().await?;
            if args.output == Output::Json {
                let document = json!({
                    "nodes": list.nodes.iter().map(node_json).collect::<Vec<_>>(),
                    "heartbeat_interval_ms": list.interval_ms,
                    "ttl_ms": list.ttl_ms,
                    "unsettled": list.unsettled,
                    "scheduling_paused": list.scheduling_paused,
                    "vnodes_per_core": list.vnodes_per_core,
                });
                println!("{}", serde_json::to_string_pretty(&document)?);
            } else {
                println!(
                    "{:>6} {:<8} {:<9} {:<12} {:<10} {:>6} {:>8} {:>10} ADDRESS",
                    "ID", "STATUS", "TYPE", "ZONE", "DRAINING", "CPU", "MEM MiB", "PLACEMENTS"
                );
                for node in &list.nodes {
                    println!(
                        "{:>6} {:<8} {:<9} {:<12} {:<10} {:>6.1} {:>8} {:>10} {}",
                        node.id,
                        node.status,
                        node.node_type,
                        node.zone,
                        if node.draining { "yes" } else { "no" },
                        node.cpu_millis as f64 / 1000.0,
                        node.memory_mib,
                        node.placements,
                        node.address
                    );
                }
                // A root holds only within a machine class, and placement
                // keeps each agreement on one: say which classes there are.
                let mut classes: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
                for node in &list.nodes {
                    let class = node.labels.get(MACHINE_LABEL).map_or("(none)", String::as_str);
                    *classes.entry(class).or_default() += 1;
                }
                let classes: Vec<String> = classes.iter().map(|(class, count)| format!("{count} × {class}")).collect();
                println!("machine classes: {}", classes.join("; "));
                println!(
                    "heartbeat every {} ms, down after {} ms of silence; {} agreements wait for nodes{}",
                    list.interval_ms,
                    list.ttl_ms,
                    list.unsettled,
                    if list.scheduling_paused { "; scheduling is PAUSED" } else { "" }
                );
            }
            return Ok(());
        }
        NodeCommand::Drain { id } | NodeCommand::Undrain { id } => {
            let drain = matches!(command, NodeCommand::Drain { .. });
            let request = v1::DrainNodeRequest { id, drain };
            client.call(|channel| async move { NodesClient::new(channel).drain(request).await }).await?
        }
        NodeCommand::PauseScheduling | NodeCommand::ResumeScheduling => {
            let request = v1::SetSchedulingRequest { paused: matches!(command, NodeCommand::PauseScheduling) };
            let info =
                client.call(|channel| async move { NodesClient::new(channel).set_scheduling(request).await }).await?;
            print_scheduling(&info, args.output);
            return Ok(());
        }
        NodeCommand::ConfigureRing { vnodes_per_core } => {
            let request = v1::ConfigureRingRequest { vnodes_per_core };
            let info =
                client.call(|channel| async move { NodesClient::new(channel).configure_ring(request).await }).await?;
            print_scheduling(&info, args.output);
            return Ok(());
        }
        NodeCommand::Remove { id } => {
            let request = v1::RemoveNodeRequest { id };
            client.call(|channel| async move { NodesClient::new(channel).remove(request).await }).await?
        }
    };
    print_node(&node, args.output);
    Ok(())
}
