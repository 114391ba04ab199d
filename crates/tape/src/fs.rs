//! Crash-safe file writes and a content hash, shared by every crate that writes files.
//!
//! [`write_atomic`] is the one implementation of "replace a file so that a crash
//! leaves either the old or the new content, never a torn file"; the `models`
//! and `blo` crates wrap it only to attach the path to their own error types.
//! [`Fnv1a64`] is the hash the parameter files carry so that a corrupted file is
//! refused instead of loaded with wrong numbers.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temporary files of concurrent writers within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically and durably:
///
/// 1. a temporary file `.<name>.tmp-<pid>-<n>` is created in the same directory
///    (same file system, so the rename below cannot become a copy),
/// 2. the bytes are written and the file is flushed to disk (`fsync`),
/// 3. the temporary file is renamed over `path` (atomic on POSIX file systems
///    and on NTFS),
/// 4. on Unix, the directory is flushed too (`fsync` of the directory), so the
///    rename itself survives a power cut.
///
/// A crash at any point leaves either the previous content of `path` or the new
/// one; at worst a stray temporary file, which readers never open. The
/// directory must exist.
///
/// # Errors
/// The operating system's error of the first step that failed (the temporary
/// file is removed when a step before the rename fails). Callers attach `path`
/// to it in their own error type.
///
/// ```
/// let p = std::env::temp_dir().join(format!("tape-atomic-doc-{}.txt", std::process::id()));
/// tape::fs::write_atomic(&p, b"old").unwrap();
/// tape::fs::write_atomic(&p, b"new").unwrap();
/// assert_eq!(std::fs::read(&p).unwrap(), b"new");
/// // A missing directory is an error, and nothing is left behind.
/// assert!(tape::fs::write_atomic(&p.join("no/such/file"), b"x").is_err());
/// # std::fs::remove_file(&p).unwrap();
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{n}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&parent_dir(path))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Flushes a directory's entries to disk (Unix only: other platforms cannot
/// open a directory as a file, and NTFS journals renames itself).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    if cfg!(unix) {
        fs::File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

/// The 64-bit FNV-1a hash (Fowler–Noll–Vo): `h₀ = 0xcbf29ce484222325`,
/// `hᵢ₊₁ = (hᵢ ⊕ bᵢ)·0x100000001b3 mod 2⁶⁴` over the bytes `bᵢ`.
///
/// Each step is a bijection of the state for a fixed byte, so two inputs of the
/// same length that differ in exactly one byte always hash differently (every
/// single-bit flip is detected); other corruptions collide with probability
/// about 2⁻⁶⁴. It is a checksum against accidents, not a cryptographic hash.
///
/// ```
/// use tape::fs::Fnv1a64;
/// let mut h = Fnv1a64::new();
/// h.update(b"a");
/// assert_eq!(h.finish(), 0xaf63dc4c8601ec8c); // the published test vector for "a"
/// assert_eq!(Fnv1a64::new().finish(), 0xcbf29ce484222325);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    /// The hash of no bytes (the offset basis).
    pub fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// The hash of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tape-fs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_file() {
        let dir = scratch("replace");
        let p = dir.join("f.bin");
        write_atomic(&p, b"first version").unwrap();
        write_atomic(&p, b"2nd").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"2nd");
        assert_eq!(listing(&dir), ["f.bin"]);
        // A failed write (missing folder) leaves nothing behind.
        assert!(write_atomic(&dir.join("missing/f.bin"), b"x").is_err());
        assert!(write_atomic(Path::new("/"), b"x").is_err());
        assert_eq!(listing(&dir), ["f.bin"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Threads of one process writing the same file never share a temporary
    /// file: every write succeeds and the file ends as one whole write.
    #[test]
    fn concurrent_writers_in_one_process_do_not_collide() {
        let dir = scratch("threads");
        let p = dir.join("shared.bin");
        let payload = |t: u8| vec![t; 4096 + t as usize];
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..25 {
                        write_atomic(p, &payload(t)).unwrap();
                    }
                });
            }
        });
        let got = fs::read(&p).unwrap();
        let t = got[0];
        assert_eq!(got, payload(t));
        assert_eq!(listing(&dir), ["shared.bin"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fnv1a64_published_vectors() {
        let h = |s: &[u8]| {
            let mut f = Fnv1a64::new();
            f.update(s);
            f.finish()
        };
        assert_eq!(h(b""), 0xcbf29ce484222325);
        assert_eq!(h(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(h(b"foobar"), 0x85944171f73967e8);
        // Feeding in pieces is the same as feeding at once.
        let mut f = Fnv1a64::new();
        f.update(b"foo");
        f.update(b"bar");
        assert_eq!(f.finish(), h(b"foobar"));
    }
}
