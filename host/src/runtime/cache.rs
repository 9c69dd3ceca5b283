//! On-disk cache of compiled components.
//!
//! Compiling a component takes 50 ms for a small Rust rule and 13–27 s for
//! a Python or JavaScript one; loading a cached artifact takes well under a
//! millisecond. Entries are keyed by the SHA-256 of the component bytes and
//! by the engine's compatibility hash (wasmtime version and every setting
//! that changes generated code), so an artifact is only ever offered to an
//! engine that could have produced it.
//!
//! Deserialising an artifact is `unsafe`: wasmtime trusts it as machine
//! code. So every entry carries a SHA-256 of its artifact bytes, checked
//! before deserialising; a file that is truncated, bit-flipped or written by
//! someone else is reported, deleted and rebuilt, never loaded.
//!
//! File format: `MAGIC` (8 bytes) ‖ SHA-256 of the artifact (32 bytes) ‖
//! artifact. Writes go to a temporary file renamed into place, so readers
//! never see half an entry.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"SLUICE\x01\x00";
const HEADER: usize = MAGIC.len() + 32;

/// How a load was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// No cache is configured; the component was compiled.
    Disabled,
    /// Served from the cache.
    Hit,
    /// Not in the cache: compiled and stored.
    Miss,
    /// An entry existed but failed its check; it was compiled afresh and
    /// the entry replaced. The string says what was wrong.
    Rebuilt(String),
}

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash is
/// stable across processes (std's hashers are not meant to be).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    /// A cache under `root` for components compiled by `engine`. Entries of
    /// other engine configurations live in sibling directories and are
    /// never read by this one.
    pub fn new(root: &Path, engine: &Engine) -> std::io::Result<Self> {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = hex::encode(&hasher.0.finalize()[..12]);
        let dir = root.join(compat);
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// The directory holding this engine's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the entry for a component with SHA-256 `digest`.
    pub fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.cwasm"))
    }

    /// Load the component with SHA-256 `digest`, compiling `bytes` when the
    /// cache has no good entry for it.
    pub fn load(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.entry_path(digest);
        let problem = match fs::read(&path) {
            Ok(entry) => match Self::check(&entry) {
                // SAFETY: the artifact is byte-for-byte what this cache
                // wrote after compiling it with an engine of the same
                // compatibility hash (the directory) — its checksum says so.
                // wasmtime checks the version and configuration header too.
                Ok(artifact) => match unsafe { Component::deserialize(engine, artifact) } {
                    Ok(component) => return Ok((component, CacheOutcome::Hit)),
                    Err(e) => Some(format!("artifact rejected by wasmtime: {e}")),
                },
                Err(problem) => Some(problem),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("cannot read {}: {e}", path.display())),
        };
        if let Some(problem) = &problem {
            tracing::warn!(entry = %path.display(), %problem, "discarding bad compile-cache entry");
            let _ = fs::remove_file(&path);
        }
        let component = Component::new(engine, bytes)?;
        let artifact = component.serialize()?;
        if let Err(e) = self.store(&path, &artifact) {
            // A cache that cannot be written costs time, not correctness.
            tracing::warn!(entry = %path.display(), error = %e, "cannot write compile-cache entry");
        }
        let outcome = match problem {
            Some(p) => CacheOutcome::Rebuilt(p),
            None => CacheOutcome::Miss,
        };
        Ok((component, outcome))
    }

    fn check(entry: &[u8]) -> Result<&[u8], String> {
        if entry.len() < HEADER || &entry[..MAGIC.len()] != MAGIC {
            return Err("not a cache entry (bad header)".into());
        }
        let (sum, artifact) = entry[MAGIC.len()..].split_at(32);
        if Sha256::digest(artifact).as_slice() != sum {
            return Err("checksum mismatch (truncated or corrupted)".into());
        }
        Ok(artifact)
    }

    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(&Sha256::digest(artifact))?;
        tmp.write_all(artifact)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The SHA-256 of component bytes, as lowercase hex: the cache key and the
/// identity of a rule's code.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_bad_entries() {
        let artifact = b"not really machine code";
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(artifact));
        entry.extend_from_slice(artifact);
        assert_eq!(CompileCache::check(&entry).unwrap(), artifact);

        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(
            CompileCache::check(&flipped)
                .unwrap_err()
                .contains("checksum")
        );
        assert!(CompileCache::check(&entry[..entry.len() - 1]).is_err());
        assert!(
            CompileCache::check(b"SLUICE")
                .unwrap_err()
                .contains("header")
        );
    }
}
