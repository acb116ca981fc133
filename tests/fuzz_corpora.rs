//! Replays every file of every fuzz corpus (`fuzz/corpus/<target>/`)
//! through the entry point of its target, on stable, as an ordinary test:
//! the crashes the fuzzers found (kept in the corpora) stay fixed, and the
//! parsers still accept what they accepted. docs/fuzzing.md.

use std::path::Path;
use std::time::Instant;

use runtap::fuzzing::TARGETS;

#[test]
fn every_corpus_file_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let start = Instant::now();
    let mut replayed = 0;
    for (name, entry) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {name} is empty");
        for file in &files {
            let data = std::fs::read(file).unwrap();
            let result = std::panic::catch_unwind(|| entry(&data));
            assert!(result.is_ok(), "{name}: {} panicked", file.display());
        }
        replayed += files.len();
    }
    runtap::fuzzing::cleanup();
    // Every target has a corpus directory, and no directory lacks a target.
    for dir in std::fs::read_dir(&root).unwrap() {
        let name = dir.unwrap().file_name();
        assert!(TARGETS.iter().any(|(t, _)| name.to_str() == Some(t)), "fuzz/corpus/{name:?} belongs to no target");
    }
    eprintln!("replayed {replayed} corpus files in {:?}", start.elapsed());
}
