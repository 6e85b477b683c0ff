//! Tidy: the code base keeps its shape. Every source file under `src/` and
//! `mount-helper/` opens with a `//!` header saying what it is for, stays
//! under `MAX_FILE_LINES` lines, has no function over `MAX_FN_LINES` lines,
//! and the crate's top-level modules import each other without cycles.
//!
//! The scanner is deliberately simple (comments, strings and char literals
//! blanked out, braces matched); it needs no parser and no dependencies.
//! Exceptions live in `ALLOWLIST`, each with its reason; an entry that no
//! longer matches anything fails the test too, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Longest source file, in lines (test modules inside the file count).
const MAX_FILE_LINES: usize = 600;
/// Longest function, in lines from the `fn` line to its closing brace.
const MAX_FN_LINES: usize = 80;

/// Known exceptions. Keys: `path` (file too long), `path (header)`,
/// `path::fn_name` (function too long), `cycle: a -> b` (an import edge
/// that closes a cycle). A key ending in `*` matches every key it prefixes.
const ALLOWLIST: &[(&str, &str)] = &[];

/// One broken rule.
struct Violation {
    /// What an allowlist entry names to excuse it.
    key: String,
    /// What went wrong, for the failure message.
    message: String,
}

#[test]
fn tidy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let violations = check_tree(root);
    let mut used = BTreeSet::new();
    let mut report = String::new();
    for v in &violations {
        match ALLOWLIST
            .iter()
            .position(|(entry, _)| allows(entry, &v.key))
        {
            Some(i) => {
                used.insert(i);
            }
            None => writeln!(report, "  {}", v.message).unwrap(),
        }
    }
    for (i, (entry, _)) in ALLOWLIST.iter().enumerate() {
        if !used.contains(&i) {
            writeln!(
                report,
                "  allowlist entry `{entry}` matches nothing: remove it"
            )
            .unwrap();
        }
    }
    assert!(
        report.is_empty(),
        "tidy: the code base lost its shape (files <= {MAX_FILE_LINES} lines, \
         fns <= {MAX_FN_LINES} lines, a //! header per file, no import cycles \
         between top-level modules; exceptions in tests/it/tidy.rs ALLOWLIST):\n{report}"
    );
}

/// Whether allowlist `entry` excuses the violation with `key`.
fn allows(entry: &str, key: &str) -> bool {
    match entry.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == entry,
    }
}

/// Every violation in the crate under `root`.
fn check_tree(root: &Path) -> Vec<Violation> {
    let mut files = Vec::new();
    for dir in ["src", "mount-helper"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "tidy: no sources under {}",
        root.display()
    );
    let mut violations = Vec::new();
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = fs::read_to_string(file).unwrap();
        let code = blank_comments_and_literals(&text);
        check_file(&rel, &text, &code, &mut violations);
        if let Some(module) = top_level_module(&rel) {
            imports
                .entry(module)
                .or_default()
                .extend(crate_references(&code));
        }
    }
    check_cycles(&imports, &mut violations);
    violations
}

/// The `.rs` files under `dir`, recursively (build output skipped).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Header, file length and function length of one file.
fn check_file(rel: &str, text: &str, code: &str, out: &mut Vec<Violation>) {
    if !text.trim_start().starts_with("//!") {
        out.push(Violation {
            key: format!("{rel} (header)"),
            message: format!("{rel}: no `//!` module header saying what the file is for"),
        });
    }
    let lines = text.lines().count();
    if lines > MAX_FILE_LINES {
        out.push(Violation {
            key: rel.to_string(),
            message: format!("{rel}: {lines} lines (max {MAX_FILE_LINES}); split it by duty"),
        });
    }
    for f in functions(code) {
        if f.lines > MAX_FN_LINES {
            out.push(Violation {
                key: format!("{rel}::{}", f.name),
                message: format!(
                    "{rel}:{}: fn {} is {} lines (max {MAX_FN_LINES}); extract helpers",
                    f.line, f.name, f.lines
                ),
            });
        }
    }
}

/// The source with comments, string and char literals replaced by spaces
/// (newlines kept), so braces and keywords inside them do not count.
fn blank_comments_and_literals(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |j: usize| c.get(j).copied().unwrap_or('\0');
        let end = if c[i] == '/' && at(i + 1) == '/' {
            (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len())
        } else if c[i] == '/' && at(i + 1) == '*' {
            block_comment_end(&c, i)
        } else if c[i] == 'r'
            && (at(i + 1) == '"' || at(i + 1) == '#')
            && !ident_char(at(i.wrapping_sub(1)))
        {
            raw_string_end(&c, i).unwrap_or(i + 1)
        } else if c[i] == '"' {
            quoted_end(&c, i, '"')
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            quoted_end(&c, i, '\'')
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        for &ch in &c[i..end.min(c.len())] {
            blank(&mut out, ch);
        }
        i = end;
    }
    out
}

/// Index just past the `*/` closing the (nestable) block comment at `start`.
fn block_comment_end(c: &[char], start: usize) -> usize {
    let (mut depth, mut j) = (0, start);
    while j + 1 < c.len() {
        if c[j] == '/' && c[j + 1] == '*' {
            depth += 1;
            j += 2;
        } else if c[j] == '*' && c[j + 1] == '/' {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    c.len()
}

/// Index just past the raw string starting with the `r` at `start`, if it is one.
fn raw_string_end(c: &[char], start: usize) -> Option<usize> {
    let hashes = c[start + 1..].iter().take_while(|&&ch| ch == '#').count();
    let open = start + 1 + hashes;
    if c.get(open) != Some(&'"') {
        return None;
    }
    let mut j = open + 1;
    while j < c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&ch| ch == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// Index just past the literal opened by the quote at `start`.
fn quoted_end(c: &[char], start: usize, quote: char) -> usize {
    let mut j = start + 1;
    while j < c.len() {
        match c[j] {
            '\\' => j += 2,
            ch if ch == quote => return j + 1,
            _ => j += 1,
        }
    }
    c.len()
}

fn ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// A function with a body.
struct Function {
    name: String,
    /// 1-based line of the `fn` keyword.
    line: usize,
    /// Lines from the `fn` line to the closing brace, both included.
    lines: usize,
}

/// Every function with a body in blanked source `code`.
fn functions(code: &str) -> Vec<Function> {
    let c: Vec<char> = code.chars().collect();
    let line_of = |pos: usize| c[..pos].iter().filter(|&&ch| ch == '\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while i + 2 < c.len() {
        let keyword = c[i] == 'f'
            && c[i + 1] == 'n'
            && !ident_char(c[i + 2])
            && (i == 0 || !ident_char(c[i - 1]));
        if !keyword {
            i += 1;
            continue;
        }
        let name_start = (i + 2..c.len())
            .find(|&j| !c[j].is_whitespace())
            .unwrap_or(c.len());
        let name: String = c[name_start..]
            .iter()
            .take_while(|&&ch| ident_char(ch))
            .collect();
        i += 2;
        if name.is_empty() {
            continue; // a `fn(..)` pointer type
        }
        if let Some(close) = body_end(&c, name_start) {
            let line = line_of(i);
            let lines = line_of(close) - line + 1;
            found.push(Function { name, line, lines });
        }
    }
    found
}

/// The closing brace of the body of the function whose signature starts
/// at `from`, or `None` for a declaration without a body.
fn body_end(c: &[char], from: usize) -> Option<usize> {
    let mut nesting = 0i32; // () and []
    let mut open = None;
    for (j, &ch) in c.iter().enumerate().skip(from) {
        match ch {
            '(' | '[' => nesting += 1,
            ')' | ']' => nesting -= 1,
            ';' if nesting == 0 => return None,
            '{' if nesting == 0 => {
                open = Some(j);
                break;
            }
            _ => {}
        }
    }
    let open = open?;
    let mut depth = 0;
    for (j, &ch) in c.iter().enumerate().skip(open) {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// The top-level module `rel` belongs to (`src/<name>.rs` or
/// `src/<name>/...`); `None` for the crate roots and the mount helper.
fn top_level_module(rel: &str) -> Option<String> {
    let rest = rel.strip_prefix("src/")?;
    let name = match rest.split_once('/') {
        Some((dir, _)) => dir,
        None => rest.strip_suffix(".rs")?,
    };
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The top-level modules named by `crate::X` paths in blanked `code`,
/// including each item of a `crate::{X, Y::Z}` group.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(pos) = rest.find("crate::") {
        let before = rest[..pos].chars().next_back();
        rest = &rest[pos + "crate::".len()..];
        if before.is_some_and(|ch| ident_char(ch) || ch == ':') {
            continue; // `$crate::` or `foo::crate::` is not ours
        }
        let tail = rest.trim_start();
        if let Some(group) = tail.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    ch if item_start && ident_char(ch) => {
                        let ident: String =
                            group[j..].chars().take_while(|&c| ident_char(c)).collect();
                        names.insert(ident);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let ident: String = tail.chars().take_while(|&c| ident_char(c)).collect();
            names.insert(ident);
        }
    }
    names
}

/// Cycles among the top-level modules in `imports` (module -> modules it
/// names): every edge on a cycle once the allowlisted edges are taken out,
/// printed with the cycle it closes. Allowlisted edges that do close a
/// cycle in the full graph are reported too (and so marked as used).
fn check_cycles(imports: &BTreeMap<String, BTreeSet<String>>, out: &mut Vec<Violation>) {
    let edge_key = |a: &str, b: &str| format!("cycle: {a} -> {b}");
    let excused = |a: &str, b: &str| ALLOWLIST.iter().any(|(e, _)| allows(e, &edge_key(a, b)));
    let full: BTreeMap<&str, Vec<&str>> = imports
        .iter()
        .map(|(module, refs)| {
            let edges = refs
                .iter()
                .filter(|r| *r != module && imports.contains_key(*r))
                .map(String::as_str)
                .collect();
            (module.as_str(), edges)
        })
        .collect();
    let mut strict = full.clone();
    for (a, targets) in strict.iter_mut() {
        targets.retain(|b| !excused(a, b));
    }
    for (a, b) in cycle_edges(&full) {
        let graph = if excused(a, b) { &full } else { &strict };
        if !excused(a, b) && path(&strict, b, a).is_none() {
            continue;
        }
        let cycle = path(graph, b, a)
            .map(|p| p.join(" -> "))
            .unwrap_or_default();
        out.push(Violation {
            key: edge_key(a, b),
            message: format!("import cycle: {a} -> {cycle}  (`crate::{b}` used in {a})"),
        });
    }
}

/// The edges that lie on some cycle: `a -> b` where `a` is reachable from `b`.
fn cycle_edges<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<(&'a str, &'a str)> {
    let mut edges = Vec::new();
    for (&a, targets) in graph {
        for &b in targets {
            if path(graph, b, a).is_some() {
                edges.push((a, b));
            }
        }
    }
    edges
}

/// A shortest path `from` .. `to` in `graph` (breadth first).
fn path<'a>(
    graph: &BTreeMap<&'a str, Vec<&'a str>>,
    from: &'a str,
    to: &'a str,
) -> Option<Vec<&'a str>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    while let Some(node) = queue.pop_front() {
        if node == to {
            let mut p = vec![to];
            while let Some(&prev) = parent.get(p.last().unwrap()) {
                p.push(prev);
            }
            p.reverse();
            return Some(p);
        }
        for &next in graph.get(node).into_iter().flatten() {
            if seen.insert(next) {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

#[test]
fn scanner_counts_function_bodies() {
    let code = blank_comments_and_literals(
        "fn a(x: [u8; 2]) -> u8 {\n    let s = \"}\"; // }\n    let c = '}';\n    x[0]\n}\n\
         trait T { fn b(&self); }\nfn c<'a>(s: &'a str) { let f: fn(u8) = |_| {}; }\n\
         const R: &str = r#\"fn d() {\"#;\n",
    );
    let fns: Vec<(String, usize)> = functions(&code)
        .into_iter()
        .map(|f| (f.name, f.lines))
        .collect();
    assert_eq!(fns, vec![("a".to_string(), 5), ("c".to_string(), 1)]);
}

#[test]
fn scanner_finds_crate_references() {
    let code = "use crate::{a::X, b, c::{d, e}};\nuse crate::f::G;\nlet _ = crate::h::i();\n";
    let refs: Vec<String> = crate_references(code).into_iter().collect();
    assert_eq!(refs, ["a", "b", "c", "f", "h"]);
}
