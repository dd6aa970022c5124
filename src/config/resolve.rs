//! The one rule every key follows: a flag or its environment variable (clap has
//! merged them already) over the configuration file over the default, and errors
//! that name where the bad value came from.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the value of `key` came from, as error messages name it. clap merges flags
/// and environment before we see them, so a value from either is told apart by
/// whether the flag is on the command line.
pub fn origin(key: &str, from_args: bool, config: Option<&Path>) -> String {
    if from_args {
        let flag = format!("--{}", key.replace('_', "-"));
        let with_value = format!("{flag}=");
        let on_command_line = std::env::args_os().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&with_value))
        });
        let env = env_name(key);
        if !on_command_line && std::env::var_os(&env).is_some() {
            return format!("{env} (environment)");
        }
        return flag;
    }
    match config {
        Some(p) => format!("{key} (from {})", p.display()),
        None => key.to_string(),
    }
}

/// The environment variable behind a setting's flag.
fn env_name(key: &str) -> String {
    match key {
        "pgdata" => "PGDATA".to_string(),
        "s3_endpoint" => "AWS_ENDPOINT_URL".to_string(),
        "s3_region" => "AWS_REGION".to_string(),
        "s3_access_key_id" => "AWS_ACCESS_KEY_ID".to_string(),
        k => format!("PGCELLAR_{}", k.to_uppercase()),
    }
}

/// The layers under a flag: which configuration file (if any) gave the file values.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layers<'a> {
    /// The configuration file, for messages.
    pub(super) config: Option<&'a Path>,
}

impl Layers<'_> {
    /// Where `key` came from: a flag/the environment when `from_args`, else the file.
    pub(super) fn origin(&self, key: &str, from_args: bool) -> String {
        origin(key, from_args, self.config)
    }

    /// A duration in whole seconds, at least 1.
    pub(super) fn secs(
        &self,
        key: &str,
        flag: Option<u64>,
        file: Option<u64>,
        default: u64,
    ) -> Result<Duration> {
        match flag.or(file).unwrap_or(default) {
            0 => Err(Error::config(format!(
                "{}: must be at least 1 second",
                self.origin(key, flag.is_some())
            ))),
            s => Ok(Duration::from_secs(s)),
        }
    }

    /// A count of at least 1 (threads, workers).
    pub(super) fn positive(
        &self,
        key: &str,
        flag: Option<usize>,
        file: Option<usize>,
        default: usize,
    ) -> Result<usize> {
        match flag.or(file).unwrap_or(default) {
            0 => Err(Error::config(format!(
                "{}: must be at least 1",
                self.origin(key, flag.is_some())
            ))),
            n => Ok(n),
        }
    }

    /// A local directory, which must be absolute when given.
    pub(super) fn absolute_dir(
        &self,
        key: &str,
        flag: Option<&PathBuf>,
        file: Option<&PathBuf>,
    ) -> Result<Option<PathBuf>> {
        match flag.or(file) {
            Some(d) if !d.is_absolute() => Err(Error::config(format!(
                "{}: {} must be an absolute path",
                self.origin(key, flag.is_some()),
                d.display()
            ))),
            d => Ok(d.cloned()),
        }
    }

    /// A text value parsed by `parse`; its error gets the origin as context.
    pub(super) fn parsed<T>(
        &self,
        key: &str,
        flag: Option<&str>,
        file: Option<&str>,
        parse: impl Fn(&str) -> Result<T>,
    ) -> Result<Option<T>> {
        match flag.or(file) {
            Some(text) => parse(text)
                .map(Some)
                .map_err(|e| e.context(self.origin(key, flag.is_some()))),
            None => Ok(None),
        }
    }
}
