//! The one-time setup token: while no user exists, `<data>/setup-token` (mode 0600)
//! holds a random token that authorises creating the first admin.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What first start found.
#[derive(Debug, PartialEq, Eq)]
pub enum SetupState {
    /// Users exist; no token.
    Done,
    /// No user yet; the token file is ready.
    Pending,
}

/// Errors handling the token file.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot write setup token {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Makes sure a setup token exists while there is no admin, and that none lingers after.
/// An existing well-formed token with mode 0600 is kept, so a restart does not
/// invalidate what the user already copied.
pub fn ensure_setup_token(admin_exists: bool, path: &Path) -> Result<SetupState, SetupError> {
    let io = |source: std::io::Error| SetupError::Io { path: path.display().to_string(), source };
    if admin_exists {
        if path.exists() {
            std::fs::remove_file(path).map_err(io)?;
        }
        return Ok(SetupState::Done);
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let good_mode = meta.permissions().mode() & 0o077 == 0;
        let good_token = read_token(path).is_some();
        if good_mode && good_token {
            return Ok(SetupState::Pending);
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let token = crate::crypto::random_token::<32>();
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(token.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(SetupState::Pending)
}

/// The token in the file, if it is there and well-formed.
pub fn read_token(path: &Path) -> Option<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).ok()?);
    let token = text.trim();
    (token.len() >= 32 && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .then(|| zeroize::Zeroizing::new(token.to_string()))
}
