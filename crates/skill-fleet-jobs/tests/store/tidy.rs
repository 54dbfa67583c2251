//! House rules checked by plain `cargo test`: every module says what it is in a `//!` line.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples"] {
        rust_files(&root.join(dir), &mut files);
    }
    let lib = root.join("src/lib.rs");
    let missing: Vec<_> = files
        .iter()
        .filter(|file| **file != lib)
        .filter(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            !text.starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` line: {missing:?}"
    );
    let lib_text = std::fs::read_to_string(&lib).unwrap();
    assert!(lib_text.contains("#![doc = include_str!(\"../README.md\")]"));
    assert!(lib_text.contains("#![deny(missing_docs)]"));
}

#[test]
fn no_unwrap_or_expect_in_library_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests at the end of a file may unwrap.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for needle in [".unwrap()", ".expect("] {
            assert!(!code.contains(needle), "{} uses {needle}", file.display());
        }
    }
}
