//! Choosing the chain of servers a session runs through.
//!
//! The model's layers are cut at block boundaries `0..=n`. Every server that holds
//! layers `[s, e)` offers an edge from each boundary `a` to each later boundary `b`
//! within its span (a route may enter and leave a span anywhere). An edge costs what
//! the client expects one token to take there: `(b - a)` layers at the server's
//! measured per-layer speed, slowed by how busy it is, plus half the ping round trip
//! to it (the link into that hop; the median of the known ones for a server not yet
//! pinged) and a fixed per-hop overhead, so fewer hops win a tie. The route is the
//! cheapest path from `0` to `n` (Dijkstra). Backups are found the same way without the
//! servers of the routes before them, so they are disjoint. A ring that drafts with a
//! draft model takes the edges into `n` only from servers that announce one of the
//! model's vocabulary (`draft_vocab`): its last hop drafts.

use std::collections::{BinaryHeap, HashSet};
use std::ops::Range;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

/// Cost of one more hop beyond its compute and link: framing, a task switch, a copy.
const HOP_OVERHEAD_S: f64 = 0.000_5;
/// A server that announced no free session is this much more expensive.
const FULL_PENALTY: f64 = 4.0;

/// One server as the client sees it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Who.
    pub peer: PeerId,
    /// Where to dial it.
    pub addrs: Vec<Multiaddr>,
    /// Layers it holds.
    pub layers: Range<u32>,
    /// Tokens per second through one of its blocks.
    pub block_throughput: f64,
    /// Sessions it can still take, as announced.
    pub free_sessions: u32,
    /// Ping round trip, when known.
    pub rtt: Option<Duration>,
    /// BLAKE3 of the vocabulary of the draft model it drafts with as a ring's last hop
    /// (empty: none).
    pub draft_vocab: Vec<u8>,
}

/// One hop of a route: a server and the layers it runs for this session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteHop {
    /// The server.
    #[serde(serialize_with = "crate::client::peer_string")]
    pub peer: PeerId,
    /// First layer.
    pub start: u32,
    /// Layer after the last.
    pub end: u32,
    /// Where to dial it.
    #[serde(skip)]
    pub addrs: Vec<Multiaddr>,
    /// Expected seconds per token through this hop (compute at its announced speed and
    /// the link into it).
    #[serde(skip)]
    pub expected_s: f64,
}

/// Expected seconds per token through `layers` of `server`, taking `assumed_rtt` for a
/// server never pinged.
fn edge_cost(server: &ServerInfo, layers: u32, assumed_rtt: Duration) -> f64 {
    let compute = layers as f64 / server.block_throughput.max(1e-9);
    let busy = if server.free_sessions == 0 { FULL_PENALTY } else { 1.0 };
    compute * busy + server.rtt.unwrap_or(assumed_rtt).as_secs_f64() / 2.0 + HOP_OVERHEAD_S
}

/// The round trip assumed to a server the client has not pinged: the median of those it
/// has (zero when it has none). Taken as zero, a server never reached, which may well
/// have gone, would look closer than every server the client knows to be there.
fn assumed_rtt(servers: &[ServerInfo]) -> Duration {
    let mut known: Vec<Duration> = servers.iter().filter_map(|s| s.rtt).collect();
    known.sort();
    known.get(known.len() / 2).copied().unwrap_or_default()
}

/// The cheapest route through all `n_layer` layers, avoiding `excluded` peers, and its
/// expected seconds per token; `None` when some layer has no usable server.
pub fn best_route(servers: &[ServerInfo], n_layer: u32, excluded: &HashSet<PeerId>) -> Option<(Vec<RouteHop>, f64)> {
    best_route_between(servers, 0..n_layer, excluded, None)
}

/// The cheapest route through `layers` only (a replacement for some hops of a route).
/// With `last_drafts`, the hop that ends it must be a server drafting with a draft model
/// of that vocabulary digest (a ring's last hop under `--speculative draft`).
pub fn best_route_between(
    servers: &[ServerInfo],
    layers: Range<u32>,
    excluded: &HashSet<PeerId>,
    last_drafts: Option<&[u8]>,
) -> Option<(Vec<RouteHop>, f64)> {
    let (from, n) = (layers.start as usize, layers.end as usize);
    if from >= n {
        return None;
    }
    let mut dist = vec![f64::INFINITY; n + 1];
    // For each boundary: (server index, boundary we came from).
    let mut prev: Vec<Option<(usize, usize)>> = vec![None; n + 1];
    dist[from] = 0.0;
    let rtt = assumed_rtt(servers);
    let mut heap = BinaryHeap::new();
    heap.push(Visit { cost: 0.0, at: from });
    while let Some(Visit { cost, at }) = heap.pop() {
        if cost > dist[at] || at == n {
            continue;
        }
        for (i, s) in servers.iter().enumerate() {
            let (start, end) = (s.layers.start as usize, (s.layers.end as usize).min(n));
            if excluded.contains(&s.peer) || !(start..end).contains(&at) {
                continue;
            }
            let may_end = last_drafts.is_none_or(|digest| s.draft_vocab == digest);
            for b in at + 1..=end {
                if b == n && !may_end {
                    continue;
                }
                let c = cost + edge_cost(s, (b - at) as u32, rtt);
                if c < dist[b] {
                    dist[b] = c;
                    prev[b] = Some((i, at));
                    heap.push(Visit { cost: c, at: b });
                }
            }
        }
    }
    if !dist[n].is_finite() {
        return None;
    }
    let mut hops = Vec::new();
    let mut at = n;
    while at > from {
        let (i, before) = prev[at]?;
        let s = &servers[i];
        let expected_s = dist[at] - dist[before];
        hops.push(RouteHop { peer: s.peer, start: before as u32, end: at as u32, addrs: s.addrs.clone(), expected_s });
        at = before;
    }
    hops.reverse();
    Some((hops, dist[n]))
}

/// Up to `count` routes that share no server, best first.
pub fn disjoint_routes(servers: &[ServerInfo], n_layer: u32, count: usize) -> Vec<Vec<RouteHop>> {
    let mut used = HashSet::new();
    let mut routes = Vec::new();
    while routes.len() < count {
        let Some((route, _)) = best_route(servers, n_layer, &used) else { break };
        used.extend(route.iter().map(|h| h.peer));
        routes.push(route);
    }
    routes
}

#[derive(PartialEq)]
struct Visit {
    cost: f64,
    at: usize,
}

impl Eq for Visit {}

impl Ord for Visit {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Smallest cost first (BinaryHeap is a max-heap).
        other.cost.total_cmp(&self.cost).then(other.at.cmp(&self.at))
    }
}

impl PartialOrd for Visit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(layers: Range<u32>, throughput: f64) -> ServerInfo {
        ServerInfo {
            peer: PeerId::random(),
            addrs: vec![],
            layers,
            block_throughput: throughput,
            free_sessions: 4,
            rtt: Some(Duration::from_millis(1)),
            draft_vocab: Vec::new(),
        }
    }

    fn spans(route: &[RouteHop]) -> Vec<(u32, u32)> {
        route.iter().map(|h| (h.start, h.end)).collect()
    }

    #[test]
    fn whole_spans_chain_end_to_end() {
        let s = vec![server(0..10, 1000.0), server(10..20, 1000.0), server(20..30, 1000.0)];
        let (route, cost) = best_route(&s, 30, &HashSet::new()).unwrap();
        assert_eq!(spans(&route), vec![(0, 10), (10, 20), (20, 30)]);
        assert_eq!(route[1].peer, s[1].peer);
        assert!(cost > 0.03 && cost < 0.04, "{cost}");
    }

    #[test]
    fn a_fast_server_is_entered_mid_span_and_a_missing_layer_means_no_route() {
        // A slow server for 0:30 and a fast one for 10:30: run 0:10 slow, then the rest fast.
        let s = vec![server(0..30, 100.0), server(10..30, 10_000.0)];
        let (route, _) = best_route(&s, 30, &HashSet::new()).unwrap();
        assert_eq!(spans(&route), vec![(0, 10), (10, 30)]);
        assert_eq!(route[1].peer, s[1].peer);
        let gap = vec![server(0..10, 100.0), server(11..30, 100.0)];
        assert!(best_route(&gap, 30, &HashSet::new()).is_none());
    }

    #[test]
    fn a_full_or_distant_server_loses_to_an_equal_free_near_one() {
        let mut full = server(0..30, 1000.0);
        full.free_sessions = 0;
        let free = server(0..30, 1000.0);
        let (route, _) = best_route(&[full.clone(), free.clone()], 30, &HashSet::new()).unwrap();
        assert_eq!(route[0].peer, free.peer);
        let mut far = server(0..30, 1000.0);
        far.rtt = Some(Duration::from_millis(80));
        let (route, _) = best_route(&[far, free.clone()], 30, &HashSet::new()).unwrap();
        assert_eq!(route[0].peer, free.peer);
    }

    #[test]
    fn a_server_never_pinged_is_costed_at_the_median_known_round_trip() {
        let (mut near, mut far, mut unknown) = (server(0..30, 1000.0), server(0..30, 1000.0), server(0..30, 1000.0));
        (near.rtt, far.rtt, unknown.rtt) = (Some(Duration::from_millis(10)), Some(Duration::from_millis(90)), None);
        let (route, cost) = best_route(&[unknown.clone(), far.clone(), near.clone()], 30, &HashSet::new()).unwrap();
        assert_eq!(route[0].peer, near.peer);
        // Without the near one, the unknown one is costed as the far one (the median).
        let (_, tie) = best_route(&[unknown, far], 30, &HashSet::new()).unwrap();
        assert!((tie - cost - 0.040).abs() < 1e-9, "{tie} vs {cost}");
    }

    #[test]
    fn a_replacement_covers_only_the_layers_asked_for() {
        let s = vec![server(0..15, 1000.0), server(15..30, 1000.0), server(10..30, 500.0), server(0..30, 100.0)];
        let avoid: HashSet<PeerId> = [s[1].peer].into();
        let (route, _) = best_route_between(&s, 15..30, &avoid, None).unwrap();
        assert_eq!(spans(&route), vec![(15, 30)]);
        assert_eq!(route[0].peer, s[2].peer, "entered mid-span, the failed server avoided");
        assert!(best_route_between(&s, 15..15, &avoid, None).is_none());
        let all: HashSet<PeerId> = s.iter().map(|x| x.peer).collect();
        assert!(best_route_between(&s, 15..30, &all, None).is_none());
    }

    #[test]
    fn a_drafting_route_ends_on_a_server_drafting_with_the_vocabulary_asked_for() {
        let drafting =
            |layers, throughput, digest: u8| ServerInfo { draft_vocab: vec![digest; 32], ..server(layers, throughput) };
        let s = vec![
            server(0..15, 1000.0),
            server(15..30, 1000.0),
            drafting(15..30, 500.0, 7),
            drafting(10..30, 2000.0, 8),
        ];
        let none = HashSet::new();
        let last = |route: Option<(Vec<RouteHop>, f64)>| route.map(|(r, _)| (r[r.len() - 1].peer, spans(&r)));
        assert_eq!(last(best_route_between(&s, 0..30, &none, None)), Some((s[3].peer, vec![(0, 10), (10, 30)])));
        // The fast server keeps what it can; the last layer goes to the slower one that drafts.
        let want = Some((s[2].peer, vec![(0, 10), (10, 29), (29, 30)]));
        assert_eq!(last(best_route_between(&s, 0..30, &none, Some(&[7; 32]))), want);
        let want = Some((s[2].peer, vec![(15, 29), (29, 30)]));
        assert_eq!(last(best_route_between(&s, 15..30, &none, Some(&[7; 32]))), want);
        assert_eq!(
            last(best_route_between(&s, 0..30, &none, Some(&[5; 32]))),
            None,
            "no draft model of that vocabulary"
        );
        // The hop that ends the layers asked for is held to it, the others are not.
        assert!(best_route_between(&s, 0..15, &none, Some(&[7; 32])).is_none());
        assert_eq!(last(best_route_between(&s, 0..20, &none, Some(&[8; 32]))).map(|l| l.0), Some(s[3].peer));
    }

    #[test]
    fn backups_share_no_server() {
        let s = vec![server(0..15, 1000.0), server(15..30, 1000.0), server(0..15, 900.0), server(15..30, 900.0)];
        let routes = disjoint_routes(&s, 30, 3);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0][0].peer, s[0].peer);
        let first: HashSet<PeerId> = routes[0].iter().map(|h| h.peer).collect();
        assert!(routes[1].iter().all(|h| !first.contains(&h.peer)));
    }
}
