//! Error answers in the OpenAI shape, `{"error": {"message", "type", "param", "code"}}`, with the
//! status that says whose fault it was: 4xx for the request, 503 when the queue is full, 504 when
//! the time limit ran out, 500 only for faults of the server itself.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for 503 answers.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The OpenAI error `type` for this status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            StatusCode::GATEWAY_TIMEOUT => "timeout_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The JSON body, also sent as an SSE `error` event once a stream has started.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message, "type": self.kind(), "param": null, "code": self.status.as_u16(),
        }})
    }
}

/// A library setting as the request field that sets it.
fn request_field(setting: &str) -> String {
    match setting {
        // A completion's length is `max_tokens`, an infill's `length`.
        "length" => "`max_tokens` (or `length`)".into(),
        field => format!("`{field}`"),
    }
}

/// Library errors: bad input is the client's (400), anything else the server's (500). Refused
/// settings are named as request fields.
impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::InvalidOption(msg) => Self::bad_request(msg.render(request_field)),
            crate::Error::Input(_) | crate::Error::Tokenizer(_) => Self::bad_request(e.to_string()),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = super::json_response(self.status, &self.body());
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}
