//! What the S3 driver is told ([`S3Options`]): where the store is, how to sign, and
//! how long to wait. Resolved from flags, the environment and the file in `config`.

use std::fmt;
use std::time::Duration;

/// Static credentials for SigV4 signing. `Debug` never shows the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// Access key id (not secret; shown in messages to tell keys apart).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How to reach an S3-compatible store: what the S3 driver needs, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL (`https://s3.example.net`); `None` means AWS for the region.
    pub endpoint: Option<String>,
    /// Signing region.
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual hosts.
    pub path_style: bool,
    /// Whether a plain `http://` endpoint is allowed (test stores on loopback).
    pub allow_http: bool,
    /// Credentials; `None` fails at the first request with a message saying where to set them.
    pub credentials: Option<S3Credentials>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for one request attempt, and between two chunks of a download.
    pub request_timeout: Duration,
    /// Attempts after the first of a request that failed transiently.
    pub retries: u32,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: "us-east-1".to_string(),
            path_style: false,
            allow_http: false,
            credentials: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retries: 3,
        }
    }
}
