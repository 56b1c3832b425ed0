//! podnet as a CNI plugin, called as a runtime calls it (see `podnet_tests::cni`): every command
//! of spec 1.1.0, the 0.4.0 result format, errors, idempotent DEL, CHECK that notices damage, GC,
//! IPAM under 50 concurrent ADDs, and two `up`s at once. Containers are namespaces of the lab.

use std::{collections::HashSet, thread, time::Duration};

use podnet_tests::{
    Lab, Node,
    cni::{call, call_with_env, net_conf},
    pings, sh,
};
use serde_json::json;

/// A node with one `[[pod]]` (address from IPAM) and the datapath up.
fn node(lab: &mut Lab) -> anyhow::Result<Node> {
    let node = lab.node("node", "pod_cidr = \"10.1.1.0/24\"\n\n[[pod]]\nname = \"pod1\"\n")?;
    node.run_podnet(&["up"])?;
    Ok(node)
}

fn endpoints(node: &Node) -> anyhow::Result<Vec<(String, String)>> {
    Ok(node.status()?["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["pod"].as_str().unwrap_or("").to_owned(), e["ip"].as_str().unwrap_or("").to_owned()))
        .collect())
}

#[test]
fn plugin_speaks_cni() -> anyhow::Result<()> {
    let mut lab = Lab::new("cni")?;
    let node = node(&mut lab)?;
    let conf = net_conf(&node, "1.1.0", json!({}));
    let (c1, c2) = (lab.netns("c1")?, lab.netns("c2")?);
    let (p1, p2) = (format!("/run/netns/{c1}"), format!("/run/netns/{c2}"));
    let ipam_dir = std::path::PathBuf::from("/var/lib/podnet").join(&node.name).join("ipam");
    let held = || {
        std::fs::read_dir(&ipam_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && e.file_name() != "last")
                    .count()
            })
            .unwrap_or(0)
    };

    // VERSION: the versions, and nothing changes.
    let before = held();
    let v = call(&node, "VERSION", ("", "", ""), "", &json!({"cniVersion": "1.1.0"}))?;
    assert!(v.success, "{v:?}");
    assert_eq!(v.json["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    assert_eq!(held(), before, "VERSION has no side effects");

    // ADD two containers; the second asks for its address.
    let add1 = call(&node, "ADD", ("c1id", &p1, "eth0"), "IgnoreUnknown=1", &conf)?;
    assert!(add1.success, "{add1:?}");
    assert_eq!(add1.json["cniVersion"], "1.1.0");
    let ip1 =
        add1.json["ips"][0]["address"].as_str().unwrap_or("").split('/').next().unwrap_or("").to_owned();
    assert_eq!(add1.json["interfaces"][1]["sandbox"], p1.as_str());
    assert_eq!(add1.json["ips"][0]["gateway"], "10.1.1.1");
    let add2 = call(&node, "ADD", ("c2id", &p2, "eth0"), "IgnoreUnknown=1;IP=10.1.1.50", &conf)?;
    assert!(add2.success, "{add2:?}");
    assert_eq!(add2.json["ips"][0]["address"], "10.1.1.50/24");
    assert!(pings(&c1, "10.1.1.50", 1), "container to container");
    assert!(pings(&c2, &ip1, 1));
    let pod1_ip =
        endpoints(&node)?.into_iter().find(|(p, _)| p == "pod1").map(|(_, ip)| ip).unwrap_or_default();
    assert!(pings(&c1, &pod1_ip, 1), "container to the config's pod ({pod1_ip})");
    let names: Vec<String> = endpoints(&node)?.into_iter().map(|(p, _)| p).collect();
    assert!(names.contains(&"cni:c1id".to_owned()) && names.contains(&"cni:c2id".to_owned()), "{names:?}");
    // ADD again for the same attachment: the same answer, no second address.
    let again = call(&node, "ADD", ("c1id", &p1, "eth0"), "", &conf)?;
    assert_eq!(again.json["ips"], add1.json["ips"]);
    assert_eq!(held(), 3, "pod1, c1, c2");
    // An address that is taken is refused, with a CNI error.
    let taken = call(&node, "ADD", ("c3id", &p1, "eth1"), "IP=10.1.1.50", &conf)?;
    assert!(!taken.success);
    assert!(
        taken.json["msg"].as_str().unwrap_or("").contains("10.1.1.50 is already held by cni:c2id"),
        "{taken:?}"
    );

    // CHECK passes, then notices a removed address.
    assert!(call(&node, "CHECK", ("c1id", &p1, "eth0"), "", &conf)?.success);
    sh(&c1, "ip", &["addr", "flush", "dev", "eth0"])?;
    let check = call(&node, "CHECK", ("c1id", &p1, "eth0"), "", &conf)?;
    assert!(
        !check.success && check.json["msg"].as_str().unwrap_or("").contains("does not hold"),
        "{check:?}"
    );

    // DEL: twice, without prevResult, and after the namespace is gone.
    for _ in 0..2 {
        let del = call(&node, "DEL", ("c1id", &p1, "eth0"), "", &conf)?;
        assert!(del.success && del.json.is_null(), "{del:?}");
    }
    assert!(!endpoints(&node)?.iter().any(|(p, _)| p == "cni:c1id"));
    std::process::Command::new("ip").args(["netns", "del", &c2]).status()?;
    let del = call(&node, "DEL", ("c2id", &p2, "eth0"), "", &conf)?;
    assert!(del.success, "DEL with the namespace gone: {del:?}");
    assert_eq!(held(), 1, "only pod1 holds an address");
    // DEL of something never added, and after a failed ADD.
    assert!(call(&node, "DEL", ("never", &p1, "eth0"), "", &conf)?.success);
    assert!(call(&node, "DEL", ("c3id", &p1, "eth1"), "", &conf)?.success);

    // GC keeps what the runtime lists and detaches the rest.
    let c4 = lab.netns("c4")?;
    let p4 = format!("/run/netns/{c4}");
    for (id, ifname) in [("g1", "eth0"), ("g2", "eth1"), ("g3", "eth2")] {
        assert!(call(&node, "ADD", (id, &p4, ifname), "", &conf)?.success);
    }
    let gc_conf = net_conf(
        &node,
        "1.1.0",
        json!({"cni.dev/valid-attachments": [{"containerID": "g2", "ifname": "eth1"}]}),
    );
    assert!(call(&node, "GC", ("", "", ""), "", &gc_conf)?.success);
    let mut names: Vec<String> = endpoints(&node)?.into_iter().map(|(p, _)| p).collect();
    names.sort();
    assert_eq!(names, ["cni:g2", "pod1"], "GC detached g1 and g3 and left the config's pod alone");
    assert_eq!(sh(&c4, "ip", &["-o", "link"])?.lines().count(), 2, "lo and the kept eth1 remain");

    // 0.4.0: the result carries the IP version (podman 4.3 needs it).
    let c5 = lab.netns("c5")?;
    let old = call(
        &node,
        "ADD",
        ("old", &format!("/run/netns/{c5}"), "eth0"),
        "",
        &net_conf(&node, "0.4.0", json!({})),
    )?;
    assert!(old.success, "{old:?}");
    assert_eq!(
        (old.json["cniVersion"].as_str(), old.json["ips"][0]["version"].as_str()),
        (Some("0.4.0"), Some("4"))
    );

    // STATUS: available while up.
    assert!(call(&node, "STATUS", ("", "", ""), "", &conf)?.success);
    Ok(())
}

#[test]
fn errors_are_cni_errors() -> anyhow::Result<()> {
    let mut lab = Lab::new("cnie")?;
    let node = lab.node("node", "pod_cidr = \"10.1.1.0/24\"\n")?;
    let c = lab.netns("c")?;
    let path = format!("/run/netns/{c}");
    // Not up yet: STATUS says "not available", ADD says to try later.
    let status = call(&node, "STATUS", ("", "", ""), "", &net_conf(&node, "1.1.0", json!({})))?;
    assert!(!status.success);
    assert_eq!(status.json["code"], 50, "{status:?}");
    let add = call(&node, "ADD", ("x", &path, "eth0"), "", &net_conf(&node, "1.0.0", json!({})))?;
    assert_eq!((add.success, add.json["code"].as_u64()), (false, Some(11)), "{add:?}");
    assert!(add.json["msg"].as_str().unwrap_or("").contains("podnet is not up"), "{add:?}");
    // A config without "config", a version podnet does not speak, no CNI_CONTAINERID.
    let no_config = call(
        &node,
        "ADD",
        ("x", &path, "eth0"),
        "",
        &json!({"cniVersion": "1.0.0", "name": "podnet", "type": "podnet"}),
    )?;
    assert_eq!(no_config.json["code"], 7, "{no_config:?}");
    assert!(no_config.json["details"].as_str().unwrap_or("").contains("\"config\""));
    let old = call(&node, "ADD", ("x", &path, "eth0"), "", &net_conf(&node, "0.3.1", json!({})))?;
    assert_eq!(old.json["code"], 1, "{old:?}");
    let no_id = call(&node, "ADD", ("", &path, "eth0"), "", &net_conf(&node, "1.0.0", json!({})))?;
    assert_eq!(no_id.json["code"], 4, "{no_id:?}");
    let bad_ip = call(&node, "ADD", ("x", &path, "eth0"), "IP=banana", &net_conf(&node, "1.0.0", json!({})))?;
    assert_eq!(bad_ip.json["code"], 7, "{bad_ip:?}");
    assert_eq!(sh(&c, "ip", &["-o", "link"])?.lines().count(), 1, "nothing was added to the container");
    Ok(())
}

/// What a hostile caller of the plugin passes is refused before podnet touches anything: the
/// node's own namespace as the container's, names the kernel would misread, a second namespace
/// for an attachment; GC of another network or without its list takes nothing.
#[test]
fn hostile_cni_input_is_refused() -> anyhow::Result<()> {
    let mut lab = Lab::new("cnih")?;
    let node = node(&mut lab)?;
    let conf = net_conf(&node, "1.1.0", json!({}));
    let routes_before = sh(&node.netns, "ip", &["route"])?;
    let links_before = sh(&node.netns, "ip", &["-o", "link"])?.lines().count();
    let held = || endpoints(&node).map(|e| e.len());
    // Files that are not network namespaces, each refused before it is opened (a FIFO would
    // block the plugin, and with it every ADD waiting for the node lock).
    let dir = lab.dir().clone();
    let fifo = dir.join("fifo");
    podnet_tests::run(std::process::Command::new("mkfifo").arg(&fifo))?;
    let regular = dir.join("regular");
    std::fs::write(&regular, "x")?;
    let socket = dir.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket)?;
    let mnt_ns = "/proc/self/ns/mnt".to_owned();
    let path = |p: &std::path::Path| p.display().to_string();
    for (what, netns, ifname) in [
        ("a FIFO", path(&fifo), "eth9"),
        ("a regular file", path(&regular), "eth9"),
        ("a socket", path(&socket), "eth9"),
        ("a device", "/dev/null".to_owned(), "eth9"),
        ("a mount namespace", mnt_ns, "eth9"),
        ("the host's namespace", "/proc/1/ns/net".to_owned(), "eth9"),
        ("the host's namespace through this test", format!("/proc/{}/ns/net", std::process::id()), "eth9"),
        ("the node's namespace", "/proc/self/ns/net".to_owned(), "eth9"),
        ("the node's namespace by name", format!("/run/netns/{}", node.netns), "eth9"),
        ("a relative path", "../../proc/self/ns/net".to_owned(), "eth9"),
        ("an interface name with a slash", "/run/netns/none".to_owned(), "a/b"),
        ("an interface name that is too long", "/run/netns/none".to_owned(), "eth0123456789abcdef"),
    ] {
        let reply = call(&node, "ADD", ("evil", &netns, ifname), "", &conf)?;
        assert_eq!((reply.success, reply.json["code"].as_u64()), (false, Some(4)), "{what}: {reply:?}");
    }
    assert_eq!(held()?, 1, "no address was taken");
    let fifo_add = call(&node, "ADD", ("evil", &path(&fifo), "eth9"), "", &conf)?;
    assert!(
        fifo_add.json["msg"].as_str().unwrap_or("").contains("is not a network namespace (a FIFO)"),
        "{fifo_add:?}"
    );
    assert_eq!(sh(&node.netns, "ip", &["route"])?, routes_before, "the node's routes are untouched");
    assert_eq!(sh(&node.netns, "ip", &["-o", "link"])?.lines().count(), links_before);
    assert_eq!(sh(&node.netns, "sysctl", &["-n", "net.ipv6.conf.all.disable_ipv6"])?.trim(), "0");

    // One attachment, one namespace: a second ADD of it elsewhere is refused.
    let (a, b) = (lab.netns("a")?, lab.netns("b")?);
    assert!(call(&node, "ADD", ("c1", &format!("/run/netns/{a}"), "eth0"), "", &conf)?.success);
    let moved = call(&node, "ADD", ("c1", &format!("/run/netns/{b}"), "eth0"), "", &conf)?;
    assert!(!moved.success && moved.json["msg"].as_str().unwrap_or("").contains("DEL it first"), "{moved:?}");
    assert_eq!(sh(&b, "ip", &["-o", "link"])?.lines().count(), 1);

    // GC: another network's, or one without its list, detaches nothing.
    let other = json!({"cniVersion": "1.1.0", "name": "other", "type": "podnet", "config": node.config, "cni.dev/valid-attachments": []});
    assert!(call(&node, "GC", ("", "", ""), "", &other)?.success);
    let listless = call(&node, "GC", ("", "", ""), "", &conf)?;
    assert_eq!(listless.json["code"], 7, "{listless:?}");
    assert_eq!(held()?, 2, "pod1 and c1 are still attached");
    Ok(())
}

/// 50 ADDs at once get 50 distinct addresses and endpoints; 50 DELs at once free them all.
#[test]
fn fifty_concurrent_adds_get_distinct_addresses() -> anyhow::Result<()> {
    let mut lab = Lab::new("cni50")?;
    let node = node(&mut lab)?;
    let conf = net_conf(&node, "1.0.0", json!({}));
    let containers: Vec<String> =
        (0..50).map(|i| lab.netns(&format!("k{i}"))).collect::<anyhow::Result<_>>()?;
    let run = |command: &'static str| -> anyhow::Result<Vec<podnet_tests::cni::Reply>> {
        thread::scope(|s| {
            let calls: Vec<_> = containers
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let (node, conf) = (&node, &conf);
                    s.spawn(move || {
                        // 50 waiters on one lock, on a loaded machine: no call may give up.
                        call_with_env(
                            node,
                            command,
                            (&format!("id{i}"), &format!("/run/netns/{ns}"), "eth0"),
                            conf,
                            &[("CNI_ARGS", ""), ("PODNET_LOCK_WAIT", "300")],
                        )
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().expect("no panic")).collect()
        })
    };
    let added = run("ADD")?;
    assert!(added.iter().all(|r| r.success), "{:?}", added.iter().find(|r| !r.success));
    let ips: HashSet<String> = added.iter().map(|r| r.json["ips"][0]["address"].to_string()).collect();
    assert_eq!(ips.len(), 50, "50 distinct addresses");
    assert_eq!(endpoints(&node)?.len(), 51, "50 containers and pod1");
    assert!(pings(
        &containers[0],
        added[49].json["ips"][0]["address"].as_str().unwrap_or("").split('/').next().unwrap_or(""),
        1
    ));
    let deleted = run("DEL")?;
    assert!(deleted.iter().all(|r| r.success));
    assert_eq!(endpoints(&node)?.len(), 1, "only pod1 is left");
    Ok(())
}

/// Two `up`s started together, 20 times: both succeed, neither undoes the other, nothing leaks.
#[test]
fn concurrent_ups_end_consistent() -> anyhow::Result<()> {
    let mut lab = Lab::new("cniup")?;
    let node = lab.node(
        "node",
        "pod_cidr = \"10.1.1.0/24\"\n\n[[pod]]\nname = \"pod1\"\n\n[[pod]]\nname = \"pod2\"\n",
    )?;
    for round in 0..20 {
        let up = || podnet_tests::output_within(&mut node.podnet(&["up"]), b"", Duration::from_secs(60));
        let (a, b) = std::thread::scope(|s| {
            let (a, b) = (s.spawn(up), s.spawn(up));
            let joined = |t: std::thread::ScopedJoinHandle<'_, anyhow::Result<std::process::Output>>| {
                t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("`up` thread panicked")))
            };
            (joined(a), joined(b))
        });
        let (a, b) = (a?, b?);
        assert!(
            a.status.success() && b.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&a.stderr),
            String::from_utf8_lossy(&b.stderr)
        );
    }
    let status = node.status()?;
    assert_eq!(status["endpoints"].as_array().map(Vec::len), Some(2));
    assert_eq!(status["programs"].as_array().map(Vec::len), Some(2), "one link per pod: {status}");
    let links = sh(&node.netns, "ip", &["-o", "link"])?;
    assert_eq!(links.lines().count(), 4, "lo, br0 and two host veths:\n{links}");
    assert!(pings(&node.pod_ns("pod1"), "10.1.1.3", 1));
    Ok(())
}

/// `up` (a new podnet, say) swaps the new `from_pod` into the containers' links too, keeping the
/// links; a container whose namespace vanished without a DEL does not make `up` fail.
#[test]
fn up_updates_the_containers_programs() -> anyhow::Result<()> {
    let mut lab = Lab::new("cniup")?;
    let node = node(&mut lab)?;
    let conf = net_conf(&node, "1.1.0", json!({}));
    let (c1, c2) = (lab.netns("c1")?, lab.netns("c2")?);
    for (id, ns) in [("c1id", &c1), ("c2id", &c2)] {
        let add = call(&node, "ADD", (id, &format!("/run/netns/{ns}"), "eth0"), "", &conf)?;
        assert!(add.success, "{add:?}");
    }
    let links = |node: &Node| -> anyhow::Result<Vec<(String, u64, u64)>> {
        Ok(node.status()?["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let id = |f: &str| p[f].as_u64().unwrap_or(0);
                (p["ifname"].as_str().unwrap_or("").to_owned(), id("link_id"), id("prog_id"))
            })
            .collect())
    };
    let before = links(&node)?;
    podnet_tests::run(std::process::Command::new("ip").args(["netns", "del", &c2]))?;
    node.run_podnet(&["up"])?;
    let after = links(&node)?;
    let pod1 = after.iter().find(|(ifname, _, _)| ifname == "brveth_pod1").map(|l| l.2);
    // c2's veth went with its namespace; its link stays pinned until the runtime's DEL or GC.
    let live = sh(&node.netns, "ip", &["-o", "link"])?;
    for (ifname, link_id, prog_id) in
        after.iter().filter(|(ifname, _, _)| live.contains(&format!(" {ifname}@")))
    {
        let old = before.iter().find(|(i, _, _)| i == ifname);
        assert_eq!(old.map(|o| o.1), Some(*link_id), "{ifname} kept its link");
        assert_eq!(Some(*prog_id), pod1, "{ifname} runs the new from_pod");
        assert_ne!(old.map(|o| o.2), Some(*prog_id), "{ifname} got a new program");
    }
    assert_eq!(
        after.iter().filter(|(ifname, _, _)| live.contains(&format!(" {ifname}@"))).count(),
        2,
        "{after:?}"
    );
    assert!(pings(&c1, "10.1.1.2", 1), "the container still reaches pod1");
    node.run_podnet(&["down"])?;
    let state = std::path::Path::new("/var/lib/podnet").join(&node.name);
    assert!(!state.exists(), "down leaves no state behind");
    Ok(())
}

/// The network config's `config` must be a podnet node config: a FIFO or a device is refused
/// without being read, and a file that is not TOML is reported without a word of what it holds.
/// A change that cannot get the node lock in time says the node is busy (CNI "try again later")
/// instead of waiting for ever.
#[test]
fn config_files_and_the_node_lock_are_bounded() -> anyhow::Result<()> {
    let mut lab = Lab::new("cnif")?;
    let node = node(&mut lab)?;
    let c = lab.netns("c")?;
    let netns = format!("/run/netns/{c}");
    let secret = lab.dir().join("shadow");
    std::fs::write(&secret, "root:$6$s3cr3tsalt$hash:19000:0:99999:7:::\n")?;
    // TOML of something else, whose value the parser's message would quote.
    let other_toml = lab.dir().join("app.toml");
    std::fs::write(&other_toml, "node = \"s3cr3t-token\"\n")?;
    let fifo = lab.dir().join("config-fifo");
    podnet_tests::run(std::process::Command::new("mkfifo").arg(&fifo))?;
    for (what, config, expected) in [
        ("a file that is not TOML", secret.display().to_string(), "is not a podnet node config (line 1;"),
        ("TOML of something else", other_toml.display().to_string(), "is not a podnet node config (line 1;"),
        ("a FIFO", fifo.display().to_string(), "not a regular file"),
        ("a device", "/dev/zero".to_owned(), "not a regular file"),
    ] {
        let conf = json!({"cniVersion": "1.1.0", "name": "podnet", "type": "podnet", "config": config});
        let reply = call(&node, "ADD", ("c1", &netns, "eth0"), "", &conf)?;
        let text = reply.json.to_string();
        assert_eq!((reply.success, reply.json["code"].as_u64()), (false, Some(7)), "{what}: {text}");
        assert!(text.contains(expected), "{what}: {text}");
        assert!(!text.contains("s3cr3t") && !text.contains("root:"), "{what}: the file was quoted: {text}");
    }

    // Another change holds the node lock: the ADD gives up after PODNET_LOCK_WAIT seconds.
    let lock = std::path::PathBuf::from("/run/podnet").join(format!("{}.lock", node.name));
    let hold =
        "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(60)";
    let holder = lab.child(std::process::Command::new("python3").args(["-c", hold]).arg(&lock))?;
    podnet_tests::wait_for("the lock to be held", Duration::from_secs(5), || {
        let free =
            std::process::Command::new("flock").args(["-n"]).arg(&lock).arg("true").status()?.success();
        Ok((!free).then_some(()))
    })?;
    let started = std::time::Instant::now();
    let busy = call_with_env(
        &node,
        "ADD",
        ("c1", &netns, "eth0"),
        &net_conf(&node, "1.1.0", json!({})),
        &[("PODNET_LOCK_WAIT", "2")],
    )?;
    assert_eq!((busy.success, busy.json["code"].as_u64()), (false, Some(11)), "{busy:?}");
    assert!(busy.json["msg"].as_str().unwrap_or("").contains("is busy"), "{busy:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
    holder.kill();
    let add = call(&node, "ADD", ("c1", &netns, "eth0"), "", &net_conf(&node, "1.1.0", json!({})))?;
    assert!(add.success, "once the lock is free: {add:?}");
    Ok(())
}
