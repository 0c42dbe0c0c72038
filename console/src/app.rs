//! The pages and components. Rendered on the server, then hydrated.

use std::collections::HashMap;

use clawpen_api::{VmInfo, VmState};
use leptos::either::Either;
use leptos::prelude::*;
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{path, SsrMode};

use crate::api::{self, Action, LoadFuture};

/// The whole stylesheet. Kept free of `<`, `>` and `&`: the text of `<style>`
/// is HTML-escaped when rendered.
const CSS: &str = r#"
:root { color-scheme: light dark; font-family: system-ui, sans-serif; }
body { margin: 0; padding: 1.5rem 2rem; }
h1 { margin: 0 0 1rem; font-size: 1.4rem; letter-spacing: .02em; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; min-width: 40rem; }
th, td { text-align: left; padding: .4rem .8rem; border-bottom: 1px solid #8884; }
th { font-weight: 600; font-size: .85rem; text-transform: uppercase; opacity: .7; }
td.vm-name { font-family: ui-monospace, monospace; }
td.vm-state { font-weight: 600; }
td.vm-state[data-state=Running] { color: #2a9d4b; }
td.vm-state[data-state=Failed] { color: #d03838; }
td.vm-state[data-state=Starting], td.vm-state[data-state=Stopping],
td.vm-state[data-state=Resetting] { color: #c98a00; }
td.vm-reason { color: #d03838; font-size: .9rem; }
td.actions button { margin-right: .3rem; }
button { font: inherit; padding: .2rem .7rem; border-radius: .3rem; border: 1px solid #8888; cursor: pointer; }
button:disabled { opacity: .45; cursor: default; }
p.error { color: #d03838; font-weight: 600; }
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

/// Latest state per VM name, from the event stream; wins over the loaded list.
type LiveStates = RwSignal<HashMap<String, VmState>>;

/// `/`: the VM table.
#[component]
fn VmsPage() -> impl IntoView {
    let vms = Resource::new(|| (), vm_loader());
    let live: LiveStates = RwSignal::new(HashMap::new());
    let error = RwSignal::new(None::<String>);
    // names of the rows on the page, sorted (reading `vms` outside the
    // Transition would make Leptos warn about hydration)
    let shown = StoredValue::new(None::<Vec<String>>);

    // Browser only (effects do not run on the server): follow the event stream.
    // The stream is closed when the effect, and with it its value, is dropped.
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| follow_events(vms, shown, live));

    view! {
        <h1>"clawpen"</h1>
        <section class="vms">
            <h2>"Virtual machines"</h2>
            {move || error.get().map(|message| view! { <p class="error" role="alert">{message}</p> })}
            <Transition fallback=|| view! { <p class="loading">"Loading VMs…"</p> }>
                {move || Suspend::new(async move {
                    let list = vms.await;
                    shown.set_value(list.as_deref().ok().map(names_of));
                    // runs once this part of the page is hydrated (and never on the server)
                    Effect::new(|_| api::set_body_attr("data-hydrated", "true"));
                    match list {
                        Ok(list) => Either::Left(view! { <VmTable list live error/> }),
                        Err(message) => Either::Right(view! {
                            <p class="error load-error" role="alert">
                                "Could not load the VMs: " {message}
                            </p>
                        }),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn VmTable(list: Vec<VmInfo>, live: LiveStates, error: RwSignal<Option<String>>) -> impl IntoView {
    let rows = if list.is_empty() {
        Either::Left(view! {
            <tr class="empty">
                <td colspan="5">"No VMs yet."</td>
            </tr>
        })
    } else {
        Either::Right(
            list.into_iter()
                .map(|info| view! { <VmRow info live error/> })
                .collect_view(),
        )
    };
    view! {
        <table class="vms">
            <thead>
                <tr>
                    <th>"Name"</th>
                    <th>"State"</th>
                    <th>"Detail"</th>
                    <th>"Image"</th>
                    <th>"Actions"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

#[component]
fn VmRow(info: VmInfo, live: LiveStates, error: RwSignal<Option<String>>) -> impl IntoView {
    let name = info.spec.name.to_string();
    let loaded = info.state;
    let state = Memo::new({
        let name = name.clone();
        move |_| {
            live.with(|m| m.get(&name).cloned())
                .unwrap_or_else(|| loaded.clone())
        }
    });
    // a command of ours is on its way: no second click until it is answered
    let pending = RwSignal::new(false);
    let busy = move || pending.get() || state.with(VmState::is_busy);

    let send = {
        let name = name.clone();
        move |action: Action| {
            let name = name.clone();
            pending.set(true);
            error.set(None);
            leptos::task::spawn_local(async move {
                let answer = api::vm_action(&name, action).await;
                // the row may have been re-rendered meanwhile: try_ ignores disposed signals
                if let Err(message) = answer {
                    error.try_set(Some(message));
                }
                pending.try_set(false);
            });
        }
    };
    let (start, stop, reset) = (send.clone(), send.clone(), send);

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
            </td>
            <td class="vm-image">{info.spec.image}</td>
            <td class="actions">
                <button
                    class="start"
                    disabled=move || busy() || state.with(|s| *s == VmState::Running)
                    on:click=move |_| start(Action::Start)
                >
                    "Start"
                </button>
                <button
                    class="stop"
                    disabled=move || {
                        busy() || state.with(|s| matches!(s, VmState::Stopped | VmState::Created))
                    }
                    on:click=move |_| stop(Action::Stop)
                >
                    "Stop"
                </button>
                <button class="reset" disabled=busy on:click=move |_| reset(Action::Reset)>
                    "Reset"
                </button>
            </td>
        </tr>
    }
}

/// Opens the event stream and applies `vm_state` events to `live`. On each
/// (re)connection the list is fetched again, so nothing that changed while the
/// stream was closed (before hydration, during a reconnect) is missed.
#[cfg(feature = "hydrate")]
fn follow_events(
    vms: Resource<api::VmList>,
    shown: StoredValue<Option<Vec<String>>>,
    live: LiveStates,
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
        move |event: Event| {
            let Event::VmState { name, state } = event else {
                return;
            };
            let name = name.to_string();
            let known = shown_names().is_some_and(|names| names.contains(&name));
            fresh.borrow_mut().insert(name.clone());
            live.update(|m| {
                m.insert(name, state);
            });
            if !known {
                vms.refetch();
            }
        }
    };
    let on_open = move || {
        api::set_body_attr("data-live", "true");
        fresh.borrow_mut().clear();
        let fresh = Rc::clone(&fresh);
        leptos::task::spawn_local(async move {
            let Ok(list) = api::fetch_vms().await else {
                return;
            };
            let fresh = fresh.borrow();
            live.update(|m| {
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
