//! The agent's `/metrics`: the node's state in the Prometheus text format (version 0.0.4).
//! Names follow Prometheus conventions (`podnet_` prefix, `_total` for counters, bytes as the
//! unit), and every label takes a bounded set of values: reasons, pods and interfaces of this
//! node (at most `ENDPOINTS_MAX`), protocols, states and sources.

use std::fmt::Write as _;

use podnet_common::CtState;

use crate::{
    datapath::{
        maps::{EventTotals, TableUse},
        nat::Translation,
    },
    model::PeerOrigin,
    node::Status,
};

/// What the agent itself counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentCounts {
    /// NAT sweeps run, and what they removed.
    pub gc_runs: u64,
    pub gc_expired: u64,
    pub gc_orphans: u64,
    pub gc_early: u64,
    /// Sweeps run because the datapath found a table full.
    pub pressure_sweeps: u64,
}

/// Everything one scrape shows.
pub struct Snapshot<'a> {
    pub status: &'a Status,
    pub translations: &'a [Translation],
    /// NAT's node port range (inclusive), when NAT is on.
    pub nat_ports: Option<(u16, u16)>,
    pub events: EventTotals,
    pub agent: AgentCounts,
}

/// One figure of a translation table's use, for a gauge by table.
type TableFigure = fn(&TableUse) -> u64;

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) -> &mut Self {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    Family { out, name }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The `/metrics` body.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let status = s.status;
    family(&mut out, "podnet_build_info", "gauge", "The running podnet's version (always 1).")
        .sample(&[("version", env!("CARGO_PKG_VERSION")), ("node", &status.node)], 1);

    let mut f = family(
        &mut out,
        "podnet_packets_total",
        "counter",
        "Packets the datapath handled, by the one reason each was counted for (README, \"Counters\").",
    );
    for c in &status.counters {
        f.sample(&[("reason", c.reason)], c.packets);
    }

    let traffic = [
        (
            "podnet_pod_packets_total",
            "Packets through the datapath of each pod: into it (to_pod), or sent by it past its source check (from_pod).",
        ),
        (
            "podnet_pod_bytes_total",
            "IPv4 bytes (headers included) through the datapath of each pod, as podnet_pod_packets_total.",
        ),
    ];
    for (i, (name, help)) in traffic.into_iter().enumerate() {
        let mut f = family(&mut out, name, "counter", help);
        for e in &status.endpoints {
            let ip = e.ip.to_string();
            let t = &e.traffic;
            let (to, from) = if i == 0 {
                (t.to_pod_packets, t.from_pod_packets)
            } else {
                (t.to_pod_bytes, t.from_pod_bytes)
            };
            f.sample(&[("pod", &e.pod), ("ip", &ip), ("direction", "to_pod")], to);
            f.sample(&[("pod", &e.pod), ("ip", &ip), ("direction", "from_pod")], from);
        }
    }

    let mut f =
        family(&mut out, "podnet_nat_translations", "gauge", "Live NAT translations, by protocol and state.");
    for state in CtState::ALL {
        let protocol = match state {
            CtState::Udp => "udp",
            CtState::Icmp => "icmp",
            _ => "tcp",
        };
        let n = s.translations.iter().filter(|t| t.state == state).count();
        f.sample(&[("protocol", protocol), ("state", state.name())], n);
    }
    let mut f = family(
        &mut out,
        "podnet_nat_node_ports_in_use",
        "gauge",
        "Node ports that carry at least one translation, by protocol.",
    );
    for protocol in ["tcp", "udp", "icmp"] {
        let ports: std::collections::HashSet<&str> =
            s.translations.iter().filter(|t| t.protocol == protocol).map(|t| t.node.as_str()).collect();
        f.sample(&[("protocol", protocol)], ports.len());
    }
    if let Some((min, max)) = s.nat_ports {
        family(&mut out, "podnet_nat_node_ports", "gauge", "Size of the node port range NAT translates to.")
            .sample(&[], u32::from(max) - u32::from(min) + 1);
    }
    let table_gauges: [(&'static str, &str, TableFigure); 4] = [
        (
            "podnet_nat_table_claims",
            "Node-port claims in each translation table (new connections are refused when it is full).",
            |t| t.entries as u64,
        ),
        ("podnet_nat_table_capacity", "Claims each translation table holds.", |t| t.capacity.into()),
        (
            "podnet_nat_table_pod_sides",
            "Pod-side entries in each translation table: one per claim, and those that outlived theirs \
             until the agent collects them (new connections are refused when it is full).",
            |t| t.pod_sides as u64,
        ),
        ("podnet_nat_table_pod_side_capacity", "Pod-side entries each translation table holds.", |t| {
            t.pod_side_capacity.into()
        }),
    ];
    for (name, help, figure) in table_gauges {
        let mut f = family(&mut out, name, "gauge", help);
        for t in &status.nat_tables {
            f.sample(&[("table", t.table)], figure(t));
        }
    }
    family(&mut out, "podnet_nat_gc_runs_total", "counter", "NAT sweeps the agent ran.")
        .sample(&[], s.agent.gc_runs);
    let mut f = family(
        &mut out,
        "podnet_nat_gc_removed_total",
        "counter",
        "Translations the agent's sweeps removed: idle past their timeout (expired), one side \
         without the other (orphaned), unanswered ones dropped early under pressure (pressure).",
    );
    f.sample(&[("cause", "expired")], s.agent.gc_expired);
    f.sample(&[("cause", "orphaned")], s.agent.gc_orphans);
    f.sample(&[("cause", "pressure")], s.agent.gc_early);
    family(
        &mut out,
        "podnet_nat_pressure_sweeps_total",
        "counter",
        "Sweeps run at once because the datapath found a translation table full.",
    )
    .sample(&[], s.agent.pressure_sweeps);

    let mut f = family(&mut out, "podnet_peers", "gauge", "Peer nodes, by where they came from.");
    for source in PeerOrigin::ALL {
        f.sample(&[("source", source.name())], status.peers.iter().filter(|p| p.source == source).count());
    }
    let mut f = family(
        &mut out,
        "podnet_program_attached",
        "gauge",
        "Programs attached, by program, hook and interface (1 while the pinned link holds it).",
    );
    for p in &status.programs {
        f.sample(&[("program", &p.program), ("hook", &p.hook.to_string()), ("interface", &p.ifname)], 1);
    }
    let mut f = family(
        &mut out,
        "podnet_events_total",
        "counter",
        "Drop and new-translation events wanted (a monitor listened, or the programs log): written \
         to the ring (sent), held back by the per-CPU budget (rate_limited), lost because the ring \
         was full (ring_full).",
    );
    f.sample(&[("outcome", "sent")], s.events.sent);
    f.sample(&[("outcome", "rate_limited")], s.events.rate_limited);
    f.sample(&[("outcome", "ring_full")], s.events.ring_full);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        family(&mut out, "podnet_x", "gauge", "X.").sample(&[("pod", "a\"b\\c\nd")], 1);
        assert_eq!(out, "# HELP podnet_x X.\n# TYPE podnet_x gauge\npodnet_x{pod=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
