//! Gives the crate a build id, a hash of its sources, manifest and lock file: `dispatcher`
//! uses the `dispatcher-supervisor` program beside it only when that program answers with the
//! same id, so a supervisor left over from another build (say, after `cargo run` rebuilt
//! `dispatcher` alone) is never used.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

fn main() {
    let mut inputs = vec![
        PathBuf::from("build.rs"),
        PathBuf::from("Cargo.toml"),
        PathBuf::from("Cargo.lock"),
    ];
    sources(Path::new("src"), &mut inputs);
    inputs.sort();
    let mut hasher = DefaultHasher::new();
    for input in &inputs {
        input.hash(&mut hasher);
        fs::read(input).unwrap_or_default().hash(&mut hasher);
    }
    println!(
        "cargo:rustc-env=DISPATCHER_BUILD_ID={:016x}",
        hasher.finish()
    );
    for watched in ["build.rs", "Cargo.toml", "Cargo.lock", "src"] {
        println!("cargo:rerun-if-changed={watched}");
    }
}

/// Every file under `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, found);
        } else {
            found.push(path);
        }
    }
}
