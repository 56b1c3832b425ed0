//! A node's directory on bpffs: where its maps, programs and links are pinned, and bpffs itself.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
use podnet_common::PIN_ROOT;

use super::DatapathError;
use crate::config::XdpMode;

/// A node's directory on bpffs and the paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir(PathBuf);

impl PinDir {
    /// The pin directory of the node called `node`.
    pub fn for_node(node: &str) -> Self {
        Self(Path::new(PIN_ROOT).join(node))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub(super) fn links(&self) -> PathBuf {
        self.0.join("links")
    }

    /// Where program `name` is pinned (for per-pod attachments made without loading the object,
    /// e.g. by the CNI plugin).
    pub fn program(&self, name: &str) -> PathBuf {
        self.0.join("programs").join(name)
    }

    /// Where the tc link of the program on interface `ifname` is pinned.
    pub fn link(&self, ifname: &str) -> PathBuf {
        self.links().join(ifname)
    }

    /// Where the XDP link on `ifname` is pinned; the name records the mode.
    pub(super) fn xdp_link(&self, ifname: &str, mode: XdpMode) -> PathBuf {
        self.links().join(format!("{ifname}@xdp-{}", mode.name()))
    }

    /// Removes any XDP link pinned for `ifname`, which detaches the program.
    pub fn unpin_xdp(&self, ifname: &str) -> Result<(), DatapathError> {
        for mode in [XdpMode::Native, XdpMode::Generic] {
            remove_file(&self.xdp_link(ifname, mode))?;
        }
        Ok(())
    }

    /// Names of the pinned links, sorted: an interface name for tc links, `<ifname>@xdp-<mode>`
    /// for XDP links (see [`parse_link_name`]).
    pub fn linked_interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.links())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Removes the pinned link of `ifname`, which detaches its program. Absent is fine.
    pub fn unpin_link(&self, ifname: &str) -> Result<(), DatapathError> {
        remove_file(&self.link(ifname))
    }

    /// Unpins everything (detaching the programs and freeing the maps) and removes the
    /// directory, and the podnet root too once no node is left in it.
    pub fn remove(&self) -> Result<(), DatapathError> {
        if !self.0.exists() {
            return Ok(());
        }
        for ifname in self.linked_interfaces() {
            self.unpin_link(&ifname)?;
        }
        remove_dir(&self.links())?;
        let programs = self.0.join("programs");
        for entry in std::fs::read_dir(&programs).into_iter().flatten().flatten() {
            remove_file(&entry.path())?;
        }
        remove_dir(&programs)?;
        for entry in std::fs::read_dir(&self.0).map_err(fs_err("list", &self.0))?.flatten() {
            remove_file(&entry.path())?;
        }
        remove_dir(&self.0)?;
        if let Some(root) = self.0.parent().filter(|p| p.ends_with("podnet")) {
            // Only succeeds once the last node is gone; anything else is fine.
            let _ = std::fs::remove_dir(root);
        }
        Ok(())
    }
}

/// Splits a pinned link's name into the interface and the hook it is attached at.
pub fn parse_link_name(name: &str) -> (&str, String) {
    match name.split_once("@xdp-") {
        Some((ifname, mode)) => (ifname, format!("xdp {mode}")),
        None => (name, "tcx ingress".to_owned()),
    }
}

pub(super) fn fs_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DatapathError {
    let path = path.to_owned();
    move |source| DatapathError::Fs { op, path, source }
}

pub(super) fn remove_file(path: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(fs_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn remove_dir(path: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(fs_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Mounts bpffs on /sys/fs/bpf if nothing is mounted there yet.
///
/// Refuses when the process runs in a private mount namespace (e.g. `ip netns exec`): a bpffs
/// mounted there would vanish, with every pin in it, when the command exits.
pub fn ensure_bpffs() -> Result<(), DatapathError> {
    const BPFFS: &str = "/sys/fs/bpf";
    if statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(());
    }
    let same_mount_ns =
        std::fs::read_link("/proc/self/ns/mnt").ok() == std::fs::read_link("/proc/1/ns/mnt").ok();
    if !same_mount_ns {
        return Err(DatapathError::NoBpffs { path: BPFFS.to_owned() });
    }
    nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| DatapathError::MountBpffs { path: BPFFS.to_owned(), source })
}
