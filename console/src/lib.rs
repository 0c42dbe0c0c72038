//! The clawpen web console: a Leptos app rendered on the server and hydrated in
//! the browser.
//!
//! Build it twice, as in Leptos' `todo_app_sqlite_axum` example:
//! - `--features ssr` (native): the supervisor calls [`router`] and nests it; the
//!   page is rendered with the VM list it gets from a [`VmSource`].
//! - `--features hydrate` (wasm32, `cargo xtask console`): [`hydrate`] attaches
//!   to the server-rendered HTML, then talks to the supervisor API
//!   (`/api/v1/...`) and follows its event stream.
//!
//! With neither feature the crate still compiles (for `cargo test --workspace`),
//! but the page cannot load any data.

// the page's view types nest deeply
#![recursion_limit = "256"]

mod api;
mod app;
mod charts;
#[cfg(feature = "ssr")]
mod server;
mod sessions;

pub use app::{shell, App};
#[cfg(feature = "ssr")]
pub use server::{leptos_options, router, VmSource};

/// File stem of the wasm-bindgen output in `site_dir/pkg`: the page loads
/// `pkg/clawpen_console.js` and `pkg/clawpen_console_bg.wasm`.
pub const OUTPUT_NAME: &str = "clawpen_console";

/// Browser entry point, called by the hydration script Leptos puts in the page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(App);
}
