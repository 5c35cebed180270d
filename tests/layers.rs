//! The house in layers: every import of the supervisor's and the worker's own code points down
//! the table in docs/design.md, and no files import each other in a circle.
//!
//! Read from the source, not the compiler: each file's code with its comments, strings and
//! `#[cfg(test)]` items left out; every `crate::`, `super::` and `self::` path in it (in `use`
//! trees, braces expanded, and in expressions), and every path through a child module, is
//! resolved to the file of the deepest module it names. A path to `store::Store` lands on
//! `store/mod.rs`, which only re-exports, so a child of `store` that reached up for it would
//! close a circle with its own parent, and this test names it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The supervisor's layers, top first, each with the layers it may import (its own included:
/// within a layer only circles are forbidden). `""` is the crate root, `lib.rs`.
const SUPERVISOR: &[(&str, &[&str])] = &[
    ("", &["", "cmd", "cli", "drive", "watch", "fleet", "auth", "engine", "store", "job", "util"]),
    ("cmd", &["cmd", "cli", "drive", "watch", "fleet", "auth", "engine", "store", "job", "util"]),
    ("cli", &["cli", "job", "util"]),
    ("drive", &["drive", "watch", "fleet", "auth", "engine", "store", "job", "util"]),
    ("watch", &["watch", "engine", "job", "util"]),
    ("fleet", &["fleet", "engine", "job", "util"]),
    ("auth", &["auth", "job", "util"]),
    ("engine", &["engine", "store", "job", "util"]),
    ("store", &["store", "job", "util"]),
    ("job", &["job", "util"]),
    ("util", &["util"]),
];

/// Which layers of the supervisor may name each of the crates beside it: the store is the only
/// sled user, and what the store and the engine need of the worker's code belongs in `shared`.
const SUPERVISOR_CRATES: &[(&str, &[&str])] =
    &[("sled", &["store"]), ("worker", &["", "cli", "drive"]), ("mockapi", &["", "cli", "cmd"])];

/// The worker's: the link on top, then the pool, fetching, the gate, and at the bottom what
/// they all hand each other and what fetching is made of (the retry policy, rate-limit headers,
/// the resolver).
const WORKER: &[(&str, &[&str])] = &[
    (
        "",
        &["", "link", "pool", "fetch", "auth", "gate", "announce", "outbox", "policy", "resolve", "connect"],
    ),
    (
        "link",
        &["link", "pool", "fetch", "auth", "gate", "announce", "outbox", "policy", "resolve", "connect"],
    ),
    ("pool", &["pool", "fetch", "auth", "gate", "announce", "outbox", "policy", "resolve", "connect"]),
    ("fetch", &["fetch", "auth", "gate", "announce", "outbox", "policy", "resolve", "connect"]),
    ("auth", &["auth", "outbox"]),
    ("gate", &["gate", "outbox", "policy"]),
    ("announce", &["announce"]),
    ("outbox", &["outbox"]),
    ("policy", &["policy"]),
    ("resolve", &["resolve"]),
    ("connect", &["connect"]),
];

#[test]
fn no_supervisor_file_imports_up_the_layers_or_in_a_circle() {
    let problems = check(&crate_src("supervisor"), SUPERVISOR);
    assert!(problems.is_empty(), "supervisor/src:\n{}", problems.join("\n"));
}

#[test]
fn only_the_layers_allowed_name_the_crates_beside_the_supervisor() {
    let problems = check_crates(&crate_src("supervisor"), SUPERVISOR_CRATES);
    assert!(problems.is_empty(), "supervisor/src:\n{}", problems.join("\n"));
    // The check sees a crate named in a use tree and in an expression.
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::create_dir_all(dir.path().join("store")).expect("mkdir");
    std::fs::write(dir.path().join("lib.rs"), "mod store;\n").expect("write");
    std::fs::write(
        dir.path().join("store/mod.rs"),
        "use worker::{policy::X, fetch};\nfn f() { let _ = worker::error_chain(&e); }\n",
    )
    .expect("write");
    let problems = check_crates(dir.path(), SUPERVISOR_CRATES);
    assert_eq!(
        problems,
        vec![
            "store/mod.rs names worker (worker::policy::X): store may not".to_owned(),
            "store/mod.rs names worker (worker::fetch): store may not".to_owned(),
            "store/mod.rs names worker (worker::error_chain): store may not".to_owned(),
        ]
    );
}

/// Every path that names one of `crates` from a layer that may not, in words.
fn check_crates(src: &Path, crates: &[(&str, &[&str])]) -> Vec<String> {
    let mut problems = Vec::new();
    for (file, module) in &modules(src) {
        let text = std::fs::read_to_string(src.join(file)).expect("a source file reads");
        let code = strip_tests(&strip_comments_and_strings(&text));
        let layer = layer_of(module);
        for path in all_paths(&code) {
            let Some((name, allowed)) = crates.iter().find(|(c, _)| path.first().is_some_and(|p| p == c))
            else {
                continue;
            };
            if !allowed.contains(&layer) {
                let from = if layer.is_empty() { "lib.rs" } else { layer };
                let line = format!("{} names {name} ({}): {from} may not", show(file), path.join("::"));
                if !problems.contains(&line) {
                    problems.push(line);
                }
            }
        }
    }
    problems
}

#[test]
fn no_worker_file_imports_up_the_layers_or_in_a_circle() {
    let problems = check(&crate_src("worker"), WORKER);
    assert!(problems.is_empty(), "worker/src:\n{}", problems.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import_and_a_circle() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(file, text).expect("write");
    };
    write("lib.rs", "mod job;\nmod util;\n");
    write("job/mod.rs", "mod a;\nmod b;\npub use a::A;\n");
    write("job/a.rs", "use super::b::B;\npub struct A;\n");
    // Up a layer, through a brace group; and back to a sibling, closing a circle.
    write("job/b.rs", "use crate::{util::thing, job::a::A};\npub struct B;\n");
    write(
        "util/mod.rs",
        "pub fn thing() { crate::job::A; }\n#[cfg(test)]\nmod tests { use crate::job::b::B; }\n",
    );
    let problems = check(src, SUPERVISOR);
    assert!(
        problems
            .iter()
            .any(|p| p == "util/mod.rs imports job/mod.rs (crate::job::A): util may not import job"),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("a circle: job/a.rs -> job/b.rs -> job/a.rs")),
        "{problems:#?}"
    );
    assert!(!problems.iter().any(|p| p.contains("job::b::B")), "test code is left out: {problems:#?}");
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src")
}

/// Every import that points up the table, and every circle, in words.
fn check(src: &Path, layers: &[(&str, &[&str])]) -> Vec<String> {
    let files = modules(src);
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (file, module) in &files {
        let text = std::fs::read_to_string(src.join(file)).expect("a source file reads");
        let code = strip_tests(&strip_comments_and_strings(&text));
        let children: BTreeSet<String> = files.values().filter_map(|m| child_of(module, m)).collect();
        for path in paths(&code, &children) {
            let Some(target) = resolve(&files, module, &path) else { continue };
            if &target == file {
                continue;
            }
            let (from, to) = (layer_of(module), layer_of(&files[&target]));
            let allowed = layers.iter().find(|(l, _)| *l == from).map(|(_, a)| *a).unwrap_or(&[]);
            if !allowed.contains(&to) {
                let line = format!(
                    "{} imports {} ({}): {} may not import {}",
                    show(file),
                    show(&target),
                    path.join("::"),
                    if from.is_empty() { "lib.rs" } else { from },
                    if to.is_empty() { "lib.rs" } else { to },
                );
                if !problems.contains(&line) {
                    problems.push(line);
                }
            }
            edges.entry(file.clone()).or_default().insert(target);
        }
    }
    problems.extend(
        circles(&edges)
            .into_iter()
            .map(|c| format!("a circle: {}", c.iter().map(|f| show(f)).collect::<Vec<_>>().join(" -> "))),
    );
    problems
}

fn show(file: &Path) -> String {
    file.display().to_string()
}

/// Each source file (relative to `src`) and its module path; `main.rs` (a binary of its own)
/// and files declared only under `#[cfg(test)]` (named `tests.rs` here) are left out.
fn modules(src: &Path) -> BTreeMap<PathBuf, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source dir reads") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src").to_path_buf();
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !name.ends_with(".rs") || name == "tests.rs" || rel == Path::new("main.rs") {
                continue;
            }
            let mut module: Vec<String> = rel
                .parent()
                .into_iter()
                .flat_map(|p| p.iter())
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            let stem = name.trim_end_matches(".rs");
            if stem != "mod" && stem != "lib" {
                module.push(stem.to_owned());
            }
            out.insert(rel, module);
        }
    }
    out
}

/// The layer of a module: its first segment (`""` for the crate root).
fn layer_of(module: &[String]) -> &str {
    module.first().map_or("", String::as_str)
}

fn child_of(parent: &[String], module: &[String]) -> Option<String> {
    (module.len() == parent.len() + 1 && module.starts_with(parent)).then(|| module[parent.len()].clone())
}

/// The file of the deepest module `path` names, from a file of `module`.
fn resolve(files: &BTreeMap<PathBuf, Vec<String>>, module: &[String], path: &[String]) -> Option<PathBuf> {
    let mut at: Vec<String> = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            at.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                at.pop()?;
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    for segment in rest {
        let mut deeper = at.clone();
        deeper.push(segment.clone());
        if files.values().any(|m| *m == deeper) {
            at = deeper;
        } else {
            break;
        }
    }
    files.iter().find(|(_, m)| **m == at).map(|(f, _)| f.clone())
}

/// Every path of the crate's own in `code`: `use` trees expanded, and in expressions every run
/// of `a::b::c` that starts at `crate`, `super`, `self` or a child module's name.
fn paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = all_paths(code);
    out.retain(|p| is_own(p, children));
    out
}

/// Every path in `code`: `use` trees expanded, and in expressions every run of `a::b::c`.
fn all_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    let mut expressions = String::new();
    while let Some(at) = find_use(rest) {
        expressions.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        expand(&after[..end], &mut Vec::new(), &mut out);
        rest = &after[(end + 1).min(after.len())..];
    }
    expressions.push_str(rest);
    let chars: Vec<char> = expressions.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_ident_start(chars[i]) && (i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':') {
            let mut path = Vec::new();
            let mut j = i;
            loop {
                let start = j;
                while j < chars.len() && is_ident(chars[j]) {
                    j += 1;
                }
                path.push(chars[start..j].iter().collect::<String>());
                if chars.get(j) == Some(&':')
                    && chars.get(j + 1) == Some(&':')
                    && chars.get(j + 2).is_some_and(|c| is_ident_start(*c))
                {
                    j += 2;
                } else {
                    break;
                }
            }
            if path.len() > 1 {
                out.push(path);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn is_own(path: &[String], children: &BTreeSet<String>) -> bool {
    path.first().is_some_and(|s| matches!(s.as_str(), "crate" | "super" | "self") || children.contains(s))
}

/// Where the next `use` item starts (`use` or `pub use`, `pub(crate) use`), as a word.
fn find_use(code: &str) -> Option<usize> {
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(found) = code[from..].find("use ") {
        let at = from + found;
        let before = if at == 0 { b' ' } else { bytes[at - 1] };
        if !(before.is_ascii_alphanumeric() || before == b'_') {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// Expands a `use` tree (`a::{b, c::{d, e as f}, self}`) into paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let pushed: Vec<String> =
            head.split("::").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        let n = pushed.len();
        prefix.extend(pushed);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        for part in split_top(inner) {
            expand(part, prefix, out);
        }
        prefix.truncate(prefix.len() - n);
        return;
    }
    let tree = tree.split(" as ").next().unwrap_or(tree).trim();
    if tree.is_empty() {
        return;
    }
    let mut path = prefix.clone();
    for segment in tree.split("::").map(str::trim) {
        if segment != "self" || path.is_empty() {
            path.push(segment.to_owned());
        }
    }
    path.retain(|s| s != "*");
    out.push(path);
}

/// Splits `a, b::{c, d}, e` at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The code with comments gone and every string and char literal emptied.
fn strip_comments_and_strings(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            i += 2;
            while i < c.len() && !(c[i] == '*' && c.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c[i] == 'r'
            && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
            && (i == 0 || !is_ident(c[i - 1]))
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() && !(c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#'))) {
                j += 1;
            }
            out.push_str("\"\"");
            i = j + 1 + hashes;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i += 1;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            let close = (i + 2..c.len()).find(|&k| c[k] == '\'').unwrap_or(c.len() - 1);
            out.push_str("' '");
            i = close + 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The code without its `#[cfg(test)]` items (a `mod tests { … }`, a test-only function, a
/// `mod tests;`).
fn strip_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        let (semi, brace) = (item.find(';'), item.find('{'));
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (Some(s), None) => s + 1,
            (_, Some(b)) => {
                let mut depth = 0;
                let mut end = item.len();
                for (i, ch) in item[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Each circle of files, once, starting at its smallest file.
fn circles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    let mut found: BTreeSet<Vec<PathBuf>> = BTreeSet::new();
    for start in edges.keys() {
        // The shortest way back to `start`, breadth first.
        let mut came_from: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        'search: while let Some(at) = queue.pop_front() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    let mut cycle = vec![start.clone()];
                    let mut cur = at.clone();
                    while &cur != start {
                        cycle.push(cur.clone());
                        cur = came_from[&cur].clone();
                    }
                    cycle[1..].reverse();
                    let min = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
                    cycle.rotate_left(min);
                    cycle.push(cycle[0].clone());
                    found.insert(cycle);
                    break 'search;
                }
                if !came_from.contains_key(next) && next != start {
                    came_from.insert(next.clone(), at.clone());
                    queue.push_back(next.clone());
                }
            }
        }
    }
    found.into_iter().collect()
}
