//! Fuzzing without a cluster: the report-line parser, and the CRD corpus and oracle.
//!
//! The corpora live in `tests/corpus/` (see its README). Every corpus file is checked
//! deterministically here; the property tests then mutate and generate around them.
//! The API server side of the CRD corpus is `tests/e2e/crd_fuzz.rs`.

mod crd_corpus;
mod crd_model;
mod report;

use std::path::{Path, PathBuf};

use proptest::test_runner::{Config, FileFailurePersistence};

/// Failing cases are saved next to the test's source (`tests/fuzz/<module>.proptest-regressions`),
/// committed, and replayed first on every run.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

pub fn corpus_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(sub)
}

/// The corpus files under `sub`, sorted, so failures name the same file every run.
pub fn corpus_files(sub: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![corpus_dir(sub)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n != "README.md") {
                out.push(path);
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no corpus files under {sub}");
    out
}
