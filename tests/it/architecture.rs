//! The shape of the library, checked on its source: no module imports one that imports
//! it back (directly or through others), and no file outside `tests/` grows past about
//! 600 lines without saying why in its header (a `//! Why this file is long:` line).
//!
//! It also holds the code map of README.md to its word: each top-level folder (or
//! file) imports only the ones its row names.
//!
//! The import graph is read from `use` declarations and inline `crate::`/`super::`
//! paths, after dropping comments and each file's `#[cfg(test)]` module (tests may
//! reach anywhere). A path resolves to the deepest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const LONG_FILE: usize = 650;
const LONG_REASON: &str = "//! Why this file is long:";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its test module.
fn code_of(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else if let Some(i) = l.find(" //") {
                &l[..i]
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expand `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let body = &tree[open + 1..tree.rfind('}').unwrap()];
        let base = join(prefix, head);
        let (mut depth, mut start) = (0, 0);
        for (i, ch) in body.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &body[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &body[start..], out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap().trim();
        out.push(join(prefix, path));
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// Every path the code names that may point into the crate.
fn paths_of(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    // `use` declarations start a line; their tree may span several.
    for (at, line) in code
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain([0])
        .map(|i| (i, &code[i..]))
    {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(tree) = t.strip_prefix("use ") {
            let end = tree.find(';').unwrap_or(tree.len());
            expand("", &tree[..end], &mut out);
        }
        let _ = at;
    }
    // Inline paths (`crate::x::f()`, `super::y`, `child::z`), wherever they stand.
    let bytes: Vec<char> = code.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < bytes.len() {
        let starts = (ident(bytes[i]) && !bytes[i].is_ascii_digit())
            && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == ':'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len() && (ident(bytes[j]) || bytes[j] == ':') {
            j += 1;
        }
        let token: String = bytes[i..j].iter().collect();
        if token.contains("::") {
            out.push(token.trim_end_matches(':').to_string());
        }
        i = j;
    }
    out
}

/// The deepest known module a path from module `from` names, if it is in the crate.
fn resolve(from: &str, path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    match segs.first().copied() {
        Some("crate") => {
            base.clear();
            segs.remove(0);
        }
        Some("self") => {
            segs.remove(0);
        }
        Some("super") => {
            while segs.first() == Some(&"super") {
                segs.remove(0);
                base.pop();
            }
        }
        Some(first) => {
            // A bare path is relative only when it starts with a child module.
            if !modules.contains(&join(from, first)) {
                return None;
            }
        }
        None => return None,
    }
    let mut best = None;
    let mut cur = base.join("::");
    for s in segs {
        cur = join(&cur, s);
        if modules.contains(&cur) {
            best = Some(cur.clone());
        }
    }
    best.or_else(|| Some(base.join("::")).filter(|b| !b.is_empty()))
}

fn sources() -> (PathBuf, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.starts_with(src.join("bin")) && !f.ends_with("lib.rs"));
    files.sort();
    (src, files)
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'g> {
        g: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(t: &mut T<'g>, v: &'g str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let (src, files) = sources();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        let code = code_of(&fs::read_to_string(f).unwrap());
        let deps = graph.entry(from.clone()).or_default();
        for p in paths_of(&code) {
            if let Some(to) = resolve(&from, &p, &modules) {
                if to != from {
                    deps.insert(to);
                }
            }
        }
    }
    let found = cycles(&graph);
    let explain: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            edges.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", explain.join("\n"));
}

/// README.md's code map: each top-level module and what it may import.
const MAP: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("util", &["error"]),
    ("names", &["error"]),
    ("pg", &["error", "util", "names"]),
    ("crypto", &["error", "util"]),
    ("codec", &["error", "crypto"]),
    ("wal", &["error", "names"]),
    ("storage", &["error", "util", "names", "crypto", "codec"]),
    (
        "config",
        &["error", "util", "names", "crypto", "codec", "storage"],
    ),
    (
        "repo",
        &[
            "error", "util", "names", "crypto", "codec", "wal", "storage", "config",
        ],
    ),
    (
        "archive",
        &[
            "error", "util", "names", "codec", "wal", "storage", "config", "repo",
        ],
    ),
    (
        "backup",
        &[
            "error", "util", "names", "pg", "codec", "wal", "storage", "config", "repo", "archive",
        ],
    ),
    (
        "stream",
        &[
            "error", "util", "names", "pg", "codec", "wal", "storage", "config", "repo", "archive",
        ],
    ),
    (
        "restore",
        &[
            "error", "util", "names", "pg", "codec", "wal", "storage", "config", "repo", "archive",
            "stream",
        ],
    ),
    (
        "catalog",
        &[
            "error", "util", "names", "pg", "crypto", "codec", "wal", "storage", "config", "repo",
            "archive", "stream",
        ],
    ),
    ("cli", &["error", "util", "config", "restore"]),
];

#[test]
fn folders_import_only_what_the_code_map_allows() {
    let (src, files) = sources();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let map: BTreeMap<&str, &[&str]> = MAP.iter().copied().collect();
    let mut wrong = Vec::new();
    for f in &files {
        let from = module_of(&src, f);
        let top = from.split("::").next().unwrap().to_string();
        let Some(allowed) = map.get(top.as_str()) else {
            wrong.push(format!(
                "{top} is not in the code map (README.md and MAP here)"
            ));
            continue;
        };
        let code = code_of(&fs::read_to_string(f).unwrap());
        for p in paths_of(&code) {
            // Items the crate root re-exports: the error type and the log macros.
            let root_item = p
                .strip_prefix("crate::")
                .map(|rest| rest.split("::").next().unwrap());
            let to = match root_item {
                Some("Error" | "ErrorKind" | "Result") => "error".to_string(),
                Some(m) if m.starts_with("log_") => "util".to_string(),
                _ => match resolve(&from, &p, &modules) {
                    Some(m) => m.split("::").next().unwrap().to_string(),
                    None => continue,
                },
            };
            if to != top && !allowed.contains(&to.as_str()) {
                wrong.push(format!("{from} imports {to} ({p})"));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports outside the code map:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn long_files_say_why() {
    let (src, files) = sources();
    let mut long = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        let n = text.lines().count();
        let header: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
        if n > LONG_FILE && !header.iter().any(|l| l.starts_with(LONG_REASON)) {
            long.push(format!(
                "{} ({n} lines)",
                f.strip_prefix(&src).unwrap().display()
            ));
        }
    }
    assert!(
        long.is_empty(),
        "files over {LONG_FILE} lines with no '{LONG_REASON}' line in their header: {}",
        long.join(", ")
    );
}

#[test]
fn the_checker_sees_a_cycle() {
    // Guard the guard: a two-module cycle written the ways the code writes imports.
    let modules: BTreeSet<String> = ["a", "a::b", "c"].iter().map(|s| s.to_string()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let a = "use crate::c::{self, Thing};\nfn f() { b::g() }\n// crate::nothing\n";
    let c = "use crate::{a::b::X, util};\n";
    let b = "fn g() { super::super::c::h() }\n";
    for (m, code) in [("a", a), ("c", c), ("a::b", b)] {
        for p in paths_of(&code_of(code)) {
            if let Some(to) = resolve(m, &p, &modules) {
                if to != m {
                    graph.entry(m.to_string()).or_default().insert(to);
                }
            }
        }
    }
    assert_eq!(
        graph["a"],
        ["a::b", "c"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(graph["a::b"], ["c"].iter().map(|s| s.to_string()).collect());
    assert_eq!(
        cycles(&graph),
        vec![vec!["a::b".to_string(), "c".to_string()]]
    );
}
