//! Keeps the server crate's modules free of import cycles (issue #13): reads every file under
//! `src/`, takes the modules each one names through `crate::…`, `super::…` and child-module
//! paths (comments and `mod tests` left out), and fails naming the cycle if one comes back.
//! The layers this protects are drawn in docs/architecture.md ("The server's layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module of `src/`: its path, its code without comments and tests, and whether its file
/// is a `mod.rs`/`lib.rs` (whose `super` is one level higher).
fn modules() -> BTreeMap<Module, (String, bool)> {
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut module: Module = rel.iter().map(|p| p.to_string_lossy().into()).collect();
            let dir_file = matches!(module.last().map(String::as_str), Some("mod" | "lib"));
            if dir_file {
                module.pop();
            }
            out.insert(
                module,
                (code_of(&std::fs::read_to_string(&path).unwrap()), dir_file),
            );
        }
    }
    out
}

/// `text` without `//` comments and without its `#[cfg(test)] mod tests` block.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers of the path that starts at `at` (`a::b::{c, d::e}` gives `[a, b]`, `[a, b,
/// c]` and `[a, b, d, e]`, enough to find the module each names).
fn path_at(code: &str, at: usize) -> Vec<Vec<String>> {
    let mut pieces = Vec::new();
    let mut rest = &code[at..];
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let close = group.find('}').unwrap_or(group.len());
            return group[..close]
                .split(',')
                .map(|item| {
                    let mut p = pieces.clone();
                    p.extend(item.trim().split("::").map(|s| s.trim().to_string()));
                    p
                })
                .collect();
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        pieces.push(rest[..end].to_string());
        rest = &rest[end..];
        let Some(next) = rest.strip_prefix("::") else {
            break;
        };
        rest = next.trim_start();
    }
    vec![pieces]
}

/// The modules `module` (its code `code`) imports, among `known`.
fn imports(
    module: &Module,
    code: &str,
    dir_file: bool,
    known: &BTreeSet<Module>,
) -> BTreeSet<Module> {
    let parent: Module = if dir_file {
        module.clone()
    } else {
        module[..module.len().saturating_sub(1)].to_vec()
    };
    let children: Vec<String> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_suffix(';')?;
            let name = l.rsplit_once("mod ")?.1;
            (l.starts_with("mod ") || l.starts_with("pub")).then(|| name.trim().to_string())
        })
        .collect();
    let mut starts: Vec<(usize, Module)> = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        starts.push((at + "crate::".len(), Vec::new()));
    }
    for (at, _) in code.match_indices("super::") {
        if code[..at].ends_with("super::") {
            continue;
        }
        let mut ups = 0;
        let mut rest = &code[at..];
        while let Some(after) = rest.strip_prefix("super::") {
            ups += 1;
            rest = after;
        }
        let base = parent[..parent.len().saturating_sub(ups - 1)].to_vec();
        starts.push((at + "super::".len() * ups, base));
    }
    for child in &children {
        for (at, _) in code.match_indices(&format!("{child}::")) {
            let before = code[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            starts.push((at, parent.clone()));
        }
    }
    let mut out = BTreeSet::new();
    for (at, base) in starts {
        for path in path_at(code, at) {
            let mut full = base.clone();
            full.extend(path);
            let target = (1..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|m| known.contains(m));
            if let Some(target) = target.filter(|t| t != module) {
                out.insert(target);
            }
        }
    }
    out
}

/// A cycle of `graph`, if there is one.
fn cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            return Some(path[at..].to_vec());
        }
        if !done.insert(m.clone()) {
            return None;
        }
        path.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_server_crate_has_no_module_cycle() {
    let modules = modules();
    let known: BTreeSet<Module> = modules.keys().cloned().collect();
    let graph: BTreeMap<Module, BTreeSet<Module>> = modules
        .iter()
        .map(|(m, (code, dir_file))| (m.clone(), imports(m, code, *dir_file, &known)))
        .collect();
    let replication = vec!["replication".to_string(), "node".to_string()];
    assert!(
        graph[&vec!["state".to_string()]].contains(&replication),
        "the check reads imports (state uses replication::node)"
    );
    if let Some(found) = cycle(&graph) {
        let names: Vec<String> = found.iter().map(|m| m.join("::")).collect();
        panic!(
            "module cycle: {} -> {} (see docs/architecture.md, \"The server's layers\")",
            names.join(" -> "),
            names[0]
        );
    }
}

#[test]
fn a_cycle_is_found() {
    let m = |s: &str| vec![s.to_string()];
    let known: BTreeSet<Module> = [m("a"), m("b")].into();
    let graph: BTreeMap<Module, BTreeSet<Module>> = [
        (m("a"), imports(&m("a"), "use crate::b::X;", false, &known)),
        (
            m("b"),
            imports(&m("b"), "fn f(_: crate::{a::Y, c}) {}", false, &known),
        ),
    ]
    .into();
    assert_eq!(cycle(&graph), Some(vec![m("a"), m("b")]));
}
