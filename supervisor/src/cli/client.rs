//! HTTP client of a running supervisor, for the CLI verbs.

use std::path::PathBuf;

use anyhow::Context;
use clawpen_api::ErrorBody;
use serde::de::DeserializeOwned;

use super::CliError;
use crate::auth::Token;
use crate::paths::StateDir;

pub struct Client {
    base: String,
    token: Token,
    http: reqwest::Client,
}

impl Client {
    /// Finds the supervisor `clawpen up` wrote into the state dir, or `url`.
    pub fn new(home: Option<PathBuf>, url: Option<String>) -> Result<Self, CliError> {
        let state = StateDir::resolve(home).context("state directory")?;
        let base = match url {
            Some(url) => url,
            None => std::fs::read_to_string(state.root().join("supervisor.url"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "http://127.0.0.1:7070".to_string()),
        };
        let token = Token::load(&state.token_file())
            .context("no API token: is `clawpen up` running with this state directory?")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, CliError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), CliError> {
        self.send_raw(self.http.delete(self.url(path)))
            .await
            .map(drop)
    }

    pub async fn get_text(&self, path: &str) -> Result<String, CliError> {
        let bytes = self.send_raw(self.http.get(self.url(path))).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The supervisor's event stream (server-sent events), still open.
    pub async fn events(&self) -> Result<reqwest::Response, CliError> {
        let response = self
            .http
            .get(self.url("/events"))
            .bearer_auth(self.token.as_str())
            .send()
            .await
            .context("cannot open the event stream")?;
        if !response.status().is_success() {
            return Err(CliError::Other(anyhow::anyhow!(
                "event stream: {}",
                response.status()
            )));
        }
        Ok(response)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, clawpen_api::API_PREFIX, path)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CliError> {
        let bytes = self.send_raw(request).await?;
        Ok(serde_json::from_slice(&bytes)
            .context("the supervisor's answer is not the expected JSON")?)
    }

    /// Sends with the token; the body of a 2xx, or the error as a [`CliError`].
    async fn send_raw(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, CliError> {
        let response = request
            .bearer_auth(self.token.as_str())
            .send()
            .await
            .with_context(|| format!("cannot reach the supervisor at {}", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the answer")?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        if status.is_client_error() {
            Err(CliError::BadInput(message))
        } else {
            Err(CliError::Other(anyhow::anyhow!("{status}: {message}")))
        }
    }
}
