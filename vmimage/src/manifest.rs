//! `manifest.json`: what an image folder holds and how to boot it.
//!
//! The manifest is written last when an image is built, so its presence (with
//! files of the sizes it lists) is what makes an image count as complete. It is
//! read back from disk, possibly after a crash or a hand edit, so parsing
//! checks everything and never panics.

use serde::{Deserialize, Serialize};

/// Manifest format understood by this version of the crate.
pub const FORMAT: u32 = 1;

/// Fixed file names inside an image folder.
pub const KERNEL_FILE: &str = "vmlinuz";
/// See [`KERNEL_FILE`].
pub const INITRD_FILE: &str = "initrd.cpio";
/// See [`KERNEL_FILE`].
pub const DISK_FILE: &str = "disk.qcow2";
/// See [`KERNEL_FILE`].
pub const MANIFEST_FILE: &str = "manifest.json";
/// A macOS guest's raw disk (Virtualization.framework reads no qcow2).
pub const MAC_DISK_FILE: &str = "disk.raw";
/// A macOS guest's auxiliary storage (NVRAM), `VZMacAuxiliaryStorage`.
pub const MAC_AUX_FILE: &str = "aux.img";
/// A macOS guest's `VZMacHardwareModel.dataRepresentation`.
pub const MAC_HARDWARE_MODEL_FILE: &str = "hardware-model.bin";
/// A macOS guest's `VZMacMachineIdentifier.dataRepresentation`.
pub const MAC_MACHINE_ID_FILE: &str = "machine-id.bin";

/// Description of one built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    /// Manifest format version ([`FORMAT`]).
    pub format: u32,
    /// Image name, also the folder name in the store (`[a-z0-9-]+`).
    pub name: String,
    /// Guest architecture, e.g. `x86_64`.
    pub arch: String,
    /// Version of the recipe that built the image; a store rebuilds an image
    /// whose recipe is older than the code's, so fixes reach cached images.
    pub recipe: u32,
    /// Kernel command line the guest expects (serial console, panic policy).
    pub kernel_cmdline: String,
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// Kernel modules the initramfs loads, in load order.
    #[serde(default)]
    pub kernel_modules: Vec<String>,
    /// Distribution packages the image was made from.
    pub packages: Vec<SourcePackage>,
    /// Software installed in the image that is not a distribution package the
    /// recipe fetched itself (e.g. Node.js, OpenClaw from npm, the Debian
    /// suite the root filesystem came from), with exact versions, so a
    /// manifest says what an image runs. Absent in manifests written before
    /// it existed, hence the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub software: Vec<Software>,
    /// The image's files, one per role.
    pub files: Vec<ImageFile>,
    /// Build time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// A distribution package an image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePackage {
    pub name: String,
    pub version: String,
    /// SHA-256 of the `.deb`, hex.
    pub sha256: String,
}

/// A piece of software in an image and its exact version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Software {
    /// What it is, e.g. `node`, `openclaw`, `debian`.
    pub name: String,
    /// Its exact version, e.g. `24.21.0`.
    pub version: String,
}

/// What a file in an image folder is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileRole {
    Kernel,
    Initrd,
    Disk,
    /// macOS guests (`clawpen image create --macos`): see [`FileRole::MACOS`].
    MacDisk,
    MacAux,
    MacHardwareModel,
    MacMachineId,
}

impl FileRole {
    /// The roles of a Linux guest image, each exactly once.
    pub const ALL: [FileRole; 3] = [FileRole::Kernel, FileRole::Initrd, FileRole::Disk];

    /// The roles of a macOS guest image (installed from an IPSW on a Mac),
    /// each exactly once: no kernel, the platform's files instead. A
    /// manifest is one kind or the other, told apart by its files.
    pub const MACOS: [FileRole; 4] = [
        FileRole::MacDisk,
        FileRole::MacAux,
        FileRole::MacHardwareModel,
        FileRole::MacMachineId,
    ];

    /// The fixed file name for this role.
    pub const fn file_name(self) -> &'static str {
        match self {
            FileRole::Kernel => KERNEL_FILE,
            FileRole::Initrd => INITRD_FILE,
            FileRole::Disk => DISK_FILE,
            FileRole::MacDisk => MAC_DISK_FILE,
            FileRole::MacAux => MAC_AUX_FILE,
            FileRole::MacHardwareModel => MAC_HARDWARE_MODEL_FILE,
            FileRole::MacMachineId => MAC_MACHINE_ID_FILE,
        }
    }
}

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFile {
    pub role: FileRole,
    /// File name inside the image folder (always the role's fixed name).
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// A manifest that could not be read or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON for this format: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest format {found} is not supported (this build reads {FORMAT})")]
    Format { found: u32 },
    #[error("manifest field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl ImageManifest {
    /// Parses and checks a manifest. Never panics, whatever the bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: ImageManifest = serde_json::from_slice(bytes)?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises the manifest as pretty JSON (humans read these).
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        Ok(v)
    }

    /// Whether this is a macOS guest (its files are [`FileRole::MACOS`]).
    pub fn is_macos(&self) -> bool {
        self.file(FileRole::MacHardwareModel).is_some()
    }

    /// The roles this manifest's kind of image must have.
    pub fn roles(&self) -> &'static [FileRole] {
        if self.is_macos() {
            &FileRole::MACOS
        } else {
            &FileRole::ALL
        }
    }

    /// The entry for `role`, if present.
    pub fn file(&self, role: FileRole) -> Option<&ImageFile> {
        self.files.iter().find(|f| f.role == role)
    }

    /// Checks invariants that serde cannot: known format, valid name, one
    /// file per role with its fixed name (so a manifest can never point
    /// outside its folder), and well-formed hashes.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format { found: self.format });
        }
        if !valid_name(&self.name) {
            return Err(invalid(
                "name",
                format!("{:?} is not [a-z0-9-]+", self.name),
            ));
        }
        // A macOS guest boots from its platform files, not a command line.
        if !self.is_macos() && self.kernel_cmdline.trim().is_empty() {
            return Err(invalid("kernel_cmdline", "empty".into()));
        }
        let roles = self.roles();
        if self.files.len() != roles.len() {
            return Err(invalid(
                "files",
                format!(
                    "expected {} entries, found {}",
                    roles.len(),
                    self.files.len()
                ),
            ));
        }
        for &role in roles {
            let f = self
                .file(role)
                .ok_or_else(|| invalid("files", format!("no {role:?} file")))?;
            if f.file != role.file_name() {
                return Err(invalid(
                    "files",
                    format!(
                        "{role:?} file is {:?}, expected {:?}",
                        f.file,
                        role.file_name()
                    ),
                ));
            }
            if !valid_sha256(&f.sha256) {
                return Err(invalid(
                    "files",
                    format!("{role:?} sha256 is not 64 hex digits"),
                ));
            }
        }
        for s in &self.software {
            if s.name.trim().is_empty() || s.version.trim().is_empty() {
                return Err(invalid(
                    "software",
                    format!(
                        "entry {:?} {:?} needs a name and a version",
                        s.name, s.version
                    ),
                ));
            }
        }
        for p in &self.packages {
            if !valid_sha256(&p.sha256) {
                return Err(invalid(
                    "packages",
                    format!("{} sha256 is not 64 hex digits", p.name),
                ));
            }
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: String) -> ManifestError {
    ManifestError::Invalid { field, reason }
}

/// Image names are folder names: lowercase letters, digits and dashes only,
/// so no name can escape the store or collide with its dot-files.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageManifest {
        let h = "ab".repeat(32);
        ImageManifest {
            format: FORMAT,
            name: "test-guest".into(),
            arch: "x86_64".into(),
            recipe: 1,
            kernel_cmdline: "console=ttyS0 panic=-1 quiet".into(),
            kernel_release: "6.1.0-56-amd64".into(),
            kernel_modules: vec!["virtio".into(), "virtio_blk".into()],
            packages: vec![SourcePackage {
                name: "busybox-static".into(),
                version: "1:1.35.0-4".into(),
                sha256: h.clone(),
            }],
            software: vec![Software {
                name: "node".into(),
                version: "24.21.0".into(),
            }],
            files: FileRole::ALL
                .iter()
                .map(|&role| ImageFile {
                    role,
                    file: role.file_name().into(),
                    size: 42,
                    sha256: h.clone(),
                })
                .collect(),
            created_unix: 1_700_000_000,
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let json = m.to_json().unwrap();
        assert_eq!(ImageManifest::from_json(&json).unwrap(), m);
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains("\"role\": \"kernel\""), "{text}");
    }

    /// A manifest written before `software` existed still reads (as an
    /// empty list), and an empty list is not written, so old readers of new
    /// test-guest manifests are unaffected.
    #[test]
    fn manifests_without_software_still_read() {
        let mut m = sample();
        m.software.clear();
        let json = String::from_utf8(m.to_json().unwrap()).unwrap();
        assert!(!json.contains("software"), "{json}");
        assert_eq!(ImageManifest::from_json(json.as_bytes()).unwrap(), m);

        let mut m = sample();
        m.software[0].version = " ".into();
        assert!(matches!(
            ImageManifest::from_json(&m.to_json().unwrap()),
            Err(ManifestError::Invalid {
                field: "software",
                ..
            })
        ));
    }

    #[test]
    fn macos_images_have_platform_files_and_no_kernel() {
        let h = "cd".repeat(32);
        let mut m = sample();
        m.name = "macos".into();
        m.arch = "aarch64".into();
        m.kernel_cmdline = String::new();
        m.files = FileRole::MACOS
            .iter()
            .map(|&role| ImageFile {
                role,
                file: role.file_name().into(),
                size: 7,
                sha256: h.clone(),
            })
            .collect();
        let back = ImageManifest::from_json(&m.to_json().unwrap()).unwrap();
        assert!(back.is_macos());
        assert_eq!(back.roles(), &FileRole::MACOS);
        assert!(!sample().is_macos());
        // one kind or the other: a kernel among macOS files is refused
        let mut mixed = m.clone();
        mixed.files[0] = sample().files[0].clone();
        assert!(matches!(
            ImageManifest::from_json(&mixed.to_json().unwrap()),
            Err(ManifestError::Invalid { field: "files", .. })
        ));
        // and a Linux image still needs its command line
        let mut linux = sample();
        linux.kernel_cmdline = " ".into();
        assert!(matches!(
            ImageManifest::from_json(&linux.to_json().unwrap()),
            Err(ManifestError::Invalid {
                field: "kernel_cmdline",
                ..
            })
        ));
    }

    #[test]
    fn corrupt_json_is_an_error() {
        let json = sample().to_json().unwrap();
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"\xff\xfe",
            &json[..json.len() / 2],
        ] {
            assert!(matches!(
                ImageManifest::from_json(bad),
                Err(ManifestError::Json(_))
            ));
        }
    }

    #[test]
    fn invalid_content_is_an_error() {
        let mut m = sample();
        m.files[0].file = "../../etc/passwd".into();
        let err = ImageManifest::from_json(&m.to_json().unwrap()).unwrap_err();
        assert!(
            matches!(err, ManifestError::Invalid { field: "files", .. }),
            "{err}"
        );

        let mut m = sample();
        m.files.pop();
        assert!(ImageManifest::from_json(&m.to_json().unwrap()).is_err());

        let mut m = sample();
        m.name = "Bad/Name".into();
        assert!(ImageManifest::from_json(&m.to_json().unwrap()).is_err());

        let mut m = sample();
        m.format = 99;
        assert!(matches!(
            ImageManifest::from_json(&m.to_json().unwrap()),
            Err(ManifestError::Format { found: 99 })
        ));

        let mut m = sample();
        m.files[1].sha256 = "xyz".into();
        assert!(ImageManifest::from_json(&m.to_json().unwrap()).is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("test-guest"));
        assert!(valid_name("a1"));
        for bad in ["", ".", "..", "a/b", "A", "a b", ".test-guest", "a_b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
