//! The pages and components. Rendered on the server, then hydrated.

use std::collections::{BTreeMap, HashMap};

use clawpen_api::{
    EgressAction, EgressLogEntry, EgressLogProto, EgressRule, ForwardInfo, InferenceRecord,
    InferenceStatus, SnapshotInfo, VmInfo, VmState,
};
use leptos::either::Either;
use leptos::prelude::*;
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{path, SsrMode};

use crate::api::{self, Action, LoadFuture};
use crate::charts::{cache_hit_percents, cache_hit_rate, chart, requests_per_second};
use crate::sessions::SessionsPanel;

/// The whole stylesheet. Kept free of `<`, `>` and `&`: the text of `<style>`
/// is HTML-escaped when rendered.
const CSS: &str = r#"
:root { color-scheme: light dark; font-family: system-ui, sans-serif; }
body { margin: 0; padding: 1.5rem 2rem; }
h1 { margin: 0 0 1rem; font-size: 1.4rem; letter-spacing: .02em; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
h3 { font-size: .95rem; margin: 1.2rem 0 .4rem; }
.panels > * { min-width: 0; }
@media (min-width: 1500px) {
  .panels { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 0 2.5rem; }
  /* the service on the left, each VM with its agent sessions on the right */
  .panels > section.inference { order: -1; }
}
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .4rem .8rem; border-bottom: 1px solid #8884; white-space: nowrap; }
th { font-weight: 600; font-size: .85rem; text-transform: uppercase; opacity: .7; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.vm-name, td.mono { font-family: ui-monospace, monospace; }
td.vm-state { font-weight: 600; }
td.vm-state[data-state=Running] { color: #2a9d4b; }
td.vm-state[data-state=Failed] { color: #d03838; }
td.vm-state[data-state=Starting], td.vm-state[data-state=Stopping],
td.vm-state[data-state=Resetting] { color: #c98a00; }
td.vm-reason { color: #d03838; font-size: .9rem; white-space: normal; }
.vm-progress { color: #c98a00; font-size: .85rem; }
td.vm-snapshots { font-size: .9rem; }
td.actions { white-space: normal; min-width: 13rem; }
td.actions button { margin: .15rem .3rem .15rem 0; }
tr.request[data-status=failed] td.status, tr.entry[data-decision=deny] td.decision { color: #d03838; font-weight: 600; }
tr.entry[data-decision=allow] td.decision, tr.request[data-status=completed] td.status { color: #2a9d4b; }
p.totals { display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; margin: .3rem 0 .8rem; }
p.totals b { font-variant-numeric: tabular-nums; }
form.egress-add { display: flex; flex-wrap: wrap; gap: .4rem; margin: .6rem 0; }
form.egress-add input.target { min-width: 12rem; }
form.egress-add input.ports { width: 7rem; }
input, select { font: inherit; padding: .2rem .4rem; }
button { font: inherit; padding: .2rem .7rem; border-radius: .3rem; border: 1px solid #8888; cursor: pointer; }
button:disabled { opacity: .45; cursor: default; }
p.error { color: #d03838; font-weight: 600; }
section.sessions .session { border: 1px solid #8884; border-radius: .4rem; padding: .3rem .7rem; margin: .5rem 0; }
section.sessions h4 { margin: .2rem 0 .4rem; font-size: .9rem; font-weight: 600; overflow-wrap: anywhere; }
ol.timeline { list-style: none; margin: 0; padding: 0 0 0 .6rem; border-left: 2px solid #8886; }
ol.timeline li { margin: .35rem 0; }
li.turn .turn-head { font-size: .82rem; opacity: .8; font-variant-numeric: tabular-nums; }
li.turn pre { margin: .2rem 0; padding: .3rem .5rem; white-space: pre-wrap; overflow-wrap: anywhere; font-size: .82rem; max-height: 12rem; overflow-y: auto; border-radius: .3rem; }
li.turn pre.model-text { background: #8881; }
li.turn pre.model-text.empty { display: none; }
.tool-call pre { background: #3a7bd51a; }
.tool-result pre { background: #2a9d4b1a; }
.tool-call .label, .tool-result .label { font-size: .8rem; opacity: .75; }
.repaired { color: #b35c00; font-size: .8rem; }
li.egress-line { font-size: .8rem; opacity: .75; }
tr.chatter td { font-size: .8rem; opacity: .6; font-style: italic; }
li.egress-line[data-decision=deny] .decision { color: #d03838; }
p.charts { display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; font-size: .82rem; margin: .2rem 0 .5rem; }
p.charts svg { vertical-align: middle; margin-left: .3rem; opacity: .8; }
p.inference-charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr)); gap: .5rem 1rem; }
p.inference-charts svg { display: block; margin: .15rem 0 0; }
p.models { display: flex; flex-wrap: wrap; gap: .3rem; align-items: center; font-size: .85rem; margin: .3rem 0; }
td.model small.engine { display: block; opacity: .7; }
p.models .model { font-family: ui-monospace, monospace; border: 1px solid #8886; border-radius: .8rem; padding: 0 .5rem; }
td.vm-forwards { white-space: normal; font-size: .9rem; }
td.vm-forwards a { display: inline-block; margin-right: .6rem; }
.mono { font-family: ui-monospace, monospace; }
p.empty, td.empty, span.allowed { opacity: .6; }
@media (max-width: 700px) {
  body { padding: .75rem; }
  /* the VM table becomes one card per VM, buttons in reach */
  table.vms thead { display: none; }
  table.vms tr, table.vms td { display: block; }
  table.vms tr { border-bottom: 1px solid #8884; padding: .4rem 0; }
  table.vms td { border: none; padding: .15rem .3rem; white-space: normal; min-width: 0; }
  table.vms td:empty { display: none; }
  table.vms td.vm-name { font-weight: 600; }
  td.vm-image::before { content: "image "; opacity: .6; }
  td.vm-snapshots::before { content: "snapshots "; opacity: .6; }
  td.vm-forwards::before { content: "open "; opacity: .6; }
  th, td { padding: .35rem .5rem; }
  button { padding: .35rem .7rem; }
}
"#;

/// The HTML document around [`App`]; the server renders it, the browser
/// hydrates `<body>`.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <title>"clawpen"</title>
                // no favicon request
                <link rel="icon" href="data:,"/>
                <style>{CSS}</style>
                <HydrationScripts options/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The application: one route per page.
#[component]
pub fn App() -> impl IntoView {
    view! {
        <Router>
            <main>
                <Routes fallback=|| view! { <p class="not-found">"Page not found."</p> }>
                    // Async: the server waits for the VM list, so the HTML it sends has the rows.
                    <Route path=path!("/") view=VmsPage ssr=SsrMode::Async/>
                </Routes>
            </main>
        </Router>
    }
}

/// Loads the VM list: from the supervisor's [`crate::VmSource`] on the server,
/// over HTTP in the browser (only on refetch: at hydration the list comes
/// serialised with the page).
#[cfg(feature = "ssr")]
fn vm_loader() -> impl Fn(()) -> LoadFuture + Send + Sync + 'static {
    let source = use_context::<crate::server::SourceCtx>();
    move |()| {
        let source = source.clone();
        Box::pin(async move {
            match source {
                Some(source) => source.0.list_vms().await,
                None => Err("the console was rendered without a VM source".to_string()),
            }
        })
    }
}

/// Loads the supervisor's recent inference records (the sessions before the
/// page was opened), like [`vm_loader`].
#[cfg(feature = "ssr")]
fn backlog_loader() -> impl Fn(()) -> api::BacklogFuture + Send + Sync + 'static {
    let source = use_context::<crate::server::SourceCtx>();
    move |()| {
        let records = source
            .as_ref()
            .map(|s| s.0.recent_inference())
            .unwrap_or_default();
        Box::pin(async move { Ok(records) })
    }
}

#[cfg(not(feature = "ssr"))]
fn backlog_loader() -> impl Fn(()) -> api::BacklogFuture + Send + Sync + 'static {
    |()| api::load_backlog()
}

#[cfg(not(feature = "ssr"))]
fn vm_loader() -> impl Fn(()) -> LoadFuture + Send + Sync + 'static {
    |()| api::load_vms()
}

/// The sorted names of `list`.
fn names_of(list: &[VmInfo]) -> Vec<String> {
    let mut names: Vec<String> = list.iter().map(|vm| vm.spec.name.to_string()).collect();
    names.sort();
    names
}

/// Most inference requests kept in the table.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const INFERENCE_ROWS: usize = 50;
/// Most egress log entries kept (all VMs together).
const EGRESS_ENTRIES: usize = 500;
/// Most live inference records kept for the sessions panels.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
const SESSION_RECORDS: usize = 500;
/// Egress log lines shown per VM.
const EGRESS_ROWS: usize = 50;
/// Points per chart of the inference panel.
const CHART_POINTS: usize = 60;

/// What the event stream feeds; shared by every panel of the page.
#[derive(Clone, Copy)]
struct Live {
    /// Latest state per VM name; wins over the loaded list.
    states: RwSignal<HashMap<String, VmState>>,
    /// Latest progress line per VM name, while it is busy.
    progress: RwSignal<HashMap<String, String>>,
    inference: RwSignal<InferenceLog>,
    /// Every inference record that came live, oldest first, at most
    /// [`SESSION_RECORDS`] (the sessions panels add the page's backlog).
    records: RwSignal<Vec<InferenceRecord>>,
    /// Egress decisions of every VM, oldest first, one per id.
    egress: RwSignal<Vec<EgressLogEntry>>,
    /// The one error line of the VM table.
    error: RwSignal<Option<String>>,
    /// The inference service's models and queue depths, from
    /// `inference_status` events.
    status: RwSignal<StatusLog>,
    /// Each VM's loopback forwards, by guest port.
    forwards: RwSignal<HashMap<String, Vec<ForwardInfo>>>,
}

impl Live {
    fn new() -> Self {
        Self {
            states: RwSignal::new(HashMap::new()),
            progress: RwSignal::new(HashMap::new()),
            inference: RwSignal::new(InferenceLog::default()),
            records: RwSignal::new(Vec::new()),
            egress: RwSignal::new(Vec::new()),
            error: RwSignal::new(None),
            status: RwSignal::new(StatusLog::default()),
            forwards: RwSignal::new(HashMap::new()),
        }
    }

    /// Adds a forward of `vm` (or replaces the one of the same guest port).
    // fed by the event stream, which only the browser follows
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    fn add_forward(&self, vm: String, forward: ForwardInfo) {
        self.forwards.update(|m| {
            let list = m.entry(vm).or_default();
            list.retain(|f| f.guest_port != forward.guest_port);
            list.push(forward);
            list.sort_by_key(|f| f.guest_port);
        });
    }

    /// Adds (or, for a flow that ended, replaces) egress entries.
    fn merge_egress(&self, entries: Vec<EgressLogEntry>) {
        self.egress.update(|log| merge_egress(log, entries));
    }
}

fn merge_egress(log: &mut Vec<EgressLogEntry>, entries: Vec<EgressLogEntry>) {
    for entry in entries {
        match log
            .iter_mut()
            .find(|e| e.id == entry.id && e.vm == entry.vm)
        {
            Some(old) => *old = entry,
            None => log.push(entry),
        }
    }
    log.sort_by_key(|e| (e.time_unix_ms, e.id));
    if log.len() > EGRESS_ENTRIES {
        log.drain(..log.len() - EGRESS_ENTRIES);
    }
}

/// Whether a log line is a guest's own network chatter, not something its
/// agent did: a dropped frame to a multicast or IPv6 link-local address
/// (router and neighbour discovery, MLD, mDNS). IPv4 link-local stays
/// shown: 169.254.169.254 is where cloud metadata lives.
fn is_chatter(entry: &EgressLogEntry) -> bool {
    use std::net::IpAddr;
    let Some(addr) = entry.addr.as_deref().and_then(|a| a.parse::<IpAddr>().ok()) else {
        return false;
    };
    entry.decision == EgressAction::Deny
        && match addr {
            IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_multicast() || a.segments()[0] & 0xffc0 == 0xfe80,
        }
}

/// One VM's log lines to show, newest first (at most `rows`), with its
/// chatter ([`is_chatter`]) taken out and counted, to be shown as one line.
fn fold_chatter<'a>(
    log: impl Iterator<Item = &'a EgressLogEntry>,
    rows: usize,
) -> (Vec<EgressLogEntry>, usize) {
    let mut shown = Vec::new();
    let mut chatter = 0;
    for entry in log {
        if is_chatter(entry) {
            chatter += 1;
        } else if shown.len() < rows {
            shown.push(entry.clone());
        }
    }
    (shown, chatter)
}

/// Adds `new` inference records to `all` (each once, by request id), oldest
/// first, keeping the newest [`SESSION_RECORDS`].
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
fn merge_records(all: &mut Vec<InferenceRecord>, new: Vec<InferenceRecord>) {
    for record in new {
        if !all.iter().any(|r| r.request_id == record.request_id) {
            all.push(record);
        }
    }
    all.sort_by_key(|r| r.started_at_ms);
    if all.len() > SESSION_RECORDS {
        all.drain(..all.len() - SESSION_RECORDS);
    }
}

/// The inference requests seen since the page was opened.
#[derive(Debug, Clone, Default, PartialEq)]
struct InferenceLog {
    /// Newest first, at most [`INFERENCE_ROWS`].
    recent: Vec<InferenceRecord>,
    requests: u64,
    tokens: u64,
    ttft_sum_ms: f64,
    ttft_count: u64,
    /// Turns per (client, session); requests without a session count under "".
    turns: BTreeMap<(String, String), u64>,
}

impl InferenceLog {
    // fed by the event stream, which only the browser follows
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    fn push(&mut self, record: InferenceRecord) {
        self.requests += 1;
        self.tokens += record.prompt_tokens + record.output_tokens;
        if let Some(ttft) = record.time_to_first_token_ms {
            self.ttft_sum_ms += ttft;
            self.ttft_count += 1;
        }
        *self
            .turns
            .entry((
                record.client.clone(),
                record.session.clone().unwrap_or_default(),
            ))
            .or_default() += 1;
        self.recent.insert(0, record);
        self.recent.truncate(INFERENCE_ROWS);
    }

    fn mean_ttft_ms(&self) -> Option<f64> {
        (self.ttft_count > 0).then(|| self.ttft_sum_ms / self.ttft_count as f64)
    }
}

/// What the `inference_status` events said: the latest models, and the
/// queue depth of each event (oldest first, at most [`CHART_POINTS`]).
#[derive(Debug, Clone, Default, PartialEq)]
struct StatusLog {
    /// `None` until the first event.
    models: Option<Vec<String>>,
    queued: Vec<f64>,
}

impl StatusLog {
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    fn push(&mut self, status: InferenceStatus) {
        self.models = Some(status.models);
        self.queued.push(status.queued as f64);
        if self.queued.len() > CHART_POINTS {
            self.queued.remove(0);
        }
    }
}

/// The label of a forward's link: what listens on that guest port.
fn forward_label(guest_port: u16) -> String {
    match guest_port {
        clawpen_api::OPENCLAW_GATEWAY_PORT => "OpenClaw gateway".to_string(),
        port => format!("port {port}"),
    }
}

/// `HH:MM:SS` (UTC) of a time in ms since the epoch.
pub(crate) fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

pub(crate) fn decimals(value: Option<f64>, places: usize) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.places$}"))
}

/// A size for people: `812 B`, `12.1 KiB`, `3.4 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `/`: the VM table with each VM's egress, and the inference requests.
#[component]
fn VmsPage() -> impl IntoView {
    let vms = Resource::new(|| (), vm_loader());
    let backlog = Resource::new(|| (), backlog_loader());
    let live = Live::new();
    // names of the rows on the page, sorted (reading `vms` outside the
    // Transition would make Leptos warn about hydration)
    let shown = StoredValue::new(None::<Vec<String>>);

    // Browser only (effects do not run on the server): follow the event stream.
    // The stream is closed when the effect, and with it its value, is dropped.
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| follow_events(vms, shown, live));

    view! {
        <h1>"clawpen"</h1>
        <div class="panels">
            <section class="vms">
                <h2>"Virtual machines"</h2>
                {move || live.error.get().map(|message| view! { <p class="error" role="alert">{message}</p> })}
                <Transition fallback=|| view! { <p class="loading">"Loading VMs…"</p> }>
                    {move || Suspend::new(async move {
                        let list = vms.await;
                        let backlog = backlog.await.unwrap_or_default();
                        shown.set_value(list.as_deref().ok().map(names_of));
                        // runs once this part of the page is hydrated (and never on the server)
                        Effect::new(|_| api::set_body_attr("data-hydrated", "true"));
                        match list {
                            Ok(list) => {
                                let names = names_of(&list);
                                Either::Left(view! {
                                    <VmTable list live/>
                                    {names.into_iter().map(|name| view! {
                                        <EgressPanel name=name.clone() live/>
                                        <SessionsPanel
                                            name
                                            backlog=backlog.clone()
                                            records=live.records
                                            egress=live.egress
                                        />
                                    }).collect_view()}
                                })
                            }
                            Err(message) => Either::Right(view! {
                                <p class="error load-error" role="alert">
                                    "Could not load the VMs: " {message}
                                </p>
                            }),
                        }
                    })}
                </Transition>
            </section>
            <InferencePanel live/>
        </div>
    }
}

#[component]
fn VmTable(list: Vec<VmInfo>, live: Live) -> impl IntoView {
    let rows = if list.is_empty() {
        Either::Left(view! {
            <tr class="empty">
                <td colspan="7">"No VMs yet."</td>
            </tr>
        })
    } else {
        Either::Right(
            list.into_iter()
                .map(|info| view! { <VmRow info live/> })
                .collect_view(),
        )
    };
    view! {
        <div class="scroll">
            <table class="vms">
                <thead>
                    <tr>
                        <th>"Name"</th>
                        <th>"State"</th>
                        <th>"Detail"</th>
                        <th class="vm-image">"Image"</th>
                        <th>"Snapshots"</th>
                        <th>"Forwards"</th>
                        <th>"Actions"</th>
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
}

#[component]
fn VmRow(info: VmInfo, live: Live) -> impl IntoView {
    let name = info.spec.name.to_string();
    let loaded = info.state;
    let error = live.error;
    let state = Memo::new({
        let name = name.clone();
        move |_| {
            live.states
                .with(|m| m.get(&name).cloned())
                .unwrap_or_else(|| loaded.clone())
        }
    });
    // a command of ours is on its way: no second click until it is answered
    let pending = RwSignal::new(false);
    let busy = move || pending.get() || state.with(VmState::is_busy);
    // None until loaded (in the browser, after hydration)
    let snapshots = RwSignal::new(None::<Vec<SnapshotInfo>>);

    let refresh_snapshots = {
        let name = name.clone();
        move || {
            let name = name.clone();
            leptos::task::spawn_local(async move {
                match api::snapshots(&name).await {
                    Ok(mut list) => {
                        list.sort_by_key(|s| s.created_unix);
                        snapshots.try_set(Some(list));
                    }
                    Err(message) => {
                        error.try_set(Some(message));
                    }
                }
            });
        }
    };
    Effect::new({
        let refresh = refresh_snapshots.clone();
        move |_| refresh()
    });

    let send = {
        let name = name.clone();
        move |action: Option<Action>| {
            let name = name.clone();
            let refresh = refresh_snapshots.clone();
            pending.set(true);
            error.set(None);
            leptos::task::spawn_local(async move {
                let answer = match action {
                    Some(action) => api::vm_action(&name, action).await,
                    None => api::take_snapshot(&name).await,
                };
                // the row may have been re-rendered meanwhile: try_ ignores disposed signals
                if let Err(message) = answer {
                    error.try_set(Some(message));
                }
                pending.try_set(false);
                refresh();
            });
        }
    };
    let (start, stop, reset, cold, snap) =
        (send.clone(), send.clone(), send.clone(), send.clone(), send);
    let progress = {
        let name = name.clone();
        move || {
            if !state.with(VmState::is_busy) {
                return None;
            }
            live.progress
                .with(|m| m.get(&name).cloned())
                .map(|line| view! { <span class="vm-progress">{line}</span> })
        }
    };
    let snapshot_count = move || {
        snapshots.with(|s| {
            s.as_ref()
                .map(|list| list.len().to_string())
                .unwrap_or_default()
        })
    };
    let snapshot_text = move || {
        snapshots.with(|s| match s {
            None => "…".to_string(),
            Some(list) => match list.last() {
                None => "0".to_string(),
                Some(last) => format!("{} · last {}", list.len(), clock(last.created_unix * 1000)),
            },
        })
    };
    let snapshot_title = move || {
        snapshots.with(|s| {
            s.as_ref()
                .and_then(|list| list.last())
                .map(|last| {
                    let memory = if last.has_memory {
                        "disk + memory"
                    } else {
                        "disk"
                    };
                    format!("last: {} ({memory})", last.name)
                })
                .unwrap_or_default()
        })
    };

    let forwards = {
        let name = name.clone();
        move || {
            live.forwards.with(|m| {
                m.get(&name)
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        let href = format!("http://{}/", f.host_addr);
                        let title = format!("guest port {} at {}", f.guest_port, f.host_addr);
                        view! {
                            <a
                                class="forward"
                                data-port=f.guest_port.to_string()
                                href=href
                                title=title
                                target="_blank"
                                rel="noopener noreferrer"
                            >
                                {forward_label(f.guest_port)}
                            </a>
                        }
                    })
                    .collect_view()
            })
        }
    };

    view! {
        <tr data-vm=name.clone()>
            <td class="vm-name">{name.clone()}</td>
            <td class="vm-state" data-state=move || state.with(VmState::label)>
                {move || state.with(VmState::label)}
            </td>
            <td class="vm-reason">
                {move || match state.get() {
                    VmState::Failed { reason } => Some(reason),
                    _ => None,
                }}
                {progress}
            </td>
            <td class="vm-image">{info.spec.image}</td>
            <td class="vm-snapshots" data-count=snapshot_count title=snapshot_title>{snapshot_text}</td>
            <td class="vm-forwards">{forwards}</td>
            <td class="actions">
                <button
                    class="start"
                    disabled=move || busy() || state.with(|s| *s == VmState::Running)
                    on:click=move |_| start(Some(Action::Start))
                >
                    "Start"
                </button>
                <button
                    class="stop"
                    disabled=move || {
                        busy() || state.with(|s| matches!(s, VmState::Stopped | VmState::Created))
                    }
                    on:click=move |_| stop(Some(Action::Stop))
                >
                    "Stop"
                </button>
                <button
                    class="reset"
                    title="Back to the clean snapshot, from memory when it has one"
                    disabled=busy
                    on:click=move |_| reset(Some(Action::Reset))
                >
                    "Reset"
                </button>
                <button
                    class="reset-cold"
                    title="Back to the clean snapshot's disk, with a full boot"
                    disabled=busy
                    on:click=move |_| cold(Some(Action::ColdReset))
                >
                    "Cold reset"
                </button>
                <button class="snapshot" disabled=busy on:click=move |_| snap(None)>
                    "Snapshot"
                </button>
            </td>
        </tr>
    }
}

/// One VM's egress: its rules (add, delete) and its live log, where a denied
/// line can be allowed in one click.
#[component]
fn EgressPanel(name: String, live: Live) -> impl IntoView {
    let rules = RwSignal::new(None::<Vec<EgressRule>>);
    let error = RwSignal::new(None::<String>);
    let pending = RwSignal::new(false);
    let action = RwSignal::new("allow".to_string());
    let target = RwSignal::new(String::new());
    let ports = RwSignal::new(String::new());
    let proto = RwSignal::new(String::new());

    let refresh = {
        let name = name.clone();
        move || {
            let name = name.clone();
            leptos::task::spawn_local(async move {
                match api::egress_rules(&name).await {
                    Ok(list) => {
                        rules.try_set(Some(list));
                    }
                    Err(message) => {
                        error.try_set(Some(message));
                    }
                }
            });
        }
    };
    // in the browser: the rules, and the log's newest lines to start from
    Effect::new({
        let refresh = refresh.clone();
        let name = name.clone();
        move |_| {
            refresh();
            let name = name.clone();
            leptos::task::spawn_local(async move {
                match api::egress_log(&name, EGRESS_ROWS as u32).await {
                    Ok(entries) => live.merge_egress(entries),
                    Err(message) => {
                        error.try_set(Some(message));
                    }
                }
            });
        }
    });

    // Runs a change (add, delete), then reloads the rules; `Ok` clears the form.
    let change = {
        let refresh = refresh.clone();
        move |work: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>>>>,
              clear_form: bool| {
            let refresh = refresh.clone();
            pending.set(true);
            error.set(None);
            leptos::task::spawn_local(async move {
                match work.await {
                    Ok(()) if clear_form => {
                        target.try_set(String::new());
                        ports.try_set(String::new());
                    }
                    Ok(()) => {}
                    Err(message) => {
                        error.try_set(Some(message));
                    }
                }
                pending.try_set(false);
                refresh();
            });
        }
    };

    let on_submit = {
        let change = change.clone();
        let name = name.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let name = name.clone();
            let (a, t, p, pr) = (
                action.get_untracked(),
                target.get_untracked(),
                ports.get_untracked(),
                proto.get_untracked(),
            );
            change(
                Box::pin(async move { api::add_egress_rule(&name, &a, &t, &p, &pr).await }),
                true,
            );
        }
    };

    let rule_rows = {
        let change = change.clone();
        let name = name.clone();
        move || {
            let Some(list) = rules.get() else {
                return Either::Left(view! { <tr><td class="empty" colspan="5">"…"</td></tr> });
            };
            if list.is_empty() {
                return Either::Left(view! {
                    <tr><td class="empty" colspan="5">"No rules: everything is denied."</td></tr>
                });
            }
            Either::Right(
                list.into_iter()
                    .map(|rule| {
                        let change = change.clone();
                        let name = name.clone();
                        let id = rule.id;
                        view! {
                            <tr class="rule" data-id=id.to_string() data-action=rule.action.as_str()>
                                <td class="action">{rule.action.as_str()}</td>
                                <td class="target mono">{rule.target.to_string()}</td>
                                <td class="ports">{rule.ports.map_or_else(|| "any".to_string(), |p| p.to_string())}</td>
                                <td class="proto">{rule.proto.map_or("any", |p| p.as_str())}</td>
                                <td>
                                    <button
                                        class="delete-rule"
                                        disabled=move || pending.get()
                                        on:click=move |_| {
                                            let name = name.clone();
                                            change(
                                                Box::pin(async move { api::delete_egress_rule(&name, id).await }),
                                                false,
                                            )
                                        }
                                    >
                                        "Delete"
                                    </button>
                                </td>
                            </tr>
                        }
                    })
                    .collect_view(),
            )
        }
    };

    let log_rows = {
        let name = name.clone();
        move || {
            let (entries, chatter) = live.egress.with(|log| {
                fold_chatter(
                    log.iter().rev().filter(|e| e.vm.as_str() == name),
                    EGRESS_ROWS,
                )
            });
            // The guest's own multicast and link-local chatter, dropped
            // and never the agent's doing: one counted line, last.
            let chatter = (chatter > 0).then(|| {
                view! {
                    <tr class="chatter">
                        <td colspan="7">
                            {format!(
                                "{chatter} dropped {} of link-local and multicast chatter \
                                 (IPv6 neighbour and router discovery, MLD, mDNS): nothing left the VM",
                                if chatter == 1 { "line" } else { "lines" }
                            )}
                        </td>
                    </tr>
                }
            });
            if entries.is_empty() {
                return Either::Left(view! {
                    <tr><td class="empty" colspan="7">"No connections yet."</td></tr>
                    {chatter}
                });
            }
            Either::Right((
                entries
                    .into_iter()
                    .map(|entry| {
                        // what an allow rule for this line would name
                        let allow_target = entry.name.clone().or_else(|| {
                            entry.addr.clone().filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                        });
                        // IPv6 and ICMP are never forwarded: no rule can allow them
                        let allowable = matches!(
                            entry.proto,
                            EgressLogProto::Tcp | EgressLogProto::Udp | EgressLogProto::Dns
                        );
                        let allow = (entry.decision == EgressAction::Deny && allowable)
                            .then_some(allow_target)
                            .flatten()
                            .map(|t| {
                                let change = change.clone();
                                let name = name.clone();
                                let wanted = clawpen_api::EgressTarget::parse(&t).ok();
                                let already = rules.with(|r| {
                                    r.as_ref().is_some_and(|list| {
                                        list.iter().any(|rule| {
                                            rule.action == EgressAction::Allow
                                                && rule.unrestricted()
                                                && wanted.as_ref() == Some(&rule.target)
                                        })
                                    })
                                });
                                if already {
                                    return Either::Left(view! { <span class="allowed">"allowed now"</span> });
                                }
                                Either::Right(view! {
                                    <button
                                        class="allow"
                                        title=format!("Add a rule allowing {t}")
                                        disabled=move || pending.get()
                                        on:click=move |_| {
                                            let (name, t) = (name.clone(), t.clone());
                                            change(
                                                Box::pin(async move {
                                                    api::add_egress_rule(&name, "allow", &t, "", "").await
                                                }),
                                                false,
                                            )
                                        }
                                    >
                                        "Allow"
                                    </button>
                                })
                            });
                        let bytes = match (entry.bytes_up, entry.bytes_down) {
                            (Some(up), Some(down)) => format!("↑{up} ↓{down}"),
                            _ => String::new(),
                        };
                        view! {
                            <tr
                                class="entry"
                                data-id=entry.id.to_string()
                                data-decision=entry.decision.as_str()
                                data-name=entry.name.clone()
                            >
                                <td class="time">{clock(entry.time_unix_ms)}</td>
                                <td class="proto">{entry.proto.as_str()}</td>
                                <td class="dest mono">
                                    {entry.name.clone().or(entry.addr.clone()).unwrap_or_default()}
                                    {entry.port.map(|p| format!(":{p}"))}
                                </td>
                                <td class="decision">{entry.decision.as_str()}</td>
                                <td class="reason">{entry.reason}</td>
                                <td class="bytes num">{bytes}</td>
                                <td>{allow}</td>
                            </tr>
                        }
                    })
                    .collect_view(),
                chatter,
            ))
        }
    };

    view! {
        <section class="egress" data-vm=name.clone()>
            <h3>"Egress of " {name.clone()}</h3>
            <div class="scroll">
                <table class="egress-rules">
                    <thead>
                        <tr>
                            <th>"Action"</th>
                            <th>"Target"</th>
                            <th>"Ports"</th>
                            <th>"Proto"</th>
                            <th></th>
                        </tr>
                    </thead>
                    <tbody>{rule_rows}</tbody>
                </table>
            </div>
            <form class="egress-add" on:submit=on_submit>
                <select
                    class="action"
                    aria-label="action"
                    on:change=move |ev| action.set(event_target_value(&ev))
                >
                    <option value="allow">"allow"</option>
                    <option value="deny">"deny"</option>
                </select>
                <input
                    class="target"
                    aria-label="target"
                    placeholder="api.example.com, *.github.com, 10.0.0.0/8"
                    prop:value=move || target.get()
                    on:input=move |ev| target.set(event_target_value(&ev))
                />
                <input
                    class="ports"
                    aria-label="ports"
                    placeholder="ports: 443, 8000-9000"
                    prop:value=move || ports.get()
                    on:input=move |ev| ports.set(event_target_value(&ev))
                />
                <select
                    class="proto"
                    aria-label="protocol"
                    on:change=move |ev| proto.set(event_target_value(&ev))
                >
                    <option value="">"tcp+udp"</option>
                    <option value="tcp">"tcp"</option>
                    <option value="udp">"udp"</option>
                </select>
                <button class="add-rule" type="submit" disabled=move || pending.get()>
                    "Add rule"
                </button>
            </form>
            {move || error.get().map(|message| view! { <p class="error egress-error" role="alert">{message}</p> })}
            <div class="scroll">
                <table class="egress-log">
                    <thead>
                        <tr>
                            <th>"Time"</th>
                            <th>"Proto"</th>
                            <th>"Destination"</th>
                            <th>"Decision"</th>
                            <th>"Why"</th>
                            <th class="num">"Bytes"</th>
                            <th></th>
                        </tr>
                    </thead>
                    <tbody>{log_rows}</tbody>
                </table>
            </div>
        </section>
    }
}

/// Inference requests as they finish (newest first), totals, and turns per
/// agent session.
#[component]
fn InferencePanel(live: Live) -> impl IntoView {
    let log = live.inference;
    let status = live.status;
    let models = move || {
        status.with(|s| match &s.models {
            None => Either::Left(view! { <span class="model-none">"–"</span> }),
            Some(list) if list.is_empty() => {
                Either::Left(view! { <span class="model-none">"none"</span> })
            }
            Some(list) => Either::Right(
                list.iter()
                    .map(|m| view! { <span class="model" data-model=m.clone()>{m.clone()}</span> })
                    .collect_view(),
            ),
        })
    };
    let model_count = move || {
        status.with(|s| {
            s.models
                .as_ref()
                .map(|m| m.len().to_string())
                .unwrap_or_default()
        })
    };
    // every finished request this page knows (backlog and live), newest last
    let charts = move || {
        let queued = status.with(|s| s.queued.clone());
        live.records.with(|all| {
            let recent = &all[all.len().saturating_sub(CHART_POINTS)..];
            let series = |f: fn(&InferenceRecord) -> Option<f64>| -> Vec<f64> {
                recent.iter().filter_map(f).collect()
            };
            view! {
                <p class="charts inference-charts">
                    {chart("rate", "requests/s", requests_per_second(recent), "", 1)}
                    {chart("queue", "queue", queued, "", 0)}
                    {chart("ttft", "TTFT", series(|r| r.time_to_first_token_ms), "ms", 0)}
                    {chart("prefill", "prefill", series(|r| r.prefill_tokens_per_s), "tok/s", 0)}
                    {chart("decode", "decode", series(|r| r.decode_tokens_per_s), "tok/s", 1)}
                    {chart("cache-hit", "cache hit", cache_hit_percents(recent), "%", 0)}
                </p>
            }
        })
    };
    let hit_rate = move || {
        live.records.with(|all| {
            cache_hit_rate(all).map_or_else(|| "–".to_string(), |p| format!("{p:.0} %"))
        })
    };
    let rows = move || {
        let recent = log.with(|l| l.recent.clone());
        if recent.is_empty() {
            return Either::Left(view! {
                <tr><td class="empty" colspan="12">"No requests yet."</td></tr>
            });
        }
        Either::Right(
            recent
                .into_iter()
                .map(|r| {
                    let session = r.session.clone().unwrap_or_default();
                    let status_title = r.error.clone().unwrap_or_default();
                    let (data_session, data_status) = (session.clone(), r.status.clone());
                    view! {
                        <tr class="request" data-session=data_session data-status=data_status>
                            <td class="time">{clock(r.started_at_ms)}</td>
                            <td class="client">{r.client}</td>
                            <td class="model mono" data-engine=r.engine.clone()>
                                {r.model}
                                {(!r.engine.is_empty()).then(|| view! {
                                    <small class="engine">{r.engine.clone()}</small>
                                })}
                            </td>
                            <td class="session mono">{session}</td>
                            <td class="status" title=status_title>{r.status}</td>
                            <td class="num prompt">{r.prompt_tokens}</td>
                            <td class="num cached">{r.cached_tokens}</td>
                            <td class="num output">{r.output_tokens}</td>
                            <td class="num wait">{decimals(r.queue_wait_ms, 0)}</td>
                            <td class="num ttft">{decimals(r.time_to_first_token_ms, 0)}</td>
                            <td class="num decode">{decimals(r.decode_tokens_per_s, 1)}</td>
                            <td class="tools mono">
                                {r.tool_calls.join(", ")}
                                {(r.repaired_tool_calls > 0).then(|| view! {
                                    " " <span class="repaired" title="written as text by the model, repaired into calls by clawpen">
                                        "repaired"
                                    </span>
                                })}
                            </td>
                        </tr>
                    }
                })
                .collect_view(),
        )
    };
    let sessions = move || {
        let turns = log.with(|l| l.turns.clone());
        if turns.is_empty() {
            return Either::Left(view! {
                <tr><td class="empty" colspan="3">"No sessions yet."</td></tr>
            });
        }
        Either::Right(
            turns
                .into_iter()
                .map(|((client, session), n)| {
                    let (data_client, data_session) = (client.clone(), session.clone());
                    view! {
                        <tr class="session" data-client=data_client data-session=data_session>
                            <td class="client">{client}</td>
                            <td class="session mono">
                                {if session.is_empty() { "(none)".to_string() } else { session }}
                            </td>
                            <td class="num turns">{n}</td>
                        </tr>
                    }
                })
                .collect_view(),
        )
    };
    view! {
        <section class="inference">
            <h2>"Inference"</h2>
            <p class="models" data-count=model_count>"Models " {models}</p>
            {charts}
            <p class="totals">
                <span>
                    <b class="requests" data-count=move || log.with(|l| l.requests.to_string())>
                        {move || log.with(|l| l.requests)}
                    </b>
                    " requests"
                </span>
                <span><b class="tokens">{move || log.with(|l| l.tokens)}</b>" tokens"</span>
                <span>
                    "mean TTFT "
                    <b class="ttft">
                        {move || log.with(|l| l.mean_ttft_ms().map_or_else(|| "–".to_string(), |t| format!("{t:.0} ms")))}
                    </b>
                </span>
                <span>"cache hit " <b class="cache-hit">{hit_rate}</b></span>
            </p>
            <h3>"Sessions"</h3>
            <div class="scroll">
                <table class="sessions">
                    <thead>
                        <tr>
                            <th>"Client"</th>
                            <th>"Session"</th>
                            <th class="num">"Turns"</th>
                        </tr>
                    </thead>
                    <tbody>{sessions}</tbody>
                </table>
            </div>
            <h3>"Requests"</h3>
            <div class="scroll">
                <table class="inference">
                    <thead>
                        <tr>
                            <th>"Time"</th>
                            <th>"Client"</th>
                            <th>"Model"</th>
                            <th>"Session"</th>
                            <th>"Status"</th>
                            <th class="num">"Prompt"</th>
                            <th class="num">"Cached"</th>
                            <th class="num">"Output"</th>
                            <th class="num" title="waited in the model's queue">"Wait ms"</th>
                            <th class="num">"TTFT ms"</th>
                            <th class="num">"Decode tok/s"</th>
                            <th>"Tools"</th>
                        </tr>
                    </thead>
                    <tbody>{rows}</tbody>
                </table>
            </div>
        </section>
    }
}

/// Opens the event stream and applies its events to `live`. On each
/// (re)connection the list is fetched again, so nothing that changed while the
/// stream was closed (before hydration, during a reconnect) is missed.
#[cfg(feature = "hydrate")]
fn follow_events(
    vms: Resource<api::VmList>,
    shown: StoredValue<Option<Vec<String>>>,
    live: Live,
) -> Option<api::EventStream> {
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::rc::Rc;

    use clawpen_api::Event;

    // names with an event newer than the list fetch in flight
    let fresh: Rc<RefCell<HashSet<String>>> = Rc::default();
    let shown_names = move || shown.get_value();

    let on_event = {
        let fresh = Rc::clone(&fresh);
        move |event: Event| match event {
            Event::VmState { name, state } => {
                let name = name.to_string();
                let known = shown_names().is_some_and(|names| names.contains(&name));
                fresh.borrow_mut().insert(name.clone());
                if !state.is_busy() {
                    live.progress.update(|m| {
                        m.remove(&name);
                    });
                }
                live.states.update(|m| {
                    m.insert(name, state);
                });
                if !known {
                    vms.refetch();
                }
            }
            Event::VmDeleted { .. } => vms.refetch(),
            Event::Progress {
                task,
                step,
                done,
                total,
            } => {
                // VM tasks are named "VM: what"
                let Some((name, what)) = task.split_once(": ") else {
                    return;
                };
                let count = match total {
                    Some(total) if total > 1 => format!(" ({done}/{total})"),
                    _ => String::new(),
                };
                let line = format!("{what}: {step}{count}");
                live.progress.update(|m| {
                    m.insert(name.to_string(), line);
                });
            }
            Event::Inference(record) => {
                let record = *record;
                live.records
                    .update(|all| merge_records(all, vec![record.clone()]));
                live.inference.update(|log| log.push(record));
            }
            Event::Egress { entry } => live.merge_egress(vec![entry]),
            Event::InferenceStatus(status) => live.status.update(|s| s.push(status)),
            Event::Forward { name, forward } => live.add_forward(name.to_string(), forward),
        }
    };
    let on_open = move || {
        api::set_body_attr("data-live", "true");
        // what finished while the stream was closed (before hydration, during
        // a reconnect) comes from the supervisor's backlog
        leptos::task::spawn_local(async move {
            if let Ok(records) = api::load_backlog().await {
                live.records.try_update(|all| merge_records(all, records));
            }
        });
        // the forwards of the VMs on the page (new ones come as events)
        for name in shown_names().unwrap_or_default() {
            leptos::task::spawn_local(async move {
                match api::forwards(&name).await {
                    Ok(list) => {
                        live.forwards.try_update(|m| m.insert(name, list));
                    }
                    Err(message) => {
                        live.error.try_set(Some(message));
                    }
                }
            });
        }
        fresh.borrow_mut().clear();
        let fresh = Rc::clone(&fresh);
        leptos::task::spawn_local(async move {
            let Ok(list) = api::fetch_vms().await else {
                return;
            };
            let fresh = fresh.borrow();
            live.states.update(|m| {
                for vm in &list {
                    let name = vm.spec.name.to_string();
                    if !fresh.contains(&name) {
                        m.insert(name, vm.state.clone());
                    }
                }
            });
            if shown_names() != Some(names_of(&list)) {
                vms.refetch();
            }
        });
    };
    let on_error = || api::set_body_attr("data-live", "false");

    match api::subscribe(on_event, on_open, on_error) {
        Ok(stream) => Some(stream),
        Err(e) => {
            leptos::logging::error!("cannot open the event stream: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(session: Option<&str>, ttft: Option<f64>) -> InferenceRecord {
        InferenceRecord {
            request_id: "r".into(),
            client: "anonymous".into(),
            endpoint: "chat_completions".into(),
            model: "m".into(),
            engine: "local".into(),
            session: session.map(str::to_string),
            status: "completed".into(),
            prompt_tokens: 10,
            output_tokens: 5,
            time_to_first_token_ms: ttft,
            duration_ms: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn status_log_keeps_the_latest_models_and_the_newest_depths() {
        let mut log = StatusLog::default();
        for queued in 0..(CHART_POINTS as u64 + 3) {
            log.push(InferenceStatus {
                models: vec![format!("m{queued}")],
                queued,
                time_unix_ms: 0,
            });
        }
        assert_eq!(log.models, Some(vec![format!("m{}", CHART_POINTS + 2)]));
        assert_eq!(log.queued.len(), CHART_POINTS);
        assert_eq!(log.queued[0], 3.0);
    }

    #[test]
    fn link_local_and_multicast_chatter_is_folded_into_a_count() {
        let entry = |id: u64, addr: &str, decision: EgressAction| EgressLogEntry {
            id,
            vm: clawpen_api::VmName::parse("demo").unwrap(),
            time_unix_ms: id,
            proto: EgressLogProto::Ipv6,
            name: None,
            addr: Some(addr.into()),
            port: None,
            decision,
            rule: None,
            reason: String::new(),
            bytes_up: None,
            bytes_down: None,
            ended_unix_ms: None,
        };
        let log = [
            entry(1, "ff02::2", EgressAction::Deny),
            entry(2, "fe80::1", EgressAction::Deny),
            entry(3, "169.254.169.254", EgressAction::Deny),
            entry(4, "224.0.0.251", EgressAction::Deny),
            entry(5, "2001:db8::1", EgressAction::Deny),
            entry(6, "93.184.216.34", EgressAction::Allow),
            entry(7, "ff02::16", EgressAction::Deny),
        ];
        let (shown, chatter) = fold_chatter(log.iter().rev(), 10);
        let ids: Vec<u64> = shown.iter().map(|e| e.id).collect();
        // The metadata address and real destinations stay lines of their own.
        assert_eq!(ids, [6, 5, 3]);
        assert_eq!(chatter, 4);
        // The row limit counts shown lines only.
        let (shown, chatter) = fold_chatter(log.iter().rev(), 1);
        assert_eq!(shown.len(), 1);
        assert_eq!(chatter, 4);
    }

    #[test]
    fn the_openclaw_gateway_forward_is_named() {
        assert_eq!(forward_label(18789), "OpenClaw gateway");
        assert_eq!(forward_label(8080), "port 8080");
    }

    #[test]
    fn inference_log_keeps_the_newest_and_counts_everything() {
        let mut log = InferenceLog::default();
        for i in 0..(INFERENCE_ROWS + 5) {
            let ttft = (i % 2 == 0).then_some(100.0);
            log.push(record(Some(if i < 3 { "a" } else { "b" }), ttft));
        }
        assert_eq!(log.recent.len(), INFERENCE_ROWS);
        assert_eq!(log.requests, INFERENCE_ROWS as u64 + 5);
        assert_eq!(log.tokens, 15 * (INFERENCE_ROWS as u64 + 5));
        assert_eq!(log.mean_ttft_ms(), Some(100.0));
        assert_eq!(log.turns[&("anonymous".into(), "a".into())], 3);
        log.push(record(None, None));
        assert_eq!(log.recent[0].session, None);
        assert_eq!(log.turns[&("anonymous".into(), String::new())], 1);
    }

    #[test]
    fn merged_records_are_unique_in_time_order_and_bounded() {
        let at = |id: &str, ms: u64| InferenceRecord {
            request_id: id.into(),
            started_at_ms: ms,
            ..record(None, None)
        };
        let mut all = vec![at("b", 2)];
        merge_records(&mut all, vec![at("a", 1), at("b", 2), at("c", 3)]);
        let ids: Vec<&str> = all.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let many = (0..SESSION_RECORDS as u64 + 10)
            .map(|i| at(&format!("r{i}"), 10 + i))
            .collect();
        merge_records(&mut all, many);
        assert_eq!(all.len(), SESSION_RECORDS);
        assert_eq!(all[0].request_id, "r10");
    }

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(12_345), "12.1 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes(5 << 40), "5120.0 GiB");
    }

    #[test]
    fn clock_is_utc_hours_minutes_seconds() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock((13 * 3600 + 5 * 60 + 9) * 1000 + 999), "13:05:09");
    }
}
