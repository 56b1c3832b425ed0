//! `up` makes the node what its config says, whatever it was: edits to pods, peers, the NAT
//! port range and the node IP land completely on the next `up`; maps pinned in an older layout
//! are migrated while traffic flows; and podnet removes only what it made (a bridge, forwarding,
//! ports it found stay), with config and runtime errors that name the file and the field.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use podnet::datapath::{PinDir, maps::NatSettings};
use podnet_tests::{Lab, Node, bpftool, in_ns, node_config, pings, possible_cpus, run, sh, wait_udp_bound};

const EXT: &str = "192.168.50.100";

/// Node 1 (pods 10.1.1.2 and .3, NAT, XDP generic) with `extra` config appended, on a switch
/// with an external host; not up yet.
fn node_with_external_host(lab: &mut Lab, peers: &[u8], extra: &str) -> anyhow::Result<(Node, String)> {
    let switch = lab.switch("sw")?;
    let node = lab.node("node1", &format!("{}\n{extra}", node_config(1, peers, "generic")))?;
    lab.plug(&switch, &node.netns, "port1", "192.168.50.1/24")?;
    let ext = lab.netns("ext")?;
    lab.plug(&switch, &ext, "portx", &format!("{EXT}/24"))?;
    Ok((node, ext))
}

/// Rewrites `node`'s config with `edit` and runs `up`.
fn edit_and_up(node: &Node, edit: impl Fn(String) -> String) -> anyhow::Result<()> {
    let before = std::fs::read_to_string(&node.config)?;
    let after = edit(before.clone());
    anyhow::ensure!(after != before, "the edit changed nothing");
    std::fs::write(&node.config, after)?;
    node.run_podnet(&["up"]).map(drop)
}

/// `(pod address, node address)` of every translation.
fn translations(node: &Node) -> anyhow::Result<Vec<(String, String)>> {
    let json: serde_json::Value = serde_json::from_str(&node.run_podnet(&["nat", "list", "--json"])?)?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t["pod"].as_str().unwrap_or("").to_owned(), t["node"].as_str().unwrap_or("").to_owned()))
        .collect())
}

/// The `field` of every entry of `list` in `podnet status`.
fn status_list(node: &Node, list: &str, field: &str) -> anyhow::Result<Vec<String>> {
    let status = node.status()?;
    Ok(status[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e[field].as_str().map(str::to_owned))
        .collect())
}

fn endpoints(node: &Node) -> anyhow::Result<Vec<String>> {
    status_list(node, "endpoints", "ip")
}

fn peers(node: &Node) -> anyhow::Result<Vec<String>> {
    status_list(node, "peers", "name")
}

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

#[test]
fn config_edits_land_completely() -> anyhow::Result<()> {
    let mut lab = Lab::new("edit")?;
    let (node, ext) = node_with_external_host(&mut lab, &[2, 3], "")?;
    node.run_podnet(&["up"])?;
    node.run_podnet(&["node", "add", "node4", "--ip", "192.168.50.4", "--pod-cidr", "10.1.4.0/24"])?;
    let (pod1, pod2) = (node.pod_ns("pod1"), node.pod_ns("pod2"));

    // A peer leaves the config: its map entry and route go; one added at runtime stays.
    edit_and_up(&node, |c| c.split("\n[[peer]]\nname = \"node3\"").next().unwrap_or_default().to_owned())?;
    assert_eq!(peers(&node)?, ["node2", "node4"]);
    let routes = sh(&node.netns, "ip", &["route"])?;
    assert!(!routes.contains("10.1.3.0/24"), "node3's route is gone:\n{routes}");
    assert!(routes.contains("10.1.2.0/24") && routes.contains("10.1.4.0/24"), "the others stay:\n{routes}");

    // pod2 gets another address: it holds only the new one, the datapath knows only the new one,
    // and its old connections are gone.
    assert!(pings(&pod2, EXT, 1));
    edit_and_up(&node, |c| c.replace("ip = \"10.1.1.3\"", "ip = \"10.1.1.9\""))?;
    let addrs = sh(&pod2, "ip", &["-4", "-o", "addr", "show", "veth_pod2"])?;
    assert_eq!(addrs.matches("inet ").count(), 1, "one address:\n{addrs}");
    assert!(addrs.contains("10.1.1.9/24"), "the new one:\n{addrs}");
    assert_eq!(endpoints(&node)?, ["10.1.1.2", "10.1.1.9"]);
    assert!(
        !translations(&node)?.iter().any(|(pod, _)| pod.starts_with("10.1.1.3:")),
        "no translation of the old address"
    );
    assert!(pings(&pod1, "10.1.1.9", 1), "pod1 reaches pod2 at its new address");
    assert!(pings(&pod2, EXT, 1), "pod2 reaches the outside from its new address");
    assert!(sh(&pod2, "ip", &["route"])?.contains("default via 10.1.1.1"), "the default route stays");

    // The NAT port range changes: translations on ports outside it go, new ones use it, and the
    // node's reserved ports follow.
    assert!(pings(&pod1, EXT, 1));
    edit_and_up(&node, |c| c + "\n[nat]\nports = \"62000-62999\"\n")?;
    assert!(
        translations(&node)?.iter().all(|(_, n)| (62000..=62999).contains(&port_of(n))),
        "{:?}",
        translations(&node)?
    );
    assert!(pings(&pod1, EXT, 1));
    let list = translations(&node)?;
    assert!(!list.is_empty() && list.iter().all(|(_, n)| (62000..=62999).contains(&port_of(n))), "{list:?}");
    let reserved = sh(&node.netns, "sysctl", &["-n", "net.ipv4.ip_local_reserved_ports"])?;
    assert_eq!(reserved.trim(), "62000-62999");

    // The node IP changes: translations made as the old address go, new ones use the new one.
    sh(&node.netns, "ip", &["addr", "add", "192.168.50.11/24", "dev", "eth0"])?;
    edit_and_up(&node, |c| c.replace("ip = \"192.168.50.1\"", "ip = \"192.168.50.11\""))?;
    assert!(translations(&node)?.is_empty(), "{:?}", translations(&node)?);
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "udp-echo", EXT, "9999"])?;
    wait_udp_bound(&ext, 9999)?;
    assert_eq!(sh(&pod1, "python3", &[&nc, "udp-ask", EXT, "9999", "hi"])?.trim(), "hi from 192.168.50.11");

    // A pod leaves the config: its namespace (podnet made it), veth and endpoint go.
    edit_and_up(&node, |c| c.replace("[[pod]]\nname = \"pod1\"\nip = \"10.1.1.2\"\n", ""))?;
    assert!(!podnet::host::netns::exists(&pod1), "pod1's namespace is gone");
    assert_eq!(endpoints(&node)?, ["10.1.1.9"]);
    assert!(!sh(&node.netns, "ip", &["-o", "link"])?.contains("brveth_pod1"));

    node.run_podnet(&["down"])?;
    let reserved = sh(&node.netns, "sysctl", &["-n", "net.ipv4.ip_local_reserved_ports"])?;
    assert_eq!(reserved.trim(), "", "down gives the ports back");
    Ok(())
}

/// Replaces the pinned map `name` of `node` with a new map made by bpftool (`spec`: type, key,
/// value, entries), as an older podnet would have pinned it. The programs attached keep the map
/// they have.
fn pin_older_map(node: &Node, name: &str, spec: &[&str]) -> anyhow::Result<()> {
    let path = node.pin_dir().join(name);
    std::fs::remove_file(&path)?;
    let path = path.to_str().context("utf-8 path")?;
    let mut args = vec!["map", "create", path];
    args.extend_from_slice(spec);
    args.extend_from_slice(&["name", name]);
    bpftool(&args).map(drop)
}

/// What `bpftool map show` says of the pinned map `name` of `node`.
fn map_info(node: &Node, name: &str) -> anyhow::Result<serde_json::Value> {
    let path = node.pin_dir().join(name);
    Ok(serde_json::from_str(&bpftool(&["-j", "map", "show", "pinned", path.to_str().context("path")?])?)?)
}

/// `bpftool map update` of the pinned map `name` of `node`: `key` and `value` as hex bytes.
fn update(node: &Node, name: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
    let path = node.pin_dir().join(name);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>();
    let mut args =
        vec!["map".to_owned(), "update".to_owned(), "pinned".to_owned(), path.display().to_string()];
    args.push("key".to_owned());
    args.extend(hex(key));
    args.push("value".to_owned());
    args.extend(hex(value));
    bpftool(&args).map(drop)
}

/// A map entry's key and value bytes.
type RawEntry = (Vec<u8>, Vec<u8>);

/// The raw entries of a pinned hash map.
fn entries(node: &Node, name: &str) -> anyhow::Result<Vec<RawEntry>> {
    let path = node.pin_dir().join(name);
    let out = bpftool(&["-j", "map", "dump", "pinned", path.to_str().context("path")?])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_str().and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok()))
            .collect()
    };
    Ok(json.as_array().into_iter().flatten().map(|e| (bytes(&e["key"]), bytes(&e["value"]))).collect())
}

/// A node pinned by an older podnet: `COUNTERS` with one slot per reason of podnet 0.1 (20) and
/// no layout stamps, connection tracking in maps of another capacity. `up` while pods talk and a
/// NAT connection is open: no packet is lost, the connection survives, counts and translations
/// are carried over (except the slot whose meaning changed), and the maps end up as this podnet
/// lays them out.
#[test]
fn older_maps_migrate_while_traffic_flows() -> anyhow::Result<()> {
    let mut lab = Lab::new("migr")?;
    let (node, ext) = node_with_external_host(&mut lab, &[], "")?;
    node.run_podnet(&["up"])?;
    let (pod1, pod2) = (node.pod_ns("pod1"), node.pod_ns("pod2"));
    let nc = lab.netcat()?;
    lab.spawn(&ext, "python3", &[&nc, "udp-echo", EXT, "9999"])?;
    wait_udp_bound(&ext, 9999)?;
    // A NAT translation that must survive: the same pod port asks again after the upgrade.
    let ask = |text: &str| sh(&pod1, "python3", &[&nc, "udp-ask", EXT, "9999", text, "40000"]);
    assert_eq!(ask("before")?.trim(), "before from 192.168.50.1");
    let node_port_before = translations(&node)?;

    // What podnet 0.1 pinned: 20 counter slots, CT maps of 1024 entries, no stamps.
    let ct = [("CT_OUT", entries(&node, "CT_OUT")?), ("CT_IN", entries(&node, "CT_IN")?)];
    pin_older_map(&node, "COUNTERS", &["type", "percpu_array", "key", "4", "value", "8", "entries", "20"])?;
    for (name, rows) in &ct {
        pin_older_map(&node, name, &["type", "lru_hash", "key", "16", "value", "24", "entries", "1024"])?;
        for (k, v) in rows {
            update(&node, name, k, v)?;
        }
    }
    // bpftool writes the one value given to every CPU's slot: the old map counts 1000 per CPU.
    let per_cpu = |n: u64| n.to_le_bytes();
    update(&node, "COUNTERS", &0u32.to_le_bytes(), &per_cpu(1000))?; // redirect_local
    update(&node, "COUNTERS", &15u32.to_le_bytes(), &per_cpu(7))?; // was pass_not_natable
    std::fs::remove_dir_all(node.pin_dir().join("layout"))?;
    let seeded = 1000 * possible_cpus()?;

    // Pods keep talking through the upgrade: a fast ping runs all through it and loses nothing.
    // FORWARD drops, as on a Kubernetes node: only the datapath carries pod traffic, so a gap in
    // it is a loss, not a detour through the bridge.
    node.forward_drop()?;
    // (The running programs count into their own map, no longer pinned: pod2's traffic, which
    // they count in POD_STATS, shows the ping flowing.)
    let to_pod2 = || -> anyhow::Result<u64> {
        let status = node.status()?;
        let pod2 =
            status["endpoints"].as_array().and_then(|e| e.iter().find(|e| e["ip"] == "10.1.1.3")).cloned();
        Ok(pod2.and_then(|e| e["traffic"]["to_pod_packets"].as_u64()).unwrap_or(0))
    };
    let flowing = to_pod2()? + 20;
    let ping = lab.child(in_ns(&pod1, "ping").args(["-c", "800", "-i", "0.01", "-q", "10.1.1.3"]))?;
    podnet_tests::wait_for("the ping to flow", Duration::from_secs(5), || {
        Ok((to_pod2()? >= flowing).then_some(()))
    })?;
    node.run_podnet(&["up"])?;
    assert!(ping.running(), "the ping ran on while `up` migrated the maps (else it proves nothing)");
    let out = ping.wait_output(Duration::from_secs(20))?;
    assert!(out.contains(" 0% packet loss"), "no packet lost during the migration:\n{out}");

    // 50 more pings: 100 deliveries the new programs count.
    let more = sh(&pod1, "ping", &["-c", "50", "-i", "0.01", "-q", "10.1.1.3"])?;
    assert_eq!(podnet_tests::ping_loss(&more), Some(0.0), "{more}");
    let status = node.status()?;
    let local = node.counter("redirect_local")?;
    assert!(
        local >= seeded + 100,
        "the old map's {seeded} counts carried over and the new programs' added: {local}"
    );
    assert_eq!(
        node.counter("drop_not_natable")?,
        0,
        "a count whose meaning changed is not carried: {status}"
    );
    assert_eq!(ask("after")?.trim(), "after from 192.168.50.1", "the NAT connection survives");
    assert_eq!(translations(&node)?, node_port_before, "on the same node port");
    assert!(pings(&pod2, "10.1.1.2", 1));

    let info = map_info(&node, "CT_OUT")?;
    assert_eq!(info["max_entries"], 2 * 65536, "CT_OUT has this podnet's capacity: {info}");
    assert_eq!(info["type"], "hash", "CT_OUT is this podnet's kind of map (no longer LRU): {info}");
    let stamps: Vec<String> = std::fs::read_dir(node.pin_dir().join("layout"))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    assert!(
        stamps.contains(&"COUNTERS@v2".to_owned()) && stamps.contains(&"CT_OUT@v2".to_owned()),
        "{stamps:?}"
    );
    let old = node.pin_dir().join("old");
    assert!(!old.exists() || std::fs::read_dir(&old)?.next().is_none(), "the old maps are unpinned");

    // A same-size change of meaning is caught by the stamp alone: COUNTERS stamped v1 is migrated.
    std::fs::rename(node.pin_dir().join("layout/COUNTERS@v2"), node.pin_dir().join("layout/COUNTERS@v1"))?;
    let natable = node.counter("drop_not_natable")?;
    update(&node, "COUNTERS", &15u32.to_le_bytes(), &per_cpu(5))?;
    node.run_podnet(&["up"])?;
    assert_eq!(node.counter("drop_not_natable")?, natable, "slot 15 of a v1 map is not carried");
    assert!(Path::new(&node.pin_dir().join("layout/COUNTERS@v2")).exists());

    // The last release's pod sides, LRU hashes stamped as today's layout: their kind alone sets
    // them aside, and the translations are carried.
    let mut rows = entries(&node, "CT_OUT")?;
    assert!(!rows.is_empty(), "the NAT connection's pod side");
    pin_older_map(&node, "CT_OUT", &["type", "lru_hash", "key", "16", "value", "24", "entries", "131072"])?;
    for (k, v) in &rows {
        update(&node, "CT_OUT", k, v)?;
    }
    node.run_podnet(&["up"])?;
    let mut carried = entries(&node, "CT_OUT")?;
    rows.sort();
    carried.sort();
    assert_eq!(carried, rows, "the pod sides are carried");
    let info = map_info(&node, "CT_OUT")?;
    assert_eq!(info["type"], "hash", "CT_OUT is a hash again: {info}");
    Ok(())
}

/// podnet removes only what it made: on a node never brought up `down` touches nothing; a bridge
/// and forwarding it found stay after `down` (the gateway address it added goes); a failed `up`
/// puts forwarding back; ports the node reserved itself stay reserved.
#[test]
fn down_removes_only_what_podnet_made() -> anyhow::Result<()> {
    let mut lab = Lab::new("mine")?;
    let body = "pod_cidr = \"10.1.1.0/24\"\n[[pod]]\nname = \"pod1\"\nip = \"10.1.1.2\"\n";
    let node = lab.node("node", body)?;
    sh(&node.netns, "ip", &["link", "add", "br0", "type", "bridge"])?;
    sh(&node.netns, "ip", &["addr", "add", "172.31.0.1/24", "dev", "br0"])?;
    sh(&node.netns, "sysctl", &["-qw", "net.ipv4.ip_local_reserved_ports=8080"])?;
    let forwarding =
        || sh(&node.netns, "sysctl", &["-n", "net.ipv4.ip_forward"]).map(|s| s.trim().to_owned());
    assert_eq!(forwarding()?, "0");

    node.run_podnet(&["down"])?;
    let br0 = sh(&node.netns, "ip", &["-4", "-o", "addr", "show", "br0"])?;
    assert!(br0.contains("172.31.0.1/24"), "down on a node never up keeps br0:\n{br0}");

    // A failed `up` (pod1's host veth name is taken) puts forwarding back.
    sh(&node.netns, "ip", &["link", "add", "brveth_pod1", "type", "bridge"])?;
    assert!(node.run_podnet(&["up"]).is_err());
    assert_eq!(forwarding()?, "0", "a failed up restores ip_forward");
    let br0 = sh(&node.netns, "ip", &["-4", "-o", "addr", "show", "br0"])?;
    assert!(!br0.contains("10.1.1.1"), "a failed up removes the gateway address it added:\n{br0}");
    sh(&node.netns, "ip", &["link", "del", "brveth_pod1"])?;

    node.run_podnet(&["up"])?;
    assert!(pings(&node.pod_ns("pod1"), "10.1.1.1", 1));
    node.run_podnet(&["down"])?;
    let br0 = sh(&node.netns, "ip", &["-4", "-o", "addr", "show", "br0"])?;
    assert!(
        br0.contains("172.31.0.1/24") && !br0.contains("10.1.1.1"),
        "br0 stays, without the gateway:\n{br0}"
    );
    assert_eq!(forwarding()?, "0", "down restores ip_forward");
    let reserved = sh(&node.netns, "sysctl", &["-n", "net.ipv4.ip_local_reserved_ports"])?;
    assert_eq!(reserved.trim(), "8080", "the node's own reservation stays");
    Ok(())
}

/// Whether `node` is gone completely: pins, bridge, pod namespaces, state.
fn gone(node: &Node) -> anyhow::Result<()> {
    anyhow::ensure!(!node.pin_dir().exists(), "{}: pins left", node.name);
    anyhow::ensure!(!sh(&node.netns, "ip", &["link"])?.contains("br0"), "{}: br0 left", node.name);
    let left = podnet_tests::namespaces_with_prefix(&format!("{}-", node.name));
    anyhow::ensure!(left.is_empty(), "{}: namespaces left: {left:?}", node.name);
    let state = Path::new("/var/lib/podnet").join(&node.name);
    anyhow::ensure!(!state.exists(), "{}: state left in {}", node.name, state.display());
    Ok(())
}

/// `down` needs only the node's name and state: it works after a pod's address changed (the
/// namespace podnet made goes), with a config an upgrade broke (it says what it ignored), and
/// with no config at all.
#[test]
fn down_needs_only_the_nodes_name_and_state() -> anyhow::Result<()> {
    let mut lab = Lab::new("dwn")?;
    let body = "pod_cidr = \"10.1.1.0/24\"\n[[pod]]\nname = \"pod1\"\nip = \"10.1.1.2\"\n";
    let a = lab.node("a", body)?;
    a.run_podnet(&["up"])?;
    std::fs::write(&a.config, std::fs::read_to_string(&a.config)?.replace("10.1.1.2", "10.1.1.20"))?;
    a.run_podnet(&["up"])?;
    assert!(pings(&a.pod_ns("pod1"), "10.1.1.1", 1), "pod1 at its new address");
    // A field an older podnet knew: the config no longer loads.
    let broken = std::fs::read_to_string(&a.config)? + "\n[nat]\ntcp_closing_timeout = 30\n";
    std::fs::write(&a.config, broken)?;
    assert!(a.podnet(&["status"]).output()?.status.code() != Some(0), "the config is broken");
    let out = run(&mut a.podnet(&["down"]))?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("nat.tcp_closing_timeout: replaced"), "{said}");
    assert!(said.contains("ignored: [nat], [pod]"), "{said}");
    gone(&a)?;

    let b = lab.node("b", body)?;
    b.run_podnet(&["up"])?;
    std::fs::remove_file(&b.config)?;
    let mut down = std::process::Command::new(podnet_tests::podnet_bin());
    down.args(["--netns", &b.netns, "down", "--node", &b.name]);
    run(&mut down)?;
    gone(&b)?;

    // A file that is not TOML names no node: down says how to name it.
    let c = lab.node("c", body)?;
    std::fs::write(&c.config, "[node\nname = ")?;
    let out = c.podnet(&["down"]).output()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("podnet down --node NAME"), "{out:?}");
    Ok(())
}

/// Errors found when `up` runs name the config file and field, and leave nothing behind.
#[test]
fn runtime_errors_name_the_file_and_field() -> anyhow::Result<()> {
    let mut lab = Lab::new("rterr")?;
    let switch = lab.switch("sw")?;
    let node = lab.node("node1", &node_config(1, &[2], "off"))?;
    lab.plug(&switch, &node.netns, "port1", "192.168.50.1/24")?;
    let config = node.config.display().to_string();
    let cases = [
        ("interface = \"eth0\"", "interface = \"nosuch0\"", "uplink.interface: nosuch0 does not exist"),
        (
            "ip = \"192.168.50.1\"",
            "ip = \"192.168.50.7\"",
            "uplink.ip: 192.168.50.7 is not an address of eth0",
        ),
        (
            "pod_cidr = \"10.1.2.0/24\"",
            "pod_cidr = \"192.168.50.128/25\"",
            "peer[0].pod_cidr: 192.168.50.128/25 overlaps 192.168.50.0/24",
        ),
    ];
    let body = std::fs::read_to_string(&node.config)?;
    for (from, to, wanted) in cases {
        std::fs::write(&node.config, body.replace(from, to))?;
        let out = node.podnet(&["up"]).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&format!("{config}: {wanted}")), "{to}: {stderr}");
        assert!(!node.pin_dir().exists(), "{to}: nothing left behind");
    }
    std::fs::write(
        &node.config,
        body.replace("pod_cidr = \"10.1.1.0/24\"", "pod_cidr = \"10.1.1.0/24\"\nbridge = \"eth0\""),
    )?;
    let out = node.podnet(&["up"]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{config}: node.bridge: \"eth0\" is the uplink interface")), "{stderr}");
    let eth0 = sh(&node.netns, "ip", &["-4", "-o", "addr", "show", "eth0"])?;
    assert!(
        eth0.contains("192.168.50.1/24") && !eth0.contains("10.1.1.1"),
        "the uplink is untouched:\n{eth0}"
    );

    // Read-only commands under `ip netns exec` say why they cannot see the node.
    std::fs::write(&node.config, body)?;
    node.run_podnet(&["up"])?;
    let out = in_ns(&node.netns, &podnet_tests::podnet_bin().display().to_string())
        .args(["--config", &config, "status"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--netns"), "{stderr}");
    Ok(())
}

/// A new `[node] bridge` takes the pods over: the bridge podnet made goes, one it found keeps what
/// it had (and `down` leaves it); a new `pod_cidr` moves the gateway and the pods' addresses; a
/// device that is not a bridge is refused as the bridge.
#[test]
fn bridge_and_pod_cidr_changes_follow_the_config() -> anyhow::Result<()> {
    let mut lab = Lab::new("brch")?;
    let node = lab.node("node", "pod_cidr = \"10.1.1.0/24\"\n[[pod]]\nname = \"pod1\"\n")?;
    node.run_podnet(&["up"])?;
    let pod1 = node.pod_ns("pod1");
    sh(&node.netns, "ip", &["link", "add", "adm0", "type", "bridge"])?;
    sh(&node.netns, "ip", &["addr", "add", "172.30.9.1/24", "dev", "adm0"])?;
    sh(&node.netns, "ip", &["link", "add", "vx0", "type", "veth", "peer", "name", "vx1"])?;
    let addrs = |dev: &str| sh(&node.netns, "ip", &["-4", "-o", "addr", "show", dev]);

    let body = std::fs::read_to_string(&node.config)?;
    std::fs::write(&node.config, body.replace("pod_cidr", "bridge = \"vx0\"\npod_cidr"))?;
    let err = node.run_podnet(&["up"]).expect_err("a veth is no bridge");
    assert!(format!("{err:#}").contains("node.bridge: vx0 exists and is not a bridge"), "{err:#}");
    assert!(addrs("vx0")?.is_empty(), "vx0 is untouched");

    edit_and_up(&node, |_| body.replace("pod_cidr", "bridge = \"adm0\"\npod_cidr"))?;
    assert!(!sh(&node.netns, "ip", &["-o", "link"])?.contains("br0"), "podnet's old bridge is gone");
    assert!(pings(&pod1, "10.1.1.1", 1), "the pod reaches its gateway on adm0");

    edit_and_up(&node, |c| c.replace("10.1.1.0/24", "10.1.7.0/24"))?;
    let adm0 = addrs("adm0")?;
    assert!(adm0.contains("10.1.7.1/24") && !adm0.contains("10.1.1.1"), "the gateway moved:\n{adm0}");
    let pod_addrs = sh(&pod1, "ip", &["-4", "-o", "addr", "show", "veth_pod1"])?;
    assert!(pod_addrs.contains("10.1.7.") && !pod_addrs.contains("10.1.1."), "the pod moved:\n{pod_addrs}");
    assert!(pings(&pod1, "10.1.7.1", 1), "the pod reaches its new gateway");
    // Every pod is in the new CIDR: the programs look for local pods only there.
    let nat = NatSettings::open(&PinDir::for_node(&node.name))?.get()?;
    assert_eq!((nat.pod_net, nat.pod_mask), ([10, 1, 7, 0], [255, 255, 255, 0]));

    node.run_podnet(&["down"])?;
    let adm0 = addrs("adm0")?;
    assert!(adm0.contains("172.30.9.1/24") && !adm0.contains("10.1.7.1"), "adm0 stays as it was:\n{adm0}");
    Ok(())
}
