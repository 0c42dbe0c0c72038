//! The prefix cache's second tier: KV blocks on disk, so a restarted
//! service (a reboot, an upgrade, `clawpen up` again) does not pay an
//! agent's whole system prompt again — 11.6k tokens of OpenClaw's, minutes
//! of prefill on a CPU.
//!
//! The cache of a token sequence is kept as blocks of [`BLOCK_TOKENS`]
//! tokens, one file each, named by a chained hash: a block's key hashes the
//! previous block's key with its own tokens, and the first key hashes the
//! model's fingerprint and the client's scope. A key therefore names one
//! whole prefix of one model for one client, so the blocks of a
//! conversation's next turn are the same files plus new ones (a turn writes
//! only its new blocks), and one client never reads another's (the memory
//! tier's reason for scoping applies here too).
//!
//! A file is never trusted: it starts with a magic, a format version, the
//! model's fingerprint, the KV shape and the block's tokens, and ends with
//! the SHA-256 of everything before; a file that disagrees with what its
//! name promises (corrupt, truncated, another model's or version's) is
//! removed and the tokens are computed again. Files are written to a
//! temporary name and renamed, so a crash leaves whole blocks or none.
//! Bounded by bytes: past the budget the least recently used files go
//! (their modification time is refreshed on every hit).
//!
//! Writes happen on a thread of their own after a generation ended (the
//! answer never waits for the disk); when that thread is still busy, the
//! blocks of that turn are simply not written (the next turn's write
//! carries them, as its sequence extends this one's).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::model::KvCache;

/// Tokens per block file. Large enough that a long prompt is a few dozen
/// files (6 MiB each on Qwen2.5-0.5B), small enough that a conversation's
/// turn rewrites little.
pub const BLOCK_TOKENS: usize = 256;

const MAGIC: &[u8; 8] = b"CLAWPKV\0";
/// Bumped whenever the layout of a file or the meaning of its numbers
/// changes: older files are then refused (and removed) rather than read.
const VERSION: u32 = 1;
const EXTENSION: &str = "kv";

/// Where the disk tier keeps its blocks and how many bytes of them, per
/// model (`serve --prefix-cache-disk-mib`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTierConfig {
    /// Each model's blocks go to a folder of their own under it.
    pub dir: PathBuf,
    /// 0 turns the tier off.
    pub bytes: u64,
}

/// Each model's disk tier when none is configured: 4 GiB holds ~170k
/// tokens of a Qwen2.5-0.5B, ~30k of a 7B model.
pub const DEFAULT_DISK_BYTES: u64 = 4 << 30;

/// What a model's KV cache looks like; a file of another shape is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// f32 values of one layer's keys (or values) for `tokens` tokens.
    fn values(&self, tokens: usize) -> usize {
        self.kv_heads * tokens * self.head_dim
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    #[error("prefix cache folder {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("prefix cache block {path} refused: {why}")]
    Refused { path: PathBuf, why: String },
    #[error("prefix cache block {path}: {source}")]
    Tensor {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
}

/// Counters of the disk tier, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Lookups that found a longer prefix on disk than in memory.
    pub hits: u64,
    /// Tokens read back from disk instead of computed.
    pub loaded_tokens: u64,
    /// Block files written.
    pub written_blocks: u64,
    /// Files refused (corrupt, foreign) and removed.
    pub refused_blocks: u64,
    /// Bytes the folder holds.
    pub bytes: u64,
}

/// One model's blocks on disk; see the module documentation.
#[derive(Debug)]
pub struct DiskCache {
    shared: Arc<Shared>,
    /// Jobs for the writer thread (at most one waiting).
    writer: SyncSender<WriteJob>,
    hits: u64,
    loaded_tokens: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    budget: u64,
    fingerprint: [u8; 32],
    shape: KvShape,
    bytes: AtomicU64,
    written: AtomicU64,
    refused: AtomicU64,
}

/// One layer's keys and values of one block, as read from its file.
struct LayerValues {
    keys: Vec<f32>,
    values: Vec<f32>,
}

enum WriteJob {
    Blocks {
        scope: String,
        tokens: Vec<u32>,
        kv: KvCache,
    },
    /// Answered once every earlier job is done.
    Flush(std::sync::mpsc::Sender<()>),
}

impl DiskCache {
    /// The blocks of the model with `fingerprint` (see [`fingerprint`])
    /// under `root`, at most `budget` bytes of them.
    pub fn open(
        root: &Path,
        fingerprint: [u8; 32],
        shape: KvShape,
        budget: u64,
    ) -> Result<Self, DiskCacheError> {
        let dir = root.join(hex::encode(&fingerprint[..8]));
        fs::create_dir_all(&dir).map_err(|source| DiskCacheError::Io {
            path: dir.clone(),
            source,
        })?;
        let bytes = files(&dir)
            .map(|files| files.iter().map(|f| f.1).sum())
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            dir,
            budget,
            fingerprint,
            shape,
            bytes: AtomicU64::new(bytes),
            written: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let (writer, jobs) = sync_channel::<WriteJob>(1);
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("clawpen-kv-disk".into())
            .spawn(move || {
                for job in jobs {
                    match job {
                        WriteJob::Blocks { scope, tokens, kv } => {
                            worker.write_blocks(&scope, &tokens, &kv)
                        }
                        WriteJob::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(|source| DiskCacheError::Io {
                path: shared.dir.clone(),
                source,
            })?;
        Ok(Self {
            shared,
            writer,
            hits: 0,
            loaded_tokens: 0,
        })
    }

    pub fn stats(&self) -> DiskStats {
        DiskStats {
            hits: self.hits,
            loaded_tokens: self.loaded_tokens,
            written_blocks: self.shared.written.load(Ordering::Relaxed),
            refused_blocks: self.shared.refused.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
        }
    }

    /// The cache of the longest run of `prompt`'s blocks on disk for
    /// `scope` (at most all but the prompt's last token), when it is longer
    /// than `longer_than` tokens.
    pub fn load(
        &mut self,
        scope: &str,
        prompt: &[u32],
        longer_than: usize,
        device: &Device,
    ) -> Option<(usize, KvCache)> {
        let usable = prompt.len().saturating_sub(1) / BLOCK_TOKENS;
        if usable * BLOCK_TOKENS <= longer_than {
            return None;
        }
        let keys = self.shared.keys(scope, &prompt[..usable * BLOCK_TOKENS]);
        // Which blocks exist, before reading any.
        let present = keys
            .iter()
            .take_while(|k| self.shared.path(k).is_file())
            .count();
        if present * BLOCK_TOKENS <= longer_than {
            return None;
        }
        let mut blocks = Vec::with_capacity(present);
        for (i, key) in keys[..present].iter().enumerate() {
            let tokens = &prompt[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS];
            match self.shared.read_block(key, tokens) {
                Ok(block) => blocks.push(block),
                Err(e) => {
                    tracing::warn!(error = %e, "prefix cache block refused; recomputing");
                    self.shared.remove(key);
                    break;
                }
            }
        }
        let n = blocks.len() * BLOCK_TOKENS;
        if n <= longer_than {
            return None;
        }
        match self.shared.assemble(blocks, device) {
            Ok(kv) => {
                self.hits += 1;
                self.loaded_tokens += n as u64;
                Some((n, kv))
            }
            Err(e) => {
                tracing::warn!(error = %e, "prefix cache blocks unusable; recomputing");
                None
            }
        }
    }

    /// Hands the full blocks of `tokens` (whose cache is `kv`) to the
    /// writer thread, which writes those not on disk yet. Never waits: a
    /// busy writer skips this turn.
    pub fn store(&self, scope: &str, tokens: &[u32], kv: &KvCache) {
        if tokens.len() < BLOCK_TOKENS || kv.len() < tokens.len() {
            return;
        }
        let job = WriteJob::Blocks {
            scope: scope.to_owned(),
            tokens: tokens.to_vec(),
            kv: kv.clone(),
        };
        match self.writer.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("prefix cache writer busy; this turn's blocks are not written")
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("prefix cache writer gone; nothing is written to disk")
            }
        }
    }

    /// Waits until every block handed over so far is written (tests, and
    /// an orderly shutdown).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.writer.send(WriteJob::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

impl Shared {
    /// The chained keys of the full blocks of `tokens`.
    fn keys(&self, scope: &str, tokens: &[u32]) -> Vec<[u8; 32]> {
        let mut key: [u8; 32] = Sha256::new()
            .chain_update(MAGIC)
            .chain_update(VERSION.to_le_bytes())
            .chain_update(self.fingerprint)
            .chain_update((scope.len() as u64).to_le_bytes())
            .chain_update(scope.as_bytes())
            .finalize()
            .into();
        tokens
            .chunks_exact(BLOCK_TOKENS)
            .map(|block| {
                let mut h = Sha256::new().chain_update(key);
                for t in block {
                    h.update(t.to_le_bytes());
                }
                key = h.finalize().into();
                key
            })
            .collect()
    }

    fn path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}.{EXTENSION}", hex::encode(&key[..16])))
    }

    fn remove(&self, key: &[u8; 32]) {
        let path = self.path(key);
        if let Ok(meta) = fs::metadata(&path) {
            if fs::remove_file(&path).is_ok() {
                self.bytes.fetch_sub(meta.len(), Ordering::Relaxed);
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The file's header: what it must say to be this block of this model.
    fn header(&self, key: &[u8; 32], tokens: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + tokens.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(key);
        for n in [
            self.shape.layers,
            self.shape.kv_heads,
            self.shape.head_dim,
            tokens.len(),
        ] {
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for t in tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out
    }

    fn file_len(&self, header: usize) -> usize {
        header + self.shape.layers * 2 * self.shape.values(BLOCK_TOKENS) * 4 + 32
    }

    /// Per layer, the block's keys and values as read back and checked.
    fn read_block(
        &self,
        key: &[u8; 32],
        tokens: &[u32],
    ) -> Result<Vec<LayerValues>, DiskCacheError> {
        let path = self.path(key);
        let refused = |why: &str| DiskCacheError::Refused {
            path: path.clone(),
            why: why.to_owned(),
        };
        let header = self.header(key, tokens);
        let expected = self.file_len(header.len());
        let mut bytes = Vec::with_capacity(expected);
        fs::File::open(&path)
            .and_then(|f| f.take(expected as u64 + 1).read_to_end(&mut bytes))
            .map_err(|source| DiskCacheError::Io {
                path: path.clone(),
                source,
            })?;
        if bytes.len() != expected {
            return Err(refused(&format!(
                "{} bytes, a block of this model has {expected}",
                bytes.len()
            )));
        }
        if bytes[..MAGIC.len()] != MAGIC[..] {
            return Err(refused("not a clawpen prefix cache block"));
        }
        if bytes[..header.len()] != header[..] {
            return Err(refused(
                "written for another format version, model, shape or tokens",
            ));
        }
        let (body, sum) = bytes.split_at(expected - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(refused("checksum mismatch"));
        }
        let per = self.shape.values(BLOCK_TOKENS);
        let values: Vec<f32> = body[header.len()..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let _ = fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Ok(values
            .chunks_exact(2 * per)
            .map(|layer| LayerValues {
                keys: layer[..per].to_vec(),
                values: layer[per..].to_vec(),
            })
            .collect())
    }

    /// A cache of the blocks, in order.
    fn assemble(
        &self,
        blocks: Vec<Vec<LayerValues>>,
        device: &Device,
    ) -> Result<KvCache, DiskCacheError> {
        let tensor_error = |source| DiskCacheError::Tensor {
            path: self.dir.clone(),
            source,
        };
        let n = blocks.len() * BLOCK_TOKENS;
        let KvShape {
            layers,
            kv_heads,
            head_dim,
        } = self.shape;
        let mut per_layer = Vec::with_capacity(layers);
        for layer in 0..layers {
            let part = |pick: fn(&LayerValues) -> &[f32]| {
                let parts: Vec<Tensor> = blocks
                    .iter()
                    .map(|b| {
                        Tensor::from_slice(
                            pick(&b[layer]),
                            (1, kv_heads, BLOCK_TOKENS, head_dim),
                            device,
                        )
                    })
                    .collect::<candle_core::Result<_>>()?;
                Tensor::cat(&parts, 2)
            };
            let k = part(|l| &l.keys).map_err(tensor_error)?;
            let v = part(|l| &l.values).map_err(tensor_error)?;
            per_layer.push((k, v));
        }
        KvCache::from_layers(per_layer, n).map_err(tensor_error)
    }

    fn write_blocks(&self, scope: &str, tokens: &[u32], kv: &KvCache) {
        if self.budget == 0 {
            return;
        }
        let keys = self.keys(scope, tokens);
        for (i, key) in keys.iter().enumerate() {
            let path = self.path(key);
            if path.is_file() {
                continue;
            }
            let block = &tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS];
            match self.write_block(key, block, kv, i * BLOCK_TOKENS) {
                Ok(len) => {
                    self.bytes.fetch_add(len, Ordering::Relaxed);
                    self.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "prefix cache block not written");
                    return;
                }
            }
        }
        if self.bytes.load(Ordering::Relaxed) > self.budget {
            self.evict();
        }
    }

    fn write_block(
        &self,
        key: &[u8; 32],
        tokens: &[u32],
        kv: &KvCache,
        start: usize,
    ) -> Result<u64, DiskCacheError> {
        let path = self.path(key);
        let io_error = |source| DiskCacheError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = self.header(key, tokens);
        for layer in 0..self.shape.layers {
            let (k, v) = kv
                .block(layer, start, BLOCK_TOKENS)
                .and_then(|(k, v)| Ok((flat(&k)?, flat(&v)?)))
                .map_err(|source| DiskCacheError::Tensor {
                    path: path.clone(),
                    source,
                })?;
            for x in k.iter().chain(&v) {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum);
        let partial = path.with_extension("partial");
        let mut f = fs::File::create(&partial).map_err(io_error)?;
        f.write_all(&bytes).map_err(io_error)?;
        drop(f);
        fs::rename(&partial, &path).map_err(io_error)?;
        Ok(bytes.len() as u64)
    }

    /// Removes the least recently used files until the folder fits its
    /// budget.
    fn evict(&self) {
        let Ok(mut files) = files(&self.dir) else {
            return;
        };
        files.sort_by_key(|f| f.2);
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (path, len, _) in files {
            if total <= self.budget {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
        self.bytes.store(total, Ordering::Relaxed);
    }
}

/// A tensor's values as f32, in order.
fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// The block files of `dir`: path, length, last use.
fn files(dir: &Path) -> io::Result<Vec<(PathBuf, u64, std::time::SystemTime)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            continue;
        }
        let meta = entry.metadata()?;
        out.push((
            path,
            meta.len(),
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
        ));
    }
    Ok(out)
}

/// What identifies a model file's weights for the disk tier: its length,
/// its first 16 MiB (the GGUF header, metadata and the first tensors) and
/// its last MiB. Reading the whole file would cost seconds at every load;
/// two files that agree on all three are the same model for any purpose
/// short of an attack, and whoever can write the model file owns its
/// outputs anyway.
pub fn fingerprint(path: &Path) -> io::Result<[u8; 32]> {
    const HEAD: u64 = 16 << 20;
    const TAIL: u64 = 1 << 20;
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    let mut buf = Vec::new();
    (&mut f).take(HEAD).read_to_end(&mut buf)?;
    h.update(&buf);
    if len > HEAD + TAIL {
        use std::io::Seek;
        f.seek(io::SeekFrom::Start(len - TAIL))?;
        buf.clear();
        f.take(TAIL).read_to_end(&mut buf)?;
        h.update(&buf);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: KvShape = KvShape {
        layers: 2,
        kv_heads: 2,
        head_dim: 4,
    };

    /// A cache of `n` tokens whose values say where they are.
    fn kv(n: usize, seed: f32) -> KvCache {
        let layers = (0..SHAPE.layers)
            .map(|l| {
                let values = |which: f32| -> Tensor {
                    let data: Vec<f32> = (0..SHAPE.values(n))
                        .map(|i| seed + which + l as f32 * 0.5 + i as f32 * 1e-3)
                        .collect();
                    Tensor::from_vec(data, (1, SHAPE.kv_heads, n, SHAPE.head_dim), &Device::Cpu)
                        .unwrap()
                };
                (values(0.0), values(0.25))
            })
            .collect();
        KvCache::from_layers(layers, n).unwrap()
    }

    fn same(a: &KvCache, b: &KvCache, n: usize) {
        for layer in 0..SHAPE.layers {
            let (ak, av) = a.block(layer, 0, n).unwrap();
            let (bk, bv) = b.block(layer, 0, n).unwrap();
            assert_eq!(flat(&ak).unwrap(), flat(&bk).unwrap());
            assert_eq!(flat(&av).unwrap(), flat(&bv).unwrap());
        }
    }

    fn block_files(disk: &DiskCache) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        files(&disk.shared.dir).unwrap()
    }

    #[test]
    fn blocks_round_trip_per_scope_and_model() {
        let root = tempfile::tempdir().unwrap();
        let tokens: Vec<u32> = (0..(2 * BLOCK_TOKENS + 10) as u32).collect();
        let cache = kv(tokens.len(), 1.0);
        let mut disk = DiskCache::open(root.path(), [7; 32], SHAPE, 1 << 30).unwrap();
        disk.store("vm-a", &tokens, &cache);
        disk.flush();
        assert_eq!(block_files(&disk).len(), 2, "full blocks only");
        let mut prompt = tokens.clone();
        prompt.push(99);
        let (n, back) = disk.load("vm-a", &prompt, 0, &Device::Cpu).unwrap();
        assert_eq!(n, 2 * BLOCK_TOKENS);
        same(&back, &cache, n);
        // Not longer than what memory has: nothing read.
        assert!(disk.load("vm-a", &prompt, n, &Device::Cpu).is_none());
        // Another client, another model, a prompt that differs in block 0.
        assert!(disk.load("vm-b", &prompt, 0, &Device::Cpu).is_none());
        let mut other = DiskCache::open(root.path(), [8; 32], SHAPE, 1 << 30).unwrap();
        assert!(other.load("vm-a", &prompt, 0, &Device::Cpu).is_none());
        prompt[3] = 12345;
        assert!(disk.load("vm-a", &prompt, 0, &Device::Cpu).is_none());
        // A prompt diverging in block 1 reuses block 0.
        let mut prompt = tokens.clone();
        prompt[BLOCK_TOKENS + 1] = 4242;
        let (n, _) = disk.load("vm-a", &prompt, 0, &Device::Cpu).unwrap();
        assert_eq!(n, BLOCK_TOKENS);
        assert_eq!(disk.stats().hits, 2);
    }

    #[test]
    fn foreign_truncated_and_old_files_are_refused_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let tokens: Vec<u32> = (0..BLOCK_TOKENS as u32 + 1).collect();
        let mut disk = DiskCache::open(root.path(), [1; 32], SHAPE, 1 << 30).unwrap();
        let dir = disk.shared.dir.clone();
        let file = || files(&dir).unwrap().pop().map(|f| f.0);
        for damage in [
            // another format version
            (|b: &mut Vec<u8>| b[8] ^= 1) as fn(&mut Vec<u8>),
            // truncated
            |b: &mut Vec<u8>| b.truncate(b.len() - 5),
            // a value changed (checksum)
            |b: &mut Vec<u8>| {
                let at = b.len() - 40;
                b[at] ^= 0x10
            },
            // not ours at all
            |b: &mut Vec<u8>| b[..8].copy_from_slice(b"GGUF\0\0\0\0"),
        ] {
            disk.store("vm", &tokens[..BLOCK_TOKENS], &kv(BLOCK_TOKENS, 2.0));
            disk.flush();
            let path = file().expect("the block was written");
            let mut bytes = fs::read(&path).unwrap();
            damage(&mut bytes);
            fs::write(&path, bytes).unwrap();
            assert!(disk.load("vm", &tokens, 0, &Device::Cpu).is_none());
            assert!(!path.exists(), "a refused block is removed");
        }
        assert_eq!(disk.stats().refused_blocks, 4);
    }

    #[test]
    fn the_budget_keeps_the_most_recently_used_blocks() {
        let root = tempfile::tempdir().unwrap();
        let one = {
            let probe = DiskCache::open(root.path(), [3; 32], SHAPE, 1 << 30).unwrap();
            let tokens: Vec<u32> = (0..BLOCK_TOKENS as u32).collect();
            probe.store("probe", &tokens, &kv(BLOCK_TOKENS, 0.0));
            probe.flush();
            let f = block_files(&probe);
            fs::remove_file(&f[0].0).unwrap();
            f[0].1
        };
        // Room for two blocks.
        let mut disk = DiskCache::open(root.path(), [3; 32], SHAPE, 2 * one + one / 2).unwrap();
        let seq = |first: u32| -> Vec<u32> { (first..first + BLOCK_TOKENS as u32).collect() };
        for (i, first) in [0, 10_000, 20_000].into_iter().enumerate() {
            if i == 2 {
                // The first is used again: the second is now the oldest.
                std::thread::sleep(std::time::Duration::from_millis(20));
                let mut prompt = seq(0);
                prompt.push(1);
                assert!(disk.load("vm", &prompt, 0, &Device::Cpu).is_some());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            disk.store("vm", &seq(first), &kv(BLOCK_TOKENS, first as f32));
            disk.flush();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(block_files(&disk).len(), 2);
        assert!(disk.stats().bytes <= 2 * one + one / 2);
        let found = |first: u32, disk: &mut DiskCache| {
            let mut prompt = seq(first);
            prompt.push(1);
            disk.load("vm", &prompt, 0, &Device::Cpu).is_some()
        };
        assert!(found(0, &mut disk), "used again: kept");
        assert!(!found(10_000, &mut disk), "least recently used: evicted");
        assert!(found(20_000, &mut disk), "newest: kept");
    }
}
