//! The stream catalog: which stream holds a topic, how an event's key is found, and which
//! partition (Redis key) a key lands on.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use xxhash_rust::xxh3::xxh3_64;

use crate::config::{Config, StreamConfig};
use crate::model::event::{raw_str, RawEvent, RawMetadata};
use crate::model::pattern::TopicPattern;

/// Most streams created on the fly for topics that no configured stream claims.
pub const MAX_DYNAMIC_STREAMS: usize = 1024;
/// Most topics whose placement is cached.
const MAX_CACHED_PLACEMENTS: usize = 65_536;

/// A stream, compiled from its config.
#[derive(Debug)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    patterns: Vec<TopicPattern>,
    /// Number of partitions.
    pub partitions: u32,
    key_rules: Vec<(TopicPattern, Arc<str>)>,
    /// Entries older than this are trimmed.
    pub max_age: Duration,
    /// Approximate most entries per partition.
    pub max_len: Option<u64>,
    /// Most bytes in Redis, all partitions together.
    pub max_bytes: Option<u64>,
    /// What it does at a bound with entries not acked.
    pub when_full: crate::config::WhenFull,
    /// Set by the trimmer while the stream is at a bound under `block`: publishes to it are
    /// refused.
    pub full: std::sync::atomic::AtomicBool,
    /// Dedup window for `event_id`, when on.
    pub dedup_window: Option<Duration>,
    /// Whether `event_type` must equal the topic.
    pub require_type_match: bool,
    /// The Redis key of each partition, e.g. `evr:{order.3}`.
    pub partition_keys: Vec<Arc<str>>,
    prefix: String,
}

impl StreamSpec {
    /// Compiles a stream config that validation has accepted.
    pub fn new(config: &StreamConfig, prefix: &str, require_type_match: bool) -> Self {
        let patterns = config
            .topics
            .iter()
            .filter_map(|p| TopicPattern::parse(p).ok())
            .collect();
        let key_rules = config
            .keys
            .iter()
            .filter_map(|r| {
                Some((
                    TopicPattern::parse(&r.topic).ok()?,
                    Arc::from(r.pointer.as_str()),
                ))
            })
            .collect();
        let partition_keys = (0..config.partitions)
            .map(|p| Arc::from(format!("{prefix}:{{{}.{p}}}", config.name)))
            .collect();
        Self {
            name: config.name.clone(),
            patterns,
            partitions: config.partitions,
            key_rules,
            max_age: config.max_age.get(),
            max_len: config.max_len,
            max_bytes: config.max_bytes.map(|b| b.as_u64()),
            when_full: config.when_full,
            full: std::sync::atomic::AtomicBool::new(false),
            dedup_window: config
                .dedup_window
                .as_ref()
                .map(crate::config::ConfigDuration::get),
            require_type_match: config.require_type_match.unwrap_or(require_type_match),
            partition_keys,
            prefix: prefix.to_string(),
        }
    }

    /// Whether some topic of this stream could match `may_match_domain` (a subscription's
    /// test on a topic's first segment).
    pub fn may_serve(&self, may_match_domain: impl Fn(&str) -> bool) -> bool {
        self.patterns.iter().any(|p| match p.literal_domain() {
            Some(domain) => may_match_domain(&domain),
            None => true,
        })
    }

    /// Whether this stream holds `topic`.
    pub fn holds(&self, topic: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    /// The key pointer for `topic`, if a rule names one.
    fn pointer_for(&self, topic: &str) -> Option<Arc<str>> {
        self.key_rules
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, pointer)| pointer.clone())
    }

    /// The Redis key holding `event_id`'s dedup marker in `partition`: same hash tag as
    /// the partition so the check and the append are one atomic step, also on a cluster.
    pub fn dedup_key(&self, partition: u32, event_id: &str) -> String {
        format!(
            "{}:{{{}.{partition}}}:dedup:{event_id}",
            self.prefix, self.name
        )
    }
}

/// The partition of `key` among `partitions`: XXH3-64 (seed 0) of the key's UTF-8 bytes,
/// modulo the partition count. Stable across versions and platforms.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (xxh3_64(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// Where a topic's events go.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The stream.
    pub stream: Arc<StreamSpec>,
    /// JSON pointer to the key, when a rule names one for this topic.
    pub pointer: Option<Arc<str>>,
}

impl Placement {
    /// The event's key: the rule's pointer (a string or number there), else
    /// `metadata.partition_key`, else `event_id`.
    pub fn key<'a>(
        &self,
        event: &RawEvent<'a>,
        metadata: &RawMetadata<'a>,
        event_id: &'a str,
    ) -> std::borrow::Cow<'a, str> {
        if let Some(pointer) = &self.pointer {
            if let Some(raw) = event.pointer(pointer) {
                if let Some(s) = raw_str(raw) {
                    if !s.is_empty() {
                        return s;
                    }
                } else if raw.get().bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                    return std::borrow::Cow::Borrowed(raw.get());
                }
            }
        }
        if let Some(raw) = metadata.partition_key {
            if let Some(s) = raw_str(raw) {
                if !s.is_empty() {
                    return s;
                }
            }
        }
        std::borrow::Cow::Borrowed(event_id)
    }
}

/// Why a topic has no placement.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// Too many streams were created on the fly.
    #[error("no configured stream holds topic `{0}` and the limit of {MAX_DYNAMIC_STREAMS} implicit streams is reached")]
    TooManyStreams(String),
}

/// All streams: configured ones first, then streams created for unclaimed domains.
#[derive(Debug)]
pub struct StreamCatalog {
    configured: Vec<Arc<StreamSpec>>,
    dynamic: RwLock<HashMap<String, Arc<StreamSpec>>>,
    placements: RwLock<HashMap<String, Placement>>,
    prefix: String,
    require_type_match: bool,
}

impl StreamCatalog {
    /// Builds the catalog from a validated config.
    pub fn new(config: &Config) -> Self {
        let prefix = config.redis.key_prefix.clone();
        let require = config.validation.require_type_match;
        let configured = config
            .effective_streams()
            .iter()
            .map(|s| Arc::new(StreamSpec::new(s, &prefix, require)))
            .collect();
        Self {
            configured,
            dynamic: RwLock::new(HashMap::new()),
            placements: RwLock::new(HashMap::new()),
            prefix,
            require_type_match: require,
        }
    }

    /// Every stream known now.
    pub fn streams(&self) -> Vec<Arc<StreamSpec>> {
        let mut all = self.configured.clone();
        if let Ok(dynamic) = self.dynamic.read() {
            all.extend(dynamic.values().cloned());
        }
        all
    }

    /// The placement of a valid topic name.
    pub fn placement(&self, topic: &str) -> Result<Placement, PlacementError> {
        if let Some(placement) = self
            .placements
            .read()
            .ok()
            .and_then(|r| r.get(topic).cloned())
        {
            return Ok(placement);
        }
        let domain = crate::model::topic::domain(topic);
        let claimed = self
            .configured
            .iter()
            .find(|s| s.holds(topic))
            .or_else(|| self.configured.iter().find(|s| s.name == domain));
        let stream = match claimed {
            Some(stream) => stream.clone(),
            None => self.dynamic_stream(topic)?,
        };
        let placement = Placement {
            pointer: stream.pointer_for(topic),
            stream,
        };
        if let Ok(mut placements) = self.placements.write() {
            if placements.len() >= MAX_CACHED_PLACEMENTS {
                placements.clear();
            }
            placements.insert(topic.to_string(), placement.clone());
        }
        Ok(placement)
    }

    fn dynamic_stream(&self, topic: &str) -> Result<Arc<StreamSpec>, PlacementError> {
        let domain = crate::model::topic::domain(topic);
        let mut dynamic = crate::model::sync::write(&self.dynamic);
        if let Some(stream) = dynamic.get(domain) {
            return Ok(stream.clone());
        }
        if dynamic.len() >= MAX_DYNAMIC_STREAMS {
            return Err(PlacementError::TooManyStreams(topic.to_string()));
        }
        let config = StreamConfig {
            name: domain.to_string(),
            topics: vec![format!("{domain}.>"), domain.to_string()],
            ..StreamConfig::default()
        };
        let stream = Arc::new(StreamSpec::new(
            &config,
            &self.prefix,
            self.require_type_match,
        ));
        dynamic.insert(domain.to_string(), stream.clone());
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn catalog() -> StreamCatalog {
        StreamCatalog::new(&Config::default())
    }

    #[test]
    fn topics_are_placed_in_their_domain_stream_with_their_key() {
        let catalog = catalog();
        let placement = catalog.placement("order.created").expect("placement");
        assert_eq!(placement.stream.name, "order");
        assert_eq!(placement.pointer.as_deref(), Some("/data/order_id"));
        assert_eq!(&*placement.stream.partition_keys[3], "evr:{order.3}");
        let unknown = catalog.placement("warehouse.moved").expect("placement");
        assert_eq!(unknown.stream.name, "warehouse");
        assert_eq!(unknown.stream.partitions, 16);
        assert!(unknown.pointer.is_none());
        // A bare domain topic goes to the configured stream of that name, never to a
        // second stream sharing its Redis keys.
        assert_eq!(
            catalog
                .placement("order")
                .expect("placement")
                .stream
                .partition_keys
                .len(),
            16
        );
        assert!(Arc::ptr_eq(
            &catalog.placement("order").expect("placement").stream,
            &placement.stream
        ));
    }

    #[test]
    fn key_falls_back_to_partition_key_then_event_id() {
        let catalog = catalog();
        let placement = catalog.placement("order.created").expect("placement");
        let with = r#"{"data":{"order_id":"o1"},"metadata":{"partition_key":"pk"}}"#;
        let without = r#"{"data":{},"metadata":{"partition_key":"pk"}}"#;
        let bare = r#"{"data":{"order_id":{}},"metadata":{}}"#;
        let numeric = r#"{"data":{"order_id":42}}"#;
        for (text, expected) in [
            (with, "o1"),
            (without, "pk"),
            (bare, "evt_x_1"),
            (numeric, "42"),
        ] {
            let raw: &RawValue = serde_json::from_str(text).expect("json");
            let event = RawEvent::parse(raw).expect("object");
            let metadata = RawMetadata::parse(event.metadata);
            assert_eq!(placement.key(&event, &metadata, "evt_x_1"), expected);
        }
    }

    #[test]
    fn partitioning_is_stable() {
        // XXH3-64 of "ord_1" is fixed by the algorithm; this pins the documented hash.
        assert_eq!(partition_of("ord_1", 16), (xxh3_64(b"ord_1") % 16) as u32);
        let first = partition_of("customer_77", 16);
        assert!((0..100).all(|_| partition_of("customer_77", 16) == first));
        assert!(partition_of("anything", 1) == 0);
    }
}
