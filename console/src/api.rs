//! The console's only way out: the supervisor's HTTP API and its event stream.
//! Everything here runs in the browser (feature `hydrate`); without that
//! feature the functions exist but answer an error, so the components compile
//! the same way on the server (where they are never called).

use clawpen_api::{EgressLogEntry, EgressRule, ForwardInfo, SnapshotInfo, VmInfo, API_PREFIX};

/// What a VM list load answers. Serialised from server to browser with the page.
pub type VmList = Result<Vec<VmInfo>, String>;

/// A VM list load as a Leptos resource runs it.
pub type LoadFuture = std::pin::Pin<Box<dyn std::future::Future<Output = VmList> + Send>>;

/// What the inference backlog load answers (serialised with the page).
pub type Backlog = Result<Vec<clawpen_api::InferenceRecord>, String>;

/// A backlog load as a Leptos resource runs it.
pub type BacklogFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Backlog> + Send>>;

/// A command the VM table sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    /// Warm when the VM has a memory state (no boot).
    Reset,
    /// The snapshot's disk and a full boot.
    ColdReset,
}

impl Action {
    pub fn path(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Reset | Action::ColdReset => "reset",
        }
    }

    /// The JSON body the route takes, if any.
    pub fn body(self) -> Option<&'static str> {
        match self {
            Action::Start | Action::Stop => None,
            Action::Reset => Some("{}"),
            Action::ColdReset => Some(r#"{"cold":true}"#),
        }
    }

    /// Words for an error line.
    pub fn verb(self) -> &'static str {
        match self {
            Action::ColdReset => "cold reset",
            other => other.path(),
        }
    }
}

/// The message shown when the API answers a non-2xx status: `"{what} failed: ..."`.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn failure_message(what: &str, status: u16, body: &str) -> String {
    let why = match serde_json::from_str::<clawpen_api::ErrorBody>(body) {
        Ok(err) => match err.error.field {
            Some(field) => format!("{} ({field})", err.error.message),
            None => err.error.message,
        },
        Err(_) if body.trim().is_empty() => format!("HTTP {status}"),
        Err(_) => format!("HTTP {status}: {}", body.trim()),
    };
    format!("{what} failed: {why}")
}

/// `POST /api/v1/vms/{name}/{start|stop|reset}`; `Err` carries the line to show.
pub async fn vm_action(name: &str, action: Action) -> Result<(), String> {
    let path = format!("{API_PREFIX}/vms/{name}/{}", action.path());
    let what = format!("{} {name}", action.verb());
    send(&what, "POST", &path, action.body().map(str::to_string))
        .await
        .map(drop)
}

/// `GET /api/v1/vms/{name}/snapshots`.
pub async fn snapshots(name: &str) -> Result<Vec<SnapshotInfo>, String> {
    get_json(
        &format!("loading the snapshots of {name}"),
        &format!("{API_PREFIX}/vms/{name}/snapshots"),
    )
    .await
}

/// `POST /api/v1/vms/{name}/snapshots` with a fresh `console-<unix ms>` name.
pub async fn take_snapshot(name: &str) -> Result<(), String> {
    let snapshot = format!("console-{}", now_ms());
    let body = serde_json::json!({ "name": snapshot }).to_string();
    send(
        &format!("snapshot {name}"),
        "POST",
        &format!("{API_PREFIX}/vms/{name}/snapshots"),
        Some(body),
    )
    .await
    .map(drop)
}

/// `GET /api/v1/vms/{name}/egress/rules`.
pub async fn egress_rules(name: &str) -> Result<Vec<EgressRule>, String> {
    get_json(
        &format!("loading the egress rules of {name}"),
        &format!("{API_PREFIX}/vms/{name}/egress/rules"),
    )
    .await
}

/// `GET /api/v1/vms/{name}/egress/log?limit=N` (the newest entries).
pub async fn egress_log(name: &str, limit: u32) -> Result<Vec<EgressLogEntry>, String> {
    get_json(
        &format!("loading the egress log of {name}"),
        &format!("{API_PREFIX}/vms/{name}/egress/log?limit={limit}"),
    )
    .await
}

/// `GET /api/v1/vms/{name}/forwards`.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub async fn forwards(name: &str) -> Result<Vec<ForwardInfo>, String> {
    get_json(
        &format!("loading the forwards of {name}"),
        &format!("{API_PREFIX}/vms/{name}/forwards"),
    )
    .await
}

/// `POST /api/v1/vms/{name}/egress/rules`. The fields go to the server as
/// typed, so its 422 (naming the field) is what the form shows.
pub async fn add_egress_rule(
    name: &str,
    action: &str,
    target: &str,
    ports: &str,
    proto: &str,
) -> Result<(), String> {
    let mut body = serde_json::json!({ "action": action, "target": target.trim() });
    if !ports.trim().is_empty() {
        body["ports"] = ports.trim().into();
    }
    if !proto.is_empty() {
        body["proto"] = proto.into();
    }
    send(
        &format!("adding the rule for {name}"),
        "POST",
        &format!("{API_PREFIX}/vms/{name}/egress/rules"),
        Some(body.to_string()),
    )
    .await
    .map(drop)
}

/// `DELETE /api/v1/vms/{name}/egress/rules/{id}`.
pub async fn delete_egress_rule(name: &str, id: u64) -> Result<(), String> {
    send(
        &format!("deleting rule #{id} of {name}"),
        "DELETE",
        &format!("{API_PREFIX}/vms/{name}/egress/rules/{id}"),
        None,
    )
    .await
    .map(drop)
}

async fn get_json<T: serde::de::DeserializeOwned>(what: &str, path: &str) -> Result<T, String> {
    let body = send(what, "GET", path, None).await?;
    serde_json::from_str(&body).map_err(|e| format!("{what} failed: not valid JSON: {e}"))
}

#[cfg(feature = "hydrate")]
pub use browser::*;

#[cfg(feature = "hydrate")]
mod browser {
    use clawpen_api::{Event, API_PREFIX};
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;
    use web_sys::{EventSource, MessageEvent, Request, RequestCredentials, RequestInit, Response};

    use super::{failure_message, VmList};

    fn js_error(value: JsValue) -> String {
        if let Some(err) = value.dyn_ref::<js_sys::Error>() {
            return String::from(err.message());
        }
        value.as_string().unwrap_or_else(|| format!("{value:?}"))
    }

    /// Milliseconds since the epoch, by the browser's clock.
    pub fn now_ms() -> u64 {
        js_sys::Date::now() as u64
    }

    /// One same-origin request (the session cookie goes along); answers the
    /// status and the body text.
    async fn request(
        method: &str,
        path: &str,
        json_body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let window = web_sys::window().ok_or("no window")?;
        let init = RequestInit::new();
        init.set_method(method);
        init.set_credentials(RequestCredentials::SameOrigin);
        if let Some(body) = json_body {
            init.set_body(&JsValue::from_str(body));
        }
        let req = Request::new_with_str_and_init(path, &init).map_err(js_error)?;
        if json_body.is_some() {
            req.headers()
                .set("content-type", "application/json")
                .map_err(js_error)?;
        }
        let resp: Response = JsFuture::from(window.fetch_with_request(&req))
            .await
            .map_err(js_error)?
            .dyn_into()
            .map_err(js_error)?;
        let text = JsFuture::from(resp.text().map_err(js_error)?)
            .await
            .map_err(js_error)?
            .as_string()
            .unwrap_or_default();
        Ok((resp.status(), text))
    }

    /// A request whose non-2xx answer becomes the line `"{what} failed: ..."`;
    /// answers the body.
    pub async fn send(
        what: &str,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<String, String> {
        let (status, text) = request(method, path, body.as_deref())
            .await
            .map_err(|e| format!("{what} failed: {e}"))?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(failure_message(what, status, &text))
        }
    }

    /// `GET /api/v1/vms`.
    pub async fn fetch_vms() -> VmList {
        let (status, body) = request("GET", &format!("{API_PREFIX}/vms"), None)
            .await
            .map_err(|e| format!("loading the VM list failed: {e}"))?;
        if !(200..300).contains(&status) {
            return Err(format!("loading the VM list failed: HTTP {status}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("the VM list is not valid JSON: {e}"))
    }

    /// [`fetch_vms`] as the `Send` future a Leptos resource wants (the browser
    /// has one thread, so the wrapper never moves it).
    pub fn load_vms() -> super::LoadFuture {
        Box::pin(send_wrapper::SendWrapper::new(fetch_vms()))
    }

    /// `GET /api/v1/inference/recent`, as a resource's `Send` future.
    pub fn load_backlog() -> super::BacklogFuture {
        Box::pin(send_wrapper::SendWrapper::new(async {
            super::get_json::<Vec<clawpen_api::InferenceRecord>>(
                "loading the recent inference requests",
                &format!("{API_PREFIX}/inference/recent"),
            )
            .await
        }))
    }

    /// Sets an attribute on `<body>` (`data-hydrated`, `data-live`).
    pub fn set_body_attr(name: &str, value: &str) {
        if let Some(body) = web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.body())
        {
            let _ = body.set_attribute(name, value);
        }
    }

    /// The SSE `event:` names the console follows.
    const KINDS: [&str; 7] = [
        "vm_state",
        "vm_deleted",
        "progress",
        "inference",
        "egress",
        "inference_status",
        "forward",
    ];

    /// An open `EventSource("/api/v1/events")`; closed when dropped. The
    /// browser reconnects on its own after an error.
    pub struct EventStream {
        source: EventSource,
        _on_message: Closure<dyn FnMut(MessageEvent)>,
        _on_open: Closure<dyn FnMut(web_sys::Event)>,
        _on_error: Closure<dyn FnMut(web_sys::Event)>,
    }

    impl Drop for EventStream {
        fn drop(&mut self) {
            self.source.close();
        }
    }

    /// Follows the supervisor's events: `on_event` for each parsed event,
    /// `on_open` on every (re)connection, `on_error` when the stream breaks.
    pub fn subscribe(
        mut on_event: impl FnMut(Event) + 'static,
        mut on_open: impl FnMut() + 'static,
        mut on_error: impl FnMut() + 'static,
    ) -> Result<EventStream, String> {
        let source = EventSource::new(&format!("{API_PREFIX}/events")).map_err(js_error)?;
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |msg: MessageEvent| {
            let Some(data) = msg.data().as_string() else {
                return;
            };
            match serde_json::from_str::<Event>(&data) {
                Ok(event) => on_event(event),
                Err(e) => leptos::logging::warn!("ignoring an event that is not valid JSON: {e}"),
            }
        });
        let on_open_cb = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| on_open());
        let on_error_cb = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| on_error());
        for kind in KINDS {
            source
                .add_event_listener_with_callback(kind, on_message.as_ref().unchecked_ref())
                .map_err(js_error)?;
        }
        source.set_onopen(Some(on_open_cb.as_ref().unchecked_ref()));
        source.set_onerror(Some(on_error_cb.as_ref().unchecked_ref()));
        Ok(EventStream {
            source,
            _on_message: on_message,
            _on_open: on_open_cb,
            _on_error: on_error_cb,
        })
    }
}

#[cfg(not(feature = "hydrate"))]
pub use outside_browser::*;

#[cfg(not(feature = "hydrate"))]
mod outside_browser {
    const NOT_HERE: &str = "the console's API calls only run in the browser";

    // used only when built with neither `ssr` nor `hydrate`
    #[cfg_attr(feature = "ssr", allow(dead_code))]
    pub fn load_vms() -> super::LoadFuture {
        Box::pin(async { Err(NOT_HERE.into()) })
    }

    #[cfg_attr(feature = "ssr", allow(dead_code))]
    pub fn load_backlog() -> super::BacklogFuture {
        Box::pin(async { Err(NOT_HERE.into()) })
    }

    pub async fn send(
        _what: &str,
        _method: &str,
        _path: &str,
        _body: Option<String>,
    ) -> Result<String, String> {
        Err(NOT_HERE.into())
    }

    pub fn now_ms() -> u64 {
        0
    }

    pub fn set_body_attr(_name: &str, _value: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_become_one_readable_line() {
        let body = r#"{"error":{"code":"conflict","message":"demo is busy resetting"}}"#;
        assert_eq!(
            failure_message("reset demo", 409, body),
            "reset demo failed: demo is busy resetting"
        );
        assert_eq!(
            failure_message("start demo", 502, "bad gateway\n"),
            "start demo failed: HTTP 502: bad gateway"
        );
        assert_eq!(
            failure_message("stop demo", 500, ""),
            "stop demo failed: HTTP 500"
        );
        let body = r#"{"error":{"code":"invalid","message":"\"x y\" is not a domain name","field":"body.target"}}"#;
        assert_eq!(
            failure_message("adding the rule for demo", 422, body),
            "adding the rule for demo failed: \"x y\" is not a domain name (body.target)"
        );
    }

    #[test]
    fn cold_reset_asks_for_cold() {
        assert_eq!(Action::ColdReset.path(), "reset");
        assert_eq!(Action::ColdReset.body(), Some(r#"{"cold":true}"#));
        assert_eq!(Action::Reset.body(), Some("{}"));
        assert_eq!(Action::Start.body(), None);
    }
}
