//! Wires the supervisor together: store, image store, hypervisor, VM manager,
//! HTTP server. `clawpen up` is a thin CLI shell around [`Supervisor`].

use std::path::PathBuf;
use std::sync::Arc;

use clawpen_api::{Event, VmInfo, VmName, VmSpec};
use clawpen_vmimage::{ImageStore, Progress};

use crate::api::{self, AppState};
use crate::auth::Token;
use crate::egress::Egress;
use crate::events::EventBus;
use crate::inference_relay::RecentInference;
use crate::jail::Jail;
use crate::paths::StateDir;
use crate::store::Store;
use crate::vm::backend::qemu::accel::Accel;
use crate::vm::backend::{self, BackendError};
use crate::vm::{VmContext, VmError, VmManager};

/// The VM `clawpen up` makes on first run.
pub const DEMO_VM: &str = "demo";

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Paths(#[from] crate::paths::PathsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    #[error(transparent)]
    Image(#[from] clawpen_vmimage::ImageError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct SupervisorConfig {
    pub state_dir: StateDir,
    pub images_dir: PathBuf,
    pub site_dir: PathBuf,
    /// `None`: probe (cached per host kernel), or `$CLAWPEN_ACCEL`.
    pub accel: Option<Accel>,
    /// Folders under which shares are allowed (none: sharing is off).
    pub share_roots: Vec<std::path::PathBuf>,
}

pub struct Supervisor {
    pub state_dir: StateDir,
    pub token: Arc<Token>,
    /// The console's browser sessions (cookies exchanged for the token).
    sessions: crate::api::Sessions,
    pub events: EventBus,
    pub vms: Arc<VmManager>,
    pub egress: Arc<Egress>,
    /// Every VM's inference key → VM name; the inference service that
    /// `up` runs checks keys against this table.
    pub inference_keys: clawpen_inference::keys::ApiKeys,
    /// The last relayed inference records (`up` feeds it).
    pub recent_inference: RecentInference,
    site_dir: PathBuf,
}

impl Supervisor {
    /// Opens the state, builds the test guest image if needed (reporting
    /// progress through `progress`), picks the accelerator and recovers VMs
    /// left by a previous run.
    pub async fn open(
        config: SupervisorConfig,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<Self, SupervisorError> {
        let store = Arc::new(Store::open(&config.state_dir.database())?);
        let token = Arc::new(Token::load_or_create(&config.state_dir.token_file())?);
        let events = EventBus::default();
        let images = ImageStore::open(&config.images_dir)?;
        let image = {
            let images = images.clone();
            let events = events.clone();
            let report = |p: Progress| {
                progress(&p);
                events.publish(Event::Progress {
                    task: "image build".into(),
                    step: p.step.clone(),
                    done: p.done,
                    total: p.total,
                });
            };
            tokio::task::block_in_place(|| images.ensure_test_guest(&report))?
        };
        let jail = Jail::detect()?;
        tracing::info!(?jail, "VMM jail");
        let hypervisor = backend::for_host(backend::HostSetup {
            jail,
            accel: config.accel,
            store: &store,
            probe_image: &image,
            state_dir: &config.state_dir,
        })
        .await?;
        let egress = Egress::new(store.clone(), events.clone())?;
        let inference_keys = clawpen_inference::keys::ApiKeys::default();
        let ctx = Arc::new(VmContext {
            store,
            events: events.clone(),
            hypervisor,
            images: images.clone(),
            state_dir: config.state_dir.clone(),
            egress: egress.clone(),
            share_scope: crate::share::ShareScope::new(&config.share_roots, dirs::home_dir()),
            inference_keys: inference_keys.clone(),
            served_model: Default::default(),
        });
        let vms = VmManager::recover(ctx).await?;
        Ok(Self {
            inference_keys,
            recent_inference: RecentInference::default(),
            state_dir: config.state_dir,
            token,
            sessions: Default::default(),
            events,
            vms,
            egress,
            site_dir: config.site_dir,
        })
    }

    /// Makes the `demo` VM if it does not exist yet.
    pub fn ensure_demo(&self) -> Result<VmName, SupervisorError> {
        let name = VmName::parse(DEMO_VM).expect("valid name");
        match self.vms.create(VmSpec {
            name: name.clone(),
            image: clawpen_vmimage::TEST_GUEST.to_string(),
            cpus: 1,
            memory_mib: 256,
            disk_gib: None,
        }) {
            Ok(_) | Err(VmError::Exists(_)) => Ok(name),
            Err(e) => Err(e.into()),
        }
    }

    /// The API and console app for one listener; `secure_cookies` when it
    /// is TLS (see `api::router`).
    pub fn router(&self, secure_cookies: bool) -> axum::Router {
        let source: Arc<dyn clawpen_console::VmSource> = Arc::new(ConsoleSource(
            self.vms.clone(),
            self.recent_inference.clone(),
        ));
        let console = clawpen_console::router(self.site_dir.clone(), source);
        api::router(
            AppState {
                vms: self.vms.clone(),
                events: self.events.clone(),
                token: self.token.clone(),
                sessions: self.sessions.clone(),
                egress: self.egress.clone(),
                recent_inference: self.recent_inference.clone(),
            },
            console,
            secure_cookies,
        )
    }

    /// Where CLI clients find this supervisor (written by `up`).
    pub fn write_endpoint(&self, url: &str) -> Result<(), SupervisorError> {
        let path = self.state_dir.root().join("supervisor.url");
        std::fs::write(&path, url).map_err(|source| SupervisorError::Write { path, source })
    }
}

/// The console reads VMs straight from the manager (and inference records
/// from the relay's ring) while rendering on the server.
struct ConsoleSource(Arc<VmManager>, RecentInference);

impl clawpen_console::VmSource for ConsoleSource {
    fn list_vms(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<VmInfo>, String>> + Send + '_>>
    {
        Box::pin(async move { Ok(self.0.list()) })
    }

    fn recent_inference(&self) -> Vec<clawpen_api::InferenceRecord> {
        self.1.list()
    }
}
