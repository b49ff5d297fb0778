//! The admission webhook: before a cast or a play starts, Vessel POSTs who
//! is asking to a URL of the streamer's choosing, which allows (2xx) or
//! denies (anything else). It fails closed: no answer means no entry.

use std::net::SocketAddr;
use std::time::Duration;

use super::Denied;

/// What the webhook is told, as JSON.
#[derive(Debug, serde::Serialize)]
pub struct Admission<'a> {
    pub live: &'a str,
    /// `cast` or `play`.
    pub role: &'a str,
    /// The TCP peer of the request (a reverse proxy, if there is one).
    pub remote: SocketAddr,
    /// The `X-Forwarded-For` header, when a proxy set one.
    pub forwarded_for: Option<&'a str>,
    /// `whip` or `whep`.
    pub protocol: &'a str,
}

pub struct Webhook {
    url: String,
    client: reqwest::Client,
}

/// How long the webhook has to answer.
const TIMEOUT: Duration = Duration::from_secs(3);

impl Webhook {
    pub fn new(url: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .expect("an HTTP client without TLS roots builds");
        Self { url, client }
    }

    pub async fn admit(&self, admission: &Admission<'_>) -> Result<(), Denied> {
        let body = serde_json::to_vec(admission).expect("serializable");
        let answer = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                let reason = r.text().await.unwrap_or_default();
                let reason: String = reason.trim().chars().take(200).collect();
                tracing::info!(live = admission.live, role = admission.role, %status,
                    "admission webhook denied: {reason}");
                Err(Denied::Forbidden(if reason.is_empty() {
                    format!("denied by the admission webhook ({status})")
                } else {
                    format!("denied by the admission webhook: {reason}")
                }))
            }
            Err(e) => {
                tracing::warn!(url = %self.url, "admission webhook failed: {e}");
                Err(Denied::Unavailable(
                    "the admission webhook did not answer; try again later".into(),
                ))
            }
        }
    }
}
