//! Shared folders: which host paths a VM may see.
//!
//! Every path is checked on the host before anything is attached: made
//! canonical (symlinks and `..` resolved, so what is checked is what QEMU
//! will open), then refused if it is `/`, the user's home itself, a
//! credential store ([`denylist`]) or inside one or containing one, or
//! outside every configured share root (`clawpen up --share-root DIR`; none by
//! default, so sharing is opt-in).
//!
//! A stored share is checked again each time a VMM is started with it
//! ([`ShareScope::recheck`]): a folder on the path swapped for a symlink
//! since `share add` (by the user, or by a guest through another, writable
//! share: 9p creates real symlinks on the host) would otherwise be followed
//! by the VMM to wherever it now points.

pub mod denylist;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share path {path}: {source}")]
    Resolve {
        path: String,
        source: std::io::Error,
    },
    #[error("share path {0} is not a folder")]
    NotDir(PathBuf),
    #[error("refusing to share / (the whole host)")]
    Root,
    #[error("refusing to share {0}: it is your home folder itself; share a folder inside it")]
    Home(PathBuf),
    #[error("refusing to share {path}: it is or is inside {store}, a credential store")]
    InStore { path: PathBuf, store: PathBuf },
    #[error("refusing to share {path}: it contains {store}, a credential store")]
    ContainsStore { path: PathBuf, store: PathBuf },
    #[error("refusing to share {path}: no share root is configured (start clawpen up with --share-root DIR)")]
    NoRoots { path: PathBuf },
    #[error("refusing to share {path}: it is outside the share roots ({roots})")]
    OutsideRoots { path: PathBuf, roots: String },
    #[error("share path {path} now resolves to {now}: a symlink was put on its path since the share was added")]
    Moved { path: PathBuf, now: PathBuf },
}

/// What may be shared on this host.
#[derive(Debug, Clone, Default)]
pub struct ShareScope {
    roots: Vec<PathBuf>,
    home: Option<PathBuf>,
}

impl ShareScope {
    /// `roots` are canonicalised now; a root that does not exist is dropped
    /// with a warning. `home` is the user's home folder.
    pub fn new(roots: &[PathBuf], home: Option<PathBuf>) -> Self {
        let roots = roots
            .iter()
            .filter_map(|r| match std::fs::canonicalize(r) {
                Ok(root) => Some(root),
                Err(e) => {
                    tracing::warn!(root = %r.display(), error = %e, "share root ignored");
                    None
                }
            })
            .collect();
        let home = home.map(|h| std::fs::canonicalize(&h).unwrap_or(h));
        Self { roots, home }
    }

    /// Checks `raw` and returns the canonical path to attach.
    pub fn check(&self, raw: &str) -> Result<PathBuf, ShareError> {
        let path = std::fs::canonicalize(raw).map_err(|source| ShareError::Resolve {
            path: raw.to_string(),
            source,
        })?;
        if !path.is_dir() {
            return Err(ShareError::NotDir(path));
        }
        if path == Path::new("/") {
            return Err(ShareError::Root);
        }
        if let Some(home) = &self.home {
            if &path == home {
                return Err(ShareError::Home(path));
            }
            for store in denylist::CREDENTIAL_STORES.iter().map(|s| home.join(s)) {
                // A store may itself be a symlink: compare canonical forms too.
                let canonical = std::fs::canonicalize(&store).unwrap_or_else(|_| store.clone());
                for store in [store, canonical] {
                    if path.starts_with(&store) {
                        return Err(ShareError::InStore { path, store });
                    }
                    if store.starts_with(&path) {
                        return Err(ShareError::ContainsStore { path, store });
                    }
                }
            }
        }
        if self.roots.is_empty() {
            return Err(ShareError::NoRoots { path });
        }
        if !self.roots.iter().any(|root| path.starts_with(root)) {
            let roots = self
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ShareError::OutsideRoots { path, roots });
        }
        Ok(path)
    }

    /// Checks a stored share's path again before a VMM opens it: it must
    /// still pass [`Self::check`] (the roots may have changed too) and still
    /// be itself, canonical, with no symlink anywhere on it.
    pub fn recheck(&self, stored: &str) -> Result<(), ShareError> {
        let now = self.check(stored)?;
        if now != Path::new(stored) {
            return Err(ShareError::Moved {
                path: stored.into(),
                now,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        home: PathBuf,
        scope: ShareScope,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home/me");
        for sub in [".ssh", ".aws", "projects/app", "projects/app/.git"] {
            std::fs::create_dir_all(home.join(sub)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(home.join(".aws"), home.join("projects/aws-link")).unwrap();
        let scope = ShareScope::new(&[dir.path().join("home")], Some(home.clone()));
        Fixture {
            _dir: dir,
            home,
            scope,
        }
    }

    #[test]
    fn a_folder_inside_a_root_is_shared_canonically() {
        let f = fixture();
        let raw = f.home.join("projects/app/../app");
        let got = f.scope.check(raw.to_str().unwrap()).unwrap();
        assert_eq!(
            got,
            std::fs::canonicalize(f.home.join("projects/app")).unwrap()
        );
    }

    #[test]
    fn every_dangerous_path_is_refused() {
        let f = fixture();
        let outside = f.home.parent().unwrap().parent().unwrap().join("elsewhere");
        let cases: Vec<(PathBuf, &str)> = vec![
            ("/".into(), "Root"),
            (f.home.clone(), "Home"),
            (f.home.join(".ssh"), "InStore"),
            (f.home.join("projects/aws-link"), "InStore"),
            (f.home.join(".."), "ContainsStore"),
            (outside, "OutsideRoots"),
            (f.home.join("nope"), "Resolve"),
        ];
        for (path, want) in cases {
            let err = f.scope.check(path.to_str().unwrap()).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{path:?}: {err:?}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn a_shared_folder_swapped_for_a_symlink_is_refused_at_attach() {
        let f = fixture();
        let app = f.home.join("projects/app");
        let stored = f.scope.check(app.to_str().unwrap()).unwrap();
        let stored = stored.to_str().unwrap();
        f.scope.recheck(stored).unwrap();

        // Swapped for a link to another folder inside the roots: moved.
        std::fs::rename(&app, f.home.join("projects/app-was")).unwrap();
        std::os::unix::fs::symlink(f.home.join("projects/app-was/.git"), &app).unwrap();
        let err = f.scope.recheck(stored).unwrap_err();
        assert!(matches!(err, ShareError::Moved { .. }), "{err:?}");
        assert!(err.to_string().contains("app-was"), "{err}");

        // Swapped for a link to a credential store: refused as that.
        std::fs::remove_file(&app).unwrap();
        std::os::unix::fs::symlink(f.home.join(".ssh"), &app).unwrap();
        let err = f.scope.recheck(stored).unwrap_err();
        assert!(matches!(err, ShareError::InStore { .. }), "{err:?}");

        // Gone: refused, nothing to attach.
        std::fs::remove_file(&app).unwrap();
        let err = f.scope.recheck(stored).unwrap_err();
        assert!(matches!(err, ShareError::Resolve { .. }), "{err:?}");
    }

    #[test]
    fn without_roots_nothing_is_shared() {
        let f = fixture();
        let scope = ShareScope::new(&[], Some(f.home.clone()));
        let err = scope
            .check(f.home.join("projects/app").to_str().unwrap())
            .unwrap_err();
        assert!(matches!(err, ShareError::NoRoots { .. }), "{err:?}");
    }
}
