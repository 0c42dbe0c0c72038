//! Model discovery: finds GGUF files where users already keep them.
//!
//! - Ollama: `<models>/manifests/<host>/<namespace>/<name>/<tag>` (a JSON
//!   manifest whose `application/vnd.ollama.image.model` layer names a blob
//!   `<models>/blobs/sha256-<hex>`); id `name:tag` (`namespace/name:tag`
//!   outside `library`, `host/namespace/name:tag` for other registries).
//! - LM Studio: `~/.lmstudio/models/**.gguf`, `~/.cache/lm-studio/models/**.gguf`;
//!   id = path below the models folder (`publisher/repo/file.gguf`).
//! - Hugging Face cache: `<hub>/models--org--repo/snapshots/<rev>/**.gguf`;
//!   id `org/repo/file.gguf`.
//! - Extra folders ([`crate::InferenceConfig::model_dirs`]): id = path below
//!   the folder.
//!
//! Scanning is bounded (depth, entry count), skips unreadable folders,
//! follows a symlinked folder at most once (no loops), never panics, and
//! lists only files that start with the GGUF magic. Shards after the first
//! (`-00002-of-00003.gguf`) and vision projectors (`mmproj-*.gguf`) are not
//! listed as models.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Deepest folder level scanned below a root.
const MAX_DEPTH: usize = 8;
/// Most directory entries looked at per root (a runaway folder stays cheap).
const MAX_ENTRIES: usize = 100_000;
/// Largest Ollama manifest read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
const OLLAMA_MODEL_MEDIA_TYPE: &str = "application/vnd.ollama.image.model";
const OLLAMA_DEFAULT_REGISTRY: &str = "registry.ollama.ai";

/// Where a model was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelSource {
    Ollama,
    LmStudio,
    HuggingFace,
    /// One of [`crate::InferenceConfig::model_dirs`].
    Dir,
}

impl ModelSource {
    /// Short name, used as `owned_by` in `/v1/models`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Ollama => "ollama",
            ModelSource::LmStudio => "lmstudio",
            ModelSource::HuggingFace => "huggingface",
            ModelSource::Dir => "local",
        }
    }
}

/// One GGUF model found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name a request's `model` field uses.
    pub id: String,
    /// The GGUF file (for Ollama, the blob).
    pub path: PathBuf,
    pub source: ModelSource,
    /// File size in bytes.
    pub size: u64,
    /// Unix seconds: when the file (Ollama: the manifest) was last modified.
    pub created: u64,
}

/// The standard places models are looked for. Each list may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelLocations {
    /// Ollama models folders (each holding `manifests/` and `blobs/`).
    pub ollama: Vec<PathBuf>,
    /// LM Studio models folders.
    pub lmstudio: Vec<PathBuf>,
    /// Hugging Face hub cache folders (each holding `models--org--repo/`).
    pub huggingface: Vec<PathBuf>,
}

impl ModelLocations {
    /// No standard locations: only [`crate::InferenceConfig::model_dirs`] are scanned.
    pub fn none() -> Self {
        Self::default()
    }

    /// The current user's locations: `OLLAMA_MODELS` or `~/.ollama/models`;
    /// `~/.lmstudio/models` and `~/.cache/lm-studio/models`; `HF_HUB_CACHE`,
    /// `HF_HOME/hub` or `~/.cache/huggingface/hub`.
    pub fn standard() -> Self {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut loc = match dirs::home_dir() {
            Some(home) => Self::under_home(&home),
            None => Self::none(),
        };
        if let Some(dir) = env("OLLAMA_MODELS") {
            loc.ollama = vec![dir];
        }
        if let Some(dir) = env("HF_HUB_CACHE") {
            loc.huggingface = vec![dir];
        } else if let Some(dir) = env("HF_HOME") {
            loc.huggingface = vec![dir.join("hub")];
        }
        loc
    }

    /// The default locations below `home`, ignoring environment variables.
    pub fn under_home(home: &Path) -> Self {
        Self {
            ollama: vec![home.join(".ollama/models")],
            lmstudio: vec![
                home.join(".lmstudio/models"),
                home.join(".cache/lm-studio/models"),
            ],
            huggingface: vec![home.join(".cache/huggingface/hub")],
        }
    }
}

/// Scans every location and extra folder. Ids are unique: the first find
/// wins (Ollama, LM Studio, Hugging Face, then extra folders in order).
pub fn discover(locations: &ModelLocations, extra_dirs: &[PathBuf]) -> Vec<ModelInfo> {
    let mut found = Vec::new();
    for root in &locations.ollama {
        scan_ollama(root, &mut found);
    }
    for root in &locations.lmstudio {
        scan_plain(root, ModelSource::LmStudio, &mut found);
    }
    for root in &locations.huggingface {
        scan_huggingface(root, &mut found);
    }
    for root in extra_dirs {
        scan_plain(root, ModelSource::Dir, &mut found);
    }
    let mut seen = HashSet::new();
    found.retain(|m| seen.insert(m.id.clone()));
    found
}

/// True when the file at `path` starts with the GGUF magic.
pub fn has_gguf_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|()| &magic == GGUF_MAGIC)
        .unwrap_or(false)
}

/// Model scans cached for a short time, shared by every request handler.
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    inner: Arc<CatalogInner>,
}

#[derive(Debug)]
struct CatalogInner {
    locations: ModelLocations,
    extra_dirs: Vec<PathBuf>,
    ttl: Duration,
    cache: Mutex<Option<(Instant, Arc<Vec<ModelInfo>>)>>,
}

impl ModelCatalog {
    pub fn new(locations: ModelLocations, extra_dirs: Vec<PathBuf>, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(CatalogInner {
                locations,
                extra_dirs,
                ttl,
                cache: Mutex::new(None),
            }),
        }
    }

    pub fn from_config(config: &crate::InferenceConfig) -> Self {
        Self::new(
            config.locations.clone(),
            config.model_dirs.clone(),
            config.models_cache_ttl,
        )
    }

    /// Every model found, rescanning when the cached scan is older than the TTL.
    /// The scan runs on a blocking thread.
    pub async fn list(&self) -> Arc<Vec<ModelInfo>> {
        if let Some(hit) = self.cached() {
            return hit;
        }
        let inner = Arc::clone(&self.inner);
        let scanned = tokio::task::spawn_blocking(move || {
            Arc::new(discover(&inner.locations, &inner.extra_dirs))
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("model scan failed: {e}");
            Arc::new(Vec::new())
        });
        if let Ok(mut cache) = self.inner.cache.lock() {
            *cache = Some((Instant::now(), Arc::clone(&scanned)));
        }
        scanned
    }

    /// The model a request's `model` names: the exact id, or for a bare
    /// Ollama name `NAME` the id `NAME:latest`.
    pub async fn find(&self, model: &str) -> Option<ModelInfo> {
        let models = self.list().await;
        let latest = format!("{model}:latest");
        models
            .iter()
            .find(|m| m.id == model)
            .or_else(|| models.iter().find(|m| m.id == latest))
            .cloned()
    }

    fn cached(&self) -> Option<Arc<Vec<ModelInfo>>> {
        let cache = self.inner.cache.lock().ok()?;
        let (at, models) = cache.as_ref()?;
        (at.elapsed() < self.inner.ttl).then(|| Arc::clone(models))
    }
}

fn unix_secs(t: std::io::Result<SystemTime>) -> u64 {
    t.ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Whether a `.gguf` file name is listed as a model.
fn is_model_file_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let Some(stem) = lower.strip_suffix(".gguf") else {
        return false;
    };
    if lower.starts_with("mmproj") || lower.starts_with('.') {
        return false;
    }
    // "model-00002-of-00003": only the first shard names the model.
    if let Some((head, total)) = stem.rsplit_once("-of-") {
        if let Some((_, part)) = head.rsplit_once('-') {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if digits(part) && digits(total) {
                return part.trim_start_matches('0') == "1";
            }
        }
    }
    true
}

/// Bounded recursive walk that calls `on_file(path, relative_path, size, mtime)`
/// for every GGUF model file below `root`.
struct Walker {
    visited: HashSet<PathBuf>,
    entries: usize,
}

impl Walker {
    fn new() -> Self {
        Self {
            visited: HashSet::new(),
            entries: 0,
        }
    }

    fn walk(
        &mut self,
        root: &Path,
        max_depth: usize,
        on_file: &mut dyn FnMut(&Path, &Path, &fs::Metadata),
    ) {
        self.walk_dir(root, Path::new(""), max_depth, on_file);
    }

    fn walk_dir(
        &mut self,
        dir: &Path,
        rel: &Path,
        depth_left: usize,
        on_file: &mut dyn FnMut(&Path, &Path, &fs::Metadata),
    ) {
        let Ok(canonical) = fs::canonicalize(dir) else {
            return;
        };
        if !self.visited.insert(canonical) {
            return; // symlink loop or a folder reached twice
        }
        let Ok(read) = fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = read.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                tracing::warn!(root = %dir.display(), "model scan stopped: too many entries");
                return;
            }
            let name = entry.file_name();
            let Some(name_str) = name.to_str() else {
                continue;
            };
            if name_str.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // `fs::metadata` follows symlinks (HF snapshots link into blobs/).
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let child_rel = rel.join(&name);
            if meta.is_dir() {
                if depth_left > 0 {
                    self.walk_dir(&path, &child_rel, depth_left - 1, on_file);
                }
            } else if meta.is_file() && is_model_file_name(name_str) && has_gguf_magic(&path) {
                on_file(&path, &child_rel, &meta);
            }
        }
    }
}

fn rel_id(rel: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

fn scan_plain(root: &Path, source: ModelSource, out: &mut Vec<ModelInfo>) {
    Walker::new().walk(root, MAX_DEPTH, &mut |path, rel, meta| {
        if let Some(id) = rel_id(rel) {
            out.push(ModelInfo {
                id,
                path: path.to_path_buf(),
                source,
                size: meta.len(),
                created: unix_secs(meta.modified()),
            });
        }
    });
}

fn scan_huggingface(hub: &Path, out: &mut Vec<ModelInfo>) {
    let Ok(read) = fs::read_dir(hub) else {
        return;
    };
    let mut repos: Vec<_> = read.filter_map(Result::ok).collect();
    repos.sort_by_key(|e| e.file_name());
    for repo in repos {
        let folder = repo.file_name();
        let Some(repo_id) = folder
            .to_str()
            .and_then(|f| f.strip_prefix("models--"))
            .map(|r| r.replace("--", "/"))
        else {
            continue;
        };
        let Ok(read) = fs::read_dir(repo.path().join("snapshots")) else {
            continue;
        };
        // Newest revision first, so its files win the id.
        let mut revs: Vec<_> = read
            .filter_map(Result::ok)
            .map(|e| {
                let mtime = unix_secs(e.metadata().and_then(|m| m.modified()));
                (std::cmp::Reverse(mtime), e.file_name(), e.path())
            })
            .collect();
        revs.sort();
        let mut walker = Walker::new();
        for (_, _, rev) in revs {
            walker.walk(&rev, MAX_DEPTH, &mut |path, rel, meta| {
                if let Some(file) = rel_id(rel) {
                    out.push(ModelInfo {
                        id: format!("{repo_id}/{file}"),
                        path: path.to_path_buf(),
                        source: ModelSource::HuggingFace,
                        size: meta.len(),
                        created: unix_secs(meta.modified()),
                    });
                }
            });
        }
    }
}

#[derive(Deserialize)]
struct OllamaManifest {
    #[serde(default)]
    layers: Vec<OllamaLayer>,
}

#[derive(Deserialize)]
struct OllamaLayer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
}

/// `sha256:<64 hex>` → `sha256-<64 hex>`; anything else (a path trick) → None.
fn ollama_blob_name(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256-{hex}"))
}

fn ollama_id(host: &str, namespace: &str, name: &str, tag: &str) -> String {
    if host == OLLAMA_DEFAULT_REGISTRY {
        if namespace == "library" {
            format!("{name}:{tag}")
        } else {
            format!("{namespace}/{name}:{tag}")
        }
    } else {
        format!("{host}/{namespace}/{name}:{tag}")
    }
}

fn scan_ollama(models: &Path, out: &mut Vec<ModelInfo>) {
    let manifests = models.join("manifests");
    let blobs = models.join("blobs");
    let mut found = Vec::new();
    // Manifests sit exactly four levels down: host/namespace/name/tag.
    Walker::new().walk_manifests(&manifests, &mut |path, rel| {
        let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
        let [host, namespace, name, tag] = parts[..] else {
            return;
        };
        let Some(blob_name) = read_ollama_manifest(path) else {
            return;
        };
        let blob = blobs.join(blob_name);
        let Ok(meta) = fs::metadata(&blob) else {
            return;
        };
        if !meta.is_file() || !has_gguf_magic(&blob) {
            return;
        }
        found.push(ModelInfo {
            id: ollama_id(host, namespace, name, tag),
            path: blob,
            source: ModelSource::Ollama,
            size: meta.len(),
            created: unix_secs(fs::metadata(path).and_then(|m| m.modified())),
        });
    });
    out.extend(found);
}

fn read_ollama_manifest(path: &Path) -> Option<String> {
    let file = fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    let manifest: OllamaManifest = serde_json::from_str(&text).ok()?;
    manifest
        .layers
        .iter()
        .find(|l| l.media_type == OLLAMA_MODEL_MEDIA_TYPE)
        .and_then(|l| ollama_blob_name(&l.digest))
}

impl Walker {
    /// Calls `on_file` for every regular file exactly four levels below `root`.
    fn walk_manifests(&mut self, root: &Path, on_file: &mut dyn FnMut(&Path, &Path)) {
        self.walk_any(root, Path::new(""), 4, on_file);
    }

    fn walk_any(
        &mut self,
        dir: &Path,
        rel: &Path,
        levels: usize,
        on_file: &mut dyn FnMut(&Path, &Path),
    ) {
        let Ok(canonical) = fs::canonicalize(dir) else {
            return;
        };
        if !self.visited.insert(canonical) {
            return;
        }
        let Ok(read) = fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = read.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return;
            }
            let name = entry.file_name();
            if name.to_str().is_none_or(|n| n.starts_with('.')) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let child_rel = rel.join(&name);
            if levels > 1 && meta.is_dir() {
                self.walk_any(&path, &child_rel, levels - 1, on_file);
            } else if levels == 1 && meta.is_file() {
                on_file(&path, &child_rel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn gguf(path: &Path) {
        write(path, b"GGUF\x03\x00\x00\x00fake");
    }

    fn manifest(digest: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"layers":[
              {{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{DIGEST}","size":1}},
              {{"mediaType":"application/vnd.ollama.image.model","digest":"{digest}","size":12}}]}}"#
        )
    }

    /// A home folder with Ollama, LM Studio and Hugging Face layouts.
    fn fake_home() -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        // Ollama: one library model, one user model, one broken manifest,
        // one manifest whose blob is not GGUF, one path-traversal digest.
        let ollama = h.join(".ollama/models");
        gguf(&ollama.join(format!("blobs/sha256-{DIGEST}")));
        let other = DIGEST.replace('0', "f");
        write(&ollama.join(format!("blobs/sha256-{other}")), b"NOTGGUF");
        let m = ollama.join("manifests/registry.ollama.ai");
        write(
            &m.join("library/qwen3/8b"),
            manifest(&format!("sha256:{DIGEST}")).as_bytes(),
        );
        write(
            &m.join("someone/tiny/latest"),
            manifest(&format!("sha256:{DIGEST}")).as_bytes(),
        );
        write(&m.join("library/broken/latest"), b"{not json");
        write(
            &m.join("library/notgguf/latest"),
            manifest(&format!("sha256:{other}")).as_bytes(),
        );
        write(
            &m.join("library/evil/latest"),
            manifest("sha256:../../../../etc/passwd").as_bytes(),
        );
        // LM Studio, both folders.
        gguf(&h.join(".lmstudio/models/lmstudio-community/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf"));
        write(
            &h.join(".lmstudio/models/lmstudio-community/Qwen3-8B-GGUF/README.gguf"),
            b"# not a model",
        );
        gguf(&h.join(".lmstudio/models/lmstudio-community/Qwen3-8B-GGUF/mmproj-F16.gguf"));
        gguf(&h.join(".cache/lm-studio/models/old/repo/m-Q8_0.gguf"));
        // Hugging Face cache: snapshot files are symlinks into blobs/.
        let repo = h.join(".cache/huggingface/hub/models--unsloth--gpt-oss-20b-GGUF");
        gguf(&repo.join("blobs/abc"));
        fs::create_dir_all(repo.join("snapshots/rev1")).unwrap();
        symlink(
            &repo.join("blobs/abc"),
            &repo.join("snapshots/rev1/gpt-oss-20b-Q4_K_M.gguf"),
        );
        gguf(&repo.join("snapshots/rev1/big/model-00001-of-00002.gguf"));
        gguf(&repo.join("snapshots/rev1/big/model-00002-of-00002.gguf"));
        write(&repo.join("snapshots/rev1/config.json"), b"{}");
        home
    }

    #[cfg(unix)]
    fn symlink(target: &Path, link: &Path) {
        std::os::unix::fs::symlink(target, link).unwrap();
    }

    #[cfg(not(unix))]
    fn symlink(target: &Path, link: &Path) {
        fs::copy(target, link).unwrap();
    }

    fn ids(models: &[ModelInfo]) -> Vec<&str> {
        models.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn finds_models_in_all_standard_layouts() {
        let home = fake_home();
        let models = discover(&ModelLocations::under_home(home.path()), &[]);
        assert_eq!(
            ids(&models),
            [
                "qwen3:8b",
                "someone/tiny:latest",
                "lmstudio-community/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf",
                "old/repo/m-Q8_0.gguf",
                "unsloth/gpt-oss-20b-GGUF/big/model-00001-of-00002.gguf",
                "unsloth/gpt-oss-20b-GGUF/gpt-oss-20b-Q4_K_M.gguf",
            ]
        );
        let q = &models[0];
        assert_eq!(q.source, ModelSource::Ollama);
        assert!(q.path.ends_with(format!("blobs/sha256-{DIGEST}")));
        assert_eq!(q.size, 12);
        assert!(q.created > 0);
        assert_eq!(models[2].source, ModelSource::LmStudio);
        assert_eq!(models[5].source, ModelSource::HuggingFace);
    }

    #[test]
    fn extra_dirs_are_scanned_and_ids_deduplicated() {
        let home = fake_home();
        let extra = tempfile::tempdir().unwrap();
        gguf(&extra.path().join("a/model.gguf"));
        write(&extra.path().join("a/notes.txt"), b"GGUF but not .gguf");
        write(&extra.path().join("b/empty.gguf"), b"");
        let dirs = vec![extra.path().to_path_buf(), extra.path().to_path_buf()];
        let models = discover(&ModelLocations::none(), &dirs);
        assert_eq!(ids(&models), ["a/model.gguf"]);
        assert_eq!(models[0].source, ModelSource::Dir);
        drop(home);
    }

    #[test]
    fn missing_and_unreadable_roots_are_skipped() {
        let loc = ModelLocations {
            ollama: vec!["/nonexistent/ollama".into()],
            lmstudio: vec!["/nonexistent/lms".into()],
            huggingface: vec!["/dev/null".into()],
        };
        assert!(discover(&loc, &["/nonexistent".into()]).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_terminate() {
        let dir = tempfile::tempdir().unwrap();
        gguf(&dir.path().join("x/m.gguf"));
        symlink(dir.path(), &dir.path().join("x/loop"));
        symlink(&dir.path().join("x"), &dir.path().join("y"));
        let models = discover(&ModelLocations::none(), &[dir.path().to_path_buf()]);
        assert_eq!(ids(&models), ["x/m.gguf"]);
    }

    #[test]
    fn depth_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let deep: PathBuf = (0..MAX_DEPTH + 2).map(|i| format!("d{i}")).collect();
        gguf(&dir.path().join(&deep).join("too-deep.gguf"));
        gguf(&dir.path().join("d0/ok.gguf"));
        let models = discover(&ModelLocations::none(), &[dir.path().to_path_buf()]);
        assert_eq!(ids(&models), ["d0/ok.gguf"]);
    }

    #[test]
    fn model_file_names() {
        assert!(is_model_file_name("Qwen3-8B-Q4_K_M.gguf"));
        assert!(is_model_file_name("X.GGUF"));
        assert!(is_model_file_name("m-00001-of-00003.gguf"));
        assert!(!is_model_file_name("m-00002-of-00003.gguf"));
        assert!(!is_model_file_name("mmproj-model-f16.gguf"));
        assert!(!is_model_file_name("model.bin"));
        assert!(is_model_file_name("weird-of-.gguf"));
    }

    #[test]
    fn ollama_names() {
        assert_eq!(
            ollama_id("registry.ollama.ai", "library", "llama3.2", "3b"),
            "llama3.2:3b"
        );
        assert_eq!(ollama_id("registry.ollama.ai", "u", "m", "t"), "u/m:t");
        assert_eq!(ollama_id("hf.co", "org", "repo", "Q4"), "hf.co/org/repo:Q4");
        assert_eq!(ollama_blob_name("sha256:../x"), None);
        assert_eq!(ollama_blob_name("md5:00"), None);
    }

    #[tokio::test]
    async fn catalog_finds_bare_ollama_name_and_caches() {
        let home = fake_home();
        let catalog = ModelCatalog::new(
            ModelLocations::under_home(home.path()),
            vec![],
            Duration::from_secs(60),
        );
        assert_eq!(catalog.find("qwen3:8b").await.unwrap().id, "qwen3:8b");
        assert_eq!(
            catalog.find("someone/tiny").await.unwrap().id,
            "someone/tiny:latest"
        );
        assert!(catalog.find("nope").await.is_none());
        let before = catalog.list().await;
        gguf(&home.path().join(".lmstudio/models/new/one.gguf"));
        assert!(
            Arc::ptr_eq(&before, &catalog.list().await),
            "cached within TTL"
        );
    }
}
