//! Replays every committed seed (`fuzz/seeds/TARGET/`) and every corpus file libFuzzer has kept
//! locally (`fuzz/corpus/TARGET/`, ignored by git) through the same check the fuzz target runs,
//! on stable. A panic in a check fails the test, naming the file.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use nodegate_fuzz_targets::{Reached, TARGETS};

/// `fuzz/`.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/targets has a parent")
        .to_owned()
}

/// The paths in `dir`, sorted; none if `dir` does not exist.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = read
        .map(|e| e.expect("a readable folder entry").path())
        .collect();
    paths.sort();
    paths
}

fn check(target: &str) -> Result<(), String> {
    let (_, run) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target in TARGETS");
    let seeds = entries(&fuzz_dir().join("seeds").join(target));
    let corpus = entries(&fuzz_dir().join("corpus").join(target));
    if seeds.is_empty() {
        return Err(format!("no seeds in fuzz/seeds/{target}/"));
    }
    let mut failed = Vec::new();
    let mut seeds_checked = 0;
    for path in seeds.iter().chain(&corpus) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match catch_unwind(AssertUnwindSafe(|| run(&data))) {
            Ok(Reached::Checked) if seeds.contains(path) => seeds_checked += 1,
            Ok(_) => {}
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    eprintln!(
        "{target}: {} seeds ({seeds_checked} got past parsing), {} corpus files",
        seeds.len(),
        corpus.len()
    );
    if !failed.is_empty() {
        return Err(format!(
            "{target} panicked on {} of {} inputs (reproduce with cargo fuzz run {target} FILE):\n  {}",
            failed.len(),
            seeds.len() + corpus.len(),
            failed.join("\n  ")
        ));
    }
    // A parser change that refuses every seed would leave the target checking nothing.
    if seeds_checked == 0 {
        return Err(format!(
            "no seed in fuzz/seeds/{target}/ got past parsing any more: fix the seeds"
        ));
    }
    Ok(())
}

/// Every target, every seed and corpus file; all failures reported together.
#[test]
fn every_target_replays_its_seeds_and_corpus() {
    let errors: Vec<String> = TARGETS
        .iter()
        .filter_map(|(name, _)| check(name).err())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Every cargo-fuzz target and every seed folder has its check in `TARGETS`.
#[test]
fn every_target_is_replayed() {
    let names = |dir: &str, suffix: &str| -> Vec<String> {
        let mut names: Vec<String> = entries(&fuzz_dir().join(dir))
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(suffix)
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    };
    let mut known: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    known.sort();
    assert_eq!(
        names("fuzz_targets", ".rs"),
        known,
        "fuzz/fuzz_targets/ vs TARGETS"
    );
    assert_eq!(names("seeds", ""), known, "fuzz/seeds/ vs TARGETS");
}
