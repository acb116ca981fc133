//! Run IDs: validated once at the edge, then carried as a type.
//!
//! A run ID names a directory in the journal and a topic in the hub, so it
//! must never be able to escape the state dir. The grammar is the spec's
//! `[A-Za-z0-9][A-Za-z0-9._:-]{0,127}`: no `/`, and it cannot start with `.`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest run ID the spec allows.
pub const MAX_RUN_ID_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunIdError {
    #[error("run ID is empty")]
    Empty,
    #[error("run ID is longer than {MAX_RUN_ID_LEN} characters")]
    TooLong,
    #[error("run ID must start with a letter or digit")]
    BadStart,
    #[error("run ID may only contain letters, digits and . _ : - (found {0:?})")]
    BadChar(char),
}

/// A run ID that matches the spec's grammar.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    pub fn parse(s: &str) -> Result<Self, RunIdError> {
        let mut chars = s.chars();
        let first = chars.next().ok_or(RunIdError::Empty)?;
        if s.len() > MAX_RUN_ID_LEN {
            return Err(RunIdError::TooLong);
        }
        if !first.is_ascii_alphanumeric() {
            return Err(RunIdError::BadStart);
        }
        if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
            return Err(RunIdError::BadChar(bad));
        }
        Ok(RunId(s.to_owned()))
    }

    /// A fresh ID that sorts by creation time (a ULID: 26 letters and digits).
    pub fn generate() -> Self {
        RunId(ulid::Ulid::generate().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = RunIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RunId::parse(&s)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// `build-*`, or `*` for every run: the runs whose ID starts with what
/// comes before the `*`. Only a trailing `*` is special, so a pattern is a
/// prefix and matching one is a `starts_with`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RunPattern {
    prefix: String,
}

impl RunPattern {
    /// `Ok(None)` when `s` does not end in `*` (it names one run). The part
    /// before the `*` must be empty or itself a valid run ID, since every
    /// prefix of a valid run ID is one.
    pub fn parse(s: &str) -> Result<Option<Self>, RunIdError> {
        let Some(prefix) = s.strip_suffix('*') else {
            return Ok(None);
        };
        if !prefix.is_empty() {
            RunId::parse(prefix)?;
        }
        Ok(Some(RunPattern { prefix: prefix.to_owned() }))
    }

    pub fn matches(&self, run: &RunId) -> bool {
        run.as_str().starts_with(&self.prefix)
    }

    /// As the client wrote it, with the `*`.
    pub fn to_wire(&self) -> String {
        format!("{}*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_examples() {
        for ok in ["build-42", "a", "A.b_c:d-e", "0", &"x".repeat(128)] {
            assert!(RunId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_path_like_and_malformed() {
        assert_eq!(RunId::parse(""), Err(RunIdError::Empty));
        assert_eq!(RunId::parse(".."), Err(RunIdError::BadStart));
        assert_eq!(RunId::parse(".hidden"), Err(RunIdError::BadStart));
        assert_eq!(RunId::parse("-x"), Err(RunIdError::BadStart));
        assert_eq!(RunId::parse("a/../b"), Err(RunIdError::BadChar('/')));
        assert_eq!(RunId::parse("a b"), Err(RunIdError::BadChar(' ')));
        assert_eq!(RunId::parse("a\0"), Err(RunIdError::BadChar('\0')));
        assert_eq!(RunId::parse("é"), Err(RunIdError::BadStart));
        assert_eq!(RunId::parse(&"x".repeat(129)), Err(RunIdError::TooLong));
    }

    #[test]
    fn generated_ids_are_valid_and_sortable() {
        let a = RunId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = RunId::generate();
        assert!(RunId::parse(a.as_str()).is_ok());
        assert!(a < b);
    }

    #[test]
    fn patterns_are_prefixes() {
        let all = RunPattern::parse("*").unwrap().unwrap();
        let build = RunPattern::parse("build-*").unwrap().unwrap();
        let id = |s| RunId::parse(s).unwrap();
        assert!(all.matches(&id("x")));
        assert!(build.matches(&id("build-1")) && !build.matches(&id("test-1")));
        assert_eq!(build.to_wire(), "build-*");
        assert_eq!(RunPattern::parse("build-1"), Ok(None));
        assert_eq!(RunPattern::parse("a*b*"), Err(RunIdError::BadChar('*')));
        assert_eq!(RunPattern::parse("../*"), Err(RunIdError::BadStart));
    }
}
