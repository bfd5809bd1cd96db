//! The README renders and stays in step with the code (issue 16, item 6):
//! every code fence of the Markdown files is closed, README fences carry an
//! info string (rustdoc runs a bare fence as Rust), no section heading hides
//! inside a code block, and the commands and names the README shows exist:
//! each `cargo test --test X`, `--example X`, `--bench X`, and each
//! `Error::X` / `SyncPolicy::X` it mentions.
//!
//! Not checked here: that the sample output of `sfs-dump` in the README is
//! what the tool prints. That belongs beside the tool's own tests (which run
//! its binary), and the tool is moving to its own package.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One fenced block: its opening line number (1-based) and info string.
#[derive(Debug)]
struct Fence {
    line: usize,
    info: String,
}

/// The fenced blocks of `text`, or what is wrong with its fences. Fences are
/// lines starting (after indentation) with three backticks; a closing fence
/// is bare.
fn fences(text: &str) -> Result<Vec<Fence>, String> {
    let mut out = Vec::new();
    let mut open: Option<Fence> = None;
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("```") else {
            if let Some(f) = &open
                && line.starts_with("## ")
            {
                return Err(format!(
                    "line {}: heading {line:?} is inside the code block opened on line {}",
                    i + 1,
                    f.line
                ));
            }
            continue;
        };
        let info = rest.trim();
        match open.take() {
            None => {
                open = Some(Fence {
                    line: i + 1,
                    info: info.to_string(),
                })
            }
            Some(f) if info.is_empty() => out.push(f),
            Some(f) => {
                return Err(format!(
                    "line {}: fence ```{info} opens a block inside the block opened on line {} \
                     (a closing fence is bare)",
                    i + 1,
                    f.line
                ));
            }
        }
    }
    match open {
        Some(f) => Err(format!(
            "the code block opened on line {} is never closed",
            f.line
        )),
        None => Ok(out),
    }
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [root().to_path_buf(), root().join("fuzz")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_code_fence_in_the_markdown_files_is_closed() {
    let files = markdown_files();
    assert!(files.iter().any(|f| f.ends_with("README.md")), "{files:?}");
    for f in files {
        let text = read(&f);
        let blocks = fences(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for b in blocks {
            let kind = b.info.split([' ', ',']).next().unwrap_or("");
            assert!(
                ["", "rust", "sh", "text", "hex", "json", "toml", "console"].contains(&kind),
                "{}:{}: unknown info string {:?}",
                f.display(),
                b.line,
                b.info
            );
        }
    }
}

#[test]
fn readme_fences_say_their_language_and_its_sections_are_outside_code() {
    let text = read(&root().join("README.md"));
    for b in fences(&text).unwrap() {
        assert!(
            !b.info.is_empty(),
            "README.md:{}: a bare fence is run by rustdoc as Rust; say ```text, ```sh or ```rust",
            b.line
        );
    }
    // The sections that an unclosed fence once swallowed render as headings.
    let headings: Vec<&str> = text.lines().filter(|l| l.starts_with("## ")).collect();
    for h in [
        "## Guarantees",
        "## Limits",
        "## How it works",
        "## Performance",
    ] {
        assert!(headings.contains(&h), "{h} missing from {headings:?}");
    }
}

#[test]
fn the_fence_checker_finds_what_broke_the_readme() {
    assert!(fences("```rust\nx\n```\n").is_ok());
    let e = fences("```text\n$ sfs-dump x\n\n## Guarantees\n").unwrap_err();
    assert!(e.contains("inside the code block opened on line 1"), "{e}");
    let e = fences("```text\nx\n").unwrap_err();
    assert!(e.contains("never closed"), "{e}");
    let e = fences("```text\nx\n```sh\n").unwrap_err();
    assert!(e.contains("closing fence is bare"), "{e}");
}

/// The words after `marker` up to a character that cannot be in a name.
fn names_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .map(|(i, _)| {
            let rest = &text[i + marker.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// A target file `dir/name.rs` in this package or a package beside it.
fn target_exists(dir: &str, name: &str) -> bool {
    let here = root().join(dir).join(format!("{name}.rs"));
    let nested = root().join(dir).join(name).join("main.rs");
    if here.exists() || nested.exists() {
        return true;
    }
    std::fs::read_dir(root()).unwrap().any(|e| {
        let p = e.unwrap().path();
        p.join(dir).join(format!("{name}.rs")).exists()
    })
}

#[test]
fn the_commands_the_readme_shows_name_targets_that_exist() {
    let text = read(&root().join("README.md"));
    let mut checked = 0;
    for (marker, dir) in [
        ("cargo test --test ", "tests"),
        ("--example ", "examples"),
        ("cargo bench --bench ", "benches"),
    ] {
        for name in names_after(&text, marker) {
            assert!(
                target_exists(dir, name),
                "README shows `{marker}{name}`, but there is no {dir}/{name}.rs"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} commands found: is the parser still right?"
    );
}

#[test]
fn the_error_variants_and_sync_policies_the_readme_names_exist() {
    let text = read(&root().join("README.md"));
    let error_rs = read(&root().join("src/error.rs"));
    let options_rs = read(&root().join("src/options.rs"));
    let errors = names_after(&text, "Error::");
    assert!(errors.len() >= 4, "{errors:?}");
    for v in errors {
        assert!(
            error_rs.contains(&format!("    {v} {{")),
            "README names Error::{v}, which src/error.rs does not declare"
        );
    }
    for p in names_after(&text, "SyncPolicy::") {
        assert!(
            options_rs.contains(&format!("    {p},")) || options_rs.contains(&format!("    {p}(")),
            "README names SyncPolicy::{p}, which src/options.rs does not declare"
        );
    }
}
