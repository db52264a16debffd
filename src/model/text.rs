//! JSON strings read in place: borrowed from the text they were read from when they hold
//! no escape, copied only when they must be unescaped. serde's own `Cow<str>` copies every
//! string it reads, which on the publish path was an allocation per key of every event.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::de::{Deserialize, Deserializer, Error, Visitor};

/// A JSON string, borrowed unless it had escapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    /// The string, owned.
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_string_is_borrowed_and_an_escaped_one_unescaped() {
        let plain: Text = serde_json::from_str(r#""order.created""#).expect("plain");
        assert!(matches!(plain.0, Cow::Borrowed("order.created")));
        let escaped: Text = serde_json::from_str(r#""a\"b\u00e9""#).expect("escaped");
        assert!(matches!(&escaped.0, Cow::Owned(s) if s == "a\"bé"));
        let keys: std::collections::HashMap<Text, Text> =
            serde_json::from_str(r#"{"k":"v","e\n":"w"}"#).expect("map");
        assert!(keys.keys().any(|k| matches!(k.0, Cow::Borrowed("k"))));
        assert_eq!(keys.get(&Text("e\n".into())).map(|v| &**v), Some("w"));
        assert!(serde_json::from_str::<Text>("12").is_err());
    }
}
