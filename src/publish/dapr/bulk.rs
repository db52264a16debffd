//! A Dapr bulk publish's body read in place: its entries, each event left as the JSON
//! text it was sent as, and how deep it nests measured entry by entry.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::event::deeper_than;
use crate::model::text::Text;

/// One entry of a bulk publish, as the Dapr SDKs send it, read in place from the body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEntry<'a> {
    /// `entryId` (Dapr's docs) or `entryID` (the JavaScript SDK).
    #[serde(alias = "entryID", borrow)]
    pub entry_id: Option<Text<'a>>,
    /// The event, as the JSON text it was sent as.
    #[serde(borrow)]
    pub event: Option<&'a RawValue>,
    /// `contentType`.
    #[serde(borrow)]
    pub content_type: Option<Text<'a>>,
    /// `metadata`, in the order sent (a name given twice: the last one counts, as in a
    /// map).
    #[serde(default, borrow, deserialize_with = "pairs")]
    pub metadata: Vec<(Text<'a>, Text<'a>)>,
}

/// Why a bulk body is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    /// An entry's event nests deeper than the limit.
    #[error("the body nests deeper than {0} levels")]
    TooDeep(usize),
    /// The body is not a JSON list of entries.
    #[error("the body is not a list of entries: {0}")]
    NotEntries(String),
}

/// Reads a bulk body's entries; an event may nest `max_depth` levels. serde_json's own
/// recursion limit keeps the parse itself shallow; each event's brackets are then counted
/// (a vectorised search), and only an event with more of them than the limit is walked.
pub fn parse_bulk(body: &[u8], max_depth: usize) -> Result<Vec<BulkEntry<'_>>, BulkError> {
    let entries: Vec<BulkEntry> = match serde_json::from_slice(body) {
        Ok(entries) => entries,
        // The list and the entry are the two levels above each event.
        Err(_) if deeper_than(body, max_depth + 2) => return Err(BulkError::TooDeep(max_depth)),
        Err(err) => return Err(BulkError::NotEntries(err.to_string())),
    };
    let too_deep = |entry: &BulkEntry| {
        entry
            .event
            .is_some_and(|event| deeper_than(event.get().as_bytes(), max_depth))
    };
    if entries.iter().any(too_deep) {
        return Err(BulkError::TooDeep(max_depth));
    }
    Ok(entries)
}

/// A JSON object of strings as its pairs, borrowed where they hold no escape.
fn pairs<'de, D: Deserializer<'de>>(from: D) -> Result<Vec<(Text<'de>, Text<'de>)>, D::Error> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(Text<'de>, Text<'de>)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of strings")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(1).min(16));
            while let Some(pair) = map.next_entry()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    from.deserialize_map(Pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_in_place_with_their_metadata_in_order() {
        let body = br#"[{"entryId":"1","event":{"a":[1,2]},"contentType":"application/json",
            "metadata":{"partitionKey":"k1","ttlInSeconds":"30","partitionKey":"k2"}},
            {"entryID":"2","event":"text"}]"#;
        let entries = parse_bulk(body, 8).expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].entry_id.as_deref(), Some("1"));
        assert_eq!(entries[0].event.map(RawValue::get), Some(r#"{"a":[1,2]}"#));
        let names: Vec<(&str, &str)> = (entries[0].metadata.iter())
            .map(|(k, v)| (&**k, &**v))
            .collect();
        assert_eq!(
            names,
            [
                ("partitionKey", "k1"),
                ("ttlInSeconds", "30"),
                ("partitionKey", "k2")
            ]
        );
        assert_eq!(entries[1].entry_id.as_deref(), Some("2"));
        assert!(entries[1].metadata.is_empty());
    }

    #[test]
    fn an_event_may_nest_to_the_limit_and_not_past_it() {
        let nested = |levels: usize| {
            format!(
                r#"[{{"entryId":"a","event":{{"x":1}}}},{{"entryId":"b","event":{}1{}}}]"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        assert!(parse_bulk(nested(5).as_bytes(), 5).is_ok());
        assert_eq!(
            parse_bulk(nested(6).as_bytes(), 5).err(),
            Some(BulkError::TooDeep(5))
        );
        // Past serde_json's own limit: still said to be too deep, not malformed.
        assert_eq!(
            parse_bulk(nested(500).as_bytes(), 64).err(),
            Some(BulkError::TooDeep(64))
        );
        // Brackets inside strings do not nest.
        let text = format!(r#"[{{"entryId":"a","event":"{}"}}]"#, "[".repeat(100));
        assert!(parse_bulk(text.as_bytes(), 3).is_ok());
    }

    #[test]
    fn what_is_not_a_list_of_entries_is_refused() {
        for body in [
            &br#"{"entryId":"1"}"#[..],
            b"[1]",
            b"[{\"metadata\":{\"a\":1}}]",
            b"[{",
        ] {
            assert!(
                matches!(parse_bulk(body, 8), Err(BulkError::NotEntries(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
