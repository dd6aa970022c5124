//! The S3 client: one tokio runtime and one SDK client per opened repository, the
//! blocking bridge every driver call goes through, and the mapping of SDK errors onto
//! the library's kinds (which decide wal-get's exit code).

use super::options::S3Options;
use crate::error::{Error, ErrorKind, Result};
use aws_sdk_s3::config::{
    retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Credentials, Region,
    RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use std::future::Future;
use std::time::Duration;

/// A connection to one bucket: the runtime that drives the SDK's futures and the client.
pub(super) struct Conn {
    rt: tokio::runtime::Runtime,
    /// The SDK client (cheap to clone; shares one connection pool).
    pub(super) client: aws_sdk_s3::Client,
    /// Bucket name.
    pub(super) bucket: String,
    /// Key prefix of the repository root, with a trailing `/` (empty for the bucket root).
    pub(super) root: String,
    /// Bound on one wait for a chunk of a download.
    pub(super) chunk_timeout: Duration,
    /// For messages: `s3://bucket/prefix (endpoint)`.
    pub(super) location: String,
}

impl Conn {
    /// Build the client for `bucket`/`prefix` from `opts`; no request is made yet.
    pub(super) fn new(bucket: &str, prefix: &str, opts: &S3Options) -> Result<Conn> {
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let location = match &opts.endpoint {
            Some(e) => format!("{url} at {e}"),
            None => format!("{url} (AWS, region {})", opts.region),
        };
        if let Some(e) = &opts.endpoint {
            let lower = e.to_ascii_lowercase();
            if lower.starts_with("http://") && !opts.allow_http {
                return Err(Error::config(format!(
                    "S3 endpoint {e} is plain HTTP: credentials and data would cross the \
                     network unencrypted; use https://, or set --s3-allow-http true \
                     (PGCELLAR_S3_ALLOW_HTTP, s3_allow_http) for a test store on loopback"
                )));
            }
            if !lower.starts_with("http://") && !lower.starts_with("https://") {
                return Err(Error::config(format!(
                    "S3 endpoint {e:?} must start with https:// (or http:// with --s3-allow-http)"
                )));
            }
        }
        let creds = opts.credentials.as_ref().ok_or_else(|| {
            Error::config(format!(
                "no S3 credentials for {location}: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or --s3-access-key-id with \
                 --s3-secret-access-key-file, or s3_access_key_id and \
                 s3_secret_access_key in the config file"
            ))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pgcellar-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client's runtime", e))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(opts.region.clone()))
            .credentials_provider(Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.clone(),
                creds.session_token.clone(),
                None,
                "pgcellar",
            ))
            .force_path_style(opts.path_style)
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(opts.connect_timeout)
                    .read_timeout(opts.request_timeout)
                    .operation_attempt_timeout(opts.request_timeout)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(opts.retries.saturating_add(1))
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            // Our own SHA-256 covers every byte end to end; the SDK's optional
            // checksums would add a pass and headers some stores reject.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &opts.endpoint {
            conf = conf.endpoint_url(e.trim_end_matches('/'));
        }
        Ok(Conn {
            rt,
            client: aws_sdk_s3::Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            root: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            chunk_timeout: opts.request_timeout,
            location,
        })
    }

    /// Run one SDK future to completion on this runtime, from a plain thread.
    pub(super) fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// Start a future on this runtime's workers, to be joined with [`Conn::block_on`].
    pub(super) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(fut)
    }

    /// The object key of a repository path (`""` is the root).
    pub(super) fn key(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// The key prefix of everything under a repository directory (`""` is the root).
    pub(super) fn dir_prefix(&self, dir: &str) -> String {
        if dir.is_empty() {
            self.root.clone()
        } else {
            format!("{}{dir}/", self.root)
        }
    }

    /// An SDK error as a library error: `what` names the request and the key.
    pub(super) fn error<E>(&self, what: &str, err: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let detail = DisplayErrorContext(&err).to_string();
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_string);
        let (kind, why) = match (&err, status, code.as_deref()) {
            (SdkError::ConstructionFailure(_), _, _) => (
                ErrorKind::Config,
                "the request could not be built".to_string(),
            ),
            (SdkError::TimeoutError(_), _, _) => (
                ErrorKind::Transient,
                "the store did not answer in time".to_string(),
            ),
            (SdkError::DispatchFailure(_), _, _) => (
                ErrorKind::Transient,
                "the store could not be reached".to_string(),
            ),
            (_, Some(404), Some("NoSuchBucket")) => (
                ErrorKind::Config,
                format!("bucket {} does not exist (create it first)", self.bucket),
            ),
            (_, Some(404), _) => (ErrorKind::NotFound, "not found".to_string()),
            (_, Some(401 | 403), _) => (
                ErrorKind::Config,
                "access denied: check the credentials and the key's permissions on the bucket"
                    .to_string(),
            ),
            (_, Some(412), _) => (ErrorKind::Conflict, "precondition failed".to_string()),
            (_, Some(s), _) if s == 429 || s >= 500 => {
                (ErrorKind::Transient, format!("the store answered HTTP {s}"))
            }
            (_, Some(s), _) => (ErrorKind::Io, format!("the store answered HTTP {s}")),
            (_, None, _) => (ErrorKind::Transient, "the request failed".to_string()),
        };
        Error::new(
            kind,
            format!("{what} in {}: {why} ({detail})", self.location),
        )
    }
}

/// The HTTP response type the SDK's errors carry.
pub(super) type HttpResponse = aws_sdk_s3::config::http::HttpResponse;
