//! Refused requests against the audit log: an attacker cycling source addresses (and
//! tokens) gets no more entries than the interval's limit of callers, and every refusal is
//! still counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::support::{
    test_config, AuthConfig, AuthMode, PrincipalConfig, RedisServer, RouterApi, TestRouter,
};

/// 200 loopback addresses, five requests each with a token of its own: one interval's
/// worth of entries at most (`refusal_callers` in full, their counts, one count for the
/// rest), whose counts add up to the 1,000 requests. The interval outlasts the test: the
/// counts are written at the clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_from_many_addresses_cost_a_bounded_number_of_entries() {
    const ADDRESSES: u8 = 200;
    const PER_ADDRESS: usize = 5;
    const CALLERS: usize = 10;
    let redis = RedisServer::start();
    let mut config = test_config(&redis);
    config.auth = AuthConfig {
        mode: AuthMode::Token,
        principals: vec![PrincipalConfig {
            admin: true,
            ..crate::support::secured::principal("ops", "ops-token")
        }],
        ..AuthConfig::default()
    };
    config.audit.refusal_interval = "1h".into();
    config.audit.refusal_callers = CALLERS;
    let key = format!("{}:audit:refused", config.redis.key_prefix);
    let router = TestRouter::start(config).await;
    let url = router.url("/v1/subscriptions");
    let mut sent = 0u64;
    for host in 0..ADDRESSES {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, host + 1));
        let http = reqwest::Client::builder()
            .local_address(from)
            .build()
            .expect("client");
        for n in 0..PER_ADDRESS {
            let status = http
                .get(&url)
                .bearer_auth(format!("guess-{host}-{n}"))
                .send()
                .await
                .expect("request")
                .status();
            assert_eq!(status, 401);
            sent += 1;
        }
    }
    router.stop().await.expect("clean stop");

    let mut conn = redis.conn();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange");
    let fields: Vec<HashMap<String, String>> = entries
        .ids
        .iter()
        .map(|e| {
            e.map
                .keys()
                .map(|k| (k.clone(), e.get::<String>(k).unwrap_or_default()))
                .collect()
        })
        .collect();
    let counted: u64 = fields
        .iter()
        .map(|f| f["count"].parse::<u64>().expect("count"))
        .sum();
    assert_eq!(counted, sent, "every refusal counted once: {fields:?}");
    assert!(
        fields.len() <= 2 * CALLERS + 1,
        "{} entries for {sent} refusals from {ADDRESSES} addresses: {fields:?}",
        fields.len()
    );
    let others: Vec<_> = fields.iter().filter(|f| f["principal"] == "*").collect();
    assert_eq!(others.len(), 1, "{fields:?}");
    assert_eq!(
        others[0]["count"].parse::<u64>().ok(),
        Some(sent - (CALLERS * PER_ADDRESS) as u64),
        "the callers past the limit, together"
    );
}
