//! Helpers shared by the corrupt-input tests: a scratch folder, a panic
//! detector that names the case, bit flips, and the "names the file" check.

#![allow(dead_code)] // each test file uses a subset

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A folder under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh, empty folder `models-<tag>-<pid>`.
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("models-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f`; a panic becomes a test failure that prints `case` (the panic
/// itself is what the corrupt-input tests must never see).
pub fn no_panic<T>(case: &dyn std::fmt::Display, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("case {case}: the loader panicked ({msg}) instead of returning an error");
        }
    }
}

/// Bit positions to flip in a file of `len` bytes: one, or (when `several`)
/// two or three, uniform over all bits.
pub fn random_flips(rng: &mut impl rand::Rng, len: usize, several: bool) -> Vec<usize> {
    let n = if several { rng.gen_range(2..=3) } else { 1 };
    (0..n).map(|_| rng.gen_range(0..8 * len)).collect()
}

/// Cuts the file at `path` to a random strict prefix.
pub fn truncate_file(path: &Path, rng: &mut impl rand::Rng) {
    let b = std::fs::read(path).unwrap();
    std::fs::write(path, &b[..rng.gen_range(0..b.len())]).unwrap();
}

/// Flips one to three random bits of the file at `path`.
pub fn flip_file(path: &Path, rng: &mut impl rand::Rng) {
    let b = std::fs::read(path).unwrap();
    let several = rng.gen_bool(0.5);
    std::fs::write(path, flipped(&b, &random_flips(rng, b.len(), several))).unwrap();
}

/// `bytes` with each bit of `bits` (0 = least significant bit of byte 0) flipped.
pub fn flipped(bytes: &[u8], bits: &[usize]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &bit in bits {
        b[bit / 8] ^= 1 << (bit % 8);
    }
    b
}

/// Asserts that an error message names `path`.
#[track_caller]
pub fn assert_names(msg: &str, path: &Path, case: &dyn std::fmt::Display) {
    let p = path.display().to_string();
    assert!(
        msg.contains(&p),
        "case {case}: message does not name {p}: {msg}"
    );
}

/// Counts cases per class and asserts that every class in `want` was hit.
#[derive(Default)]
pub struct Tally(pub std::collections::BTreeMap<String, usize>);

impl Tally {
    /// Counts one case of `class`.
    pub fn hit(&mut self, class: impl Into<String>) {
        *self.0.entry(class.into()).or_default() += 1;
    }
    /// Total number of cases.
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
    /// Asserts that each of `want` was hit at least once, and prints the tally.
    #[track_caller]
    pub fn require(&self, what: &str, want: &[&str]) {
        eprintln!("{what}: {} cases {:?}", self.total(), self.0);
        for w in want {
            assert!(
                self.0.get(*w).copied().unwrap_or(0) > 0,
                "{what}: no case of class `{w}` ({:?})",
                self.0
            );
        }
    }
}

/// A folder tree: relative file paths and their bytes (folders are implied).
pub type Tree = std::collections::BTreeMap<PathBuf, Vec<u8>>;

/// Makes `root` hold exactly `tree`, touching only what differs: entries not
/// in the tree (stray files, links, renamed folders) are removed, files with
/// other content are rewritten, missing ones written. Much faster than
/// rebuilding the folder for every case where deletions are slow.
pub fn sync_tree(root: &Path, tree: &Tree) {
    let dirs: std::collections::BTreeSet<PathBuf> = tree
        .keys()
        .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
        .collect();
    fn walk(root: &Path, rel: &Path, tree: &Tree, dirs: &std::collections::BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() && dirs.contains(&r) {
                walk(root, &r, tree, dirs);
            } else if meta.is_file() && tree.contains_key(&r) {
                if std::fs::read(e.path()).unwrap() != tree[&r] {
                    std::fs::write(e.path(), &tree[&r]).unwrap();
                }
            } else if meta.is_dir() {
                std::fs::remove_dir_all(e.path()).unwrap();
            } else {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
    if !std::fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
        let _ = std::fs::remove_file(root);
        std::fs::create_dir_all(root).unwrap();
    }
    walk(root, Path::new(""), tree, &dirs);
    for (rel, bytes) in tree {
        let p = root.join(rel);
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
    }
}
