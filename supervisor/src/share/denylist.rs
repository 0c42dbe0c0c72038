//! The host places a share may never be, nor contain: the one list.
//!
//! Credential and secret stores, relative to the user's home. A share that is
//! one of them, lies inside one, or contains one is refused. Documented in
//! README.md ("Shared folders").

/// Paths relative to `$HOME`.
pub const CREDENTIAL_STORES: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".kube",
    ".docker",
    ".netrc",
    ".git-credentials",
    ".config/gh",
    ".password-store",
    ".local/share/keyrings",
    // Browser profiles (cookies, saved passwords).
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
    ".config/BraveSoftware",
    ".config/microsoft-edge",
    // macOS keychains and browser profiles.
    "Library/Keychains",
    "Library/Application Support/Google/Chrome",
    "Library/Application Support/Firefox",
    "Library/Cookies",
    "Library/Safari",
];
