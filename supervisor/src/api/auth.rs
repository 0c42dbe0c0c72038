//! Who may use the API and the console.
//!
//! The CLI sends the master token as `Authorization: Bearer <token>`. A
//! browser opens the login URL once (`/login?token=...`) and gets a session
//! cookie in exchange: a secret of its own, never the token. It is HttpOnly
//! (page scripts never read it), SameSite=Strict (another site's requests
//! never carry it), `Secure` under `--tls`, and counts only as a cookie, so
//! it is no bearer token for the API. Browsers send a host's cookies to
//! every port of that host; forwards into guests therefore listen on a
//! loopback address of their own (`crate::egress::forward_ip`), where the
//! browser never sends this cookie to a server a guest controls.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::HttpError;
use crate::auth::Token;

pub const COOKIE_NAME: &str = "clawpen_session";

/// How many browser logins stay valid at once; the oldest goes first.
const MAX_SESSIONS: usize = 64;

/// The console's open sessions (in memory: a restarted supervisor asks the
/// browser to log in again with the URL `clawpen up` prints).
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<VecDeque<Token>>>);

impl Sessions {
    /// A new session's secret, for one browser's cookie.
    fn open(&self) -> Token {
        let session = Token::generate();
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_SESSIONS {
            open.pop_front();
        }
        open.push_back(session.clone());
        session
    }

    /// Whether `candidate` is an open session (every one is compared, in
    /// time independent of where they differ).
    fn is_open(&self, candidate: &str) -> bool {
        let open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        open.iter()
            .fold(false, |found, session| found | session.matches(candidate))
    }
}

/// What `require_token` checks against: the master token (bearer) and the
/// open sessions (cookie).
#[derive(Clone)]
pub struct Credentials {
    pub token: Arc<Token>,
    pub sessions: Sessions,
}

/// What a request presents: a bearer token or a session cookie.
#[derive(Debug, PartialEq)]
enum Presented<'a> {
    Bearer(&'a str),
    Session(&'a str),
}

fn presented(headers: &HeaderMap) -> Option<Presented<'_>> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return value
            .strip_prefix("Bearer ")
            .map(|token| Presented::Bearer(token.trim()));
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| Presented::Session(value))
}

/// Middleware: a state-changing request (not GET/HEAD/OPTIONS) that carries
/// an `Origin` header must come from this server's own origin. SameSite=Strict
/// cookies do not stop another local web page (any `http://localhost:PORT`
/// is the same *site*) from posting with the user's cookie; this does. The
/// CLI sends no Origin and is unaffected.
pub async fn same_origin(request: Request, next: Next) -> Response {
    use axum::http::header::{HOST, ORIGIN};
    use axum::http::Method;
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe {
        if let Some(origin) = request.headers().get(ORIGIN) {
            let host = request.headers().get(HOST).and_then(|h| h.to_str().ok());
            let origin_host = origin.to_str().ok().and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            });
            if host.is_none() || origin_host != host {
                return HttpError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    "cross-origin request refused: state changes only from the console's own origin",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Middleware: 401 unless the request carries the master token (bearer)
/// or an open session's cookie.
pub async fn require_token(
    State(credentials): State<Credentials>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match presented(request.headers()) {
        Some(Presented::Bearer(token)) => credentials.token.matches(token),
        Some(Presented::Session(session)) => credentials.sessions.is_open(session),
        None => false,
    };
    if allowed {
        next.run(request).await
    } else {
        HttpError::unauthorized().into_response()
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    token: Option<String>,
}

/// The login route's state: what it checks and how its cookie is marked.
#[derive(Clone)]
pub struct Login {
    pub credentials: Credentials,
    /// `Secure` on the cookie: the listener is TLS, so the browser must
    /// never send the cookie over plain HTTP.
    pub secure: bool,
}

/// `GET /login?token=...`: exchanges the master token for a new session
/// cookie and sends the browser to `/`.
pub async fn login(State(login): State<Login>, Query(query): Query<LoginQuery>) -> Response {
    match query.token {
        Some(candidate) if login.credentials.token.matches(&candidate) => {
            let session = login.credentials.sessions.open();
            let secure = if login.secure { "; Secure" } else { "" };
            let cookie = format!(
                "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/{secure}",
                session.as_str()
            );
            let mut response = StatusCode::SEE_OTHER.into_response();
            let headers = response.headers_mut();
            headers.insert(LOCATION, HeaderValue::from_static("/"));
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.insert(SET_COOKIE, value);
            }
            response
        }
        _ => HttpError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_or_a_session_cookie_is_found() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&headers), Some(Presented::Bearer("abc")));
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("other=1; clawpen_session=xyz; x=2"),
        );
        assert_eq!(presented(&headers), Some(Presented::Session("xyz")));
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn sessions_are_new_secrets_and_the_oldest_goes_when_full() {
        let sessions = Sessions::default();
        let first = sessions.open();
        assert!(sessions.is_open(first.as_str()));
        assert!(!sessions.is_open("not-a-session"));
        let second = sessions.open();
        assert!(!first.matches(second.as_str()));
        for _ in 1..MAX_SESSIONS {
            sessions.open();
        }
        assert!(!sessions.is_open(first.as_str()), "the oldest was kept");
        assert!(sessions.is_open(second.as_str()));
    }
}
