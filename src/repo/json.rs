//! Small JSON files of the repository (root, server, manifests, markers): bounded
//! reads, parsing with one-line errors that name the file and field, and writing in a
//! form a person can read with `cat`.

use crate::error::{Error, Result};
use crate::storage::Storage;
use serde::Serialize;

/// Largest root or server file a reader accepts; real ones are a few hundred bytes.
pub const MAX_SMALL_FILE: u64 = 64 * 1024;

/// Read a small repository file, refusing (without reading it all) one far larger
/// than any pgcellar writes: a damaged or foreign file.
pub fn read_small(storage: &dyn Storage, path: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    storage
        .open_read(path)?
        .take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("reading {path} in {}", storage.location()), e))?;
    if buf.len() as u64 > MAX_SMALL_FILE {
        return Err(Error::corrupt(format!(
            "{}/{path} is larger than {MAX_SMALL_FILE} bytes, far more than pgcellar ever \
             writes there; it is damaged or not pgcellar's",
            storage.location()
        )));
    }
    Ok(buf)
}

/// Parse a repository JSON file; `file` names it in the one-line error, which also
/// names the offending field where serde reports one.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], file: &str) -> Result<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::corrupt(format!(
            "{file} is empty (a truncated write?); it must hold a JSON object"
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(format!("{file} is not valid JSON: {e}")))?;
    let serde_json::Value::Object(fields) = &value else {
        return Err(Error::corrupt(format!(
            "{file} does not hold a JSON object"
        )));
    };
    serde_json::from_value(value.clone()).map_err(|e| {
        // serde names a missing field, but not the field of a wrong type. Find it:
        // without the one bad field, serde complains that exactly that one is missing.
        let field = fields
            .keys()
            .find(|k| {
                let mut rest = fields.clone();
                rest.remove(*k);
                serde_json::from_value::<T>(serde_json::Value::Object(rest))
                    .is_err_and(|e| e.to_string() == format!("missing field `{k}`"))
            })
            .map(|k| format!(" (field {k:?})"))
            .unwrap_or_default();
        Error::corrupt(format!("{file} is not valid{field}: {e}"))
    })
}

/// Serialise for the repository: pretty JSON with a trailing newline, readable with `cat`.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::invalid(format!("cannot serialise JSON: {e}")))?;
    v.push(b'\n');
    Ok(v)
}

/// The current time in RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
