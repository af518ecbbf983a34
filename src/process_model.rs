//! Checks that the source tree keeps showing the process model (test only): no import circle
//! between files, the controller and monitor sides never import each other, the container's
//! init imports only the protocol, the seccomp filters and `host::sys`, the pure modules
//! (config, verdict, error, layout, signal, policy) import no host code, `unsafe` lives in
//! `host/sys.rs` (plus the init's one adoption of its inherited descriptors), and every module
//! says in its first line what it owns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, e.g. `["controller", "root"]`; `[]` is the crate root.
type ModPath = Vec<String>;

/// Every `.rs` file under `src/` that is a module of the library, by module path.
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, prefix: &ModPath, out: &mut BTreeMap<ModPath, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "bin" {
                    let mut p = prefix.clone();
                    p.push(name);
                    walk(&path, &p, out);
                }
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut p = prefix.clone();
                if stem != "mod" && !(prefix.is_empty() && stem == "lib") {
                    p.push(stem.to_string());
                }
                out.insert(p, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &Vec::new(), &mut out);
    out
}

/// The non-test code of a file with comments removed.
fn code(text: &str) -> String {
    let end = text.find("\n#[cfg(test)]\nmod ").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.to_string()];
    };
    let head = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| {
            if p == "self" {
                head.to_string()
            } else {
                format!("{head}::{p}")
            }
        })
        .collect()
}

/// The modules file `module` refers to (`use` trees and inline `crate::` paths), each mapped
/// to the deepest module file of that path.
fn imports(module: &ModPath, text: &str, all: &BTreeSet<ModPath>) -> BTreeSet<ModPath> {
    let code = code(text);
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        paths.extend(expand(&rest[..end]));
        rest = &rest[end..];
    }
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        paths.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    // `super` names the parent module, for `a/b.rs` and `a/b/mod.rs` alike.
    let parent: ModPath = module[..module.len().saturating_sub(1)].to_vec();
    let mut out = BTreeSet::new();
    for p in paths {
        let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
        let mut full: ModPath = match segs.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") => parent.clone(),
            Some(&"self") => module.clone(),
            _ => continue, // an external crate or std
        };
        let rest = &segs[1..];
        // A nested `super::super::` goes further up.
        let mut i = 0;
        while rest.get(i) == Some(&"super") {
            full.pop();
            i += 1;
        }
        full.extend(rest[i..].iter().map(|s| s.to_string()));
        let target = (0..=full.len())
            .rev()
            .map(|n| full[..n].to_vec())
            .find(|m| all.contains(m));
        if let Some(t) = target.filter(|t| t != module) {
            out.insert(t);
        }
    }
    out
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "lib".to_string()
    } else {
        m.join("::")
    }
}

/// The import graph of the library, from its sources.
fn graph() -> (
    BTreeMap<ModPath, BTreeSet<ModPath>>,
    BTreeMap<ModPath, String>,
) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let all: BTreeSet<ModPath> = mods.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    let mut texts = BTreeMap::new();
    for (m, path) in &mods {
        let text = std::fs::read_to_string(path).unwrap();
        edges.insert(m.clone(), imports(m, &text, &all));
        texts.insert(m.clone(), text);
    }
    (edges, texts)
}

#[test]
fn no_two_files_import_each_other_even_through_others() {
    let (edges, _) = graph();
    // Depth-first search for a back edge; report the circle.
    fn visit(
        m: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        stack: &mut Vec<ModPath>,
        done: &mut BTreeSet<ModPath>,
    ) -> Option<Vec<ModPath>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut circle = stack[i..].to_vec();
            circle.push(m.clone());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(circle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let names: Vec<String> = circle.iter().map(name).collect();
            panic!("import circle: {}", names.join(" -> "));
        }
    }
    // The check sees real edges (a parser that found none would pass anything).
    let root = vec!["controller".to_string(), "root".to_string()];
    assert!(edges[&root].contains(&vec!["controller".to_string(), "sandbox".to_string()]));
}

#[test]
fn the_controller_and_monitor_sides_never_import_each_other() {
    let (edges, _) = graph();
    for (m, targets) in &edges {
        for side in ["controller", "monitor"] {
            let other = if side == "controller" {
                "monitor"
            } else {
                "controller"
            };
            if m.first().map(String::as_str) == Some(side) {
                let bad: Vec<String> = targets
                    .iter()
                    .filter(|t| t.first().map(String::as_str) == Some(other))
                    .map(name)
                    .collect();
                assert!(bad.is_empty(), "{} imports {bad:?}", name(m));
            }
        }
    }
}

#[test]
fn the_init_imports_only_the_protocol_the_filters_and_sys() {
    let (edges, _) = graph();
    let init = edges.get(&vec!["init".to_string()]).expect("src/init.rs");
    let allowed = |t: &ModPath| {
        let t: Vec<&str> = t.iter().map(String::as_str).collect();
        matches!(
            t.as_slice(),
            ["proto", ..] | ["host", "sys"] | ["policy", "seccomp", ..]
        )
    };
    let bad: Vec<String> = init.iter().filter(|t| !allowed(t)).map(name).collect();
    assert!(bad.is_empty(), "init imports {bad:?}");
    assert!(!init.is_empty());
}

/// Modules of plain data and rules, run by any process: no host code (`host::…`), nor
/// anything that reaches it (the controller, monitor, worker or images sides).
const PURE: &[&str] = &["config", "verdict", "error", "layout", "signal", "policy"];

#[test]
fn pure_modules_import_no_host_code() {
    let (edges, _) = graph();
    let pure = |m: &ModPath| m.first().is_some_and(|f| PURE.contains(&f.as_str()));
    let mut checked = 0;
    for (m, targets) in &edges {
        if !pure(m) {
            continue;
        }
        checked += 1;
        let bad: Vec<String> = targets.iter().filter(|t| !pure(t)).map(name).collect();
        assert!(
            bad.is_empty(),
            "the pure module {} imports {bad:?}",
            name(m)
        );
    }
    assert!(checked >= PURE.len(), "pure modules not found: {checked}");
}

#[test]
fn unsafe_code_lives_in_sys_and_every_module_says_what_it_owns() {
    let (_, texts) = graph();
    for (m, text) in &texts {
        assert!(
            text.starts_with("//! "),
            "{} does not open with a `//!` line saying what it owns",
            name(m)
        );
        let blocks = code(text).matches("unsafe {").count();
        match name(m).as_str() {
            "host::sys" => assert!(blocks > 0),
            // Its one adoption of the descriptors inherited from the monitor.
            "init" => assert_eq!(blocks, 1, "init"),
            "process_model" => {} // this file, which names the pattern
            other => assert_eq!(blocks, 0, "unsafe code in {other}"),
        }
    }
}
