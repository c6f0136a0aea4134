//! `nak-node api`: a long-running client of the swarm that serves an OpenAI-compatible
//! HTTP API for one model ([`nak_node::api`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use nak_node::client::DecodeMode;

use super::generate::join_model;
use super::{block_on, JoinArgs, SpeculationArgs};

/// Serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics) and the swarm monitor (/) for a model of the swarm.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// The model (its id, as `run` prints it); default: the one model the swarm serves.
    #[arg(long)]
    model: Option<String>,
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    join: JoinArgs,
    #[command(flatten)]
    speculation: SpeculationArgs,
}

/// `nak-node api`.
pub fn api(args: ApiArgs, data_dir: Option<PathBuf>) -> Result<()> {
    // The API decodes in ring mode.
    let speculation = args.speculation.speculation(DecodeMode::Ring, 1)?;
    block_on(async move {
        let (model, _scratch) = join_model(&args.join, data_dir, args.model.as_deref()).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        println!("api http://{}", listener.local_addr()?);
        let router = nak_node::api::router_with(Arc::new(model), speculation);
        axum::serve(listener, router).await.context("the API server stopped")
    })
}
