//! A real etcd (Debian's etcd-server) for cluster tests: one member, started as a child process
//! inside a lab namespace on an address of that namespace, with its data in the lab's memory
//! directory, and stopped by pid.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{Lab, in_ns, sh};

/// One etcd server of a lab.
#[derive(Debug)]
pub struct Etcd {
    pub ns: String,
    pub ip: String,
    data: PathBuf,
    pid: Option<u32>,
    /// With TLS: client certificates are required.
    pub tls: Option<Certs>,
}

/// A test CA, a server certificate for etcd's address, and a client certificate for etcd's
/// `root` user (what `etcdctl` here uses), as PEM files.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    ca_key: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

/// openssl's arguments for a new P-256 key.
const NEW_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    crate::run(Command::new("openssl").args(args)).map(drop)
}

fn utf8(path: &std::path::Path) -> anyhow::Result<&str> {
    path.to_str().context("utf-8 path")
}

impl Certs {
    /// Makes them in `dir` with openssl (P-256 keys, valid for a day). `name` names the CA.
    pub fn make(dir: &std::path::Path, name: &str, server_ip: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = |f: &str| dir.join(format!("{name}-{f}"));
        let (ca, ca_key) = (path("ca.crt"), path("ca.key"));
        let subject = format!("/CN={name}");
        openssl(
            &[
                &["req", "-x509"][..],
                &NEW_KEY,
                &["-keyout", utf8(&ca_key)?, "-out", utf8(&ca)?, "-days", "1", "-subj", &subject],
            ]
            .concat(),
        )?;
        let mut certs = Self { ca, ca_key, server: Default::default(), client: Default::default() };
        certs.server = certs.issue(
            &path("server"),
            "server",
            &format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth"),
        )?;
        certs.client = certs.client_cert(&path("root"), "root")?;
        Ok(certs)
    }

    /// A client certificate and key for etcd user `user` (its common name), at `stem`.crt/.key.
    pub fn client_cert(&self, stem: &std::path::Path, user: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.issue(stem, user, "extendedKeyUsage=clientAuth")
    }

    /// A certificate for common name `cn` with extensions `ext`, signed by the CA.
    fn issue(&self, stem: &std::path::Path, cn: &str, ext: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let file = |suffix: &str| stem.with_extension(suffix);
        std::fs::write(file("ext"), ext)?;
        let (key, csr, crt) = (file("key"), file("csr"), file("crt"));
        let subject = format!("/CN={cn}");
        openssl(
            &[&["req"][..], &NEW_KEY, &["-keyout", utf8(&key)?, "-out", utf8(&csr)?, "-subj", &subject]]
                .concat(),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            utf8(&csr)?,
            "-CA",
            utf8(&self.ca)?,
            "-CAkey",
            utf8(&self.ca_key)?,
            "-CAcreateserial",
            "-out",
            utf8(&crt)?,
            "-days",
            "1",
            "-extfile",
            utf8(&file("ext"))?,
        ])?;
        Ok((crt, key))
    }
}

impl Etcd {
    /// Starts etcd in `ns` on `ip` (an address `ns` holds) and waits until it answers; with
    /// `tls`, on https and requiring client certificates.
    pub fn start(lab: &mut Lab, ns: &str, ip: &str, tls: Option<Certs>) -> anyhow::Result<Self> {
        let data = lab.memory_dir(&format!("etcd-{ns}"));
        let mut etcd = Self { ns: ns.to_owned(), ip: ip.to_owned(), data, pid: None, tls };
        etcd.restart(lab)?;
        Ok(etcd)
    }

    /// The client URL, for `[cluster] etcd`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:2379", self.ip)
    }

    /// etcd's TLS flags, or etcdctl's.
    fn tls_args(&self, server: bool) -> Vec<String> {
        let Some(certs) = &self.tls else {
            return Vec::new();
        };
        let s = |p: &PathBuf| p.display().to_string();
        if server {
            vec![
                "--cert-file".into(),
                s(&certs.server.0),
                "--key-file".into(),
                s(&certs.server.1),
                "--trusted-ca-file".into(),
                s(&certs.ca),
                "--client-cert-auth".into(),
            ]
        } else {
            vec![
                "--cacert".into(),
                s(&certs.ca),
                "--cert".into(),
                s(&certs.client.0),
                "--key".into(),
                s(&certs.client.1),
            ]
        }
    }

    /// Starts the server again on the same data (after [`Self::kill`]) and waits until it answers.
    pub fn restart(&mut self, lab: &mut Lab) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data)?;
        let (client, peer) = (self.endpoint(), format!("http://{}:2380", self.ip));
        let data = self.data.to_str().context("utf-8 path")?;
        let log = self.data.join("etcd.log");
        let log = log.to_str().context("utf-8 path")?;
        let pid = lab.spawn_command(
            in_ns(&self.ns, "etcd")
                .args([
                    "--name",
                    "t",
                    "--data-dir",
                    data,
                    "--logger",
                    "zap",
                    "--log-outputs",
                    log,
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &format!("t={peer}"),
                    "--initial-cluster-state",
                    "new",
                ])
                .args(self.tls_args(true)),
        )?;
        self.pid = Some(pid);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ctl(&["endpoint", "health"]).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "etcd in {} did not answer within 20 s", self.ns);
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Kills the server (SIGKILL) and waits until its port is closed.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let pid = self.pid.take().context("etcd is not running")?;
        crate::run(Command::new("kill").args(["-9", &pid.to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sh(&self.ns, "ss", &["-Hltn", "sport = :2379"])?.trim().is_empty() {
            anyhow::ensure!(Instant::now() < deadline, "etcd still listens 10 s after kill -9");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Throws the (stopped) server's data away: the next [`Self::restart`] starts an empty store.
    pub fn wipe(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.pid.is_none(), "stop etcd before wiping its data");
        std::fs::remove_dir_all(&self.data)?;
        Ok(())
    }

    /// Runs `etcdctl` (API v3) against the server (with TLS, as `root`); its stdout.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.ctl_with(self.tls_args(false), args)
    }

    /// [`Self::ctl`] as the etcd user whose client certificate and key are `identity`.
    pub fn ctl_as(&self, identity: &(PathBuf, PathBuf), args: &[&str]) -> anyhow::Result<String> {
        let certs = self.tls.as_ref().context("users need TLS")?;
        let s = |p: &PathBuf| p.display().to_string();
        let tls = vec![
            "--cacert".into(),
            s(&certs.ca),
            "--cert".into(),
            s(&identity.0),
            "--key".into(),
            s(&identity.1),
        ];
        self.ctl_with(tls, args)
    }

    /// One transaction of `ops` (etcdctl's `txn` lines: `put [--lease=ID] KEY VALUE`, `del KEY`),
    /// unconditional: every op lands at one revision.
    pub fn txn(&self, ops: &[String]) -> anyhow::Result<String> {
        // No compares, the ops on success, none on failure: each part ends with an empty line.
        let input = format!("\n{}\n\n\n", ops.join("\n"));
        self.ctl_with_input(self.tls_args(false), &["txn"], &input)
    }

    fn ctl_with(&self, tls: Vec<String>, args: &[&str]) -> anyhow::Result<String> {
        self.ctl_with_input(tls, args, "")
    }

    fn ctl_with_input(&self, tls: Vec<String>, args: &[&str], input: &str) -> anyhow::Result<String> {
        let mut cmd = in_ns(&self.ns, "etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(), "--command-timeout", "2s"])
            .args(tls)
            .args(args);
        let out = crate::output_within(&mut cmd, input.as_bytes(), Duration::from_secs(10))?;
        anyhow::ensure!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Turns on etcd's access control with a role per node, as README's "Trust model" says: each
    /// node's user (its client certificate's common name) may write its own name key and the
    /// subnet keys, and read the prefix; `root` may do anything.
    pub fn grant_node_roles(&self, nodes: &[&str]) -> anyhow::Result<()> {
        self.ctl(&["user", "add", "root", "--no-password"])?;
        self.ctl(&["user", "grant-role", "root", "root"])?;
        for node in nodes {
            self.ctl(&["role", "add", node])?;
            self.ctl(&["role", "grant-permission", node, "readwrite", &format!("/podnet/nodes/{node}")])?;
            self.ctl(&["role", "grant-permission", node, "--prefix", "readwrite", "/podnet/subnets/"])?;
            self.ctl(&["role", "grant-permission", node, "--prefix", "read", "/podnet/"])?;
            self.ctl(&["user", "add", node, "--no-password"])?;
            self.ctl(&["user", "grant-role", node, node])?;
        }
        self.ctl(&["auth", "enable"])?;
        Ok(())
    }

    /// A new lease of `ttl` seconds, by its id as etcdctl writes it (hex).
    pub fn grant(&self, ttl: u64) -> anyhow::Result<String> {
        let out = self.ctl(&["lease", "grant", &ttl.to_string()])?;
        // "lease 694d8b0e0a0e0c0d granted with TTL(30s)"
        out.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("etcdctl lease grant: {out}"))
    }

    /// The value of `key` and the lease (hex, "0" for none) it is attached to, if it exists.
    pub fn entry(&self, key: &str) -> anyhow::Result<Option<(String, String)>> {
        let json: serde_json::Value = serde_json::from_str(&self.ctl(&["get", key, "-w", "json"])?)?;
        let Some(kv) = json["kvs"].get(0) else {
            return Ok(None);
        };
        let lease = format!("{:x}", kv["lease"].as_i64().unwrap_or(0));
        let value = self.ctl(&["get", key, "--print-value-only"])?.trim_end().to_owned();
        Ok(Some((value, lease)))
    }

    /// Every key under `prefix` with its value, as etcdctl prints them (key line, value line).
    pub fn get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let out = self.ctl(&["get", "--prefix", prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .map(|kv| (kv[0].to_owned(), kv.get(1).copied().unwrap_or("").to_owned()))
            .collect())
    }
}
