//! A server flooded from another address keeps serving: `nak-node bench-flood` at a small
//! scale (300 idle TCP connections and 50 that send garbage, reopened as soon as a second
//! after the server closes them). The generation in progress keeps its tokens, the
//! server's open descriptors stay bounded (its pending handshakes are bounded in all and
//! per address), a newcomer joins and generates during the flood, and the server lives on.
//! The speed ratio is printed, not checked (docs/BENCHMARKS.md has the full-size figures).

mod common;

use common::{nak_json, smollm_path};
use nak_node::net::ResourceLimits;

#[test]
fn a_flooded_server_keeps_serving_with_bounded_descriptors_and_lets_newcomers_in() {
    let model = smollm_path();
    let args = ["--idle", "300", "--garbage", "50", "--tokens", "16", "--rounds", "1", "--json"];
    let report = nak_json(&[&["bench-flood", "--model", model.to_str().unwrap()][..], &args].concat());
    println!("{report:#}");
    assert_eq!(report["same_tokens"], true, "the flood changed the tokens: {report}");
    assert_eq!(report["server_alive"], true);
    assert!(report["new_client"]["Ok"].is_number(), "no newcomer got a token during the flood: {report}");
    let limits = ResourceLimits::default();
    let (before, max) = (report["server_fds_before"].as_u64().unwrap(), report["server_fds_max"].as_u64().unwrap());
    // The flood's share: its pending handshakes (one address), plus the newcomer's few
    // connections and the files a session opens.
    let bound = before + u64::from(limits.max_pending_incoming_per_ip) + 16;
    assert!(max <= bound, "the server held {max} descriptors during the flood ({before} before, bound {bound})");
    // Refused at once or after the handshake timeout: the server let go of nearly all.
    let (opened, closed) = (report["flood_connects"].as_u64().unwrap(), report["closed_by_server"].as_u64().unwrap());
    assert!(opened >= 350 && closed + 100 >= opened, "opened {opened}, closed by the server {closed}");
}
