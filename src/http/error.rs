use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use std::time::Duration;

use crate::access::Denied;
use crate::limits::Refusal;
use crate::media::MediaError;
use crate::sfu::{DirectError, JoinError, MemberError};

/// An error answer: a status, a reason a person can act on, and for a
/// refusal over a limit, when to try again (`Retry-After`).
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String, pub Option<Duration>);

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self(status, reason.into(), None)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = if r.limit.per_client() {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Self(status, r.to_string(), Some(r.retry_after))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.1;
        body.push('\n');
        let mut response = (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response();
        // RFC 6750: say which scheme the missing credentials use.
        if let Some(after) = self.2 {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(after.as_secs().max(1)),
            );
        }
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"vessel\""),
            );
        }
        response
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        if let MediaError::Limited(refusal) = e {
            return refusal.into();
        }
        let status = match &e {
            MediaError::Join(JoinError::MalformedOffer(_)) => StatusCode::BAD_REQUEST,
            MediaError::Join(JoinError::NoMedia(_)) => StatusCode::BAD_REQUEST,
            MediaError::Join(JoinError::Unusable(_)) => StatusCode::BAD_REQUEST,
            MediaError::Join(JoinError::Refused(_)) => StatusCode::BAD_REQUEST,
            MediaError::NoSuchSession(_) => StatusCode::NOT_FOUND,
            MediaError::Direct(DirectError::NoSuchTransport) => StatusCode::NOT_FOUND,
            MediaError::Direct(DirectError::Refused(_)) => StatusCode::BAD_REQUEST,
            MediaError::Member(MemberError::NoSuchSession) => StatusCode::NOT_FOUND,
            MediaError::Member(MemberError::OfferPending) => StatusCode::CONFLICT,
            MediaError::Member(_) => StatusCode::BAD_REQUEST,
            MediaError::Down | MediaError::Limited(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        let status = match &d {
            Denied::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Denied::Forbidden(_) => StatusCode::FORBIDDEN,
            Denied::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, d.to_string())
    }
}
