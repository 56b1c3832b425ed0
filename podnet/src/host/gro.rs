//! Generic receive offload on a veth, set with the ethtool ioctl (rtnetlink has no knob for it).
//!
//! GRO on a veth does more than coalesce: it gives the veth its own NAPI receive queue, which is
//! what lets it take frames an XDP program redirects into its peer (`ndo_xdp_xmit`). Without it,
//! an XDP redirect from the uplink toward a pod fails and the frame is lost.

use std::{ffi::c_char, io, os::fd::AsRawFd as _};

use super::netns::{self, NetnsError};

/// `ETHTOOL_SGRO` from linux/ethtool.h: set the GRO flag.
const ETHTOOL_SGRO: u32 = 0x0000_002c;

/// `struct ethtool_value` from linux/ethtool.h.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum GroError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("could not set GRO on {ifname:?} in namespace {ns:?}")]
    Ioctl {
        ifname: String,
        ns: String,
        #[source]
        source: io::Error,
    },
}

/// Turns GRO on or off for `ifname` inside the namespace `ns` (idempotent).
pub fn set(ns: &str, ifname: &str, on: bool) -> Result<(), GroError> {
    netns::run_in(ns, || set_gro(ifname, on))?.map_err(|source| GroError::Ioctl {
        ifname: ifname.to_owned(),
        ns: ns.to_owned(),
        source,
    })
}

/// The ioctl itself, in the calling thread's namespace.
fn set_gro(ifname: &str, on: bool) -> io::Result<()> {
    let name = ifname.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut value = EthtoolValue { cmd: ETHTOOL_SGRO, data: u32::from(on) };
    // SAFETY: ifreq is plain data (a name and a union of integers and pointers); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name and the ethtool_value that ifru_data
    // points to; both live on this stack frame for the whole call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
