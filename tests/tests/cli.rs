//! What a user sees from the podnet CLI without building anything.

use std::process::Command;

use podnet_tests::{Lab, podnet_bin};

fn podnet(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(podnet_bin()).args(args).output().expect("podnet runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn help_explains_the_commands_and_netns() {
    let (ok, out, _) = podnet(&["--help"]);
    assert!(ok);
    for needle in ["up", "down", "status", "--netns", "--config", "/sys/fs/bpf/podnet"] {
        assert!(out.contains(needle), "--help lacks {needle}:\n{out}");
    }
}

#[test]
fn config_prints_a_template_that_parses() {
    let (ok, out, _) = podnet(&["config"]);
    assert!(ok);
    assert!(out.contains("[[pod]]"));
    let lab = Lab::new("cfg").unwrap();
    let path = lab.dir().join("template.toml");
    std::fs::write(&path, &out).unwrap();
    // `status` parses the config before anything else; a node that is not up says so.
    let (ok, _, err) = podnet(&["--config", path.to_str().unwrap(), "status"]);
    assert!(!ok);
    assert!(err.contains("podnet is not up on node \"node1\""), "{err}");
}

#[test]
fn bad_config_names_file_and_field() {
    let lab = Lab::new("bad").unwrap();
    let path = lab.dir().join("bad.toml");
    std::fs::write(
        &path,
        "[node]\nname = \"n\"\npod_cidr = \"10.1.1.0/24\"\n[[pod]]\nname = \"p\"\nip = \"10.9.0.1\"\n",
    )
    .unwrap();
    let (ok, _, err) = podnet(&["--config", path.to_str().unwrap(), "up"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}: pod[0].ip: 10.9.0.1 is outside node.pod_cidr 10.1.1.0/24",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn missing_node_namespace_is_reported() {
    let (ok, _, err) = podnet(&["--netns", "podnet-no-such-node", "status"]);
    assert!(!ok);
    assert!(err.contains("network namespace \"podnet-no-such-node\" does not exist"), "{err}");
}

/// A reader that went away (`podnet ... | head -1`) ends podnet quietly, not with a panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(podnet_bin())
        .arg("config")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{:?}: {stderr}", out.status);
}

/// Output to a full disk ends with one line saying so, not a panic.
#[test]
fn a_full_disk_is_one_line_of_error() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(podnet_bin()).arg("config").stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim(), "error: could not write to stdout: No space left on device (os error 28)");
}

/// A config of one 10 MB line is refused with a short message.
#[test]
fn a_huge_config_line_is_not_echoed() {
    let lab = Lab::new("huge").unwrap();
    let path = lab.dir().join("huge.toml");
    std::fs::write(&path, format!("[node]\nname = \"n\"\npod_cidr = \"{}\"\n", "1".repeat(10 << 20)))
        .unwrap();
    let (ok, _, err) = podnet(&["--config", path.to_str().unwrap(), "status"]);
    assert!(!ok);
    assert!(err.len() < 4000, "{} bytes of stderr", err.len());
}

/// README lists the counter reasons in the order of their map slots, as `bpftool` shows them.
#[test]
fn readme_lists_the_counters_in_slot_order() {
    let readme = include_str!("../../README.md");
    let from = readme.find("Counter reasons, in counter-index order").expect("README lists the reasons");
    let text = &readme[from..];
    let text = &text[..text.find("\n\n").unwrap_or(text.len())];
    // The list starts after the sentence's colon.
    let text = text.split_once("):").map_or(text, |(_, list)| list);
    let listed: Vec<&str> = text.split('`').skip(1).step_by(2).filter(|w| w.contains('_')).collect();
    let names: Vec<&str> = podnet_common::Reason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(listed, names);
}
