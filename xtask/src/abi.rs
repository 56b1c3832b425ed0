//! The map ABI between podnet's kernel programs and its loader, checked against the built object.
//!
//! Pinned maps outlive the programs that made them: `podnet up` of a newer podnet finds the
//! maps of the old one and must know whether their keys and values still mean the same (see
//! `podnet/src/datapath/migrate.rs`). podnet-common's `maps::LAYOUTS` says, for every pinned map,
//! its layout version, kind, key and value sizes and capacity. This check reads the object's BTF
//! (through `bpftool -j btf dump file`) and fails when
//! - a map the object pins is missing from the layouts, or the layouts name one it does not pin;
//! - the object declares another kind, key or value size or capacity than the layouts;
//! - a map's fingerprint (its kind, capacity, and the full shape of its key and value types:
//!   field names, offsets, types) differs from the one recorded in [`ABI_FILE`] while its layout
//!   version is the same: a map changed without a version bump.
//!
//! After a deliberate change (and a version bump with its migration), `cargo xtask abi --write`
//! records the new fingerprints.

use std::{collections::HashMap, fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};
use podnet_common::maps::{LAYOUTS, Layout};
use serde_json::Value;

/// The recorded fingerprints, relative to the workspace root.
pub const ABI_FILE: &str = "podnet-common/abi.txt";

/// A map as the kernel object declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMap {
    pub name: String,
    /// `bpf_map_type`.
    pub kind: u32,
    pub key_size: usize,
    pub value_size: usize,
    pub max_entries: u32,
    /// Pinned by name (`#[btf_map(pin_by_name)]`): it outlives the programs.
    pub pinned: bool,
    /// The key and value types, rendered in full (see [`render`]).
    pub key: String,
    pub value: String,
}

impl ObjectMap {
    /// A stable hash of everything that gives the map's entries their bytes and meaning.
    pub fn fingerprint(&self) -> String {
        let text = format!("{}|{}|{}|{}", self.kind, self.max_entries, self.key, self.value);
        // FNV-1a, 64 bits: stable across builds and toolchains.
        let hash = text
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        format!("{hash:016x}")
    }
}

/// One line of [`ABI_FILE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub name: String,
    pub version: u32,
    pub fingerprint: String,
}

/// The maps the kernel object at `path` declares (in `.maps`), from its BTF.
pub fn object_maps(path: &Path) -> anyhow::Result<Vec<ObjectMap>> {
    let out = Command::new("bpftool")
        .args(["-j", "btf", "dump", "file"])
        .arg(path)
        .output()
        .context("run bpftool (scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!("bpftool btf dump file {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    let json: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    maps_of_btf(&json)
}

/// The maps in a BTF dump (`bpftool -j btf dump`): every variable of the `.maps` section, whose
/// type is a struct of pointers to arrays whose lengths carry the numbers (`type`,
/// `max_entries`, `pinning`) and pointers to the key and value types.
pub fn maps_of_btf(json: &Value) -> anyhow::Result<Vec<ObjectMap>> {
    let types: HashMap<u64, &Value> = json["types"]
        .as_array()
        .context("no types in the BTF dump")?
        .iter()
        .filter_map(|t| Some((t["id"].as_u64()?, t)))
        .collect();
    let btf = Btf { types };
    let section = btf
        .types
        .values()
        .find(|t| t["kind"] == "DATASEC" && t["name"] == ".maps")
        .context("the object has no .maps section")?;
    let mut maps = Vec::new();
    for var in section["vars"].as_array().context(".maps has no variables")? {
        let var = btf.get(&var["type_id"])?;
        let name = var["name"].as_str().context("a map without a name")?.to_owned();
        let def = btf.get(&var["type_id"])?;
        let members: HashMap<&str, &Value> = def["members"]
            .as_array()
            .with_context(|| format!("map {name}: no members"))?
            .iter()
            .filter_map(|m| Some((m["name"].as_str()?, &m["type_id"])))
            .collect();
        let member = |field: &str| members.get(field).copied();
        // `type`, `max_entries` and `pinning` are pointers to arrays of that many elements.
        let number = |field: &str| -> anyhow::Result<Option<u64>> {
            let Some(ptr) = member(field) else { return Ok(None) };
            let array = btf.get(&btf.get(ptr)?["type_id"])?;
            Ok(array["nr_elems"].as_u64())
        };
        // `key` and `value` point to the types.
        let pointee = |field: &str| -> anyhow::Result<Option<u64>> {
            let Some(ptr) = member(field) else { return Ok(None) };
            Ok(btf.get(ptr)?["type_id"].as_u64())
        };
        let (key, value) = (pointee("key")?, pointee("value")?);
        maps.push(ObjectMap {
            kind: number("type")?.with_context(|| format!("map {name}: no type"))? as u32,
            max_entries: number("max_entries")?.unwrap_or(0) as u32,
            pinned: number("pinning")? == Some(1),
            key_size: key.map(|k| btf.size(k)).transpose()?.unwrap_or(0),
            value_size: value.map(|v| btf.size(v)).transpose()?.unwrap_or(0),
            key: key.map(|k| btf.render(k)).transpose()?.unwrap_or_default(),
            value: value.map(|v| btf.render(v)).transpose()?.unwrap_or_default(),
            name,
        });
    }
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(maps)
}

struct Btf<'a> {
    types: HashMap<u64, &'a Value>,
}

impl<'a> Btf<'a> {
    fn get(&self, id: &Value) -> anyhow::Result<&'a Value> {
        let id = id.as_u64().context("a BTF type id that is not a number")?;
        self.types.get(&id).copied().with_context(|| format!("no BTF type {id}"))
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, id: u64) -> anyhow::Result<&'a Value> {
        let mut t = self.get(&id.into())?;
        while matches!(t["kind"].as_str(), Some("TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG")) {
            t = self.get(&t["type_id"])?;
        }
        Ok(t)
    }

    fn size(&self, id: u64) -> anyhow::Result<usize> {
        let t = self.resolve(id)?;
        Ok(match t["kind"].as_str() {
            Some("ARRAY") => {
                t["nr_elems"].as_u64().unwrap_or(0) as usize
                    * self.size(t["type_id"].as_u64().context("array element")?)?
            }
            Some("PTR") => 8,
            _ => t["size"].as_u64().unwrap_or(0) as usize,
        })
    }

    /// Type `id` in full: structs and unions with every member's name, bit offset and type,
    /// arrays with their length, integers with their size and encoding.
    fn render(&self, id: u64) -> anyhow::Result<String> {
        let t = self.resolve(id)?;
        let name = t["name"].as_str().unwrap_or("");
        Ok(match t["kind"].as_str().unwrap_or("?") {
            "INT" => format!("{name}:{}:{}", t["size"], t["encoding"]),
            "ARRAY" => format!(
                "[{};{}]",
                self.render(t["type_id"].as_u64().context("array element")?)?,
                t["nr_elems"]
            ),
            "PTR" => format!("*{}", self.render(t["type_id"].as_u64().context("pointee")?)?),
            kind @ ("STRUCT" | "UNION") => {
                let mut out = format!("{kind} {name}({}){{", t["size"]);
                for m in t["members"].as_array().into_iter().flatten() {
                    let ty = self.render(m["type_id"].as_u64().context("member type")?)?;
                    let _ = write!(out, "{}@{}:{ty},", m["name"].as_str().unwrap_or(""), m["bits_offset"]);
                }
                out + "}"
            }
            "ENUM" | "ENUM64" => format!("enum {name}({})", t["size"]),
            other => format!("{other} {name}"),
        })
    }
}

/// Reads [`ABI_FILE`]'s text: `NAME VERSION FINGERPRINT ...` a line, `#` comments.
pub fn parse_recorded(text: &str) -> anyhow::Result<Vec<Recorded>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace();
            let (Some(name), Some(version), Some(fingerprint)) = (words.next(), words.next(), words.next())
            else {
                bail!("{ABI_FILE}: {line:?} is not NAME VERSION FINGERPRINT");
            };
            Ok(Recorded {
                name: name.to_owned(),
                version: version.parse().with_context(|| format!("{ABI_FILE}: {line:?}: version"))?,
                fingerprint: fingerprint.to_owned(),
            })
        })
        .collect()
}

/// What is wrong with the object's maps against `layouts` and `recorded`; empty when all holds.
pub fn problems(object: &[ObjectMap], layouts: &[Layout], recorded: &[Recorded]) -> Vec<String> {
    let mut problems = Vec::new();
    for map in object.iter().filter(|m| m.pinned) {
        if !layouts.iter().any(|l| l.name == map.name) {
            problems.push(format!(
                "map {} is pinned by the object but missing from podnet_common::maps::LAYOUTS: \
                 add it with its layout version",
                map.name
            ));
        }
    }
    for layout in layouts {
        let Some(map) = object.iter().find(|m| m.pinned && m.name == layout.name) else {
            problems.push(format!(
                "LAYOUTS names map {}, which the object does not pin (a kernel static of that name, \
                 #[btf_map(pin_by_name)])",
                layout.name
            ));
            continue;
        };
        let declared = [
            ("kind", map.kind as usize, layout.kind as usize),
            ("key size", map.key_size, layout.key_size),
            ("value size", map.value_size, layout.value_size),
            ("capacity", map.max_entries as usize, layout.max_entries as usize),
        ];
        for (what, object, common) in declared {
            if object != common {
                problems.push(format!(
                    "map {}: the object declares {what} {object}, podnet-common's layout {common}",
                    map.name
                ));
            }
        }
        let fingerprint = map.fingerprint();
        match recorded.iter().find(|r| r.name == layout.name) {
            None => problems.push(format!(
                "map {} has no fingerprint in {ABI_FILE}: run `cargo xtask abi --write`",
                map.name
            )),
            Some(r) if r.version == layout.version && r.fingerprint != fingerprint => problems.push(format!(
                "map {} changed without a layout version bump (fingerprint {} recorded for v{}, \
                     the object's is {fingerprint}; key {}, value {}): a pinned map of the old \
                     layout would be read as the new one. Raise its version in \
                     podnet_common::maps::LAYOUTS (and teach podnet/src/datapath/migrate.rs to \
                     carry it), then `cargo xtask abi --write`",
                map.name, r.fingerprint, r.version, map.key, map.value
            )),
            Some(r) if r.version != layout.version => problems.push(format!(
                "map {} is at layout v{} but {ABI_FILE} records v{}: run `cargo xtask abi --write`",
                map.name, layout.version, r.version
            )),
            Some(_) => {}
        }
    }
    problems
}

/// Checks the object at `object` against podnet-common's layouts and the file at `abi_file`.
pub fn check(object: &Path, abi_file: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(abi_file).with_context(|| format!("read {}", abi_file.display()))?;
    Ok(problems(&object_maps(object)?, &LAYOUTS, &parse_recorded(&text)?))
}

/// [`ABI_FILE`]'s text for the object's pinned maps, with today's layout versions.
pub fn record(object: &[ObjectMap], layouts: &[Layout]) -> String {
    let mut out = String::from(
        "# podnet's pinned maps as the built kernel object declares them: layout version (from\n\
         # podnet_common::maps::LAYOUTS) and a fingerprint of the map's kind, capacity, and key and\n\
         # value types in full. `cargo xtask lint` fails when a fingerprint changes while the\n\
         # version stays; after a deliberate change and a version bump, `cargo xtask abi --write`.\n\
         # map              version  fingerprint       kind  key  value  capacity\n",
    );
    for layout in layouts {
        if let Some(m) = object.iter().find(|m| m.pinned && m.name == layout.name) {
            let _ = writeln!(
                out,
                "{:<18} {:<8} {}  {:<4}  {:<3}  {:<5}  {}",
                m.name,
                layout.version,
                m.fingerprint(),
                m.kind,
                m.key_size,
                m.value_size,
                m.max_entries
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_owned()
    }

    /// The object `cargo xtask build-ebpf` built (`./x test` builds it before the tests).
    fn built_object() -> Vec<u8> {
        let path = root().join("target/ebpf/podnet.bpf.o");
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}: build it first with `cargo xtask build-ebpf`", path.display())
        })
    }

    /// [`check`] of object bytes `object`, written to a file of its own (`tag`).
    fn check_bytes(object: &[u8], tag: &str) -> Vec<String> {
        let path = std::env::temp_dir().join(format!("podnet-abi-test-{}-{tag}.o", std::process::id()));
        std::fs::write(&path, object).unwrap();
        let found = check(&path, &root().join(ABI_FILE));
        let _ = std::fs::remove_file(&path);
        found.unwrap()
    }

    #[test]
    fn the_built_object_matches_the_layouts_and_the_record() {
        assert_eq!(check_bytes(&built_object(), "built"), Vec::<String>::new());
    }

    #[test]
    fn a_map_value_changed_without_a_version_bump_is_refused() {
        // Rename a field of the endpoint map's value in the object's BTF (same length, so the
        // object stays whole): the map now means something else, at the same version.
        use object::{Object as _, ObjectSection as _};
        let mut object = built_object();
        let (start, len) = object::File::parse(&*object)
            .unwrap()
            .section_by_name(".BTF")
            .and_then(|s| s.file_range())
            .expect("the object has BTF");
        let btf = &mut object[start as usize..(start + len) as usize];
        let field = b"\0pod_mac\0";
        let at = btf.windows(field.len()).position(|w| w == field).expect("Endpoint.pod_mac in the BTF");
        btf[at + 5] = b'n';
        let found = check_bytes(&object, "changed");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].starts_with("map ENDPOINTS changed without a layout version bump"), "{}", found[0]);
        assert!(found[0].contains("pod_nac@64"), "{}", found[0]);
    }

    #[test]
    fn a_bumped_version_asks_for_the_record_and_a_missing_map_is_named() {
        let object = object_maps(&root().join("target/ebpf/podnet.bpf.o")).unwrap();
        let recorded = parse_recorded(&std::fs::read_to_string(root().join(ABI_FILE)).unwrap()).unwrap();
        let mut layouts = LAYOUTS.to_vec();
        layouts[0].version += 1;
        let found = problems(&object, &layouts, &recorded);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("run `cargo xtask abi --write`"), "{}", found[0]);
        layouts.remove(0);
        let found = problems(&object, &layouts, &recorded);
        assert!(found[0].contains("missing from podnet_common::maps::LAYOUTS"), "{found:#?}");
        let mut layouts = LAYOUTS.to_vec();
        layouts[0].value_size += 4;
        let found = problems(&object, &layouts, &recorded);
        assert!(found[0].contains("value size"), "{found:#?}");
    }
}
