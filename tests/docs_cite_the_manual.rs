//! Users never see the project's internal design document, so code and docs
//! cite the in-crate manual (`keywheel::manual`) instead. This test keeps it
//! that way: no source, test, example or Markdown file of the workspace may
//! cite the design document by section.

use std::path::{Path, PathBuf};

/// The citation form that must not come back, assembled so this file does
/// not contain it.
fn forbidden() -> String {
    ["DESIGN", " \u{a7}"].concat()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "target" | ".git" | "corpus" | "artifacts") {
                collect(&path, out);
            }
        } else if name.ends_with(".rs") || name.ends_with(".md") || name.ends_with(".toml") || name.ends_with(".sh") {
            out.push(path);
        }
    }
}

#[test]
fn no_file_cites_the_design_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "crates", "tests", "examples", "benches", "fuzz", "scripts"] {
        collect(&root.join(dir), &mut files);
    }
    files.push(root.join("README.md"));
    files.push(root.join("CHANGELOG.md"));
    assert!(files.len() > 50, "the walk found only {} files: wrong root?", files.len());
    let needle = forbidden();
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if line.contains(&needle) {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "cite keywheel_core::manual instead:\n{}", offenders.join("\n"));
}
