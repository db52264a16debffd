//! A duration setting ("5s", "200ms", "30d"), parsed once when the file is read: the value
//! keeps its text (for messages and for writing the config back) and what it means.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration from the config file. A string that is not a duration is still read (so that
/// one bad value does not hide the other problems of its section); validation reports it,
/// and a config with such a value is never used.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigDuration {
    text: String,
    parsed: Result<Duration, String>,
}

impl ConfigDuration {
    /// Reads `text`.
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_string(),
            parsed: parse(text),
        }
    }

    /// The duration (zero for a value validation refuses).
    pub fn get(&self) -> Duration {
        self.parsed.clone().unwrap_or_default()
    }

    /// Why the text is not a duration, if it is not.
    pub fn error(&self) -> Option<&str> {
        self.parsed.as_ref().err().map(String::as_str)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Parses `"200us"`, `"5s"`, `"30d"` and the like.
fn parse(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|e| format!("`{value}` is not a duration like 5s, 200ms or 30d: {e}"))
}

impl From<&str> for ConfigDuration {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl fmt::Debug for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self::new(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_meaning_are_kept() {
        let d = ConfigDuration::new("250ms");
        assert_eq!(d.get(), Duration::from_millis(250));
        assert_eq!(d.as_str(), "250ms");
        assert_eq!(d.error(), None);
        let bad = ConfigDuration::new("soon");
        assert_eq!(bad.get(), Duration::ZERO);
        assert!(bad.error().is_some_and(|e| e.contains("`soon`")));
    }
}
