//! The S3 driver's options, resolved from flags, the standard `AWS_*` environment
//! variables and the file. The secret is never taken from a command line (process
//! titles are world-readable): a flag names a file holding it instead.

use super::args::CommonArgs;
use super::file::FileConfig;
use super::resolve::Layers;
use crate::error::{Error, Result};
use crate::storage::s3::{S3Credentials, S3Options};
use std::path::Path;

/// Resolve the S3 options; `retries` is the shared transient-failure retry count.
pub(super) fn resolve_s3(
    args: &CommonArgs,
    file: &FileConfig,
    layers: Layers<'_>,
    retries: u32,
) -> Result<S3Options> {
    let defaults = S3Options::default();
    let endpoint = args.s3_endpoint.clone().or(file.s3_endpoint.clone());
    let key_id = args
        .s3_access_key_id
        .clone()
        .or(file.s3_access_key_id.clone());
    let secret_key = secret(
        "s3_secret_access_key_file",
        args.s3_secret_access_key_file.as_deref(),
        "AWS_SECRET_ACCESS_KEY",
        file.s3_secret_access_key_file.as_deref(),
        file.s3_secret_access_key.as_deref(),
        layers,
    )?;
    let token = secret(
        "s3_session_token_file",
        args.s3_session_token_file.as_deref(),
        "AWS_SESSION_TOKEN",
        file.s3_session_token_file.as_deref(),
        file.s3_session_token.as_deref(),
        layers,
    )?;
    let credentials = match (key_id, secret_key) {
        (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::config(
                "an S3 access key id is set but no secret access key: set \
                 AWS_SECRET_ACCESS_KEY, --s3-secret-access-key-file or s3_secret_access_key",
            ))
        }
        (None, Some(_)) => {
            return Err(Error::config(
                "an S3 secret access key is set but no access key id: set \
                 AWS_ACCESS_KEY_ID, --s3-access-key-id or s3_access_key_id",
            ))
        }
    };
    Ok(S3Options {
        path_style: args
            .s3_path_style
            .or(file.s3_path_style)
            .unwrap_or(endpoint.is_some()),
        endpoint,
        region: args
            .s3_region
            .clone()
            .or(file.s3_region.clone())
            .unwrap_or(defaults.region),
        allow_http: args.s3_allow_http.or(file.s3_allow_http).unwrap_or(false),
        credentials,
        connect_timeout: layers.secs(
            "s3_connect_timeout",
            args.s3_connect_timeout,
            file.s3_connect_timeout,
            defaults.connect_timeout.as_secs(),
        )?,
        request_timeout: layers.secs(
            "s3_request_timeout",
            args.s3_request_timeout,
            file.s3_request_timeout,
            defaults.request_timeout.as_secs(),
        )?,
        retries,
    })
}

/// A secret from, in order: the file a flag (or its variable) names, the variable
/// holding the secret itself, the file the configuration names, the configuration.
fn secret(
    key: &str,
    flag_file: Option<&Path>,
    env: &str,
    conf_file: Option<&Path>,
    conf_value: Option<&str>,
    layers: Layers<'_>,
) -> Result<Option<String>> {
    let read = |p: &Path, from_args: bool| -> Result<String> {
        let text = std::fs::read_to_string(p).map_err(|e| {
            Error::config(format!(
                "{}: cannot read {}: {e}",
                layers.origin(key, from_args),
                p.display()
            ))
        })?;
        Ok(text.trim().to_string())
    };
    if let Some(p) = flag_file {
        return read(p, true).map(Some);
    }
    if let Some(v) = std::env::var_os(env) {
        return Ok(Some(v.to_string_lossy().trim().to_string()));
    }
    if let Some(p) = conf_file {
        return read(p, false).map(Some);
    }
    Ok(conf_value.map(|v| v.trim().to_string()))
}

/// The S3 flags that give a child command (wal-get in a `restore_command`) the S3
/// options this command got from its flags and environment; options from the
/// configuration file reach it through `--config`. Secrets only ever travel as the
/// files that hold them, with absolute paths.
pub(super) fn forward_args(args: &CommonArgs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            out.push(format!("--{name}"));
            out.push(v);
        }
    };
    let path = |p: &Option<std::path::PathBuf>| -> Result<Option<String>> {
        p.as_deref()
            .map(|p| {
                std::path::absolute(p)
                    .map(|a| a.display().to_string())
                    .map_err(|e| Error::config(format!("{}: {e}", p.display())))
            })
            .transpose()
    };
    flag("s3-endpoint", args.s3_endpoint.clone());
    flag("s3-region", args.s3_region.clone());
    flag("s3-path-style", args.s3_path_style.map(|b| b.to_string()));
    flag("s3-allow-http", args.s3_allow_http.map(|b| b.to_string()));
    flag("s3-access-key-id", args.s3_access_key_id.clone());
    flag(
        "s3-secret-access-key-file",
        path(&args.s3_secret_access_key_file)?,
    );
    flag("s3-session-token-file", path(&args.s3_session_token_file)?);
    flag(
        "s3-connect-timeout",
        args.s3_connect_timeout.map(|s| s.to_string()),
    );
    flag(
        "s3-request-timeout",
        args.s3_request_timeout.map(|s| s.to_string()),
    );
    Ok(out)
}
