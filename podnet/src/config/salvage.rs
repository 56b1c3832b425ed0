//! What `podnet down` can still use of a config file that no longer loads as a whole (an
//! upgrade renamed a field, an edit went wrong): taking a node down needs only its name and
//! state, and, to give its etcd lease back, its `[cluster]`.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{DEFAULT_STATE_DIR, Draft, read};
use crate::model::{Source, names::check_name};

/// The node a broken config still names.
#[derive(Debug)]
pub enum Salvaged {
    /// Its `[node]`, `[uplink]` and `[cluster]` sections load on their own; `ignored` names
    /// what was left out.
    Sections { draft: Box<Draft>, ignored: Vec<String> },
    /// Only its name and state directory (`<state_dir>/<name>`).
    Name { name: String, state: PathBuf },
}

/// Keys of `[node]` and `[uplink]` that say which node this is and where it keeps its state.
const NODE_KEYS: [&str; 5] = ["name", "pod_cidr", "bridge", "gateway", "state_dir"];
const UPLINK_KEYS: [&str; 2] = ["interface", "ip"];

/// The node the TOML file at `path` names, if it is TOML with a valid `[node] name`.
pub fn salvage(path: &Path) -> Option<Salvaged> {
    let table: Table = read(path).ok()?.parse().ok()?;
    let node = table.get("node")?.as_table()?;
    let name = node.get("name")?.as_str()?.to_owned();
    check_name(&name, 32).ok()?;
    let state_dir = node.get("state_dir").and_then(Value::as_str).unwrap_or(DEFAULT_STATE_DIR);
    let state = Path::new(state_dir).join(&name);
    let mut kept = Table::new();
    let mut ignored = Vec::new();
    for (key, value) in &table {
        let wanted: Option<&[&str]> = match key.as_str() {
            "node" => Some(&NODE_KEYS),
            "uplink" => Some(&UPLINK_KEYS),
            "cluster" => None,
            _ => {
                ignored.push(format!("[{key}]"));
                continue;
            }
        };
        let section = match (wanted, value.as_table()) {
            (Some(keys), Some(section)) => {
                let (keep, drop): (Vec<_>, Vec<_>) =
                    section.iter().partition(|(k, _)| keys.contains(&k.as_str()));
                ignored.extend(drop.into_iter().map(|(k, _)| format!("{key}.{k}")));
                Value::Table(keep.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            _ => value.clone(),
        };
        kept.insert(key.clone(), section);
    }
    let text = toml::to_string(&kept).ok()?;
    Some(match Draft::parse(text, Source::File(path.to_owned())) {
        Ok(draft) if draft.node_name() == name => Salvaged::Sections { draft: Box::new(draft), ignored },
        _ => Salvaged::Name { name, state },
    })
}
