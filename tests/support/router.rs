//! evrouter started in-process on port 0 with a config the test shapes.

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{init_logs, run_router, Config, RedisServer, RouterApi, RunError};

/// evrouter running in-process, stopped on drop.
pub struct TestRouter {
    pub base: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

/// A config pointing at `redis` with short timeouts for tests.
pub fn test_config(redis: &RedisServer) -> Config {
    let mut config = Config::default();
    config.redis.url = redis.url();
    config.redis.response_timeout = "1s".into();
    config.server.publish_timeout = "3s".into();
    config.server.shutdown_budget = "5s".into();
    // The tests' subscribers listen on loopback.
    config.webhooks.allow = vec!["127.0.0.0/8".into(), "::1".into()];
    // Many routers run at once: the Dapr gRPC API only where a test asks for it.
    config.dapr.grpc_listen = String::new();
    config
}

impl TestRouter {
    /// Starts evrouter with `config` on a free port.
    pub async fn start(config: Config) -> Self {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(run_router(config, listener, async {
            let _ = rx.await;
        }));
        Self {
            base,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Asks it to stop and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), RunError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("run task"),
            None => Ok(()),
        }
    }
}

impl RouterApi for TestRouter {
    fn base(&self) -> &str {
        &self.base
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
