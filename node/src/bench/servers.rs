//! `nak-node run` children of the benchmarks: started, waited on until they serve, read
//! from `/proc` (resident memory, open descriptors), and killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use anyhow::{Context as _, Result};
use libp2p::PeerId;
use nak_node::client::SwarmModel;
use nak_node::net::{Network, NetworkConfig, NetworkHandle};
use nak_shard_store::{ModelId, Store};

use super::child_lines;

/// A `nak-node run` child, killed when dropped.
pub struct Server {
    /// Its data directory.
    pub dir: PathBuf,
    /// The layers it serves (`A:B`).
    pub span: String,
    /// More arguments of `run`.
    pub extra: Vec<String>,
    child: Option<Child>,
    /// Its lines, read on so that it never blocks on a full pipe.
    lines: Option<Receiver<String>>,
    /// Its identity, once started.
    pub peer: Option<PeerId>,
    /// Its TCP listen address, once started.
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Server {
    /// A server of `span` (not started) with its data in `dir`.
    pub fn new(dir: PathBuf, span: &str) -> Self {
        Server {
            dir,
            span: span.to_string(),
            extra: Vec::new(),
            child: None,
            lines: None,
            peer: None,
            addr: String::new(),
        }
    }

    /// Whether it was started and not killed.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited on its own.
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.lines = None;
    }

    /// Starts (or restarts) the server and waits until it serves.
    pub fn start(&mut self, model: &str, bootstrap: Option<&str>, threads: u32) -> Result<()> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("--data-dir").arg(&self.dir).args(["run", "--model", model, "--serve-layers", &self.span]);
        cmd.args(["--listen", "/ip4/127.0.0.1/tcp/0", "--announce-interval", "1", "--threads"]);
        cmd.arg(threads.to_string()).args(&self.extra);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let (child, lines) = child_lines::spawn(&mut cmd)?;
        self.child = Some(child);
        let listening = child_lines::wait_line(&lines, "listening ", Duration::from_secs(30))?;
        self.addr = listening["listening ".len()..].to_string();
        self.peer = self.addr.rsplit('/').next().and_then(|p| p.parse().ok());
        child_lines::wait_line(&lines, "serving ", Duration::from_secs(90))?;
        self.lines = Some(lines);
        Ok(())
    }

    /// Its resident memory in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib_of(self.pid()?)
    }

    /// Its open file descriptors (sockets among them).
    pub fn open_fds(&self) -> Option<usize> {
        open_fds_of(self.pid()?)
    }
}

/// Resident memory of process `pid` in KiB.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    super::proc_status_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Open file descriptors of process `pid`.
pub fn open_fds_of(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Starts `servers` in order, the first importing `model` (a GGUF) and the others
/// fetching from it; returns the model's id.
pub fn start_all(servers: &mut [Server], model: &std::path::Path, threads: u32) -> Result<ModelId> {
    let first = servers.first_mut().context("no servers")?;
    first.start(model.to_str().context("model path is not UTF-8")?, None, threads)?;
    let id = Store::open(&first.dir)?.model_ids()?.into_iter().next().context("the first server imported no model")?;
    let boot = first.addr.clone();
    for s in &mut servers[1..] {
        s.start(&id.to_hex(), Some(&boot), threads)?;
    }
    Ok(id)
}

/// A client (not a DHT server) joined to the swarm through `boot` and to model `id`; its
/// store lives in the returned directory.
pub async fn join_client(boot: &str, id: ModelId) -> Result<(NetworkHandle, SwarmModel, tempfile::TempDir)> {
    let scratch = tempfile::tempdir()?;
    let store = Store::open(scratch.path())?;
    let listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    let cfg = NetworkConfig { dht_server: false, ..NetworkConfig::joining(listen, vec![boot.parse()?]) };
    let (net, _) = Network::spawn_in_store(&store, cfg).await?;
    let model = SwarmModel::connect(net.clone(), &store, id).await?;
    Ok((net, model, scratch))
}
