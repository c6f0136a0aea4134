//! Joining the swarm: a client finds the servers at once (it does not wait for their
//! next announcement), a node finds peers through `NAKSHATRA_BOOTSTRAP`, the data
//! dir's `bootstrap` file, the peers it met before and mDNS, and swarms of other names
//! or keys stay apart. The mDNS test runs in network namespaces it makes (root only;
//! it says so and skips elsewhere).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{smollm_path, Namespaces, Node};

/// `nak-node ARGS` with `env`, killed after `limit`.
fn nak(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg(limit.as_secs().to_string()).arg(env!("CARGO_BIN_EXE_nak-node")).args(args);
    cmd.env("NAKSHATRA_NO_MDNS", "1").env("NAK_LOG", "warn").envs(env.iter().copied());
    cmd.output().expect("nak-node runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A server on loopback that announces itself only once in 10 minutes.
fn server(data: &Path, model: &str, layers: &str, extra: &[&str], env: &[(&str, &str)]) -> Node {
    let mut args = vec!["--data-dir", data.to_str().unwrap(), "run", "--model", model, "--serve-layers", layers];
    args.extend(["--listen", "/ip4/127.0.0.1/tcp/0", "--threads", "1", "--announce-interval", "600"]);
    args.extend(extra);
    Node::start_with_env(&args, Some(&data.with_extension("log")), env)
}

fn address(node: &Node) -> String {
    node.line("listening ", Duration::from_secs(20))["listening ".len()..].to_string()
}

fn model_id(node: &Node) -> String {
    node.line("serving ", Duration::from_secs(120)).split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn a_client_finds_the_servers_without_waiting_for_an_announcement_round() {
    let dir = tempfile::tempdir().unwrap();
    let a = server(&dir.path().join("a"), smollm_path().to_str().unwrap(), "0:10", &[], &[]);
    let boot = address(&a);
    let id = model_id(&a);
    let others: Vec<Node> = ["10:20", "20:30"]
        .iter()
        .enumerate()
        .map(|(i, layers)| server(&dir.path().join(format!("s{i}")), &id, layers, &["--bootstrap", &boot], &[]))
        .collect();
    for n in &others {
        n.line("serving ", Duration::from_secs(120));
    }
    // Gossip does not replay old announcements, and the next round is 10 minutes away:
    // a client that routes now learned the servers by asking them.
    let client = dir.path().join("client");
    let args = ["--data-dir", client.to_str().unwrap(), "generate", "--bootstrap", &boot, "--model", &id];
    let out = json(&nak(
        &[&args[..], &["--prompt", "The capital of France is", "--max-tokens", "4", "--json"]].concat(),
        &[],
        Duration::from_secs(120),
    ));
    assert_eq!(out["tokens"].as_array().unwrap().len(), 4, "{out}");
    assert_eq!(out["route"].as_array().unwrap().len(), 3, "{out}");
    assert!(out["discovery_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{out}");

    // status answers once it has asked, long before its --wait.
    let t0 = std::time::Instant::now();
    let status =
        json(&nak(&["status", "--bootstrap", &boot, "--wait", "600", "--json"], &[], Duration::from_secs(120)));
    assert!(t0.elapsed() < Duration::from_secs(120));
    let model = &status["models"][0];
    assert_eq!(model["servers"], 3, "{status}");
    for block in model["blocks"].as_array().unwrap() {
        assert_eq!(block["servers"].as_array().unwrap().len(), 1, "{status}");
    }
    for s in model["server_list"].as_array().unwrap() {
        // Loopback addresses are not tested by AutoNAT.
        assert_eq!(s["reachability"], "unknown", "{status}");
    }
}

#[test]
fn nodes_find_peers_through_the_environment_the_bootstrap_file_and_the_peers_they_met() {
    let dir = tempfile::tempdir().unwrap();
    let a = server(&dir.path().join("a"), smollm_path().to_str().unwrap(), "0:15", &[], &[]);
    let boot = address(&a);
    let id = model_id(&a);
    let b_dir = dir.path().join("b");
    let mut b = server(&b_dir, &id, "15:30", &[], &[("NAKSHATRA_BOOTSTRAP", &format!(" {boot} ,"))]);
    b.line("serving ", Duration::from_secs(120));
    let peers = b_dir.join("peers");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&peers).is_ok_and(|t| t.contains(&boot)) {
        assert!(std::time::Instant::now() < deadline, "b did not remember a in {}", peers.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    b.kill();

    // Restarted with no flags and no environment: it rejoins through the peers it met.
    let b = server(&b_dir, &id, "15:30", &[], &[]);
    let b_peer = address(&b).rsplit('/').next().unwrap().to_string();
    b.line("serving ", Duration::from_secs(120));

    // A client whose only way in is its bootstrap file; layers 15:30 exist only on b.
    let client = dir.path().join("client");
    std::fs::create_dir_all(&client).unwrap();
    std::fs::write(client.join("bootstrap"), format!("# the lab\n{boot}\n")).unwrap();
    let args = ["--data-dir", client.to_str().unwrap(), "generate", "--model", &id, "--prompt", "Hello"];
    let out = json(&nak(&[&args[..], &["--max-tokens", "4", "--json"]].concat(), &[], Duration::from_secs(120)));
    let route = out["route"].as_array().unwrap();
    assert!(route.iter().any(|h| h["peer"] == b_peer.as_str()), "{out}");

    // With no way in at all, the error says what to pass.
    let empty = dir.path().join("empty");
    let out = nak(&["--data-dir", empty.to_str().unwrap(), "status"], &[], Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--bootstrap") && err.contains("NAKSHATRA_BOOTSTRAP"), "{err}");
}

#[test]
fn swarms_of_other_names_or_keys_never_meet() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str, byte: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", byte.repeat(32))).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (k1, k2) = (key("k1", "a1"), key("k2", "b2"));
    let lab = ["--swarm", "lab", "--swarm-key", &k1];
    let s = server(&dir.path().join("s"), smollm_path().to_str().unwrap(), "all", &lab, &[]);
    let boot = address(&s);
    let id = model_id(&s);
    let gen = |join: &[&str]| {
        let data = dir.path().join(format!("c{}", join.join("-").len()));
        let mut args = vec!["--data-dir", data.to_str().unwrap(), "generate", "--bootstrap", &boot, "--model", &id];
        args.extend(["--prompt", "Hi", "--max-tokens", "2", "--json"]);
        args.extend(join);
        nak(&args, &[], Duration::from_secs(120))
    };
    for outsider in [&[][..], &["--swarm", "lab"], &["--swarm-key", &k1], &["--swarm", "lab", "--swarm-key", &k2]] {
        let out = gen(outsider);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("no peers"), "{outsider:?} got in: {err}");
    }
    let out = json(&gen(&lab));
    assert_eq!(out["tokens"].as_array().unwrap().len(), 2, "{out}");
    let status = nak(&["status", "--bootstrap", &boot, "--wait", "5", "--json"], &[], Duration::from_secs(60));
    assert!(!status.status.success(), "a public status saw the private swarm");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn nodes_on_one_lan_find_each_other_by_mdns() {
    let Some(mut lan) = Namespaces::new() else {
        eprintln!("SKIPPED: cannot make network namespaces here (needs root and iproute2)");
        return;
    };
    let switch = lan.switch("lan");
    let hosts: Vec<String> = (1..=2).map(|h| lan.make(&format!("h{h}"))).collect();
    for (h, host) in hosts.iter().enumerate() {
        lan.plug(host, "eth0", &format!("10.77.0.{}/24", h + 1), &switch);
    }
    let dir = tempfile::tempdir().unwrap();
    let data = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let run = |n: &str, model: &str, layers: &str| -> Vec<String> {
        let args = ["--data-dir", &data(n), "run", "--model", model, "--serve-layers", layers, "--threads", "1"];
        let more = ["--listen", "/ip4/0.0.0.0/tcp/0", "--announce-interval", "2"];
        args.iter().chain(&more).map(|s| s.to_string()).collect()
    };
    let a_args = run("a", smollm_path().to_str().unwrap(), "0:15");
    let a = lan.node(&hosts[0], &strs(&a_args), &dir.path().join("a.log"), &[]);
    let id = model_id(&a);
    let b_args = run("b", &id, "15:30");
    let b = lan.node(&hosts[1], &strs(&b_args), &dir.path().join("b.log"), &[]);
    b.line("serving ", Duration::from_secs(120));
    let c = data("client");
    let args = ["--data-dir", &c, "generate", "--model", &id, "--prompt", "Hello", "--max-tokens", "4", "--json"];
    let client = lan.node(&hosts[1], &args, &dir.path().join("client.log"), &[]);
    let line = client.line("{", Duration::from_secs(120));
    let out: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(out["tokens"].as_array().unwrap().len(), 4, "{out}");
    assert_eq!(out["route"].as_array().unwrap().len(), 2, "{out}");
}
