//! A model's coverage as the servers' announcements show it, in the JSON that
//! `nak-node status --json` prints and the monitor page draws.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use nak_protocol::pb;
use nak_shard_store::ModelId;
use serde_json::{json, Value};

use crate::net::reachability_name;

/// One model's coverage: `{model_id, servers, server_list: [{peer, layers, throughput,
/// state, reachability, version, rtt_ms, draft_model}], blocks: [{index, servers: [the
/// same]}]}`, for `n_layer` blocks from `anns` (this model's announcements), with the
/// ping round trips this node measured (`rtt_ms` null for a server it has no figure
/// for; `draft_model` true for a server that drafts with one).
pub fn model_status(
    id: ModelId,
    n_layer: u32,
    anns: &[&pb::ServerAnnouncement],
    rtts: &HashMap<PeerId, Duration>,
) -> Value {
    let server = |a: &pb::ServerAnnouncement| {
        let peer = PeerId::from_bytes(&a.peer_id).ok();
        let state = match a.state() {
            pb::ServerState::Joining => "joining",
            pb::ServerState::Leaving => "leaving",
            pb::ServerState::Online => "online",
        };
        let rtt = peer.and_then(|p| rtts.get(&p)).map(|d| d.as_secs_f64() * 1e3);
        json!({
            "peer": peer.map(|p| p.to_string()).unwrap_or_default(),
            "layers": [a.first_layer, a.end_layer],
            "throughput": a.block_throughput,
            "state": state,
            "reachability": reachability_name(a.reachability()),
            "version": a.version,
            "rtt_ms": rtt,
            "draft_model": !a.draft_vocab.is_empty(),
        })
    };
    let blocks: Vec<Value> = (0..n_layer)
        .map(|i| {
            let servers: Vec<Value> =
                anns.iter().filter(|a| (a.first_layer..a.end_layer).contains(&i)).map(|a| server(a)).collect();
            json!({ "index": i, "servers": servers })
        })
        .collect();
    let list: Vec<Value> = anns.iter().map(|a| server(a)).collect();
    json!({ "model_id": id.to_hex(), "servers": anns.len(), "server_list": list, "blocks": blocks })
}
