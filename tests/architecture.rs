//! The shape of the code (DESIGN.md, "Shape of the code"), kept by a test
//! rather than by memory: the two backends stand side by side on the model
//! description, neither importing the other.
//!
//! - Nothing under `src/model/` (the GPU pass) names `crate::reference`.
//! - Nothing under `src/reference/` (the CPU pass) names `crate::model`,
//!   `crate::ops`, `crate::device` or `crate::kernels`.
//! - Nothing under `src/spec/` or `src/pass/` (the model description and the
//!   pass's inputs, outputs and records, which both backends import) names
//!   either backend or the GPU layers under them.
//!
//! The sources are read as text with comments, strings and character
//! literals blanked out (documentation may link to the other backend; code
//! may not). A path counts where it starts with `crate::` (also inside
//! `use crate::{...}` groups, at any depth of nesting) or climbs out of the
//! backend with `super::` (resolved against the file's module path); a glob
//! import of the crate root (`use crate::*`, or `super::*` reaching it) is a
//! violation too, since it would bring every top-level module into scope.

use std::path::{Path, PathBuf};

/// A rule: files under `dir` (relative to `src/`) must not name the
/// top-level modules in `forbidden`.
struct Rule {
    dir: &'static str,
    forbidden: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        dir: "model",
        forbidden: &["reference"],
        why: "the GPU pass must not import the CPU reference (they meet only in tests)",
    },
    Rule {
        dir: "reference",
        forbidden: &["model", "ops", "device", "kernels"],
        why: "the CPU reference must not import the GPU pass or the GPU layers under it",
    },
    Rule {
        dir: "spec",
        forbidden: &["reference", "model", "ops", "device", "kernels", "pass"],
        why: "the model description stands under both backends and the pass's types",
    },
    Rule {
        dir: "pass",
        forbidden: &["reference", "model", "ops", "device", "kernels"],
        why: "the pass's inputs, outputs and records stand under both backends",
    },
];

#[test]
fn backends_stand_side_by_side() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut checked = 0;
    for rule in RULES {
        let dir = src.join(rule.dir);
        assert!(dir.is_dir(), "src/{} is missing", rule.dir);
        for file in rust_files(&dir) {
            checked += 1;
            let text = std::fs::read_to_string(&file).expect("read a source file");
            let module = module_path(&src, &file);
            for (line, path) in named_modules(&blank_non_code(&text), &module) {
                let top = path.first().map(String::as_str);
                let hit = match top {
                    // A glob of the crate root reaches every module.
                    None => Some("the crate root (a glob import)".to_string()),
                    Some(t) if rule.forbidden.contains(&t) => Some(format!("crate::{t}")),
                    Some(_) => None,
                };
                if let Some(what) = hit {
                    violations.push(format!(
                        "src/{}:{line}: names {what}: {}",
                        file.strip_prefix(&src).unwrap().display(),
                        rule.why
                    ));
                }
            }
        }
    }
    violations.dedup();
    assert!(checked > 10, "only {checked} source files found under src/");
    assert!(
        violations.is_empty(),
        "the backends must stand side by side (DESIGN.md, \"Shape of the code\"):\n{}",
        violations.join("\n")
    );
}

/// The checker itself, on planted snippets (the rules above only ever see
/// clean sources once the tree is clean).
#[test]
fn checker_finds_paths_groups_and_super() {
    let module = ["reference".to_string(), "model".to_string()];
    let found = |code: &str| -> Vec<Vec<String>> {
        named_modules(&blank_non_code(code), &module)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    };
    let top = |code: &str| -> Vec<Option<String>> {
        found(code)
            .into_iter()
            .map(|p| p.first().cloned())
            .collect()
    };
    let s = |x: &str| Some(x.to_string());
    assert_eq!(top("use crate::model::GpuModel;"), [s("model")]);
    assert_eq!(top("let x = crate :: ops :: compact(a);"), [s("ops")]);
    assert_eq!(
        top("use crate::{spec::Weights, device::{Device, ForeignSlice}, Error};"),
        [s("spec"), s("device"), s("device"), s("Error")]
    );
    assert_eq!(
        top("use crate::{\n    pass::{self, Packed},\n    model,\n};"),
        [s("pass"), s("pass"), s("model")]
    );
    // src/reference/model.rs: super is `reference`, super::super the root.
    assert_eq!(top("use super::ops::gelu;"), [s("reference")]);
    assert_eq!(top("use super::super::ops::gelu;"), [s("ops")]);
    assert_eq!(
        top("use super::{super::device::Device, pruner};"),
        [s("device"), s("reference")]
    );
    assert_eq!(top("use crate::*;"), [None]);
    assert_eq!(top("use super::super::*;"), [None]);
    // Comments, strings and character literals are not code.
    assert!(found("// crate::model\n/* crate::ops /* nested */ crate::device */").is_empty());
    assert!(found("/// [`crate::model::GpuModel`]\nfn f() {}").is_empty());
    assert!(found(r##"let s = "crate::model"; let r = r#"crate::ops "quoted""#;"##).is_empty());
    assert!(found("let c = '\"'; let q = \"crate::ops\"; fn f<'a>(x: &'a u8) {}").is_empty());
    assert_eq!(
        top("let c = '\\''; crate::device::Device::open(0)"),
        [s("device")]
    );
    // Inline modules: `super` in `mod tests` is the file's module.
    assert_eq!(
        top("mod tests {\n    use super::*;\n}\nuse super::x;"),
        [s("reference"), s("reference")]
    );
    assert_eq!(
        found("mod tests { use super::*; }"),
        [vec!["reference".to_string(), "model".to_string()]]
    );
    // `self::` and plain local paths stay inside the module.
    assert!(found("use self::ops::gelu; use model::x;").is_empty());
    assert_eq!(
        module_path(Path::new("/s"), Path::new("/s/model/forward/mod.rs")),
        ["model", "forward"]
    );
    assert_eq!(
        module_path(Path::new("/s"), Path::new("/s/reference/model.rs")),
        ["reference", "model"]
    );
}

/// Every `.rs` file below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read a source folder") {
            let p = entry.expect("a folder entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module a file defines: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("a file under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// `text` with comments, string literals and character literals replaced by
/// spaces (newlines kept, so line numbers still count).
fn blank_non_code(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0
                || !is_ident(c[i - 1])
                || (c[i - 1] == 'b' && (i < 2 || !is_ident(c[i - 2]))))
        {
            // A raw string r"..." or r#"..."#.
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
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(c[i..j.min(c.len())].iter().map(|&ch| blank(ch)));
            i = j;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(c.len());
            out.extend(c[i..end].iter().map(|&ch| blank(ch)));
            i = end;
        } else if c[i] == '\'' {
            // A character literal ('x', '\n', '\''), else a lifetime or label.
            let end = if next == Some('\\') {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                Some(j + 1)
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    let end = end.min(c.len());
                    out.extend(c[i..end].iter().map(|&ch| blank(ch)));
                    i = end;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// A token of the blanked code: an identifier, `::`, or one punctuation
/// character; with its line.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Sep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<(usize, Tok)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if is_ident(ch) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push((line, Tok::Ident(c[start..i].iter().collect())));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((line, Tok::Sep));
            i += 2;
        } else {
            out.push((line, Tok::Punct(ch)));
            i += 1;
        }
    }
    out
}

/// Every path of the code that starts at the crate root, as the crate-level
/// segments it names (`crate::a::b` -> `[a, b]`; `crate::*` -> `[]`), with
/// its line: paths starting with `crate`, and `super` chains resolved
/// against `module`, including every branch of `{...}` groups after them.
fn named_modules(code: &str, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    // Inline modules (`mod tests { ... }`): name and the brace depth outside.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].1 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(m) if m == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) =
                    (toks.get(i + 1).map(|t| &t.1), toks.get(i + 2).map(|t| &t.1))
                {
                    inline.push((name.clone(), depth));
                }
            }
            _ => {}
        }
        // A path starts at `crate` or `super` not preceded by `::`.
        let starts = matches!(&toks[i].1, Tok::Ident(s) if s == "crate" || s == "super")
            && (i == 0 || toks[i - 1].1 != Tok::Sep)
            && toks.get(i + 1).map(|t| &t.1) == Some(&Tok::Sep);
        if !starts {
            i += 1;
            continue;
        }
        let mut base: Vec<String> = module.to_vec();
        base.extend(inline.iter().map(|(n, _)| n.clone()));
        let mut j = i;
        if toks[j].1 == Tok::Ident("crate".into()) {
            base.clear();
            j += 2;
        } else {
            // Climb `super::super::...`.
            while toks.get(j).map(|t| &t.1) == Some(&Tok::Ident("super".into()))
                && toks.get(j + 1).map(|t| &t.1) == Some(&Tok::Sep)
            {
                base.pop();
                j += 2;
            }
        }
        j = walk(&toks, j, base, &mut out);
        i = j.max(i + 1);
    }
    out
}

/// Reads the rest of a path from `toks[j]` (after a `::`), appending every
/// complete path to `out`; returns the index after it.
fn walk(
    toks: &[(usize, Tok)],
    mut j: usize,
    mut base: Vec<String>,
    out: &mut Vec<(usize, Vec<String>)>,
) -> usize {
    let line = toks.get(j).map_or(0, |t| t.0);
    match toks.get(j).map(|t| &t.1) {
        Some(Tok::Ident(name)) => {
            if name == "super" {
                base.pop();
            } else if name != "self" {
                base.push(name.clone());
            }
            j += 1;
            if toks.get(j).map(|t| &t.1) == Some(&Tok::Sep) {
                return walk(toks, j + 1, base, out);
            }
            out.push((line, base));
            j
        }
        Some(Tok::Punct('*')) => {
            // A glob: of the crate root it names nothing in particular (and
            // everything); of a module, that module.
            out.push((line, base));
            j + 1
        }
        Some(Tok::Punct('{')) => {
            // A group: each comma-separated branch continues the path.
            j += 1;
            loop {
                match toks.get(j).map(|t| &t.1) {
                    None => return j,
                    Some(Tok::Punct('}')) => return j + 1,
                    Some(Tok::Punct(',')) => j += 1,
                    Some(_) => {
                        let before = j;
                        j = walk(toks, j, base.clone(), out);
                        // `x as y`: skip the alias.
                        if toks.get(j).map(|t| &t.1) == Some(&Tok::Ident("as".into())) {
                            j += 2;
                        }
                        if j == before {
                            j += 1;
                        }
                    }
                }
            }
        }
        _ => {
            out.push((line, base));
            j
        }
    }
}
