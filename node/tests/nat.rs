//! NAT traversal on real sockets. Network namespaces make a small internet (one
//! bridge, public addresses 7.7.7.0/24) holding a relay (`nak-node relay`) and a client,
//! and two homes, each behind its own NAT router (iptables masquerade; unsolicited
//! inbound packets dropped, as home routers do). Each server at home learns from AutoNAT
//! that it is private, reserves a slot on the relay, is reached through it, and hole
//! punching (DCUtR) replaces the relayed connections with direct ones; a generation
//! through the two spans served from behind the NATs equals the whole model's. Once
//! over TCP, once over QUIC. Root only: elsewhere the tests say so and skip.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{smollm_path, Namespaces, Node};

/// The namespaces: the relay and the client on the internet, a server in each home.
struct Internet {
    ns: Namespaces,
    relay: String,
    client: String,
    homes: Vec<String>,
}

/// The relay's public address.
const RELAY_IP: &str = "7.7.7.1";

fn internet() -> Option<Internet> {
    let mut ns = Namespaces::new()?;
    let wan = ns.switch("wan");
    let relay = ns.make("relay");
    ns.plug(&relay, "eth0", &format!("{RELAY_IP}/24"), &wan);
    let client = ns.make("client");
    ns.plug(&client, "eth0", "7.7.7.3/24", &wan);
    let mut homes = Vec::new();
    for i in 1..=2 {
        let router = ns.make(&format!("router{i}"));
        ns.plug(&router, "wan", &format!("7.7.7.1{i}/24"), &wan);
        let home = ns.make(&format!("home{i}"));
        ns.link((&router, "lan", &format!("10.{i}.0.1/24")), (&home, "eth0", &format!("10.{i}.0.2/24")));
        ns.exec(&home, "ip", &format!("route add default via 10.{i}.0.1"));
        ns.exec(&router, "sysctl", "-qw net.ipv4.ip_forward=1");
        for rule in [
            "-t nat -A POSTROUTING -o wan -j MASQUERADE",
            "-A FORWARD -i wan -m conntrack --ctstate NEW -j DROP",
            "-A INPUT -i wan -m conntrack --ctstate NEW -j DROP",
        ] {
            ns.exec(&router, "iptables", rule);
        }
        homes.push(home);
    }
    Some(Internet { ns, relay, client, homes })
}

/// Reads `node`'s stdout until a line starting with each of `prefixes` has been seen;
/// returns every line read, in order.
fn read_until(node: &Node, prefixes: &[&str], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut lines: Vec<String> = Vec::new();
    while !prefixes.iter().all(|p| lines.iter().any(|l| l.starts_with(p))) {
        let left = deadline.saturating_duration_since(Instant::now());
        let missing: Vec<&&str> = prefixes.iter().filter(|p| !lines.iter().any(|l| l.starts_with(**p))).collect();
        assert!(!left.is_zero(), "no {missing:?} within {limit:?}; printed {lines:?}");
        lines.push(node.line("", left));
    }
    lines
}

fn peer_of(address: &str) -> String {
    address.rsplit('/').next().unwrap().to_string()
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

fn nat_traversal(transport: &str) {
    let Some(net) = internet() else {
        eprintln!("SKIPPED: cannot make network namespaces here (needs root, iproute2 and iptables)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let listen = |port: u16| match transport {
        "tcp" => format!("/ip4/0.0.0.0/tcp/{port}"),
        _ => format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    };
    let env = [("NAK_LOG", "warn,nak_node::net=info"), ("NAKSHATRA_NO_MDNS", "1")];
    let data = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let node = |ns: &str, name: &str, args: &[&str]| {
        let data = data(name);
        let args = [&["--data-dir", &data][..], args].concat();
        net.ns.node(ns, &args, &dir.path().join(format!("{name}.log")), &env)
    };

    let relay = node(&net.relay, "relay", &["relay", "--listen", &listen(4001)]);
    let relay_addr =
        relay.line(&format!("listening /ip4/{RELAY_IP}/"), Duration::from_secs(20))["listening ".len()..].to_string();
    let smol = smollm_path();
    let servers: Vec<Node> = [("a", "0:15"), ("b", "15:30")]
        .iter()
        .zip(&net.homes)
        .map(|((name, layers), home)| {
            let args = ["run", "--model", smol.to_str().unwrap(), "--serve-layers", layers, "--listen", &listen(0)];
            let more = ["--bootstrap", &relay_addr, "--threads", "1", "--announce-interval", "2"];
            node(home, name, &[&args[..], &more].concat())
        })
        .collect();
    let mut peers = Vec::new();
    let mut id = String::new();
    for (server, name) in servers.iter().zip(["a", "b"]) {
        let lines = read_until(server, &["serving ", "reachability relayed"], Duration::from_secs(180));
        // At home, the server listens on its private address only.
        let own = lines.iter().find(|l| l.starts_with("listening /ip4/10.")).unwrap_or_else(|| panic!("{lines:?}"));
        peers.push(peer_of(own));
        let serving = lines.iter().find(|l| l.starts_with("serving ")).unwrap();
        id = serving.split_whitespace().nth(1).unwrap().to_string();
        // AutoNAT's verdict comes a moment before the relay's answer.
        let text = log(dir.path(), name);
        let private = text.find("reachability changed old=Unknown new=Private");
        let reserved = text.find("ReservationReqAccepted");
        assert!(private.is_some() && private < reserved, "{name} did not learn it is private first:\n{text}");
    }

    let prompt = "The capital of France is";
    let gen = ["generate", "--bootstrap", &relay_addr, "--model", &id, "--prompt", prompt, "--max-tokens", "8"];
    let client = node(&net.client, "client", &[&gen[..], &["--json"]].concat());
    let out: serde_json::Value = serde_json::from_str(&client.line("{", Duration::from_secs(180))).unwrap();
    let route: Vec<&str> = out["route"].as_array().unwrap().iter().map(|h| h["peer"].as_str().unwrap()).collect();
    assert_eq!(route, peers, "{out}");

    // The same tokens as the whole model in one process, outside the namespaces.
    let local = common::nak_command()
        .args(["generate", "--model", smol.to_str().unwrap(), "--prompt", prompt, "--max-tokens", "8", "--json"])
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let local: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(out["tokens"], local["tokens"], "through the NATs: {out}\nlocal: {local}");

    // The client reached the servers through the relay, and hole punching replaced a
    // relayed connection by a direct one through the NATs: between the two homes (both
    // routers must let the other's packets in), or else between the client and a home
    // (the client may be gone before all of its upgrades finish). Between the homes over
    // TCP, the two connects race within a fraction of a millisecond here and the
    // simultaneous open now and then fails; then the client's upgrades are the evidence.
    let tails = || common::log_tails(dir.path(), 30);
    for name in ["a", "b", "client"] {
        assert!(log(dir.path(), name).contains("connected through a relay"), "{name} used no relay\n{}", tails());
    }
    let punched = |name: &str, peer: &str| {
        log(dir.path(), name).lines().any(|l| l.contains("hole punched: direct connection") && l.contains(peer))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(punched("a", &peers[1]) || punched("b", &peers[0]) || peers.iter().any(|p| punched("client", p))) {
        assert!(Instant::now() < deadline, "every connection stayed relayed\n{}", tails());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn servers_behind_two_nats_are_reached_through_a_relay_then_directly_over_tcp() {
    nat_traversal("tcp");
}

#[test]
fn servers_behind_two_nats_are_reached_through_a_relay_then_directly_over_quic() {
    nat_traversal("quic");
}
