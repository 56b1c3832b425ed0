//! The benchmark harness runs end to end (`--quick`): every setup builds, every tool reports, the
//! JSON and chart are written. Numbers are not judged here; `cargo xtask bench` reports them.

use std::process::Command;

use podnet_tests::Lab;

#[test]
fn quick_bench_runs_end_to_end() {
    let lab = Lab::new("bsmoke").unwrap();
    let (json_path, svg_path) = (lab.dir().join("bench.json"), lab.dir().join("bench.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_podnet-bench"))
        .args(["--quick", "--json", json_path.to_str().unwrap(), "--svg", svg_path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| TCP 1 stream | Gbit/s |"), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    for path in ["same-node", "cross-node", "nat"] {
        let xdp: &[&str] = match path {
            "same-node" => &[],
            "nat" => &["podnet+xdp", "podnet+xdp-generic"],
            _ => &["podnet+xdp", "podnet+xdp-generic", "podnet+xdp-deliver"],
        };
        for setup in ["limit", "recipe", "podnet"].iter().chain(xdp) {
            let metrics = results.iter().filter(|r| r["setup"] == *setup && r["path"] == path).count();
            // NAT adds the reply direction: TCP 1 stream, UDP 64 B rate and loss. The one TCP 1
            // stream run is also reported as fast or slow mode.
            let expected = if path == "nat" { 15 } else { 12 };
            assert_eq!(metrics, expected, "{path} / {setup} should report all {expected} metrics");
            let flood = results
                .iter()
                .find(|r| r["setup"] == *setup && r["path"] == path && r["metric"] == "udp-flood-kpps")
                .unwrap_or_else(|| panic!("{path} / {setup}: no flood figure"));
            assert!(flood["stat"]["median"].as_f64().unwrap() > 1.0, "{path} / {setup}: the flood arrived");
            if setup.starts_with("podnet") {
                let runtimes = json["runtimes"].as_array().unwrap();
                assert!(
                    runtimes.iter().any(|r| r["setup"] == *setup
                        && r["path"] == path
                        && r["program"] == "from_pod"
                        && r["runs"].as_u64().unwrap() > 1000
                        && r["ns_per_run"].as_f64().unwrap() > 0.0),
                    "{path} / {setup}: from_pod's run time under the flood: {runtimes:?}"
                );
            }
        }
    }
    assert!(results.iter().all(|r| r["stat"]["median"].as_f64().is_some_and(f64::is_finite)));
    assert_eq!(json["costs"].as_array().unwrap().len(), 13);
    let floods = json["floods"].as_array().unwrap();
    assert_eq!(floods.len(), 3, "xdp native, xdp generic, iptables raw");
    assert!(
        floods.iter().all(|f| f["dropped_kpps"].as_f64().unwrap() > 0.0),
        "every dropper dropped: {floods:?}"
    );
    assert!(std::fs::read_to_string(&svg_path).unwrap().starts_with("<svg"));
}
