//! A node's directory on bpffs: where its maps, programs and links are pinned, and bpffs itself.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
use podnet_common::PIN_ROOT;

use super::DatapathError;
use crate::model::XdpMode;

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

    /// The layout version map `name` was stamped with (see [`podnet_common::maps::LAYOUTS`]):
    /// an empty directory `layout/<name>@v<version>` beside the maps, so the stamp lives and
    /// dies with them (bpffs allows no '.' in names). `None` when there is none (a map of podnet 0.1, or none at all).
    pub(super) fn stamped_version(&self, name: &str) -> Option<u32> {
        std::fs::read_dir(self.0.join("layout"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find_map(|stamp| stamp.strip_prefix(name)?.strip_prefix("@v")?.parse().ok())
    }

    /// Stamps map `name` with layout `version`, replacing its older stamps.
    pub(super) fn stamp(&self, name: &str, version: u32) -> Result<(), DatapathError> {
        let dir = self.0.join("layout");
        std::fs::create_dir_all(&dir).map_err(fs_err("create", &dir))?;
        while let Some(old) = self.stamped_version(name).filter(|&v| v != version) {
            remove_dir(&dir.join(format!("{name}@v{old}")))?;
        }
        let stamp = dir.join(format!("{name}@v{version}"));
        match std::fs::create_dir(&stamp) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(fs_err("create", &stamp)(e)),
            _ => Ok(()),
        }
    }

    /// Where map `name` of layout `version` waits, set aside, while `up` migrates it.
    pub(super) fn set_aside_map(&self, name: &str, version: u32) -> PathBuf {
        self.0.join("old").join(format!("{name}@v{version}"))
    }

    /// Moves the pinned map `name` (of layout `version`) aside, out of the loader's way; the
    /// programs using it keep it. A map set aside before (a migration a failed `up` left
    /// unfinished) is not replaced: it holds the older state.
    pub(super) fn set_aside(&self, name: &str, version: u32) -> Result<(), DatapathError> {
        let to = self.set_aside_map(name, version);
        let dir = to.parent().expect("old/ has a parent");
        std::fs::create_dir_all(dir).map_err(fs_err("create", dir))?;
        let from = self.map(name);
        if self.maps_set_aside().iter().any(|(n, _)| n == name) {
            return remove_file(&from);
        }
        std::fs::rename(&from, &to).map_err(fs_err("rename", &from))
    }

    /// The maps set aside and not migrated yet: name and layout version.
    pub(super) fn maps_set_aside(&self) -> Vec<(String, u32)> {
        let mut all: Vec<(String, u32)> = std::fs::read_dir(self.0.join("old"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let (name, version) = file.rsplit_once("@v")?;
                Some((name.to_owned(), version.parse().ok()?))
            })
            .collect();
        all.sort();
        all
    }

    /// Unpins everything (detaching the programs and freeing the maps) and removes the
    /// directory, and the podnet root too once no node is left in it.
    pub fn remove(&self) -> Result<(), DatapathError> {
        if !self.0.exists() {
            return Ok(());
        }
        // Links first: unpinning them detaches the programs before their maps go.
        for ifname in self.linked_interfaces() {
            self.unpin_link(&ifname)?;
        }
        remove_tree(&self.0)?;
        if let Some(root) = self.0.parent().filter(|p| p.ends_with("podnet")) {
            // Only succeeds once the last node is gone; anything else is fine.
            let _ = std::fs::remove_dir(root);
        }
        Ok(())
    }
}

/// Where a pinned link attaches its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tcx ingress (`from_pod`, `from_uplink`).
    TcxIngress,
    /// XDP in this mode (`uplink_filter`, `uplink_deliver`).
    Xdp(XdpMode),
}

impl Hook {
    pub fn is_tcx(self) -> bool {
        self == Hook::TcxIngress
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::TcxIngress => f.write_str("tcx ingress"),
            Hook::Xdp(mode) => write!(f, "xdp {}", mode.name()),
        }
    }
}

impl serde::Serialize for Hook {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Splits a pinned link's name into the interface and the hook it is attached at (a name of
/// a mode this podnet does not know is shown as generic XDP: it is one podnet made).
pub fn parse_link_name(name: &str) -> (&str, Hook) {
    match name.split_once("@xdp-") {
        Some((ifname, mode)) => (ifname, Hook::Xdp(XdpMode::parse(mode).unwrap_or(XdpMode::Generic))),
        None => (name, Hook::TcxIngress),
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

/// Removes `dir` and everything in it: pins, stamps, subdirectories.
fn remove_tree(dir: &Path) -> Result<(), DatapathError> {
    for entry in std::fs::read_dir(dir).map_err(fs_err("list", dir))?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        } else {
            remove_file(&entry.path())?;
        }
    }
    remove_dir(dir)
}

fn remove_dir(path: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(fs_err("remove", path)(e)),
        _ => Ok(()),
    }
}

const BPFFS: &str = "/sys/fs/bpf";

/// Whether bpffs is mounted on /sys/fs/bpf; an error when it is not and this process runs in a
/// private mount namespace (`ip netns exec`), where the host's pins cannot be seen: it says to
/// use `--netns` instead.
pub fn bpffs_mounted() -> Result<bool, DatapathError> {
    if statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(true);
    }
    let same_mount_ns =
        std::fs::read_link("/proc/self/ns/mnt").ok() == std::fs::read_link("/proc/1/ns/mnt").ok();
    if !same_mount_ns {
        return Err(DatapathError::NoBpffs { path: BPFFS.to_owned() });
    }
    Ok(false)
}

/// Mounts bpffs on /sys/fs/bpf if nothing is mounted there yet.
///
/// Refuses when the process runs in a private mount namespace (e.g. `ip netns exec`): a bpffs
/// mounted there would vanish, with every pin in it, when the command exits.
pub fn ensure_bpffs() -> Result<(), DatapathError> {
    if bpffs_mounted()? {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| DatapathError::MountBpffs { path: BPFFS.to_owned(), source })
}
