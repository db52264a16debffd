//! An event's time read from the top level of its payload without reading past it: the
//! platform's events name their `timestamp`, and CloudEvents their `time`, before their
//! `data`, so most of a payload is never looked at. Anything unexpected (an escape in a key or in the time, a time that is
//! not a string, text that is not an object) is left to a full parse.

use memchr::memchr2;

/// Which top-level field holds the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimeField {
    /// An event's: its `timestamp`, or, when it has none, its `time`.
    Timestamp,
    /// A CloudEvent's: its `time` attribute (an extension named `timestamp` is not it).
    Time,
}

/// What the top level of a JSON object says of its time.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TopTime<'a> {
    /// The field's value.
    Found(&'a str),
    /// Neither.
    Absent,
    /// Not read to the end: the caller parses the payload.
    Unsure,
}

/// The time of the object `json` at its top level (the first such field).
pub(super) fn top_time(json: &[u8], field: TimeField) -> TopTime<'_> {
    scan(json, field).unwrap_or(TopTime::Unsure)
}

fn scan(json: &[u8], field: TimeField) -> Option<TopTime<'_>> {
    let mut at = ws(json, 0);
    if *json.get(at)? != b'{' {
        return None;
    }
    at = ws(json, at + 1);
    let mut time = None;
    if *json.get(at)? == b'}' {
        return Some(TopTime::Absent);
    }
    loop {
        let (key, after) = plain_string(json, at)?;
        at = ws(json, after);
        if *json.get(at)? != b':' {
            return None;
        }
        at = ws(json, at + 1);
        let decides = match field {
            TimeField::Timestamp => key == b"timestamp",
            TimeField::Time => key == b"time",
        };
        if decides || (field == TimeField::Timestamp && key == b"time") {
            let (value, after) = plain_string(json, at)?;
            let value = std::str::from_utf8(value).ok()?;
            if decides {
                return Some(TopTime::Found(value));
            }
            time.get_or_insert(value);
            at = after;
        } else {
            at = skip_value(json, at)?;
        }
        at = ws(json, at);
        match *json.get(at)? {
            b',' => at = ws(json, at + 1),
            b'}' => return Some(time.map_or(TopTime::Absent, TopTime::Found)),
            _ => return None,
        }
    }
}

fn ws(json: &[u8], mut at: usize) -> usize {
    while matches!(json.get(at), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        at += 1;
    }
    at
}

/// The string at `at` when it has no escape, and the place after it.
fn plain_string(json: &[u8], at: usize) -> Option<(&[u8], usize)> {
    if *json.get(at)? != b'"' {
        return None;
    }
    let rest = json.get(at + 1..)?;
    let end = memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| (&rest[..end], at + 1 + end + 1))
}

/// The place after the string at `at` (its escapes skipped).
fn skip_string(json: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i += memchr2(b'"', b'\\', json.get(i..)?)?;
        if json[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// The place after the value at `at`.
fn skip_value(json: &[u8], at: usize) -> Option<usize> {
    match *json.get(at)? {
        b'"' => skip_string(json, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match *json.get(i)? {
                    b'"' => {
                        i = skip_string(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = at;
            while !matches!(
                json.get(i),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
            ) {
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a full parse says: the top level's `timestamp`, else its `time` (a
    /// CloudEvent's: its `time`).
    fn parsed(json: &str, field: TimeField) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(json).ok()?;
        let object = value.as_object()?;
        match field {
            TimeField::Timestamp => object.get("timestamp").or(object.get("time")),
            TimeField::Time => object.get("time"),
        }
        .and_then(|t| t.as_str().map(str::to_string))
    }

    #[test]
    fn the_time_is_what_a_full_parse_finds_or_the_skim_says_it_is_unsure() {
        let cases = [
            r#"{"event_id":"e","timestamp":"2026-12-07T10:00:00Z","data":{"a":1}}"#,
            r#"{"data":{"timestamp":"inner","x":[1,{"y":"}"}],"s":"a\"b\\"},"timestamp":"t1"}"#,
            r#"{"id":"1","time":"t2","data":{"n":-1.5e3,"b":true,"z":null}}"#,
            r#"{"time":"t3","timestamp":"t4"}"#,
            r#" { "timestamp" : "t5" , "data" : [ ] } "#,
            r#"{"data":{"deep":[[[["]"]]]],"e":"\u00e9"},"n":12,"ok":false}"#,
            r#"{}"#,
            r#"{"timestamp":12}"#,
            r#"{"timestamp":"a\"b"}"#,
            r#"{"time\u0073tamp":"t6"}"#,
            r#"[1,2]"#,
            r#"{"data":{"a":1}"#,
            r#"{"a":"unterminated}"#,
            "",
        ];
        for json in cases {
            for field in [TimeField::Timestamp, TimeField::Time] {
                match top_time(json.as_bytes(), field) {
                    TopTime::Found(t) => {
                        assert_eq!(Some(t.to_string()), parsed(json, field), "{json}")
                    }
                    TopTime::Absent => assert_eq!(None, parsed(json, field), "{json}"),
                    TopTime::Unsure => {}
                }
            }
        }
        // What each field finds; a CloudEvent's time is its `time`, found before its
        // `data` is read.
        let found = [
            (
                0,
                TimeField::Timestamp,
                TopTime::Found("2026-12-07T10:00:00Z"),
            ),
            (1, TimeField::Timestamp, TopTime::Found("t1")),
            (2, TimeField::Timestamp, TopTime::Found("t2")),
            (3, TimeField::Timestamp, TopTime::Found("t4")),
            (4, TimeField::Timestamp, TopTime::Found("t5")),
            (5, TimeField::Timestamp, TopTime::Absent),
            (6, TimeField::Timestamp, TopTime::Absent),
            (2, TimeField::Time, TopTime::Found("t2")),
            (3, TimeField::Time, TopTime::Found("t3")),
            (0, TimeField::Time, TopTime::Absent),
        ];
        for (case, field, expected) in found {
            assert_eq!(top_time(cases[case].as_bytes(), field), expected, "{case}");
        }
        let unreadable_after_time = r#"{"time":"t7","data":{"a":"unterminated}"#;
        assert_eq!(
            top_time(unreadable_after_time.as_bytes(), TimeField::Time),
            TopTime::Found("t7")
        );
        // A time that is not a plain string, an escaped key, not an object, cut short.
        for json in &cases[7..] {
            assert_eq!(
                top_time(json.as_bytes(), TimeField::Timestamp),
                TopTime::Unsure,
                "{json}"
            );
        }
    }
}
