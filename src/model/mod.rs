//! The bottom floor: plain data and pure functions every other floor shares. Nothing here
//! does I/O or knows Redis, HTTP or the config file.

pub mod audit;
pub mod clock;
pub mod cloudevent;
pub mod dead_letter;
pub mod envelope;
pub mod event;
pub mod pattern;
pub mod redact;
pub mod route;
pub mod signing;
pub mod subscription;
pub mod sync;
pub mod text;
pub mod topic;
pub mod trace;
pub mod violation;

/// A new random event id (a UUID v4, hyphenated, lower case), written without the
/// formatting machinery: an id is made for every event published without one.
pub fn new_event_id() -> String {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut text)
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_event_id_is_a_hyphenated_lower_case_uuid() {
        let id = super::new_event_id();
        let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
        assert_eq!(id, parsed.hyphenated().to_string());
        assert_eq!(parsed.get_version_num(), 4);
        assert_ne!(id, super::new_event_id());
    }
}
