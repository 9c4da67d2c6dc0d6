//! Files the gate (often root running the CLI) writes in directories another user may control
//! (the data directory belongs to the service user; `--out` may be anywhere): every file is
//! created new (`O_EXCL`, which never follows a symlink) with its mode set on the descriptor,
//! existing entries are opened with `O_NOFOLLOW`, and a replaced file is a fresh temporary
//! renamed over the old name (rename replaces a symlink, it does not follow it).

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `path`, which must not exist (a symlink there counts as existing), with `mode`
/// applied to the descriptor whatever the umask.
pub fn create_new(path: &Path, mode: u32) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// Opens an existing regular file for reading and writing without following a symlink.
pub fn open_existing(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Fails when `path` is a symlink (a missing path is fine).
pub fn refuse_symlink(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            anyhow::bail!("{} is a symbolic link; refusing to follow it", path.display())
        }
        _ => Ok(()),
    }
}

/// Whether `path` (not followed) is the very file `file` is open on.
pub fn is_same_file(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.file_type().is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A file written under a temporary name beside `dest` and renamed over it by
/// [`Replacement::commit`]; dropped uncommitted, the temporary file is removed. The result has
/// the requested mode even when `dest` existed with another one.
pub struct Replacement {
    file: std::io::BufWriter<File>,
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Replacement {
    /// Starts replacing `dest` with a new file of mode `mode`.
    pub fn new(dest: &Path, mode: u32) -> std::io::Result<Replacement> {
        let name = dest.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
        // The name needs to be unique, not secret: `create_new` refuses whatever is there
        // (file or symlink), and a name taken by someone else is skipped. The suffix is std's
        // per-process random SipHash keys over a counter (no RNG call outside `crypto`).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed = std::collections::hash_map::RandomState::new();
        for _ in 0..16 {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let suffix = std::hash::BuildHasher::hash_one(&seed, (std::process::id(), n));
            let tmp = dest.with_file_name(format!(".{}.tmp-{suffix:016x}", name.to_string_lossy()));
            match create_new(&tmp, mode) {
                Ok(file) => {
                    return Ok(Replacement {
                        file: std::io::BufWriter::new(file),
                        tmp,
                        dest: dest.to_path_buf(),
                        done: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary name beside the file"))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.dest)?;
        self.done = true;
        Ok(())
    }
}

impl Write for Replacement {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
