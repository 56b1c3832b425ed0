//! No memory builtins in the kernel object: LLVM calls `memset`, `memcpy` and friends for copies,
//! fills and comparisons it does not unroll; in BPF they are byte-at-a-time loops, and a call
//! makes the verifier walk them once per byte.

use anyhow::Context as _;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

/// The builtins refused.
pub const MEMORY_BUILTINS: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];

/// Every relocation in the kernel object `elf` that calls a memory builtin, as
/// "program+offset -> builtin".
pub fn builtin_calls(elf: &[u8]) -> anyhow::Result<Vec<String>> {
    let file = object::File::parse(elf).context("parse the kernel object")?;
    let mut calls = Vec::new();
    for section in file.sections().filter(|s| s.kind() == object::SectionKind::Text) {
        for (offset, relocation) in section.relocations() {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let name = file.symbol_by_index(index)?.name()?;
            if !MEMORY_BUILTINS.contains(&name) {
                continue;
            }
            // Named by the program (function symbol) the call sits in.
            let caller = file.symbols().find(|f| {
                f.section_index() == Some(section.index())
                    && f.kind() == object::SymbolKind::Text
                    && (f.address()..f.address() + f.size()).contains(&offset)
            });
            let (caller, at) = match caller {
                Some(f) => (f.name()?, offset - f.address()),
                None => (section.name()?, offset),
            };
            calls.push(format!("{caller}+{at:#x} -> {name}"));
        }
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use object::{
        Architecture, BinaryFormat, Endianness, RelocationEncoding, RelocationFlags, RelocationKind,
        SectionKind, SymbolFlags, SymbolKind, SymbolScope,
        write::{Object, Relocation, Symbol, SymbolSection},
    };

    use super::*;

    /// A BPF relocatable with one program, `from_pod`, of three instructions, whose second is a
    /// call relocated against `callee` (as LLVM emits a call to a function it did not inline).
    fn object_calling(callee: &str) -> Vec<u8> {
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
        let text = obj.add_section(Vec::new(), b"classifier".to_vec(), SectionKind::Text);
        // r1 = 0; call -1 (relocated); exit
        let code: [u8; 24] = [
            0xb7, 0x01, 0, 0, 0, 0, 0, 0, //
            0x85, 0x10, 0, 0, 0xff, 0xff, 0xff, 0xff, //
            0x95, 0, 0, 0, 0, 0, 0, 0,
        ];
        obj.append_section_data(text, &code, 8);
        obj.add_symbol(Symbol {
            name: b"from_pod".to_vec(),
            value: 0,
            size: code.len() as u64,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
        let target = obj.add_symbol(Symbol {
            name: callee.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Text,
            scope: SymbolScope::Unknown,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        });
        let flags = RelocationFlags::Generic {
            kind: RelocationKind::Absolute,
            encoding: RelocationEncoding::Generic,
            size: 32,
        };
        obj.add_relocation(text, Relocation { offset: 8, symbol: target, addend: 0, flags })
            .expect("a BPF relocation");
        obj.write().expect("an ELF object")
    }

    #[test]
    fn a_call_to_a_memory_builtin_is_found_with_its_program_and_offset() {
        assert_eq!(builtin_calls(&object_calling("memset")).unwrap(), ["from_pod+0x8 -> memset"]);
        assert_eq!(builtin_calls(&object_calling("bcmp")).unwrap(), ["from_pod+0x8 -> bcmp"]);
    }

    #[test]
    fn calls_to_other_functions_pass() {
        assert!(builtin_calls(&object_calling("bpf_helper_wrapper")).unwrap().is_empty());
    }
}
