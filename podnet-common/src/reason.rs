//! Why the datapath did what it did with a packet. One table below is the only list of reasons:
//! it makes the [`Reason`] enum (the index into the counters map), each reason's stable name,
//! whether it is a drop, and the typed split the programs' verdicts take ([`DropReason`],
//! [`PassReason`], [`RedirectReason`]), so a drop can never be counted for a packet passed on.

/// What a program did with the packets counted for a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Dropped (`TC_ACT_SHOT`, `XDP_DROP`).
    Drop,
    /// Left to the next program and the kernel stack (`TC_ACT_UNSPEC`, `XDP_PASS`).
    Pass,
    /// Forwarded by podnet itself (a redirect helper).
    Redirect,
}

/// Makes [`Reason`] and its typed subsets from one table of rows
/// `KIND Variant = index => "name",` (KIND: `drop`, `pass` or `redirect`).
macro_rules! reasons {
    ($($(#[$doc:meta])* $kind:ident $variant:ident = $index:literal => $name:literal,)*) => {
        /// Why the datapath did what it did with a packet; the index into the counters map.
        ///
        /// Every program run counts exactly one reason, so each program's counters add up to
        /// the packets it saw (a frame that XDP passes on the uplink is counted again by
        /// `from_uplink`).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $variant = $index,)*
        }

        impl Reason {
            /// Every reason, in counter-index order.
            pub const ALL: [Reason; [$($index),*].len()] = [$(Reason::$variant),*];

            /// What the packets counted for this reason became.
            #[inline(always)]
            pub const fn kind(self) -> Kind {
                match self {
                    $(Reason::$variant => reasons!(@kind $kind),)*
                }
            }

            /// Stable, human-readable name (used by `podnet status` and its JSON). Always inlined:
            /// the programs' log lines use it, and a BPF function cannot return a two-word `&str`.
            #[inline(always)]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }

        reasons!(@subset DropReason drop [] $($kind $variant)*);
        reasons!(@subset PassReason pass [] $($kind $variant)*);
        reasons!(@subset RedirectReason redirect [] $($kind $variant)*);
    };
    (@kind drop) => { Kind::Drop };
    (@kind pass) => { Kind::Pass };
    (@kind redirect) => { Kind::Redirect };
    // Collects the variants of one kind, then makes their enum.
    (@subset $ty:ident drop [$($acc:ident)*] drop $v:ident $($rest:tt)*) => {
        reasons!(@subset $ty drop [$($acc)* $v] $($rest)*);
    };
    (@subset $ty:ident pass [$($acc:ident)*] pass $v:ident $($rest:tt)*) => {
        reasons!(@subset $ty pass [$($acc)* $v] $($rest)*);
    };
    (@subset $ty:ident redirect [$($acc:ident)*] redirect $v:ident $($rest:tt)*) => {
        reasons!(@subset $ty redirect [$($acc)* $v] $($rest)*);
    };
    (@subset $ty:ident $want:ident [$($acc:ident)*] $other:ident $v:ident $($rest:tt)*) => {
        reasons!(@subset $ty $want [$($acc)*] $($rest)*);
    };
    (@subset $ty:ident $want:ident [$($acc:ident)*]) => {
        /// The reasons of one [`Kind`], as the verdict of that kind takes them; the same
        /// discriminants as [`Reason`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $ty {
            $($acc = Reason::$acc as u32,)*
        }

        impl $ty {
            /// The reason counted.
            #[inline(always)]
            pub const fn reason(self) -> Reason {
                match self {
                    $($ty::$acc => Reason::$acc,)*
                }
            }
        }

        impl From<$ty> for Reason {
            #[inline(always)]
            fn from(reason: $ty) -> Self {
                reason.reason()
            }
        }
    };
}

reasons! {
    /// IPv4 to a pod on this node: delivered straight into the pod with `bpf_redirect_peer`.
    redirect RedirectLocal = 0 => "redirect_local",
    /// From the uplink: not untagged IPv4 (ARP, IPv6, VLAN-tagged, ...): left to the kernel stack.
    pass PassNotIpv4 = 1 => "pass_not_ipv4",
    /// IPv4 whose destination is not a local pod: left to the kernel stack.
    pass PassNotLocal = 2 => "pass_not_local",
    /// Frame or IPv4 header truncated, an IPv4 header that contradicts itself or the frame (IHL
    /// below 5, total length beyond the frame or below the header), or (from a pod) a truncated
    /// TCP, UDP or ICMP header: dropped.
    drop DropMalformed = 3 => "drop_malformed",
    /// IPv4 to a pod on another node: routed in eBPF straight out of the uplink (`bpf_redirect`).
    redirect RedirectRemote = 4 => "redirect_remote",
    /// IPv4 from the uplink to a pod on this node: delivered with `bpf_redirect_peer`.
    redirect RedirectFromUplink = 5 => "redirect_from_uplink",
    /// Routed packet whose TTL would expire: left to the stack, which sends ICMP time exceeded.
    pass PassTtlExpiring = 6 => "pass_ttl_expiring",
    /// IPv4 to a pod on another node whose next-hop MAC is not cached yet: routed with
    /// `bpf_redirect_neigh`, which resolves it (the stack would drop it on a FORWARD-DROP node).
    redirect RedirectRemoteResolve = 7 => "redirect_remote_resolve",
    /// Larger than the uplink MTU: left to the stack (fragmentation or ICMP frag-needed).
    pass PassFragNeeded = 8 => "pass_frag_needed",
    /// No usable route to the peer node (FIB lookup failed): left to the stack.
    pass PassNoRoute = 9 => "pass_no_route",
    /// Uplink traffic that is not for a local pod (for the node itself, say): left to the stack.
    pass PassUplinkNotLocal = 10 => "pass_uplink_not_local",
    /// First packet of a pod's connection to the outside: a node port was allocated, the packet
    /// masqueraded and routed out of the uplink.
    redirect RedirectNatNew = 11 => "redirect_nat_new",
    /// Later packet of a masqueraded connection: translated and routed out of the uplink.
    redirect RedirectNat = 12 => "redirect_nat",
    /// Reply to a masqueraded connection: translated back and delivered into the pod.
    redirect RedirectNatReply = 13 => "redirect_nat_reply",
    /// No free node port for a new connection: dropped (existing translations are untouched).
    drop DropNatPortsExhausted = 14 => "drop_nat_ports_exhausted",
    /// From a pod to the outside (out of the uplink, NAT on) but not translatable: a fragment, a
    /// protocol other than TCP, UDP and ICMP echo, or too big without DF. Dropped, so nothing
    /// leaves with a pod's address.
    drop DropNotNatable = 15 => "drop_not_natable",
    /// XDP on the uplink let the frame through to tc and the stack.
    pass XdpPass = 16 => "xdp_pass",
    /// XDP on the uplink dropped a frame from a deny-listed source.
    drop XdpDropDenied = 17 => "xdp_drop_denied",
    /// XDP on the uplink dropped a truncated or malformed frame.
    drop XdpDropMalformed = 18 => "xdp_drop_malformed",
    /// XDP on the uplink (`uplink_deliver`) sent a frame for a local pod straight to its veth.
    redirect XdpRedirectLocal = 19 => "xdp_redirect_local",
    /// From a pod: its source IPv4 address or MAC (or its ARP sender) is not the pod's own, or
    /// it came in on another pod's veth. Dropped, whatever the destination.
    drop DropSpoofed = 20 => "drop_spoofed",
    /// A VLAN-tagged (802.1Q/802.1ad) frame from a pod, or from the uplink for a local pod (the
    /// stack would untag a priority-tagged one and route it to the pod past every check).
    /// Dropped.
    drop DropVlanTagged = 21 => "drop_vlan_tagged",
    /// From a pod: neither IPv4 nor ARP (IPv6 included: pods get no IPv6). Dropped.
    drop DropNotIpv4 = 22 => "drop_not_ipv4",
    /// From a pod: to 0.0.0.0/8, 127.0.0.0/8, multicast 224.0.0.0/4 or 240.0.0.0/4 (255.255.255.255
    /// included), never routed or translated. Dropped.
    drop DropMartian = 23 => "drop_martian",
    /// From the uplink to a pod: the source is neither a peer node or its pods, nor in `[uplink]
    /// allow_from`, nor a reply to a pod's masqueraded connection. Dropped.
    drop DropNotAllowed = 24 => "drop_not_allowed",
    /// From a pod: ARP with the pod's own addresses, on to the bridge.
    pass PassArp = 25 => "pass_arp",
    /// From a pod to a network in `[uplink] allow_from`: not masqueraded (that network routes
    /// pod addresses back to this node); left to the stack to route.
    pass PassNoNat = 26 => "pass_no_nat",
    /// From a pod to the outside: a TCP FIN or RST of no translated connection. Dropped: it would
    /// leave with the pod's address, and it creates no translation.
    drop DropNatNoFlow = 27 => "drop_nat_no_flow",
    /// A new connection to the outside found its translation table full (see `[nat]`
    /// `tcp_table` / `udp_icmp_table`): dropped, and the agent is told to collect at once.
    drop DropNatTableFull = 28 => "drop_nat_table_full",
    /// A reply to a masqueraded connection whose TTL would expire on its hop into the pod:
    /// dropped untranslated (the stack's "time exceeded" would quote the pod's address to the
    /// outside).
    drop DropNatReplyTtlExpired = 29 => "drop_nat_reply_ttl_expired",
    /// A reply to a masqueraded connection (or a later fragment of one, or an ICMP error about
    /// one) translated back to a pod that is no longer on this node: dropped (the stack would
    /// route it, and its errors would quote the pod's address to the outside).
    drop DropNatReplyNoPod = 30 => "drop_nat_reply_no_pod",
    /// First packet of a pod's connection to the outside that another CPU translated at the same
    /// moment (both saw no translation): it leaves on the node port the other CPU claimed, and
    /// the claim this CPU made goes back.
    redirect RedirectNatRaced = 31 => "redirect_nat_raced",
    /// A pod's packet to a destination pods may never reach: the node's control endpoints (its
    /// metrics, etcd) and `[isolation] pods_never_reach`; dropped before routing and NAT.
    drop DropDeniedDestination = 32 => "drop_denied_destination",
}

impl Reason {
    /// Number of reasons in use.
    pub const COUNT: usize = Self::ALL.len();
    /// Slots in the counters map: room for reasons to come, so adding one does not change the
    /// pinned map's size.
    pub const SLOTS: usize = 64;

    /// Whether packets counted for this reason are dropped.
    #[inline(always)]
    pub const fn is_drop(self) -> bool {
        matches!(self.kind(), Kind::Drop)
    }
}

// Checked when this crate compiles: every reason has a counter slot.
const _: () = assert!(Reason::COUNT <= Reason::SLOTS, "more reasons than counter slots");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_the_reasons_named_drop() {
        for reason in Reason::ALL {
            let named = reason.name().starts_with("drop_") || reason.name().starts_with("xdp_drop_");
            assert_eq!(reason.is_drop(), named, "{}", reason.name());
        }
    }

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} is out of order", r.name());
        }
    }

    #[test]
    fn subsets_keep_their_index_and_kind() {
        assert_eq!(DropReason::DropSpoofed as u32, Reason::DropSpoofed as u32);
        assert_eq!(Reason::from(PassReason::XdpPass), Reason::XdpPass);
        assert_eq!(RedirectReason::RedirectNatReply.reason().kind(), Kind::Redirect);
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        let unique: std::collections::HashSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "names are unique");
    }
}
