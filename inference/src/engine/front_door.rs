//! One front door for all of a user's model servers: the local engine and
//! any number of upstreams (LM Studio on a Mac, a colleague's llama.cpp, a
//! vLLM cluster) behind one `/v1`. A request's `model` picks the engine
//! that serves it; `/v1/models` lists everything that answers.
//!
//! clawpen routes, it does not distribute: a model too big for one machine
//! is served by an engine made for that (vLLM with Ray, llama.cpp's RPC
//! backend, EXO) and appears here as one more upstream.
//!
//! Each upstream's model list is asked for at start and every
//! [`HEALTH_EVERY`] after. One that stops answering is marked down: its
//! models (the last list it gave) answer 503 naming it, the others go on,
//! and it is back as soon as it answers again. A model served by two
//! engines is refused at start unless a route (`--route MODEL=ENGINE`)
//! says which one serves it; one that shows up twice later is served by
//! the first engine in order, with a warning.
//!
//! With a single engine nothing changes from serving it alone: its own
//! rules for unlisted names apply (an upstream that lists no models is
//! handed every name).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{Engine, ModelCard};

/// How often each upstream's model list is asked for again.
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);

/// The name of the local engine among the engines (`--route MODEL=local`).
pub const LOCAL: &str = "local";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrontDoorError {
    #[error(
        "model '{model}' is served by {first} and by {second}: choose one with --route {model}=ENGINE"
    )]
    Ambiguous {
        model: String,
        first: String,
        second: String,
    },
    #[error("--route {model}={engine}: no such engine (engines: {known})")]
    UnknownEngine {
        model: String,
        engine: String,
        known: String,
    },
    #[error("'model' is required: several engines serve and none is the default")]
    NoModel,
    #[error("model '{0}' is not served by any engine")]
    NotFound(String),
    #[error("model '{model}' is served by {engine}, which is not answering ({reason})")]
    Down {
        model: String,
        engine: String,
        reason: String,
    },
}

/// One engine behind the door.
#[derive(Debug)]
struct Backend {
    /// `local`, or the upstream's base URL.
    name: String,
    engine: Arc<dyn Engine>,
    state: Mutex<Health>,
}

#[derive(Debug, Clone, Default)]
struct Health {
    /// The models it listed last time it answered.
    models: Vec<String>,
    /// Why it is down; `None` while it answers.
    down: Option<String>,
}

/// A model and the engine serving it, for `/v1/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub model: String,
    /// `local` or the upstream's URL.
    pub engine: String,
    /// The engine's kind (`local`, `upstream`): OpenAI's `owned_by`.
    pub kind: &'static str,
    /// The model's facts, where its engine knows them.
    pub card: Option<ModelCard>,
}

/// What a request's `model` resolved to.
#[derive(Debug, Clone)]
pub struct Routed {
    pub engine: Arc<dyn Engine>,
    pub model: String,
    /// `local` or the upstream's URL, for the request's record.
    pub engine_name: String,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FrontDoor {
    backends: Vec<Backend>,
    /// Model → index into `backends`, from `--route`.
    routes: BTreeMap<String, usize>,
    default_model: Option<String>,
    /// Every engine was asked once: from then on `/v1/models` reads what
    /// the health checks recorded instead of asking each upstream again
    /// (one that does not answer would hold every listing for its
    /// timeout).
    asked: AtomicBool,
}

impl FrontDoor {
    /// The engines in order (`(name, engine)`), the routes chosen
    /// (`(model, engine name)`), and the model used when a request names
    /// none (with several engines).
    pub fn new(
        engines: Vec<(String, Arc<dyn Engine>)>,
        routes: &[(String, String)],
        default_model: Option<String>,
    ) -> Result<Self, FrontDoorError> {
        let backends: Vec<Backend> = engines
            .into_iter()
            .map(|(name, engine)| Backend {
                name,
                engine,
                state: Mutex::new(Health::default()),
            })
            .collect();
        let mut table = BTreeMap::new();
        for (model, engine) in routes {
            let Some(i) = backends.iter().position(|b| b.name == *engine) else {
                return Err(FrontDoorError::UnknownEngine {
                    model: model.clone(),
                    engine: engine.clone(),
                    known: backends
                        .iter()
                        .map(|b| b.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            table.insert(model.clone(), i);
        }
        Ok(Self {
            backends,
            routes: table,
            default_model,
            asked: AtomicBool::new(false),
        })
    }

    /// The only engine, when there is one: it is then served as if alone.
    fn single(&self) -> Option<&Backend> {
        match self.backends.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// Asks every engine for its models now and records who answers.
    pub async fn refresh(&self) {
        self.asked.store(true, Ordering::Relaxed);
        for b in &self.backends {
            let listed = b.engine.models_now().await;
            let Ok(mut state) = b.state.lock() else {
                continue;
            };
            match listed {
                Some(models) => {
                    if let Some(reason) = state.down.take() {
                        tracing::info!(engine = %b.name, was = %reason, "engine answers again");
                    }
                    state.models = models;
                }
                // One engine alone may list nothing (it is handed every
                // name); among several, listing is how requests find it.
                None if self.single().is_none() => {
                    if state.down.is_none() {
                        tracing::warn!(engine = %b.name, "engine not answering; its models are unavailable");
                    }
                    state.down = Some("its model list did not come".into());
                }
                None => {}
            }
        }
    }

    /// At start: every engine asked once; a model two engines serve with
    /// no route for it is an error naming both.
    pub async fn check(&self) -> Result<(), FrontDoorError> {
        if self.single().is_some() {
            return Ok(());
        }
        self.refresh().await;
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        let states: Vec<Health> = self
            .backends
            .iter()
            .map(|b| b.state.lock().map(|s| s.clone()).unwrap_or_default())
            .collect();
        for (b, state) in self.backends.iter().zip(&states) {
            for model in &state.models {
                if self.routes.contains_key(model) {
                    continue;
                }
                if let Some(first) = owner.insert(model, &b.name) {
                    return Err(FrontDoorError::Ambiguous {
                        model: model.clone(),
                        first: first.to_owned(),
                        second: b.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Asks the engines again every [`HEALTH_EVERY`] for as long as the
    /// door exists (nothing to do with one engine).
    pub fn watch(self: &Arc<Self>) {
        if self.single().is_some() {
            return;
        }
        let door: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_EVERY).await;
                let Some(door) = door.upgrade() else {
                    return;
                };
                door.refresh().await;
            }
        });
    }

    /// Every model served, by the engines that answer.
    pub async fn models(&self) -> Vec<Served> {
        if let Some(only) = self.single() {
            let ids = match only.engine.models().await {
                Some(ids) => ids,
                None => only.engine.default_model().into_iter().collect(),
            };
            return ids
                .into_iter()
                .map(|model| Served {
                    card: only.engine.card(&model),
                    model,
                    engine: only.name.clone(),
                    kind: only.engine.kind(),
                })
                .collect();
        }
        if !self.asked.load(Ordering::Relaxed) {
            self.refresh().await;
        }
        let mut out: Vec<Served> = Vec::new();
        for b in &self.backends {
            let Ok(state) = b.state.lock() else { continue };
            if state.down.is_some() {
                continue;
            }
            for model in &state.models {
                let routed_elsewhere = self
                    .routes
                    .get(model)
                    .is_some_and(|i| self.backends[*i].name != b.name);
                if !routed_elsewhere && !out.iter().any(|s| s.model == *model) {
                    out.push(Served {
                        model: model.clone(),
                        engine: b.name.clone(),
                        kind: b.engine.kind(),
                        card: b.engine.card(model),
                    });
                }
            }
        }
        out
    }

    /// The model a request names (or the default) and the engine serving it.
    pub async fn route(&self, requested: Option<&str>) -> Result<Routed, FrontDoorError> {
        let requested = requested.map(str::trim).filter(|m| !m.is_empty());
        if let Some(only) = self.single() {
            return single_route(only, requested).await;
        }
        let model = requested
            .map(str::to_owned)
            .or_else(|| self.default_model.clone())
            .ok_or(FrontDoorError::NoModel)?;
        // What each engine listed last (the health checks keep it fresh);
        // asked again when the name is nowhere, in case it just appeared.
        for attempt in 0..2 {
            if attempt == 1 {
                self.refresh().await;
            }
            let candidates: Vec<usize> = match self.routes.get(&model) {
                Some(i) => vec![*i],
                None => (0..self.backends.len()).collect(),
            };
            for i in candidates {
                let b = &self.backends[i];
                let Ok(state) = b.state.lock().map(|s| s.clone()) else {
                    continue;
                };
                if !lists(&state.models, &model) {
                    continue;
                }
                if let Some(reason) = state.down {
                    return Err(FrontDoorError::Down {
                        model,
                        engine: b.name.clone(),
                        reason,
                    });
                }
                return Ok(Routed {
                    engine: b.engine.clone(),
                    model,
                    engine_name: b.name.clone(),
                });
            }
        }
        Err(FrontDoorError::NotFound(model))
    }
}

/// `list` holds `model` (Ollama lists `NAME:latest` and serves it as `NAME`).
fn lists(list: &[String], model: &str) -> bool {
    let latest = format!("{model}:latest");
    list.iter().any(|m| m == model || *m == latest)
}

/// One engine alone: the name given, else its default, else its only
/// model; a name it does not list is refused when it lists any.
async fn single_route(only: &Backend, requested: Option<&str>) -> Result<Routed, FrontDoorError> {
    let listed = only.engine.models().await;
    let model = match requested {
        Some(m) => m.to_owned(),
        None => only
            .engine
            .default_model()
            .or_else(|| match listed.as_deref() {
                Some([one]) => Some(one.clone()),
                _ => None,
            })
            .ok_or(FrontDoorError::NoModel)?,
    };
    if let Some(list) = listed.filter(|l| !l.is_empty()) {
        if !lists(&list, &model) {
            return Err(FrontDoorError::NotFound(model));
        }
    }
    Ok(Routed {
        engine: only.engine.clone(),
        model,
        engine_name: only.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineError, EngineStream, GenerateRequest, Reads};
    use crate::parse::Family;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An engine that lists `models` while `up` (one module's test double).
    #[derive(Debug)]
    struct Listing {
        models: Vec<String>,
        up: AtomicBool,
    }

    fn listing(models: &[&str]) -> Arc<Listing> {
        Arc::new(Listing {
            models: models.iter().map(|m| m.to_string()).collect(),
            up: AtomicBool::new(true),
        })
    }

    #[async_trait]
    impl Engine for Listing {
        fn kind(&self) -> &'static str {
            "upstream"
        }
        fn default_model(&self) -> Option<String> {
            None
        }
        async fn models(&self) -> Option<Vec<String>> {
            self.up.load(Ordering::Relaxed).then(|| self.models.clone())
        }
        fn family(&self, _model: &str) -> Family {
            Family::Hermes
        }
        fn reads(&self, _model: &str) -> Reads {
            Reads::ANYTHING
        }
        async fn generate(&self, _r: GenerateRequest) -> Result<EngineStream, EngineError> {
            Err(EngineError::NotConfigured)
        }
    }

    fn door(
        engines: &[(&str, &Arc<Listing>)],
        routes: &[(&str, &str)],
    ) -> Result<FrontDoor, FrontDoorError> {
        FrontDoor::new(
            engines
                .iter()
                .map(|(n, e)| (n.to_string(), (*e).clone() as Arc<dyn Engine>))
                .collect(),
            &routes
                .iter()
                .map(|(m, e)| (m.to_string(), e.to_string()))
                .collect::<Vec<_>>(),
            None,
        )
    }

    #[tokio::test]
    async fn a_model_goes_to_the_engine_that_lists_it() {
        let (a, b) = (listing(&["qwen", "llama"]), listing(&["gemma:latest"]));
        let d = door(&[("local", &a), ("http://mac/v1", &b)], &[]).unwrap();
        d.check().await.unwrap();
        assert_eq!(d.route(Some("llama")).await.unwrap().engine_name, "local");
        let r = d.route(Some("gemma")).await.unwrap();
        assert_eq!(
            (r.engine_name.as_str(), r.model.as_str()),
            ("http://mac/v1", "gemma")
        );
        assert_eq!(
            d.route(Some("nope")).await.unwrap_err(),
            FrontDoorError::NotFound("nope".into())
        );
        assert_eq!(d.route(None).await.unwrap_err(), FrontDoorError::NoModel);
        let listed: Vec<String> = d.models().await.into_iter().map(|s| s.model).collect();
        assert_eq!(listed, ["qwen", "llama", "gemma:latest"]);
    }

    #[tokio::test]
    async fn a_name_served_twice_needs_a_route() {
        let (a, b) = (listing(&["qwen"]), listing(&["qwen", "other"]));
        let d = door(&[("local", &a), ("http://b/v1", &b)], &[]).unwrap();
        assert_eq!(
            d.check().await.unwrap_err(),
            FrontDoorError::Ambiguous {
                model: "qwen".into(),
                first: "local".into(),
                second: "http://b/v1".into()
            }
        );
        let d = door(
            &[("local", &a), ("http://b/v1", &b)],
            &[("qwen", "http://b/v1")],
        )
        .unwrap();
        d.check().await.unwrap();
        assert_eq!(
            d.route(Some("qwen")).await.unwrap().engine_name,
            "http://b/v1"
        );
        let served = d.models().await;
        assert_eq!(
            served.iter().filter(|s| s.model == "qwen").count(),
            1,
            "{served:?}"
        );
        assert!(matches!(
            door(&[("local", &a)], &[("qwen", "http://c/v1")]),
            Err(FrontDoorError::UnknownEngine { .. })
        ));
    }

    #[tokio::test]
    async fn a_silent_engine_is_down_and_back_when_it_answers() {
        let (a, b) = (listing(&["qwen"]), listing(&["gemma"]));
        let d = door(&[("local", &a), ("http://b/v1", &b)], &[]).unwrap();
        d.check().await.unwrap();
        b.up.store(false, Ordering::Relaxed);
        d.refresh().await;
        assert!(matches!(
            d.route(Some("gemma")).await.unwrap_err(),
            FrontDoorError::Down { engine, .. } if engine == "http://b/v1"
        ));
        assert_eq!(d.route(Some("qwen")).await.unwrap().engine_name, "local");
        let listed: Vec<String> = d.models().await.into_iter().map(|s| s.model).collect();
        assert_eq!(listed, ["qwen"]);
        b.up.store(true, Ordering::Relaxed);
        d.refresh().await;
        assert_eq!(
            d.route(Some("gemma")).await.unwrap().engine_name,
            "http://b/v1"
        );
    }

    #[tokio::test]
    async fn one_engine_alone_keeps_its_own_rules() {
        let silent = listing(&[]);
        silent.up.store(false, Ordering::Relaxed);
        let d = door(&[("http://only/v1", &silent)], &[]).unwrap();
        d.check().await.unwrap();
        // An upstream that lists nothing is handed any name.
        assert_eq!(d.route(Some("whatever")).await.unwrap().model, "whatever");
    }
}
