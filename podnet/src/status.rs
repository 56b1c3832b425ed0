//! Human-readable rendering of [`Status`]: plain aligned tables.

use crate::{datapath::nat::Translation, node::Status};

/// Renders rows as a left-aligned table under `header`.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Packets per second of each counter between two reports.
pub type Rates = std::collections::HashMap<&'static str, f64>;

/// The rates of `now`'s counters since `before`, `seconds` earlier.
pub fn rates(before: &Status, now: &Status, seconds: f64) -> Rates {
    now.counters
        .iter()
        .map(|c| {
            let was = before.counters.iter().find(|b| b.reason == c.reason).map_or(0, |b| b.packets);
            (c.reason, c.packets.saturating_sub(was) as f64 / seconds)
        })
        .collect()
}

/// The `podnet status` report; with `rates`, a rate column beside the counters.
pub fn render(s: &Status, rates: Option<&Rates>) -> String {
    let endpoints: Vec<Vec<String>> = s
        .endpoints
        .iter()
        .map(|e| {
            vec![
                e.pod.clone(),
                e.ip.to_string(),
                e.mac.clone(),
                e.host_ifname.clone(),
                e.host_ifindex.to_string(),
                format!("{} / {}", e.traffic.to_pod_packets, e.traffic.to_pod_bytes),
                format!("{} / {}", e.traffic.from_pod_packets, e.traffic.from_pod_bytes),
            ]
        })
        .collect();
    let peers: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| vec![p.name.clone(), p.node_ip.to_string(), p.pod_cidr.clone(), p.source.name().to_owned()])
        .collect();
    let programs: Vec<Vec<String>> = s
        .programs
        .iter()
        .map(|p| {
            vec![
                p.program.to_owned(),
                p.hook.to_string(),
                p.ifname.clone(),
                p.link_id.to_string(),
                p.prog_id.to_string(),
            ]
        })
        .collect();
    let counters: Vec<Vec<String>> = s
        .counters
        .iter()
        .map(|c| {
            let mut row = vec![c.reason.to_owned(), c.packets.to_string()];
            if let Some(rates) = rates {
                row.push(format!("{:.1}", rates.get(c.reason).copied().unwrap_or(0.0)));
            }
            row
        })
        .collect();
    let counter_header: &[&str] =
        if rates.is_some() { &["REASON", "PACKETS", "PACKETS/S"] } else { &["REASON", "PACKETS"] };
    let tables: Vec<Vec<String>> = s
        .nat_tables
        .iter()
        .map(|t| {
            let of = |n: usize, max: u32| format!("{n} / {max}");
            vec![t.table.to_owned(), of(t.entries, t.capacity), of(t.pod_sides, t.pod_side_capacity)]
        })
        .collect();
    let cluster = s.cluster.as_ref().map_or_else(String::new, |c| {
        let lease = match (c.lease, c.renewed) {
            (None, _) => "no lease recorded".to_owned(),
            (Some(l), true) => format!("lease {l:x}, renewed by the agent"),
            (Some(l), false) => format!("lease {l:x} recorded, but no agent runs to renew it"),
        };
        format!("cluster: pod CIDR {} ({lease}) from etcd {}\n", c.pod_cidr, c.etcd.join(","))
    });
    format!(
        "node {} (pins: {})\n{cluster}\nEndpoints\n{}\nPeers\n{}\nPrograms\n{}\nCounters\n{}\nNAT translation tables\n{}",
        s.node,
        s.pin_dir,
        table(&["POD", "IP", "MAC", "HOST IF", "IFINDEX", "TO POD PKTS / BYTES", "FROM POD PKTS / BYTES"], &endpoints),
        table(&["NODE", "NODE IP", "POD CIDR", "SOURCE"], &peers),
        table(&["PROGRAM", "HOOK", "INTERFACE", "LINK", "PROG"], &programs),
        table(counter_header, &counters),
        table(&["TABLE", "CLAIMS", "POD SIDES"], &tables),
    )
    .trim_end()
    .to_owned()
}

/// The `podnet nat list` table.
pub fn nat_table(translations: &[Translation]) -> String {
    let rows: Vec<Vec<String>> = translations
        .iter()
        .map(|t| {
            vec![
                t.protocol.to_owned(),
                t.pod.clone(),
                t.node.clone(),
                t.remote.clone(),
                t.state.name().to_owned(),
                format!("{:.0}s", t.age_s),
                format!("{:.0}s", t.idle_s),
            ]
        })
        .collect();
    format!(
        "{} translation(s)\n{}",
        translations.len(),
        table(&["PROTO", "POD", "NODE", "REMOTE", "STATE", "AGE", "IDLE"], &rows)
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_columns() {
        let t = super::table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "  A    LONG\n  xyz  1\n");
    }
}
