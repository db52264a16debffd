//! Crypto-shredding: the payload of an event about data subjects is stored sealed
//! (AES-256-GCM) under a key made from its subjects' keys, and erasing a subject deletes
//! its key. Every copy of those payloads (the table, its replicas, its backups) is then
//! unreadable, however long the copies live; only the key table's own backups must be
//! short-lived, which is why it may live in a database of its own (`keys_url`).
//!
//! A key is 32 random bytes per subject, made when the subject's first event is archived.
//! An event about several subjects is sealed under the SHA-256 of their keys in subject
//! order, so erasing any one of them erases it. Sealed bytes: a version byte, a random
//! 96-bit nonce, then the sealed text (a kind byte, `j` for JSON or `b` for bytes, and
//! the payload) with its tag; the event id is the additional data, so a sealed payload
//! cannot be moved to another row.

use std::collections::{BTreeSet, HashMap};

use deadpool_postgres::Pool;
pub use ring::aead::NONCE_LEN;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::EventStoreError;

/// The first byte of sealed bytes.
const VERSION: u8 = 1;

/// A subject's key.
type Key = [u8; 32];

/// A payload as stored before sealing and after opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plain {
    /// JSON text (the `payload` column).
    Json(Vec<u8>),
    /// Bytes that are not JSON (the `payload_bytes` column).
    Bytes(Vec<u8>),
}

/// The table of subjects' keys.
#[derive(Clone)]
pub struct Keys {
    pool: Pool,
}

impl Keys {
    /// Keys kept in the database of `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Makes the key table if it is not there.
    pub async fn prepare(&self) -> Result<(), EventStoreError> {
        let client = self.pool.get().await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS evr_subject_keys (
                     subject    text        PRIMARY KEY,
                     key        bytea       NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        Ok(())
    }

    /// The keys of `subjects`, made for those that have none yet (one read when every
    /// subject has one). Made keys race safely with other instances: the first one
    /// written is the one every instance reads.
    pub async fn issue(&self, subjects: &BTreeSet<&str>) -> Result<KeyRing, EventStoreError> {
        let mut ring = self.find(subjects).await?;
        let missing: Vec<&str> = subjects
            .iter()
            .copied()
            .filter(|s| !ring.0.contains_key(*s))
            .collect();
        if missing.is_empty() {
            return Ok(ring);
        }
        let mut fresh = vec![0u8; 32 * missing.len()];
        getrandom::fill(&mut fresh)
            .map_err(|e| EventStoreError::Config(format!("no random bytes: {e}")))?;
        let fresh: Vec<&[u8]> = fresh.chunks(32).collect();
        let client = self.pool.get().await?;
        // In subject order, so that two instances making keys at once never deadlock; an
        // insert that meets another's waits for it, so the read after sees every key.
        client
            .execute(
                "INSERT INTO evr_subject_keys (subject, key)
                 SELECT * FROM unnest($1::text[], $2::bytea[]) ORDER BY 1
                 ON CONFLICT (subject) DO NOTHING",
                &[&missing, &fresh],
            )
            .await?;
        drop(client);
        let made = self.find(&missing.into_iter().collect()).await?;
        ring.0.extend(made.0);
        Ok(ring)
    }

    /// The keys `subjects` still have.
    pub async fn find(&self, subjects: &BTreeSet<&str>) -> Result<KeyRing, EventStoreError> {
        if subjects.is_empty() {
            return Ok(KeyRing::default());
        }
        let names: Vec<&str> = subjects.iter().copied().collect();
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT subject, key FROM evr_subject_keys WHERE subject = ANY($1)",
                &[&names],
            )
            .await?;
        Ok(KeyRing::from_rows(&rows))
    }

    /// Deletes the key of `subject`: 1 when it had one.
    pub async fn shred(&self, subject: &str) -> Result<u64, EventStoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM evr_subject_keys WHERE subject = $1",
                &[&subject],
            )
            .await?)
    }
}

/// Some subjects' keys.
#[derive(Debug, Default)]
pub struct KeyRing(HashMap<String, Key>);

impl KeyRing {
    fn from_rows(rows: &[tokio_postgres::Row]) -> Self {
        Self(
            rows.iter()
                .filter_map(|row| {
                    let key: &[u8] = row.get(1);
                    Some((row.get(0), key.try_into().ok()?))
                })
                .collect(),
        )
    }

    /// The key of an event about `subjects` (sorted); none when one of them has no key.
    fn event_key(&self, subjects: &[String]) -> Option<LessSafeKey> {
        let bytes = match subjects {
            [] => return None,
            [one] => *self.0.get(one)?,
            several => {
                let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
                for subject in several {
                    digest.update(self.0.get(subject)?);
                }
                digest.finish().as_ref().try_into().ok()?
            }
        };
        Some(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes).ok()?,
        ))
    }

    /// `plain` sealed for an event `event_id` about `subjects`, with `nonce` (random,
    /// never used twice); none when a subject has no key.
    pub fn seal(
        &self,
        subjects: &[String],
        event_id: &str,
        plain: &Plain,
        nonce: [u8; NONCE_LEN],
    ) -> Option<Vec<u8>> {
        let key = self.event_key(subjects)?;
        let (kind, bytes) = match plain {
            Plain::Json(b) => (b'j', b),
            Plain::Bytes(b) => (b'b', b),
        };
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + 1 + bytes.len() + 16);
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        let mut text = Vec::with_capacity(1 + bytes.len() + 16);
        text.push(kind);
        text.extend_from_slice(bytes);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(event_id.as_bytes()),
            &mut text,
        )
        .ok()?;
        sealed.extend_from_slice(&text);
        Some(sealed)
    }

    /// The payload sealed in `sealed` for `event_id` about `subjects`; none when a
    /// subject's key is gone (erased) or the bytes do not open.
    pub fn open(&self, subjects: &[String], event_id: &str, sealed: &[u8]) -> Option<Plain> {
        let key = self.event_key(subjects)?;
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, text) = rest.split_at(NONCE_LEN);
        let mut text = text.to_vec();
        let opened = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(event_id.as_bytes()),
                &mut text,
            )
            .ok()?;
        let (&kind, payload) = opened.split_first()?;
        match kind {
            b'j' => Some(Plain::Json(payload.to_vec())),
            b'b' => Some(Plain::Bytes(payload.to_vec())),
            _ => None,
        }
    }
}

/// The payload of a row read back: `None` when it was not sealed (read the plain
/// columns); what it opens to, or a tombstone when its key is gone.
pub fn unseal(
    ring: &KeyRing,
    sealed: Option<&[u8]>,
    subjects: &[String],
    event_id: &str,
    event_type: &str,
) -> Option<Plain> {
    let sealed = sealed?;
    Some(
        ring.open(subjects, event_id, sealed)
            .unwrap_or_else(|| Plain::Json(erased(event_id, event_type))),
    )
}

impl super::EventStore {
    /// The keys needed to open the sealed rows among `rows`, whose sealed payload is
    /// column `sealed` and subjects column `subjects`.
    pub(super) async fn ring_of(
        &self,
        rows: &[tokio_postgres::Row],
        sealed: usize,
        subjects: usize,
    ) -> Result<KeyRing, EventStoreError> {
        let names = sealed_subjects(rows, sealed, subjects);
        let set: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        self.keys.find(&set).await
    }
}

/// The subjects of the sealed rows among `rows`, whose subjects are column `subjects`
/// and sealed payload column `sealed`.
pub fn sealed_subjects(
    rows: &[tokio_postgres::Row],
    sealed: usize,
    subjects: usize,
) -> Vec<String> {
    let mut found = BTreeSet::new();
    for row in rows {
        if row.get::<_, Option<&[u8]>>(sealed).is_some() {
            for subject in row.get::<_, Vec<String>>(subjects) {
                found.insert(subject);
            }
        }
    }
    found.into_iter().collect()
}

/// What a sealed payload whose key is gone reads as.
pub fn erased(event_id: &str, event_type: &str) -> Vec<u8> {
    serde_json::json!({ "erased": true, "event_id": event_id, "event_type": event_type })
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(&str, u8)]) -> KeyRing {
        KeyRing(
            keys.iter()
                .map(|(s, b)| (s.to_string(), [*b; 32]))
                .collect(),
        )
    }

    #[test]
    fn a_sealed_payload_opens_with_its_subjects_keys_only() {
        let both = ring(&[("c-1", 1), ("c-2", 2)]);
        let subjects = vec!["c-1".to_string(), "c-2".to_string()];
        let plain = Plain::Json(br#"{"data":{"customer_id":"c-1"}}"#.to_vec());
        let sealed = both
            .seal(&subjects, "e-1", &plain, [9; 12])
            .expect("sealed");
        assert!(!sealed.windows(8).any(|w| w == b"customer"));
        assert_eq!(both.open(&subjects, "e-1", &sealed), Some(plain));
        // Another row's id, or either subject's key gone: nothing.
        assert_eq!(both.open(&subjects, "e-2", &sealed), None);
        assert_eq!(ring(&[("c-1", 1)]).open(&subjects, "e-1", &sealed), None);
        assert_eq!(
            ring(&[("c-1", 1), ("c-2", 3)]).open(&subjects, "e-1", &sealed),
            None
        );
    }

    #[test]
    fn bytes_keep_their_kind() {
        let keys = ring(&[("c-1", 1)]);
        let subjects = vec!["c-1".to_string()];
        let plain = Plain::Bytes(vec![0, 159, 146, 150]);
        let sealed = keys.seal(&subjects, "e", &plain, [1; 12]).expect("sealed");
        assert_eq!(keys.open(&subjects, "e", &sealed), Some(plain));
        let mut bent = sealed.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert_eq!(keys.open(&subjects, "e", &bent), None);
    }
}
