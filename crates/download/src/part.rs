//! The `.part` file of a download and the SHA-256 of the bytes in it, kept in step: every byte appended
//! is hashed, a truncation resets the hash, and after an app restart the bytes already on disk are read
//! back once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::disk;
use crate::error::{Error, Result};

pub(crate) struct PartFile {
    path: PathBuf,
    /// The models folder, for disk-full errors.
    dir: PathBuf,
    file: Option<File>,
    /// Covers the first `hashed` bytes of the file.
    hasher: Sha256,
    hashed: u64,
}

impl PartFile {
    pub(crate) fn new(path: PathBuf, dir: PathBuf) -> Self {
        Self {
            path,
            dir,
            file: None,
            hasher: Sha256::new(),
            hashed: 0,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Bytes on disk; 0 when there is no file.
    pub(crate) fn len(&self) -> Result<u64> {
        match fs::metadata(&self.path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io("read", &self.path, e)),
        }
    }

    /// Appends `buf` and hashes it. A full disk is [`Error::DiskFull`]; what did get written is still
    /// a correct prefix, which [`Self::prime_hash`] rereads on the next resume.
    pub(crate) fn append(&mut self, buf: &[u8]) -> Result<()> {
        let (dir, path) = (self.dir.clone(), self.path.clone());
        self.open()?
            .write_all(buf)
            .map_err(|e| disk::write_error(&dir, &path, e))?;
        self.hasher.update(buf);
        self.hashed += buf.len() as u64;
        Ok(())
    }

    /// Empties the file and the hash, for a download that must start over.
    pub(crate) fn truncate(&mut self) -> Result<()> {
        if self.exists() {
            let path = self.path.clone();
            self.open()?
                .set_len(0)
                .map_err(|e| Error::io("truncate", &path, e))?;
        }
        self.hasher = Sha256::new();
        self.hashed = 0;
        Ok(())
    }

    /// Whether the hash must be rebuilt from disk before the first `len` bytes are trusted.
    pub(crate) fn needs_priming(&self, len: u64) -> bool {
        self.hashed != len
    }

    /// Makes the hash cover exactly the first `len` bytes on disk.
    pub(crate) fn prime_hash(&mut self, len: u64) -> Result<()> {
        if !self.needs_priming(len) {
            return Ok(());
        }
        let mut hasher = Sha256::new();
        let f = File::open(&self.path).map_err(|e| Error::io("read", &self.path, e))?;
        let copied = io::copy(&mut f.take(len), &mut HashWriter(&mut hasher))
            .map_err(|e| Error::io("read", &self.path, e))?;
        self.hasher = hasher;
        self.hashed = copied;
        Ok(())
    }

    /// Lower-case hex SHA-256 of the first `len` bytes (the whole file, once complete).
    pub(crate) fn sha256(&mut self, len: u64) -> Result<String> {
        self.prime_hash(len)?;
        Ok(hex(&self.hasher.clone().finalize()))
    }

    /// Best effort: a pause or failure should leave the bytes on disk, but failing to flush them only
    /// costs a re-download of the tail, so it is not an error of its own.
    pub(crate) fn sync(&self) {
        if let Some(f) = &self.file {
            if let Err(e) = f.sync_all() {
                tracing::warn!(error = %e, part = %self.path.display(), "could not flush the partial file");
            }
        }
    }

    /// Flushes the file and renames it to `dest` (see [`disk::commit`]); the part file is gone after.
    pub(crate) fn commit(&mut self, dest: &Path) -> Result<()> {
        let path = self.path.clone();
        let file = self.open()?;
        disk::commit(file, &path, dest)?;
        self.file = None;
        Ok(())
    }

    /// Closes and deletes the file.
    pub(crate) fn remove(&mut self) -> Result<()> {
        self.file = None;
        self.hasher = Sha256::new();
        self.hashed = 0;
        disk::remove_if_exists(&self.path)
    }

    fn open(&mut self) -> Result<&mut File> {
        if self.file.is_none() {
            // Append mode: every write lands at the end, even right after a truncation. Writable, too,
            // because Windows cannot flush a file opened read-only.
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| disk::write_error(&self.dir, &self.path, e))?;
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part() -> (tempfile::TempDir, PartFile) {
        let dir = tempfile::tempdir().unwrap();
        let p = PartFile::new(dir.path().join("m.gguf.part"), dir.path().to_path_buf());
        (dir, p)
    }

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[test]
    fn empty_input_hashes_to_the_known_value() {
        assert_eq!(
            sha(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn appended_bytes_are_hashed_and_truncation_resets() {
        let (_d, mut p) = part();
        assert_eq!(p.len().unwrap(), 0);
        p.append(b"hello ").unwrap();
        p.append(b"world").unwrap();
        assert_eq!(p.len().unwrap(), 11);
        assert_eq!(p.sha256(11).unwrap(), sha(b"hello world"));
        p.truncate().unwrap();
        p.append(b"x").unwrap();
        assert_eq!(fs::read(p.path()).unwrap(), b"x");
        assert_eq!(p.sha256(1).unwrap(), sha(b"x"));
    }

    #[test]
    fn a_new_session_rereads_the_bytes_on_disk() {
        let (d, mut p) = part();
        p.append(b"from an earlier run").unwrap();
        drop(p);
        let mut again = PartFile::new(d.path().join("m.gguf.part"), d.path().to_path_buf());
        let len = again.len().unwrap();
        assert!(again.needs_priming(len));
        again.prime_hash(len).unwrap();
        again.append(b", and more").unwrap();
        assert_eq!(
            again.sha256(len + 10).unwrap(),
            sha(b"from an earlier run, and more")
        );
    }

    #[test]
    fn commit_renames_and_remove_deletes() {
        let (d, mut p) = part();
        p.append(b"model").unwrap();
        let dest = d.path().join("m.gguf");
        p.commit(&dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"model");
        assert!(!d.path().join("m.gguf.part").exists());

        let mut q = PartFile::new(d.path().join("n.part"), d.path().to_path_buf());
        q.append(b"x").unwrap();
        q.remove().unwrap();
        assert!(!q.exists());
    }
}
