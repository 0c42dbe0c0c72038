//! Bearer-token auth for every route but the login page.
//!
//! The CLI sends `Authorization: Bearer <token>`. A browser opens the login URL
//! once (`/login?token=...`) and from then on carries an HttpOnly,
//! SameSite=Strict cookie, so the token is never readable by page scripts and
//! never sent by another site's requests.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::HttpError;
use crate::auth::Token;

pub const COOKIE_NAME: &str = "clawpen_token";

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return value.strip_prefix("Bearer ").map(str::trim);
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
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

/// Middleware: 401 unless the request carries the token.
pub async fn require_token(
    State(token): State<Arc<Token>>,
    request: Request,
    next: Next,
) -> Response {
    match presented_token(request.headers()) {
        Some(candidate) if token.matches(candidate) => next.run(request).await,
        _ => HttpError::unauthorized().into_response(),
    }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    token: Option<String>,
}

/// `GET /login?token=...`: sets the session cookie and sends the browser to `/`.
pub async fn login(State(token): State<Arc<Token>>, Query(query): Query<LoginQuery>) -> Response {
    match query.token {
        Some(candidate) if token.matches(&candidate) => {
            let cookie = format!(
                "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/",
                token.as_str()
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
    fn token_is_found_in_bearer_header_or_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented_token(&headers), Some("abc"));
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("other=1; clawpen_token=xyz; x=2"),
        );
        assert_eq!(presented_token(&headers), Some("xyz"));
        assert_eq!(presented_token(&HeaderMap::new()), None);
    }
}
