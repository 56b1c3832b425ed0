//! The node's and pods' kernel settings podnet needs, through /proc/sys of the calling thread's
//! network namespace: IPv4 forwarding, the NAT port range reserved from the node's own sockets,
//! and no IPv6 in pods.

use std::{io, path::Path};

use crate::host::netns::{self, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("could not {op} {path}")]
    Io {
        op: &'static str,
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{path} holds {value:?}, which is not a list of ports and port ranges")]
    Parse { path: &'static str, value: String },
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const IPV6_OFF: [&str; 2] =
    ["/proc/sys/net/ipv6/conf/default/disable_ipv6", "/proc/sys/net/ipv6/conf/all/disable_ipv6"];

fn read(path: &'static str) -> Result<String, SysctlError> {
    std::fs::read_to_string(path).map_err(|source| SysctlError::Io { op: "read", path, source })
}

fn write(path: &'static str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path, value).map_err(|source| SysctlError::Io { op: "write", path, source })
}

/// Turns on IPv4 forwarding in the current (node) namespace, as the recipe does: packets the
/// datapath hands to the stack (to the gateway, other nodes, the outside) are routed by it.
/// Returns whether it was off (and so turned on by this call).
pub fn enable_ip_forward() -> Result<bool, SysctlError> {
    if read(IP_FORWARD)?.trim() == "1" {
        return Ok(false);
    }
    write(IP_FORWARD, "1").map(|()| true)
}

/// Whether IPv4 forwarding is on in the current (node) namespace.
pub fn ip_forward_enabled() -> Result<bool, SysctlError> {
    Ok(read(IP_FORWARD)?.trim() == "1")
}

/// Turns IPv4 forwarding off again (what [`enable_ip_forward`] turned on).
pub fn restore_ip_forward() -> Result<(), SysctlError> {
    write(IP_FORWARD, "0")
}

/// Turns IPv6 off in pod namespace `ns` (new interfaces too), so pods have no IPv6 address and
/// take no router advertisements: podnet carries IPv4 only (as the CNI bridge plugin's fix for
/// CVE-2020-10749 does). A kernel without IPv6 needs nothing.
pub fn disable_ipv6_in(ns: &str) -> Result<(), SysctlError> {
    netns::run_in(ns, || {
        if !Path::new(IPV6_OFF[0]).exists() {
            return Ok(());
        }
        IPV6_OFF.iter().try_for_each(|path| write(path, "1"))
    })?
}

/// Whether ports `min..=max` are all in one of the current (node) namespace's reserved ranges.
pub fn ports_reserved(min: u16, max: u16) -> Result<bool, SysctlError> {
    Ok(reserved_ports()?.iter().any(|&(a, b)| a <= min && max <= b))
}

/// Reserves ports `min..=max` in the current (node) namespace's `ip_local_reserved_ports`, so
/// the node's own sockets never take a port a translation uses. Ranges already reserved stay.
/// Returns whether it reserved anything (false: the node had them reserved already).
pub fn reserve_ports(min: u16, max: u16) -> Result<bool, SysctlError> {
    if ports_reserved(min, max)? {
        return Ok(false);
    }
    let mut ranges = reserved_ports()?;
    ranges.push((min, max));
    write(RESERVED_PORTS, &format_ranges(&ranges)).map(|()| true)
}

/// How many of the node's ephemeral ports (`ip_local_port_range`) reserving `min..=max` takes
/// away, and how many there are.
pub fn ephemeral_ports_taken(min: u16, max: u16) -> Result<(u32, u32), SysctlError> {
    let value = read(PORT_RANGE)?;
    let mut bounds = value.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi))) = (bounds.next(), bounds.next()) else {
        return Err(SysctlError::Parse { path: PORT_RANGE, value });
    };
    let (from, to) = (lo.max(min), hi.min(max));
    let overlap = if from <= to { u32::from(to - from) + 1 } else { 0 };
    Ok((overlap, u32::from(hi.saturating_sub(lo)) + 1))
}

/// Gives ports `min..=max` back to the node's sockets (`down`).
pub fn release_ports(min: u16, max: u16) -> Result<(), SysctlError> {
    let ranges = reserved_ports()?;
    let kept = subtract(&ranges, (min, max));
    if kept != ranges {
        write(RESERVED_PORTS, &format_ranges(&kept))?;
    }
    Ok(())
}

fn reserved_ports() -> Result<Vec<(u16, u16)>, SysctlError> {
    let value = read(RESERVED_PORTS)?;
    parse_ranges(&value).ok_or(SysctlError::Parse { path: RESERVED_PORTS, value })
}

/// "1,5-9" -> [(1, 1), (5, 9)].
fn parse_ranges(text: &str) -> Option<Vec<(u16, u16)>> {
    text.trim()
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (a, b) = part.trim().split_once('-').unwrap_or((part.trim(), part.trim()));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// The sysctl's own format; an empty list clears it.
fn format_ranges(ranges: &[(u16, u16)]) -> String {
    let parts: Vec<String> =
        ranges.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    if parts.is_empty() { "\n".to_owned() } else { parts.join(",") }
}

/// `ranges` without the ports of `cut`.
fn subtract(ranges: &[(u16, u16)], (lo, hi): (u16, u16)) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        if b < lo || a > hi {
            out.push((a, b));
            continue;
        }
        if a < lo {
            out.push((a, lo - 1));
        }
        if b > hi {
            out.push((hi + 1, b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        assert_eq!(parse_ranges("\n"), Some(vec![]));
        assert_eq!(parse_ranges("8080,61000-65535\n"), Some(vec![(8080, 8080), (61000, 65535)]));
        assert_eq!(parse_ranges("x-1"), None);
        assert_eq!(format_ranges(&[(8080, 8080), (61000, 65535)]), "8080,61000-65535");
        assert_eq!(format_ranges(&[]), "\n");
    }

    #[test]
    fn subtract_cuts_only_the_given_ports() {
        assert_eq!(subtract(&[(61000, 65535)], (61000, 65535)), []);
        assert_eq!(
            subtract(&[(8080, 8080), (60000, 65535)], (61000, 62000)),
            [(8080, 8080), (60000, 60999), (62001, 65535)]
        );
        assert_eq!(subtract(&[(1, 5)], (6, 9)), [(1, 5)]);
    }
}
