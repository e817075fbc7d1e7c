//! `cluster`: K phx-threads nodes on one PostgreSQL (issue #13).

use std::time::{Duration, Instant};

use super::Res;
use crate::cluster_env::Nodes;
use crate::opts::Opts;

pub fn run(opts: &Opts) -> Res {
    let k = 3;
    let mut nodes = Nodes::start(opts, k, "cluster")?;
    nodes.wait_peers(Instant::now() + Duration::from_secs(30))?;
    for i in 0..k {
        println!("node-{i} sees {:?}", nodes.peers(i)?);
    }
    let old = nodes.node(k - 1).ws;
    let new = nodes.restart(k - 1)?.ws;
    println!("node-{} restarted: ws {old} -> {new}", k - 1);
    nodes.wait_peers(Instant::now() + Duration::from_secs(30))?;
    nodes.kill(0);
    nodes.stop(1);
    let usage: f64 = (nodes.pg.client()?)
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .map_err(|e| e.to_string())?
        .get(0);
    println!("postgres: {} processes, NOTIFY queue usage {usage}", nodes.pg.pids().len());
    Ok(())
}
