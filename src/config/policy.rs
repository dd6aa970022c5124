//! The grammar of the `retention` key: `REDUNDANCY n` or `RECOVERY WINDOW OF n
//! DAYS|WEEKS|MONTHS`. What a policy keeps is the catalog's (`catalog::retention`).

use crate::error::{Error, Result};
use serde::Serialize;
use std::fmt;

/// A retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Policy {
    /// Keep the newest `n` backups.
    Redundancy {
        /// How many.
        n: u32,
    },
    /// Keep what is needed to recover to any point in the last `n` units.
    RecoveryWindow {
        /// How many units.
        n: u32,
        /// Which unit.
        unit: WindowUnit,
    },
}

/// Unit of a recovery window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowUnit {
    /// 24 hours.
    Days,
    /// 7 days.
    Weeks,
    /// Calendar months (31 March minus one month is 28 or 29 February).
    Months,
}

impl Policy {
    /// Parse `REDUNDANCY n` or `RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS`
    /// (case-insensitive, any whitespace, singular units accepted).
    pub fn parse(text: &str) -> Result<Policy> {
        let words: Vec<String> = text.split_whitespace().map(str::to_uppercase).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let bad = || {
            Error::config(format!(
                "retention policy {:?} is not valid: use 'REDUNDANCY n' or \
                 'RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS' (n at least 1)",
                crate::names::truncate_for_display(text)
            ))
        };
        let count = |s: &str| -> Result<u32> {
            match s.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(bad()),
            }
        };
        match words.as_slice() {
            ["REDUNDANCY", n] => Ok(Policy::Redundancy { n: count(n)? }),
            ["RECOVERY", "WINDOW", "OF", n, unit] => {
                let unit = match *unit {
                    "DAY" | "DAYS" => WindowUnit::Days,
                    "WEEK" | "WEEKS" => WindowUnit::Weeks,
                    "MONTH" | "MONTHS" => WindowUnit::Months,
                    _ => return Err(bad()),
                };
                Ok(Policy::RecoveryWindow { n: count(n)?, unit })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Redundancy { n } => write!(f, "REDUNDANCY {n}"),
            Policy::RecoveryWindow { n, unit } => {
                let u = match unit {
                    WindowUnit::Days => "DAYS",
                    WindowUnit::Weeks => "WEEKS",
                    WindowUnit::Months => "MONTHS",
                };
                write!(f, "RECOVERY WINDOW OF {n} {u}")
            }
        }
    }
}
