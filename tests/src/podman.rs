//! A real container runtime on a lab node: Debian's podman 4.3 with its CNI backend and runc,
//! run inside the node's network namespace (`nsenter --net`, which keeps the host's mounts so
//! podman's own netns bind mounts stay visible), with the podnet binary as its CNI plugin. Each
//! node gets its own containers.conf, CNI config dir and image store under the lab's directory,
//! and an image made offline from busybox-static. Containers, images and store go with the
//! [`Podman`] (on drop, also when a test panics).

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

use crate::{Node, podnet_bin};

/// The offline image every container runs.
pub const IMAGE: &str = "localhost/podnet-busybox";

/// podman for one lab node.
#[derive(Debug)]
pub struct Podman {
    netns: String,
    dir: PathBuf,
}

impl Podman {
    /// Sets podman up for `node` (config, CNI network "podnet" naming the node's config, image
    /// store) in `dir`, and imports the busybox image.
    pub fn new(node: &Node, dir: PathBuf) -> anyhow::Result<Self> {
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni)?;
        let plugins = podnet_bin().parent().context("the podnet binary's folder")?.to_owned();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\n\
                 [engine]\nruntime = \"runc\"\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n\n\
                 [containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n",
                plugins.display(),
                cni.display()
            ),
        )?;
        // Exactly the network config README shows.
        std::fs::write(
            cni.join("podnet.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "podnet",
                "plugins": [{ "type": "podnet", "config": node.config }],
            })
            .to_string(),
        )?;
        let podman = Self { netns: node.netns.clone(), dir };
        podman.import_busybox()?;
        Ok(podman)
    }

    /// `podman ARGS` in the node's namespace with this node's config and store.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        cmd
    }

    /// Runs `podman ARGS`; its stdout, or its stderr as the error.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out: Output = self.command(args).output().with_context(|| format!("podman {args:?}"))?;
        if !out.status.success() {
            bail!(
                "podman {args:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Starts container `name` on the podnet network running `cmd` (ping needs NET_RAW).
    pub fn start(&self, name: &str, cmd: &[&str]) -> anyhow::Result<()> {
        let mut args =
            vec!["run", "-d", "--name", name, "--network", "podnet", "--cap-add", "NET_RAW", IMAGE];
        args.extend(cmd);
        self.run(&args).map(drop)
    }

    /// The address podman reports for container `name` on the podnet network.
    pub fn ip(&self, name: &str) -> anyhow::Result<String> {
        self.run(&["inspect", name, "--format", "{{.NetworkSettings.Networks.podnet.IPAddress}}"])
    }

    /// `podman exec NAME CMD..`: its stdout.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", name];
        args.extend(cmd);
        self.run(&args)
    }

    /// Whether container `name` gets an answer to one ping of `ip`.
    pub fn pings(&self, name: &str, ip: &str) -> bool {
        self.exec(name, &["ping", "-c", "1", "-W", "2", ip]).is_ok()
    }

    /// An image from busybox-static: its binary and the applets the tests use, imported offline.
    fn import_busybox(&self) -> anyhow::Result<()> {
        let rootfs = self.dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin"))?;
        std::fs::create_dir_all(rootfs.join("www"))?;
        std::fs::write(rootfs.join("www/index.html"), "hello from podman\n")?;
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("busybox-static (/bin/busybox)")?;
        for applet in ["sh", "ping", "httpd", "wget", "sleep", "ip", "cat", "echo", "hostname"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        let tar = self.dir.join("rootfs.tar");
        crate::run(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."))?;
        self.run(&["import", tar.to_str().context("utf-8 path")?, IMAGE]).map(drop)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their DEL detaches them from podnet), then images; the store goes
        // with the lab's directory.
        let _ = self.command(&["rm", "-af", "-t", "0"]).output();
        let _ = self.command(&["rmi", "-af"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
