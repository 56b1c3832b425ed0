//! No import cycles between podnet's top-level modules: each layer (model, config, host,
//! datapath, node, api, agent, cni, ...) may use the ones below it, never one that uses it back,
//! so every module can be read, tested and changed on its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::Context as _;

/// Which top-level modules each top-level module of the library rooted at `src` (its `lib.rs`)
/// uses through `crate::` paths.
pub fn graph(src: &Path) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).context("read lib.rs")?;
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut uses = BTreeSet::new();
        for file in files_of(src, module)? {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            for used in crate_paths(&text) {
                if used != *module && modules.contains(&used) {
                    uses.insert(used);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    Ok(graph)
}

/// The source files of module `module`: `module.rs`, or everything under `module/`.
fn files_of(src: &Path, module: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let file = src.join(format!("{module}.rs"));
    if file.exists() {
        return Ok(vec![file]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// The first segment after every `crate::` in `text`, in `use crate::{a, b::c}` groups too.
pub fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code: String =
        text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The top level of the group: names before `::`, `,` or `}` at depth 0.
            let mut depth = 0;
            let mut word = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !word.is_empty() {
                            found.insert(std::mem::take(&mut word));
                        }
                        at_start = true;
                    }
                    c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => word.push(c),
                    _ if depth == 0 && !word.is_empty() => {
                        found.insert(std::mem::take(&mut word));
                        at_start = false;
                    }
                    _ => {}
                }
            }
            if !word.is_empty() {
                found.insert(word);
            }
        } else {
            let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !word.is_empty() {
                found.insert(word);
            }
        }
    }
    found
}

/// The import cycles of `graph`, each as the path of modules that closes on itself.
pub fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut cycles: Vec<Vec<String>> = Vec::new();
    for start in graph.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start.clone());
                    // Each cycle once, from its smallest module.
                    if path.iter().all(|m| m >= start) {
                        cycles.push(cycle);
                    }
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_paths_are_read_from_groups_and_paths() {
        let text = "use crate::{\n    config::{self, Config},\n    host::netlink::{Iface, Netlink},\n    error_chain as chain,\n};\n\
                    // crate::commented\nfn f() { crate::node::up(); }\n";
        let found: Vec<String> = crate_paths(text).into_iter().collect();
        assert_eq!(found, ["config", "error_chain", "host", "node"]);
        let found: Vec<String> = crate_paths("use crate::{a, b::c, d};").into_iter().collect();
        assert_eq!(found, ["a", "b", "d"], "a name right before a comma ends there");
    }

    #[test]
    fn a_cycle_is_found_and_a_layering_passes() {
        let graph = |edges: &[(&str, &str)]| {
            let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (a, b) in edges {
                g.entry((*a).to_owned()).or_default().insert((*b).to_owned());
                g.entry((*b).to_owned()).or_default();
            }
            g
        };
        let layered = graph(&[("agent", "node"), ("node", "host"), ("agent", "host"), ("cni", "api")]);
        assert!(cycles(&layered).is_empty());
        let tangled = graph(&[("agent", "node"), ("node", "api"), ("api", "agent"), ("host", "model")]);
        assert_eq!(cycles(&tangled), [["agent", "node", "api", "agent"]]);
    }

    #[test]
    fn podnet_has_no_import_cycles() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../podnet/src");
        let graph = graph(&src).unwrap();
        assert!(graph.contains_key("node") && graph.contains_key("datapath"), "{graph:?}");
        assert_eq!(cycles(&graph), Vec::<Vec<String>>::new(), "{graph:#?}");
    }
}
