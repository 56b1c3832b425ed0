//! Loading podnet's kernel programs, attaching them, and pinning what must outlive the process.
//!
//! Pin layout for a node (one directory per node, so several nodes can share one bpffs):
//! ```text
//! /sys/fs/bpf/podnet/<node>/ENDPOINTS        pod IP -> endpoint
//! /sys/fs/bpf/podnet/<node>/COUNTERS         per-CPU counters by reason
//! /sys/fs/bpf/podnet/<node>/PEERS            other nodes' pod CIDRs (LPM trie) -> node
//! /sys/fs/bpf/podnet/<node>/DENY, NAT_CONFIG, NAT_PRESSURE
//! /sys/fs/bpf/podnet/<node>/CT_TCP_OUT, CT_TCP_IN   TCP translations (pod side, reply side)
//! /sys/fs/bpf/podnet/<node>/CT_OUT, CT_IN           UDP and ICMP translations
//! /sys/fs/bpf/podnet/<node>/links/<ifname>   tcx link on an interface: from_pod on host
//!                                            veths, from_uplink on the uplink
//! /sys/fs/bpf/podnet/<node>/POD_DEVS         pod host veths (devmap) for uplink_deliver
//! /sys/fs/bpf/podnet/<node>/links/<ifname>@xdp-<mode>   XDP link: uplink_filter, or
//!                                            uplink_deliver with [uplink] xdp_deliver
//! /sys/fs/bpf/podnet/<node>/programs/from_pod   for pods attached after `up` (CNI ADD)
//! /sys/fs/bpf/podnet/<node>/layout/<MAP>@v<N>    layout version of each map (see [`migrate`])
//! /sys/fs/bpf/podnet/<node>/old/<MAP>@v<N>       a map being migrated, while `up` runs
//! ```
//! Maps are pinned by name (aya reuses a pinned map on the next load), links are pinned so the
//! programs stay attached after `podnet up` exits, and re-running `up` swaps the program inside
//! each existing link atomically (`bpf_link_update`) instead of detaching it.

use std::{io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttach, TcAttachType, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use podnet_common::{
    maps::{CT_IN, CT_MAX, CT_OUT, CT_TCP_IN, CT_TCP_OUT},
    programs::{FROM_POD, FROM_UPLINK, UPLINK_DELIVER, UPLINK_FILTER},
};

use crate::model::XdpMode;

pub mod logs;
pub mod maps;
pub mod migrate;
pub mod nat;
mod pins;

pub use logs::EbpfLog;
pub use pins::{Hook, PinDir, bpffs_mounted, ensure_bpffs, parse_link_name};
use pins::{fs_err, remove_file};

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
    #[error(
        "this podnet was built without its kernel programs (target/ebpf/podnet.bpf.o was missing): \
         run `cargo xtask build-ebpf`, then build podnet again"
    )]
    NoObject,
    #[error("could not load the eBPF object (is the kernel new enough: BTF, tcx need Linux >= 6.6?)")]
    Load(#[source] aya::EbpfError),
    #[error("program {name} is missing from the eBPF object; rebuild with `cargo xtask build-ebpf`")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object; rebuild with `cargo xtask build-ebpf`")]
    MissingMap { name: &'static str },
    #[error("could not put the loggers in their program array")]
    Loggers {
        #[source]
        source: aya::maps::MapError,
    },
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
    #[error("could not open the pinned program {path}; is podnet up on this node (`podnet up`)?")]
    PinnedProgram {
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("could not open pinned link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("could not read the log lines of the programs pinned at {path}")]
    Logs {
        path: PathBuf,
        #[source]
        source: aya_log::Error,
    },
    #[error("could not pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

/// Entries of each pair of translation tables (`[nat] tcp_table`, `udp_icmp_table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes {
    pub tcp: u32,
    pub udp_icmp: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        Self { tcp: CT_MAX as u32, udp_icmp: CT_MAX as u32 }
    }
}

/// podnet's programs, loaded and verified, with their maps pinned in a node's [`PinDir`].
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinDir,
}

impl Datapath {
    /// Loads the embedded object, reusing the maps already pinned in `pins` (or pinning new
    /// ones there; pinned maps of another layout or size are migrated, see [`migrate`]), with
    /// translation tables of `tables` entries and log lines up to `log`, and loads every program
    /// into the kernel.
    pub fn load(pins: &PinDir, tables: TableSizes, log: EbpfLog) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        ensure_bpffs()?;
        std::fs::create_dir_all(pins.links()).map_err(fs_err("create", &pins.links()))?;
        let unfinished = pins.maps_set_aside();
        migrate::set_aside_stale(pins)?;
        let level = log.global();
        let mut ebpf = loop {
            let mut loader = EbpfLoader::new();
            loader.default_map_pin_directory(pins.path());
            // aya-log's default is every level: podnet's is none unless asked.
            loader.override_global(aya_log::LEVEL, &level, true);
            for ((out, inbound), size) in
                [((CT_TCP_OUT, CT_TCP_IN), tables.tcp), ((CT_OUT, CT_IN), tables.udp_icmp)]
            {
                // The claims (reply sides) are the table's size; the pod sides get as many again
                // for those that outlive their claim (taken over, or lost with no other port
                // found) until the agent collects them.
                loader.map_max_entries(inbound, size);
                loader.map_max_entries(out, size.saturating_mul(2));
            }
            match loader.load(OBJECT) {
                // Each round sets one map aside, so this ends.
                Err(aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap {
                    name,
                    property,
                    expected,
                    actual,
                })) => {
                    let why = format!("its {property} is {actual}, podnet expects {expected}");
                    migrate::set_aside_incompatible(pins, &name, &why)?;
                }
                Err(e) => {
                    // Nothing new runs yet: put the old maps back where the old programs' users
                    // (the CNI plugin, `podnet` commands) find them.
                    migrate::restore(pins, &unfinished)?;
                    return Err(DatapathError::Load(e));
                }
                Ok(ebpf) => break ebpf,
            }
        };
        let loaded = load_programs(&mut ebpf).and_then(|()| logs::load_loggers(&mut ebpf, pins, log));
        if loaded.is_err() {
            migrate::restore(pins, &unfinished)?;
        }
        loaded?;
        migrate::stamp_all(pins)?;
        migrate::carry(pins)?;
        Ok(Self { ebpf, pins: pins.clone() })
    }

    /// A loaded program (for `BPF_PROG_TEST_RUN`).
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        classifier(&mut self.ebpf, name)
    }

    /// Attaches program `name` at tcx ingress of `ifname` (see [`attach_tc`]).
    pub fn attach(&mut self, name: &'static str, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        let prog = classifier(&mut self.ebpf, name)?;
        attach_tc(prog, name, &self.pins, ifname, ifindex)
    }

    /// Pins `from_pod` (replacing an older one), so pods can be attached later without loading
    /// the object: the CNI plugin attaches each container's veth with [`PodProgram`].
    pub fn pin_pod_program(&mut self) -> Result<(), DatapathError> {
        let path = self.pins.program(FROM_POD);
        let dir = path.parent().expect("programs/ has a parent");
        std::fs::create_dir_all(dir).map_err(fs_err("create", dir))?;
        remove_file(&path)?;
        classifier(&mut self.ebpf, FROM_POD)?.pin(&path).map_err(|source| DatapathError::Pin { path, source })
    }
}

/// `from_pod` as pinned by `up` (see [`Datapath::pin_pod_program`]): attaches pod veths without
/// loading (and verifying) the programs again.
pub struct PodProgram {
    prog: SchedClassifier,
    pins: PinDir,
}

impl PodProgram {
    pub fn open(pins: &PinDir) -> Result<Self, DatapathError> {
        let path = pins.program(FROM_POD);
        let prog = SchedClassifier::from_pin(&path)
            .map_err(|source| DatapathError::PinnedProgram { path, source })?;
        Ok(Self { prog, pins: pins.clone() })
    }

    /// Attaches `from_pod` at tcx ingress of the host veth `ifname` (see [`attach_tc`]).
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        attach_tc(&mut self.prog, FROM_POD, &self.pins, ifname, ifindex)
    }
}

/// Attaches `prog` (called `name`) at tcx ingress of `ifname`, its link pinned in `pins` (see
/// [`update_or_pin`]).
fn attach_tc(
    prog: &mut SchedClassifier,
    name: &'static str,
    pins: &PinDir,
    ifname: &str,
    ifindex: u32,
) -> Result<(), DatapathError> {
    let attach_err = |source| DatapathError::Attach { name, ifname: ifname.to_owned(), source };
    update_or_pin(pins.link(ifname), |pinned, link_err| {
        let Some(pinned) = pinned else {
            let tcx = TcAttach::Tcx { attach_type: TcAttachType::Ingress, order: LinkOrder::default() };
            let id = prog.attach(ifindex, tcx).map_err(attach_err)?;
            return Ok(Some(FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)?));
        };
        let id = prog
            .attach_to_link(SchedClassifierLink::try_from(pinned).map_err(link_err)?)
            .map_err(attach_err)?;
        // The pin keeps the (updated) link alive; our fd can go.
        drop(prog.take_link(id).map_err(attach_err)?);
        Ok(None)
    })
}

/// Re-attaching keeps the link: when one is pinned at `path`, `attach` gets it to swap the
/// program inside (`bpf_link_update`: atomic, no gap in forwarding, the link id stays) and
/// returns `None`; otherwise it gets `None`, makes a link, and that link is pinned at `path`.
/// `attach` also gets how to report a link error for `path`.
fn update_or_pin(
    path: PathBuf,
    attach: impl FnOnce(
        Option<FdLink>,
        &dyn Fn(LinkError) -> DatapathError,
    ) -> Result<Option<FdLink>, DatapathError>,
) -> Result<(), DatapathError> {
    let link_err = |source| DatapathError::Link { path: path.clone(), source };
    let pinned = match PinnedLink::from_pin(&path) {
        Ok(pinned) => Some(FdLink::from(pinned)),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(link_err(source)),
    };
    match attach(pinned, &link_err)? {
        Some(new) => {
            new.pin(&path).map(drop).map_err(|source| DatapathError::Pin { path: path.clone(), source })
        }
        None => Ok(()),
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
        let prog = xdp(&mut self.ebpf, name)?;
        update_or_pin(self.pins.xdp_link(ifname, mode), |pinned, link_err| {
            let Some(pinned) = pinned else {
                let id = attach_when_free(|| prog.attach(ifindex, aya_mode)).map_err(err)?;
                return Ok(Some(FdLink::try_from(prog.take_link(id).map_err(err)?).map_err(link_err)?));
            };
            let id = prog.attach_to_link(XdpLink::try_from(pinned).map_err(link_err)?).map_err(err)?;
            // The pin keeps the (updated) link alive; our fd can go.
            drop(prog.take_link(id).map_err(err)?);
            Ok(None)
        })
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

/// Loads (and so verifies) every program of the object.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    for name in [FROM_POD, FROM_UPLINK] {
        classifier(ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
    }
    for name in [UPLINK_FILTER, UPLINK_DELIVER] {
        xdp(ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(())
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
