//! Registry errors and their one mapping to HTTP: status plus the OCI error JSON
//! `{"errors":[{"code": "...", "message": "...", "detail": ...}]}`.

use std::fmt;

/// The OCI distribution error codes regmirror emits (plus distribution's `UNAVAILABLE`, and
/// `NOT_FOUND` for paths outside the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    RangeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
    /// A path that is no part of the registry API (`/favicon.ico`, `/v2/a/unknown`): not an
    /// OCI code (distribution answers such paths with a bare 404), and not an error of the
    /// registry's, so `regmirror_errors_total` does not count it.
    NotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
        }
    }

    /// The HTTP status distribution uses for the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown
            | ErrorCode::NotFound => 404,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid => 400,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// An error a registry client gets as OCI error JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    pub code: ErrorCode,
    pub message: String,
    /// `Retry-After`, in seconds: when a 429 or 503 is worth trying again.
    pub retry_after: Option<u64>,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After` ([`whole_seconds`]) when there is a wait to tell.
    pub fn with_retry_after(mut self, wait: Option<std::time::Duration>) -> Self {
        self.retry_after = wait.map(whole_seconds);
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The OCI error JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "errors": [{"code": self.code.as_str(), "message": self.message, "detail": null}]
        })
        .to_string()
    }
}

/// A wait as `Retry-After` and every message about it state it: whole seconds, rounded up, at
/// least 1 (a client told to wait 0 s, or 2 s of a 2.5 s rest, asks too early).
pub fn whole_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

/// An internal failure (storage, I/O) as the error a client gets: UNAVAILABLE.
pub fn internal(e: impl fmt::Display) -> RegistryError {
    RegistryError::new(ErrorCode::Unavailable, format!("internal error: {e}"))
}

/// The one place a [`RegistryError`] becomes an HTTP response: its status and the OCI error
/// JSON (no body for a HEAD, but its length).
pub fn error_response(error: &RegistryError, head: bool) -> axum::http::Response<axum::body::Body> {
    let body = error.body();
    let length = body.len();
    let mut response = axum::http::Response::new(if head {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from(body)
    });
    *response.status_mut() = axum::http::StatusCode::from_u16(error.status())
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        axum::http::header::CONTENT_LENGTH,
        axum::http::HeaderValue::from(length),
    );
    if let Some(seconds) = error.retry_after {
        headers.insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(seconds),
        );
    }
    response
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RegistryError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope() {
        let e = RegistryError::new(ErrorCode::ManifestUnknown, "manifest unknown: v9");
        assert_eq!(e.status(), 404);
        let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
        assert_eq!(body["errors"][0]["message"], "manifest unknown: v9");
    }

    #[test]
    fn responses_are_oci_json() {
        let e = RegistryError::new(ErrorCode::BlobUnknown, "nope");
        let response = error_response(&e, false);
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.headers()["content-length"],
            e.body().len().to_string().as_str()
        );
        assert_eq!(internal("disk full").code, ErrorCode::Unavailable);
        assert!(!response.headers().contains_key("retry-after"));
        let throttled = RegistryError::new(ErrorCode::TooManyRequests, "later")
            .with_retry_after(Some(std::time::Duration::from_millis(2500)));
        let response = error_response(&throttled, true);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "3");
    }

    #[test]
    fn statuses() {
        for (code, status) in [
            (ErrorCode::BlobUnknown, 404),
            (ErrorCode::NameInvalid, 400),
            (ErrorCode::DigestInvalid, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Denied, 403),
            (ErrorCode::Unsupported, 405),
            (ErrorCode::NotFound, 404),
            (ErrorCode::TooManyRequests, 429),
            (ErrorCode::Unavailable, 503),
        ] {
            assert_eq!(code.status(), status, "{}", code.as_str());
        }
    }
}
