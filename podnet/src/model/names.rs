//! What names and addresses podnet accepts: they end up in interface names, namespace names,
//! bpffs paths and routes, so they are kept plain.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Checks a name: 1 to `max` of a-z, 0-9, '-' and '_'.
pub fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("{name:?} must be 1 to {max} characters long"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Err(format!("{name:?} may only use a-z, 0-9, '-' and '_'"));
    }
    Ok(())
}

/// Checks an interface name podnet makes or is told to use.
pub fn check_ifname(name: &str) -> Result<(), String> {
    check_name(name, IFNAME_MAX)
}

/// Parses a CIDR that must name a network (no host bits).
pub fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    let cidr: Ipv4Net = text.parse().map_err(|_| format!("{text:?} is not an IPv4 CIDR like 10.1.1.0/24"))?;
    if cidr != cidr.trunc() {
        return Err(format!("{cidr} has host bits set; did you mean {}?", cidr.trunc()));
    }
    Ok(cidr)
}

/// Checks that `ip` is an address a host of `cidr` (a node's pod CIDR) may have.
pub fn check_host_in(ip: Ipv4Addr, cidr: Ipv4Net) -> Result<(), String> {
    if !cidr.contains(&ip) {
        return Err(format!("{ip} is outside node.pod_cidr {cidr}"));
    }
    if ip == cidr.network() || ip == cidr.broadcast() {
        return Err(format!("{ip} is the network or broadcast address of {cidr}"));
    }
    Ok(())
}
