//! Files only their owner may read (keys, tokens handed to guests), written
//! so that a crash never leaves a half-written one under the real name.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writing failed; `path` is the file the step was on (the temporary one or
/// the final name).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct PrivateFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes `contents` to `path` atomically (a mode 0600 temporary file next
/// to it, synced, then renamed over it): readers see the old file or the
/// whole new one, and nobody but the owner ever can read either.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PrivateFileError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| PrivateFileError { path, source }
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err(&tmp))?;
    file.write_all(contents).map_err(err(&tmp))?;
    file.sync_all().map_err(err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.json");
        std::fs::write(&path, b"old and longer").unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("secret");
        let e = write_private(&path, b"x").unwrap_err();
        assert!(e.path.starts_with(dir.path().join("absent")), "{e}");
        assert!(!path.exists());
    }
}
