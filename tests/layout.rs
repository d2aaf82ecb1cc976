//! The layering of `src/`, checked from the source text: no module depends
//! on one that depends back on it, and only the dispatcher reaches the
//! server's request handlers.
//!
//! A dependency is any path through `crate::`, `super::` or `self::` in a
//! module's code (a `use`, or a path written inline), resolved to the
//! deepest module it names. Two things are not dependencies: a parent's
//! `pub use` / `pub(crate) use` of its children (that is the parent's
//! public surface, not something it needs) and `mod x;` declarations.
//! Unit-test modules (`#[cfg(test)] mod tests`) are left out; `$crate`
//! paths inside macro bodies are counted where the macro is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of one crate: its path (`server::conn`) and its code.
fn modules(root: &Path, crate_file: &str, skip: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            if !rel.ends_with(".rs") || skip.iter().any(|s| rel.starts_with(s)) {
                continue;
            }
            let name = if rel == crate_file {
                String::new()
            } else {
                rel.trim_end_matches(".rs").trim_end_matches("/mod").replace('/', "::")
            };
            if rel != crate_file && (rel == "lib.rs" || rel == "main.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(name, code_only(&text));
        }
    }
    out
}

/// The text without comments, unit tests and `pub use` re-exports.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::new();
    let mut in_reexport = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("pub use ") || t.starts_with("pub(crate) use ") {
            in_reexport = !t.trim_end().ends_with(';');
            continue;
        }
        if in_reexport {
            in_reexport = !t.trim_end().ends_with(';');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The module a path starting at `from` and going through `segs` names:
/// as deep as known modules go.
fn resolve(known: &BTreeMap<String, String>, from: &[&str], segs: &[&str]) -> String {
    let mut at: Vec<&str> = from.to_vec();
    for seg in segs {
        let mut next = at.clone();
        next.push(seg);
        if known.contains_key(&next.join("::")) {
            at = next;
        } else {
            break;
        }
    }
    at.join("::")
}

/// The first segment of each item of a `{…}` group that starts at `text`.
fn group_heads(text: &str) -> Vec<String> {
    let (mut depth, mut item, mut heads) = (0, String::new(), Vec::new());
    for c in text.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    heads.push(std::mem::take(&mut item));
                    break;
                }
            }
            ',' if depth == 1 => {
                heads.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        if depth >= 1 {
            item.push(c);
        }
    }
    heads.into_iter().map(|h| h.trim().split("::").next().unwrap_or("").trim().to_owned()).collect()
}

/// What each module depends on.
fn dependencies(known: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps = BTreeMap::new();
    for (module, code) in known {
        let here: Vec<&str> = if module.is_empty() { vec![] } else { module.split("::").collect() };
        let mut found = BTreeSet::new();
        let bytes = code.as_bytes();
        for start in ["crate::", "super::", "self::"] {
            for (at, _) in code.match_indices(start) {
                // A word of its own (not `xsuper::`), and `$crate` counts.
                if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                    continue;
                }
                let mut rest = &code[at..];
                let mut base: Vec<&str> = match start {
                    "crate::" => vec![],
                    _ => here.clone(),
                };
                // `super::super::…`
                loop {
                    if let Some(r) = rest.strip_prefix("super::") {
                        base.pop();
                        rest = r;
                    } else if let Some(r) = rest.strip_prefix("self::") {
                        rest = r;
                    } else if let Some(r) = rest.strip_prefix("crate::") {
                        rest = r;
                    } else {
                        break;
                    }
                }
                let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
                let targets = if rest[path.len()..].starts_with('{') && (path.is_empty() || path.ends_with("::")) {
                    group_heads(&rest[path.len()..])
                        .into_iter()
                        .map(|h| {
                            let mut s = segs.clone();
                            s.push(&h);
                            resolve(known, &base, &s)
                        })
                        .collect::<Vec<_>>()
                } else {
                    segs.retain(|s| *s != "self");
                    vec![resolve(known, &base, &segs)]
                };
                for t in targets {
                    if &t != module {
                        found.insert(t);
                    }
                }
            }
        }
        deps.insert(module.clone(), found);
    }
    deps
}

/// A cycle in `deps`, if there is one.
fn find_cycle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    deps.keys().find_map(|m| visit(m, deps, &mut Vec::new(), &mut done))
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_library_has_no_import_cycles() {
    let known = modules(&src(), "lib.rs", &["cli/", "main.rs"]);
    assert!(known.contains_key("server::handlers::files"), "{:?}", known.keys());
    let deps = dependencies(&known);
    // The checker sees real dependencies.
    assert!(deps["server::conn"].contains("server::dispatch"), "{:?}", deps["server::conn"]);
    assert!(deps["session::receiver"].contains("services::root"), "{:?}", deps["session::receiver"]);
    if let Some(cycle) = find_cycle(&deps) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_binary_has_no_import_cycles() {
    let known = modules(&src(), "main.rs", &["lib.rs"]);
    let known: BTreeMap<_, _> = known.into_iter().filter(|(m, _)| m.is_empty() || m.starts_with("cli")).collect();
    if let Some(cycle) = find_cycle(&dependencies(&known)) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn only_the_dispatcher_reaches_the_handlers() {
    let known = modules(&src(), "lib.rs", &["cli/", "main.rs"]);
    let deps = dependencies(&known);
    let reaching: Vec<_> = deps
        .iter()
        .filter(|(m, d)| !m.starts_with("server::handlers") && d.iter().any(|t| t.starts_with("server::handlers")))
        .map(|(m, _)| m.clone())
        .collect();
    assert_eq!(reaching, ["server::dispatch"]);
}

/// The checker finds a cycle where there is one.
#[test]
fn a_cycle_is_found() {
    let mut known = BTreeMap::new();
    known.insert("a".to_owned(), "use crate::b::thing;\n".to_owned());
    known.insert("b".to_owned(), "fn f() { super::a::g() }\n".to_owned());
    known.insert("c".to_owned(), "use crate::{a, b};\n".to_owned());
    let deps = dependencies(&known);
    assert!(deps["c"].contains("a") && deps["c"].contains("b"), "{deps:?}");
    assert!(find_cycle(&deps).is_some(), "{deps:?}");
    known.insert("b".to_owned(), "pub use crate::a::g;\n".to_owned());
    let known: BTreeMap<_, _> = known.into_iter().map(|(k, v)| (k, code_only(&v))).collect();
    assert!(find_cycle(&dependencies(&known)).is_none());
}
