//! The layering that `src/lib.rs` documents, enforced. Every `crate::…` or `super::…` path in
//! `src/` that reaches another top-level module must reach one of a lower layer, and only `cli`
//! may use clap. The layers are read from the `text` block under "Modules, in dependency order"
//! in lib.rs, so the documentation and the check cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// What lib.rs says: each top-level module's layer, and the items it re-exports at the root.
struct Layers {
    layer: BTreeMap<String, usize>,
    /// `pub use error::{Error, Result}` makes `crate::Error` a path into `error`.
    reexports: BTreeMap<String, String>,
}

impl Layers {
    fn from_lib(lib: &str) -> Self {
        let mut lines = lib.lines().map(|l| l.trim_start_matches("//!").trim());
        lines
            .by_ref()
            .find(|l| *l == "# Modules, in dependency order")
            .expect("lib.rs has no \"# Modules, in dependency order\" section");
        lines
            .by_ref()
            .find(|l| *l == "```text")
            .expect("the module section of lib.rs has no ```text block");
        let mut layer = BTreeMap::new();
        for (rank, line) in lines.take_while(|l| *l != "```").enumerate() {
            let (names, _what) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("layer line {line:?} is not `names: description`"));
            for name in names.split(',').map(str::trim) {
                assert!(
                    layer.insert(name.to_owned(), rank).is_none(),
                    "{name} is placed twice"
                );
            }
        }
        let mut reexports = BTreeMap::new();
        for line in lib
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub use "))
        {
            let (module, items) = line.trim_end_matches(';').split_once("::").unwrap();
            for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
                reexports.insert(item.trim().to_owned(), module.to_owned());
            }
        }
        Layers { layer, reexports }
    }

    /// The top-level module a root item belongs to.
    fn module_of(&self, item: &str) -> Option<&str> {
        match self.layer.get_key_value(item) {
            Some((module, _)) => Some(module),
            None => self.reexports.get(item).map(String::as_str),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Rust source as identifiers, `::` and punctuation with their line numbers; comments and
/// string, char and number literals are dropped (so `"crate::x"` in a message is no import).
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    // Skips a quoted literal starting at the opening quote `i`; returns the index after it.
    let skip_quoted = |mut i: usize, quote: char, line: &mut usize| {
        i += 1;
        while i < c.len() && c[i] != quote {
            if c[i] == '\\' {
                i += 1;
            }
            if at(i) == '\n' {
                *line += 1;
            }
            i += 1;
        }
        i + 1
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(at(i) == '\n');
                    i += 1;
                }
                assert!(i <= c.len(), "unterminated block comment");
            }
        } else if ch == '"' {
            i = skip_quoted(i, '"', &mut line);
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a, 'static).
            if at(i + 1) == '\\' || at(i + 2) == '\'' {
                i = skip_quoted(i, '\'', &mut line);
            } else {
                i += 1;
            }
        } else if ch.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw = matches!(word.as_str(), "r" | "br" | "cr") && matches!(at(i), '"' | '#');
            if raw && (at(i) == '"' || !(at(i + 1).is_alphabetic() || at(i + 1) == '_')) {
                // r"…", r#"…"#: ends at a quote followed by as many #s as opened it.
                let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
                i += hashes + 1;
                while !(at(i) == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                    assert!(i < c.len(), "unterminated raw string");
                    line += usize::from(at(i) == '\n');
                    i += 1;
                }
                i += hashes + 1;
            } else if matches!(word.as_str(), "b" | "c") && matches!(at(i), '"' | '\'') {
                i = skip_quoted(i, at(i), &mut line);
            } else {
                out.push((Tok::Ident(word), line));
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// One path from a file into a top-level module.
#[derive(Debug, PartialEq)]
struct Use {
    line: usize,
    /// The first segment below the crate root (`model` in `crate::model::Foo`).
    head: String,
}

fn is_ident(t: Option<&(Tok, usize)>, word: &str) -> bool {
    matches!(t, Some((Tok::Ident(w), _)) if w == word)
}

/// The first segment of each path a `use` group or path continues with at `j`:
/// `model` for `model::Foo`, `model` and `data` for `{model::Foo, data}`.
fn heads(toks: &[(Tok, usize)], j: usize) -> Vec<Use> {
    match toks.get(j) {
        Some((Tok::Ident(w), line)) => vec![Use {
            line: *line,
            head: w.clone(),
        }],
        Some((Tok::Punct('{'), _)) => {
            let (mut depth, mut item_start, mut out) = (0, false, Vec::new());
            for (t, line) in &toks[j..] {
                match t {
                    Tok::Punct('{') => {
                        depth += 1;
                        item_start = depth == 1;
                        continue;
                    }
                    Tok::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Punct(',') if depth == 1 => {
                        item_start = true;
                        continue;
                    }
                    Tok::Ident(w) if depth == 1 && item_start => out.push(Use {
                        line: *line,
                        head: w.clone(),
                    }),
                    _ => {}
                }
                item_start = false;
            }
            out
        }
        _ => vec![],
    }
}

/// Every path in `src` (the file of module `module`, e.g. `["model", "gguf"]`) that leaves its
/// top-level module through the crate root: `crate::x`, `crate::{x, y}`, or enough `super`s.
fn root_paths(module: &[String], src: &str) -> Vec<Use> {
    let toks = lex(src);
    let mut inline: Vec<(String, usize)> = Vec::new(); // inline `mod name {` and its depth
    let (mut depth, mut out) = (0usize, Vec::new());
    for k in 0..toks.len() {
        match &toks[k].0 {
            Tok::Punct('{') => {
                depth += 1;
                if k >= 2 && is_ident(toks.get(k - 2), "mod") {
                    if let Tok::Ident(name) = &toks[k - 1].0 {
                        inline.push((name.clone(), depth));
                    }
                }
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|m| m.1 == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            Tok::Ident(w) if w == "crate" || w == "super" => {
                let starts_path = k == 0 || toks[k - 1].0 != Tok::PathSep;
                if !starts_path || toks.get(k + 1).map(|t| &t.0) != Some(&Tok::PathSep) {
                    continue;
                }
                let mut j = k;
                let mut ups = 0;
                while is_ident(toks.get(j), "super")
                    && toks.get(j + 1).map(|t| &t.0) == Some(&Tok::PathSep)
                {
                    ups += 1;
                    j += 2;
                }
                if w == "crate" {
                    j += 2;
                }
                let here = module.len() + inline.len();
                assert!(
                    ups <= here,
                    "line {}: more `super`s than modules",
                    toks[k].1
                );
                // Fewer `super`s than the depth stay inside this top-level module.
                if w == "crate" || ups == here {
                    out.extend(heads(&toks, j));
                }
            }
            _ => {}
        }
    }
    out
}

/// Paths to clap, which belongs to the command line alone.
fn clap_lines(src: &str) -> Vec<usize> {
    let toks = lex(src);
    toks.windows(2)
        .filter(|w| w[0].0 == Tok::Ident("clap".into()) && w[1].0 == Tok::PathSep)
        .map(|w| w[0].1)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/model/gguf.rs` → `["model", "gguf"]`; `src/model/mod.rs` → `["model"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts
}

#[test]
fn imports_follow_the_documented_layers() {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    let layers = Layers::from_lib(&lib);
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("pub mod ").or(l.strip_prefix("mod "))
        })
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    let placed: BTreeSet<String> = layers.layer.keys().cloned().collect();
    assert_eq!(
        declared, placed,
        "the modules lib.rs declares and the ones its layer table places differ"
    );

    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    files.sort();
    let (mut violations, mut edges) = (Vec::new(), 0);
    for file in &files {
        let rel = file.strip_prefix(SRC).unwrap();
        // lib.rs is the root; main.rs is the binary, above every module.
        if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
            continue;
        }
        let module = module_path(rel);
        let from = &module[0];
        let from_layer = *layers
            .layer
            .get(from)
            .unwrap_or_else(|| panic!("{} is in no module lib.rs declares", rel.display()));
        let src = std::fs::read_to_string(file).unwrap();
        let shown = format!("src/{}", rel.display());
        for u in root_paths(&module, &src) {
            let Some(to) = layers.module_of(&u.head) else {
                violations.push(format!(
                    "{shown}:{}: crate::{} is no module lib.rs places",
                    u.line, u.head
                ));
                continue;
            };
            if to == from {
                continue;
            }
            edges += 1;
            if layers.layer[to] >= from_layer {
                violations.push(format!(
                    "{shown}:{}: {from} uses {to} (layer {} uses layer {}; see src/lib.rs)",
                    u.line, from_layer, layers.layer[to]
                ));
            }
        }
        if from != "cli" {
            for line in clap_lines(&src) {
                violations.push(format!("{shown}:{line}: {from} uses clap (only cli may)"));
            }
        }
    }
    assert!(
        edges > 100,
        "only {edges} cross-module paths found: is the scanner blind?"
    );
    assert!(
        violations.is_empty(),
        "imports against the layering of src/lib.rs:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_every_form_of_path() {
    let src = r####"
use crate::{model, data::tokenizer::Tokenizer};
use crate::{
    ops::{self, AttentionMask},
    Error,
};
// use crate::cli;
/* use crate::cli; /* nested */ crate::cli */
const S: &str = "crate::serve";
const R: &str = r#"crate::serve "quoted" "#;
fn f<'a>(x: &'a str) -> char {
    let _ = crate::eval::run(x);
    let _ = other::crate_like::x;
    '"'
}
mod tests {
    use super::*;
    use super::super::Sibling;
    use super::super::super::train::X;
    fn g() -> clap::Command {}
}
use super::super::sample;
"####;
    let module = ["data".to_owned(), "x".to_owned()];
    let found: Vec<(usize, String)> = root_paths(&module, src)
        .into_iter()
        .map(|u| (u.line, u.head))
        .collect();
    let want = [
        (2, "model"),
        (2, "data"),
        (4, "ops"),
        (5, "Error"),
        (12, "eval"),
        (19, "train"),
        (22, "sample"),
    ];
    let want: Vec<(usize, String)> = want.iter().map(|(l, h)| (*l, h.to_string())).collect();
    assert_eq!(found, want);
    assert_eq!(clap_lines(src), [20]);
}
