//! The config's tests: reading, every problem with its path, overrides, defaults.

use super::*;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn empty_file_gives_defaults() {
    let config = Config::from_toml_str("", no_env()).expect("defaults are valid");
    assert_eq!(config.server.listen, "127.0.0.1:3500");
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379");
    assert!(config.effective_streams().iter().any(|s| s.name == "order"));
}

#[test]
fn every_unknown_key_and_bad_value_is_listed_with_its_path() {
    let text = r#"
        [server]
        listn = "x"
        max_batch = 0
        [writer]
        flavour = 1
        [[streams]]
        name = "Order"
        partitions = 0
        max_age = "forever"
    "#;
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
        panic!("config should be refused");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "server.listn",
        "writer.flavour",
        "server.max_batch",
        "streams[0].name",
        "streams[0].partitions",
        "streams[0].max_age",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
}

#[test]
fn wrong_type_names_its_key() {
    let Err(ConfigError::Invalid(problems)) =
        Config::from_toml_str("[server]\nmax_batch = \"many\"\n", no_env())
    else {
        panic!("config should be refused");
    };
    assert_eq!(problems[0].path, "server.max_batch");
}

#[test]
fn type_errors_in_several_sections_are_all_reported() {
    let text = "[server]\nmax_batch = \"many\"\n[writer]\nwriters = \"two\"\n[retention]\ncheck_interval = \"0s\"\n[[streams]]\nname = \"a\"\npartitions = \"x\"\n";
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
        panic!("config should be refused");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "server.max_batch",
        "writer.writers",
        "retention.check_interval",
        "streams[0].partitions",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
}

#[test]
fn bad_delivery_settings_are_reported_with_their_paths() {
    let text = "[delivery]\nreaders = 0\nread_linger = \"soon\"\n\n[[subscriptions]]\nname = \"s\"\ntopics = [\"order.*\"]\nendpoints = [\"http://127.0.0.1:1/e\"]\nordering = \"sequence\"\nreorder = { timeout_ms = 0, max_held = 0 }\n";
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
        panic!("config should be refused");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "delivery.readers",
        "delivery.read_linger",
        "subscriptions[0].reorder.timeout_ms",
        "subscriptions[0].reorder.max_held",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(expected)),
            "{expected} missing from {paths:?}"
        );
    }
    let fine = "[delivery]\nread_linger = \"0s\"\n";
    assert!(
        Config::from_toml_str(fine, no_env()).is_ok(),
        "0s disables the pause"
    );
}

#[test]
fn bad_retention_bounds_and_breakers_are_reported_with_their_paths() {
    let text = "[server]\nshutdown_budget = \"never\"\n\n[retention]\nmemory_share = 2.0\ndlq_max_len = 0\n\n[[streams]]\nname = \"order\"\nmax_bytes = 0\n\n[[subscriptions]]\nname = \"s\"\ntopics = [\"order.*\"]\nendpoints = [\"http://127.0.0.1:1/e\"]\non_404 = \"retry\"\nbreaker = { failure_rate = 0.0, window = 10, min_calls = 11, probes = 0 }\n";
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
        panic!("config should be refused");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "server.shutdown_budget",
        "retention.memory_share",
        "retention.dlq_max_len",
        "streams[0].max_bytes",
        "subscriptions[0].breaker.failure_rate",
        "subscriptions[0].breaker.min_calls",
        "subscriptions[0].breaker.probes",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(expected)),
            "{expected} missing from {paths:?}"
        );
    }
    let fine = "[[streams]]\nname = \"order\"\nmax_bytes = \"2GiB\"\nwhen_full = \"drop_oldest\"\n";
    let config = Config::from_toml_str(fine, no_env()).expect("valid");
    assert_eq!(
        config.streams[0].max_bytes.map(|b| b.as_u64()),
        Some(2 * 1024 * 1024 * 1024)
    );
    let typo = "[[streams]]\nname = \"order\"\nwhen_full = \"drop\"\n";
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(typo, no_env()) else {
        panic!("an unknown when_full should be refused");
    };
    assert!(problems[0].path.starts_with("streams[0]"), "{problems:?}");
}

#[test]
fn bad_subscriptions_in_config_are_reported_with_their_paths() {
    let text = "[[subscriptions]]\nname = \"ok\"\ntopics = [\"order.*\"]\nendpoints = [\"http://127.0.0.1:1/e\"]\n\n[[subscriptions]]\nname = \"ok\"\ntopics = [\"a..b\"]\nendpoints = [\"ftp://x\"]\n\n[[subscriptions]]\nname = \"x\"\ncolour = 1\n";
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
        panic!("config should be refused");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "subscriptions[1].name",
        "subscriptions[1].topics.0",
        "subscriptions[1].endpoints.0",
        "subscriptions[2]",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(expected)),
            "{expected} missing from {paths:?}"
        );
    }
}

#[test]
fn bad_dapr_settings_are_reported_with_their_paths() {
    let text = "[dapr]\nrefresh_interval = \"1ms\"\nsubscriptions_dir = \"/no/such/dir\"\ncolour = 1\n\n[[dapr.pubsubs]]\nname = \"pubsub\"\ntopic_prefix = \"Bad\"\n\n[[dapr.pubsubs]]\nname = \"pubsub\"\n\n[[dapr.apps]]\nid = \"Shop App\"\nurl = \"ftp://x\"\nmax_attempts = 0\nretry_initial_ms = 0\ncolour = 2\nhealth_path = \"health\"\nhealth_interval = \"0s\"\nhealth_timeout = \"soon\"\nhealth_threshold = 0\n";
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text, no_env()) else {
        panic!("config should be refused");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "dapr.colour",
        "dapr.refresh_interval",
        "dapr.subscriptions_dir",
        "dapr.pubsubs[0].topic_prefix",
        "dapr.pubsubs[1].name",
        "dapr.apps[0].id",
        "dapr.apps[0].url",
        "dapr.apps[0].max_attempts",
        "dapr.apps[0].retry_initial_ms",
        "dapr.apps[0].health_path",
        "dapr.apps[0].health_interval",
        "dapr.apps[0].health_timeout",
        "dapr.apps[0].health_threshold",
        "dapr.apps[0].colour",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    let good = "[[dapr.pubsubs]]\nname = \"billing\"\ntopic_prefix = \"billing.\"\n\n[[dapr.apps]]\nid = \"shop\"\nurl = \"http://127.0.0.1:8081\"\n";
    let config = Config::from_toml_str(good, no_env()).expect("valid");
    assert_eq!(
        config.dapr.pubsubs.len(),
        1,
        "blocks replace the default pubsub"
    );
    assert_eq!(config.dapr.apps[0].max_attempts, 5);
}

#[test]
fn open_access_off_loopback_and_bad_principals_are_refused() {
    let problems = |text: &str| match Config::from_toml_str(text, no_env()) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    };
    let found = problems("[server]\nlisten = \"0.0.0.0:3500\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "auth.mode");
    let allowed = "[server]\nlisten = \"0.0.0.0:3500\"\n[auth]\nallow_anonymous = true\n";
    assert!(Config::from_toml_str(allowed, no_env()).is_ok());
    // The Dapr gRPC API by the same rule.
    let found = problems("[dapr]\ngrpc_listen = \"0.0.0.0:50001\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "dapr.grpc_listen");
    let found = problems("[dapr]\ngrpc_listen = \"port 50001\"\n");
    assert_eq!(found[0].path, "dapr.grpc_listen");
    let found = problems(
        "[auth]\nmode = \"token\"\n[[auth.principals]]\nname = \"a\"\ntoken_sha256 = \"abc\"\npublish = [\"order..x\"]\n[[auth.principals]]\nname = \"a\"\n",
    );
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "auth.principals[0].token_sha256",
        "auth.principals[0].publish[0]",
        "auth.principals[1].name",
        "auth.principals[1].token_sha256",
    ] {
        assert!(paths.contains(&expected), "{expected} not in {paths:?}");
    }
    let found = problems("[auth]\nmode = \"token\"\n");
    assert_eq!(found[0].path, "auth.principals");
}

#[test]
fn environment_overrides_keys() {
    let env = vec![
        (
            "EVR_REDIS__URL".to_string(),
            "redis://10.0.0.1:7000".to_string(),
        ),
        ("EVR_SERVER__MAX_BATCH".to_string(), "50".to_string()),
        ("OTHER".to_string(), "ignored".to_string()),
        ("EVR_LOG".to_string(), "debug".to_string()),
    ];
    let config = Config::from_toml_str("[server]\nmax_batch = 10\n", env).expect("valid");
    assert_eq!(config.redis.url, "redis://10.0.0.1:7000");
    assert_eq!(config.server.max_batch, 50);
}

#[test]
fn configured_stream_replaces_builtin_of_same_name() {
    let text = "[[streams]]\nname = \"order\"\npartitions = 4\n";
    let config = Config::from_toml_str(text, no_env()).expect("valid");
    let streams = config.effective_streams();
    let orders: Vec<_> = streams.iter().filter(|s| s.name == "order").collect();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].partitions, 4);
    assert_eq!(orders[0].topics, vec!["order.>".to_string()]);
    assert_eq!(
        orders[0].keys[0].pointer, "/data/order_id",
        "built-in key rule kept"
    );
}

#[test]
fn variables_the_file_names_for_secrets_are_not_overrides() {
    let text = "[auth]\nmode = \"token\"\n\n[[auth.principals]]\nname = \"payment-service\"\ntoken_env = \"EVR_TOKEN_PAYMENT\"\npublish = [\"payment.>\"]\n";
    let env = vec![
        ("EVR_TOKEN_PAYMENT".to_string(), "s3cret".to_string()),
        // Not of the EVR_SECTION__KEY form, nor a top-level key: not an override either.
        ("EVR_TOKEN".to_string(), "cli-token".to_string()),
        ("EVR_DEFAULT_STREAMS".to_string(), "false".to_string()),
    ];
    let config = Config::from_toml_str(text, env).expect("the documented example is valid");
    assert_eq!(
        config.auth.principals[0].token_env.as_deref(),
        Some("EVR_TOKEN_PAYMENT")
    );
    assert!(
        !config.default_streams.0,
        "a top-level key is still overridden"
    );
}
