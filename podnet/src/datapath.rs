//! Loading podnet's kernel programs, attaching them, and pinning what must outlive the process.
//!
//! Pin layout for a node (one directory per node, so several nodes can share one bpffs):
//! ```text
//! /sys/fs/bpf/podnet/<node>/ENDPOINTS        pod IP -> endpoint
//! /sys/fs/bpf/podnet/<node>/COUNTERS         per-CPU counters by reason
//! /sys/fs/bpf/podnet/<node>/PEERS            other nodes' pod CIDRs (LPM trie) -> node
//! /sys/fs/bpf/podnet/<node>/DENY, NAT_CONFIG, CT_OUT, CT_IN
//! /sys/fs/bpf/podnet/<node>/links/<ifname>   tcx link on an interface: from_pod on host
//!                                            veths, from_uplink on the uplink
//! /sys/fs/bpf/podnet/<node>/POD_DEVS         pod host veths (devmap) for uplink_deliver
//! /sys/fs/bpf/podnet/<node>/links/<ifname>@xdp-<mode>   XDP link: uplink_filter, or
//!                                            uplink_deliver with [uplink] xdp_deliver
//! ```
//! Maps are pinned by name (aya reuses a pinned map on the next load), links are pinned so the
//! programs stay attached after `podnet up` exits, and re-running `up` swaps the program inside
//! each existing link atomically (`bpf_link_update`) instead of detaching it.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttach, TcAttachType, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
use podnet_common::{
    PIN_ROOT,
    programs::{FROM_POD, FROM_UPLINK, UPLINK_DELIVER, UPLINK_FILTER},
};

use crate::config::XdpMode;

/// The compiled kernel programs, embedded at build time (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PODNET_EBPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{path} is not a bpffs mount and this process is not in the host's mount namespace \
         (running under `ip netns exec`?). Run `podnet --netns NODE ...` instead: it enters only \
         the network namespace and keeps the host's /sys/fs/bpf"
    )]
    NoBpffs { path: String },
    #[error("could not mount bpffs on {path} (mount -t bpf bpf {path})")]
    MountBpffs {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("could not {op} {path}")]
    Fs {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not load the eBPF object (is the kernel new enough: BTF, tcx need Linux >= 6.6?)")]
    Load(#[source] aya::EbpfError),
    #[error("program {name} is missing from the eBPF object; rebuild with `cargo xtask build-ebpf`")]
    MissingProgram { name: &'static str },
    #[error("the kernel rejected program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("could not attach {name} to {ifname}")]
    Attach {
        name: &'static str,
        ifname: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("could not attach XDP in {mode} mode to {ifname}; {hint}")]
    Xdp {
        mode: &'static str,
        ifname: String,
        hint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("could not open pinned link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("could not pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

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

    fn links(&self) -> PathBuf {
        self.0.join("links")
    }

    /// Where the tc link of the program on interface `ifname` is pinned.
    pub fn link(&self, ifname: &str) -> PathBuf {
        self.links().join(ifname)
    }

    /// Where the XDP link on `ifname` is pinned; the name records the mode.
    fn xdp_link(&self, ifname: &str, mode: XdpMode) -> PathBuf {
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

fn fs_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DatapathError {
    let path = path.to_owned();
    move |source| DatapathError::Fs { op, path, source }
}

fn remove_file(path: &Path) -> Result<(), DatapathError> {
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

/// podnet's programs, loaded and verified, with their maps pinned in a node's [`PinDir`].
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinDir,
}

impl Datapath {
    /// Loads the embedded object, reusing the maps already pinned in `pins` (or pinning new
    /// ones there), and loads every program into the kernel.
    pub fn load(pins: &PinDir) -> Result<Self, DatapathError> {
        ensure_bpffs()?;
        std::fs::create_dir_all(pins.links()).map_err(fs_err("create", &pins.links()))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.path())
            .load(OBJECT)
            .map_err(DatapathError::Load)?;
        for name in [FROM_POD, FROM_UPLINK] {
            classifier(&mut ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        for name in [UPLINK_FILTER, UPLINK_DELIVER] {
            xdp(&mut ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        Ok(Self { ebpf, pins: pins.clone() })
    }

    /// A loaded program (for `BPF_PROG_TEST_RUN`).
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        classifier(&mut self.ebpf, name)
    }

    /// Attaches program `name` at tcx ingress of `ifname`, pinning the link; when a link is
    /// already pinned for the interface, swaps the program inside that link instead (no gap in
    /// forwarding).
    pub fn attach(&mut self, name: &'static str, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        let path = self.pins.link(ifname);
        let attach_err = |source| DatapathError::Attach { name, ifname: ifname.to_owned(), source };
        let prog = classifier(&mut self.ebpf, name)?;
        match PinnedLink::from_pin(&path) {
            Ok(pinned) => {
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|source| DatapathError::Link { path: path.clone(), source })?;
                let id = prog.attach_to_link(link).map_err(attach_err)?;
                // The pin keeps the (updated) link alive; our fd can go.
                drop(prog.take_link(id).map_err(attach_err)?);
                Ok(())
            }
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
                let tcx = TcAttach::Tcx { attach_type: TcAttachType::Ingress, order: LinkOrder::default() };
                let id = prog.attach(ifindex, tcx).map_err(attach_err)?;
                let link = FdLink::try_from(prog.take_link(id).map_err(attach_err)?)
                    .map_err(|source| DatapathError::Link { path: path.clone(), source })?;
                link.pin(&path).map_err(|source| DatapathError::Pin { path, source })?;
                Ok(())
            }
            Err(source) => Err(DatapathError::Link { path, source }),
        }
    }
}

impl Datapath {
    /// A loaded XDP program (for `BPF_PROG_TEST_RUN`).
    pub fn xdp_program(&mut self, name: &'static str) -> Result<&mut Xdp, DatapathError> {
        xdp(&mut self.ebpf, name)
    }

    /// Attaches XDP program `name` to `ifname` in `mode` (not `Off`). When a link in that mode
    /// is pinned already, the program is swapped inside it (no gap, the link id stays); a link
    /// in the other mode is removed first (a link's mode cannot change).
    pub fn attach_xdp(
        &mut self,
        name: &'static str,
        ifname: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<(), DatapathError> {
        for other in [XdpMode::Native, XdpMode::Generic].into_iter().filter(|&m| m != mode) {
            remove_file(&self.pins.xdp_link(ifname, other))?;
        }
        let (aya_mode, hint) = match mode {
            XdpMode::Native => (
                aya::programs::XdpMode::Driver,
                "the driver may not support native XDP: set [uplink] xdp = \"generic\" (or \"off\")",
            ),
            _ => (aya::programs::XdpMode::Skb, "set [uplink] xdp = \"off\" to run without the prefilter"),
        };
        let err = |source: aya::programs::ProgramError| DatapathError::Xdp {
            mode: mode.name(),
            ifname: ifname.to_owned(),
            hint,
            source: source.into(),
        };
        let path = self.pins.xdp_link(ifname, mode);
        let prog = xdp(&mut self.ebpf, name)?;
        match PinnedLink::from_pin(&path) {
            Ok(pinned) => {
                let link = XdpLink::try_from(FdLink::from(pinned))
                    .map_err(|source| DatapathError::Link { path: path.clone(), source })?;
                let id = prog.attach_to_link(link).map_err(err)?;
                // The pin keeps the (updated) link alive; our fd can go.
                drop(prog.take_link(id).map_err(err)?);
                Ok(())
            }
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
                let id = attach_when_free(|| prog.attach(ifindex, aya_mode)).map_err(err)?;
                let link = FdLink::try_from(prog.take_link(id).map_err(err)?)
                    .map_err(|source| DatapathError::Link { path: path.clone(), source })?;
                link.pin(&path).map_err(|source| DatapathError::Pin { path, source })?;
                Ok(())
            }
            Err(source) => Err(DatapathError::Link { path, source }),
        }
    }
}

/// Runs `attach` until the interface is free: the kernel releases an unpinned XDP link (a mode
/// change) asynchronously, and until then a new attachment fails with EBUSY (for up to a second).
fn attach_when_free<T>(
    mut attach: impl FnMut() -> Result<T, aya::programs::ProgramError>,
) -> Result<T, aya::programs::ProgramError> {
    let busy = |e: &aya::programs::ProgramError| matches!(e, aya::programs::ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EBUSY));
    for _ in 0..20 {
        match attach() {
            Err(e) if busy(&e) => std::thread::sleep(std::time::Duration::from_millis(50)),
            result => return result,
        }
    }
    attach()
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DatapathError::MissingProgram { name })
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DatapathError::MissingProgram { name })
}

/// The name of the loaded program with id `prog_id`, as the kernel reports it.
pub fn program_name(prog_id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == prog_id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
}

/// Kernel information (link and program ids) about the link pinned as `name` (see
/// [`PinDir::linked_interfaces`]).
pub fn link_info(pins: &PinDir, name: &str) -> Result<aya::programs::links::LinkInfo, DatapathError> {
    let path = pins.link(name);
    PinnedLink::from_pin(&path)
        .and_then(|pinned| FdLink::from(pinned).info())
        .map_err(|source| DatapathError::Link { path, source })
}
