//! Everything that can fail, done before any part starts: schemas, principals and
//! secrets, Redis and its checks with every part's connections, the event store, span
//! export and the webhooks' CA (the listeners are bound by `ingress::listeners`, also
//! before any part starts). Nothing here spawns a task, writes to Redis or takes a lease.

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use crate::auth::{Authenticator, Principal};
use crate::catalog::StreamCatalog;
use crate::config::{self, Config};
use crate::delivery::subscription::Subscription;
use crate::delivery::transport::{Connector, Subscriber};
use crate::eventstore::{self, EventStore};
use crate::model::dead_letter::Forward;
use crate::publish::dapr::DaprPubsubs;
use crate::schema::SchemaRegistry;
use crate::store::{self, RedisTarget};
use crate::webhook::{self, dapr::health::AppHealth, guard::Guard, Webhooks};
use crate::{credentials, delivery, health, metrics, traces, RunError};

/// Every part's material, built.
pub(crate) struct Built {
    pub(crate) core: Core,
    pub(crate) storage: Storage,
    pub(crate) eventstore: Option<Arc<EventStore>>,
    pub(crate) export: Option<traces::Export>,
    pub(crate) delivery: Delivery,
    pub(crate) apps: Apps,
    /// Dead letters the webhooks hand over for forwarding to Dapr dead-letter topics.
    pub(crate) forwards: mpsc::Receiver<Forward>,
    pub(crate) api: Api,
}

/// What every part reads.
pub(crate) struct Core {
    pub(crate) health: Arc<health::Health>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) schemas: Arc<SchemaRegistry>,
    pub(crate) authenticator: Arc<Authenticator>,
    pub(crate) catalog: Arc<StreamCatalog>,
    pub(crate) target: RedisTarget,
    pub(crate) tracer: traces::Tracer,
}

/// The writers' and retention's connections.
pub(crate) struct Storage {
    pub(crate) writers: Vec<ConnectionManager>,
    pub(crate) trim: ConnectionManager,
}

/// What the API reads and writes beside publishing: Redis for `/readyz`, the audit log,
/// the event store and its replays.
pub(crate) struct Api {
    pub(crate) control: ConnectionManager,
    pub(crate) audit: store::audit::AuditLog,
    pub(crate) eventstore: Option<Arc<EventStore>>,
    pub(crate) replays: Option<ConnectionManager>,
}

/// Delivery, connected and not started.
pub(crate) struct Delivery {
    /// Whether the event store's archive subscription is on.
    pub(crate) archive: bool,
    pub(crate) connected: delivery::Connected,
    pub(crate) settings: delivery::Settings,
    pub(crate) configured: Vec<Subscription>,
    pub(crate) connector: Arc<Connectors>,
}

/// The Dapr side: pub/sub components, the apps' tokens, health and principals.
pub(crate) struct Apps {
    pub(crate) dapr: Arc<DaprPubsubs>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) tokens: HashMap<String, Arc<str>>,
    pub(crate) health: Arc<AppHealth>,
    /// The principal each app publishes as, when it has one.
    pub(crate) publishers: HashMap<String, Arc<Principal>>,
}

impl Built {
    /// Builds every part of `config` but the listeners.
    pub(crate) async fn new(config: &Config) -> Result<Self, RunError> {
        let schemas = Arc::new(SchemaRegistry::load(&config.validation)?);
        let authenticator = Arc::new(Authenticator::new(&config.auth, |var| {
            std::env::var(var).ok()
        })?);
        if !authenticator.required() {
            if config.auth.allow_anonymous {
                tracing::warn!(listen = %config.server.listen, "authentication is off (auth.allow_anonymous): every caller may do everything");
            } else {
                tracing::info!("authentication is off: listening on loopback only");
            }
        }
        let target = super::redis::target(config)?;
        let mut control = target.manager()?;
        super::redis::check(&mut control, config.redis.durability).await?;
        let eventstore = EventStore::new(&config.eventstore)?;
        let api = Api {
            control,
            audit: store::audit::AuditLog::new(
                target.manager()?,
                &config.redis.key_prefix,
                config.audit.retention.get(),
                (config.audit.max_entries, config.audit.max_refusals),
            ),
            replays: match eventstore {
                Some(_) => Some(target.manager()?),
                None => None,
            },
            eventstore: eventstore.clone(),
        };
        let storage = Storage {
            writers: (0..config.writer.writers)
                .map(|_| target.manager())
                .collect::<Result<_, _>>()?,
            trim: target.manager()?,
        };
        let instance = store::lease::new_instance_id();
        let (tracer, export) = traces::Tracer::new(&config.tracing, &instance)?;
        let apps = Apps::new(config, &tracer, &schemas, &authenticator)?;
        let (forwards_tx, forwards) = mpsc::channel(1024);
        let delivery = Delivery::new(
            config,
            &target,
            instance,
            &tracer,
            &eventstore,
            &apps,
            forwards_tx,
        )?;
        let core = Core {
            health: Arc::new(health::Health::default()),
            metrics: Arc::new(metrics::Metrics::default()),
            schemas,
            authenticator,
            catalog: Arc::new(StreamCatalog::new(config)),
            target,
            tracer,
        };
        Ok(Self {
            core,
            storage,
            eventstore,
            export,
            delivery,
            apps,
            forwards,
            api,
        })
    }
}

impl Apps {
    fn new(
        config: &Config,
        tracer: &traces::Tracer,
        schemas: &Arc<SchemaRegistry>,
        authenticator: &Authenticator,
    ) -> Result<Self, RunError> {
        Ok(Self {
            dapr: Arc::new(
                DaprPubsubs::new(&config.dapr)
                    .with_schemas(schemas.clone())
                    .with_tracer(tracer.clone()),
            ),
            guard: Arc::new(Guard::new(&config.webhooks.allow)),
            tokens: credentials::app_tokens(config)?,
            health: Arc::new(AppHealth::new(&config.dapr.apps)),
            publishers: (config.dapr.apps)
                .iter()
                .filter_map(|app| {
                    Some((
                        app.id.clone(),
                        authenticator.acting_as(app.principal.as_deref())?,
                    ))
                })
                .collect(),
        })
    }
}

impl Delivery {
    fn new(
        config: &Config,
        target: &RedisTarget,
        instance: String,
        tracer: &traces::Tracer,
        eventstore: &Option<Arc<EventStore>>,
        apps: &Apps,
        forwards: mpsc::Sender<Forward>,
    ) -> Result<Self, RunError> {
        let roots = webhook::Roots::load(config.webhooks.ca.as_deref())?;
        let connector = Arc::new(Connectors {
            webhooks: Webhooks::new(apps.guard.clone(), &roots, Some(forwards))
                .with_app_tokens(apps.tokens.clone())
                .with_app_urls(
                    config
                        .dapr
                        .apps
                        .iter()
                        .map(|a| (a.id.as_str(), a.url.as_str())),
                )
                .with_app_health(apps.health.clone()),
            archive: eventstore.clone().map(|store| {
                Arc::new(eventstore::archive::Archive::new(store)) as Arc<dyn Subscriber>
            }),
        });
        let settings = delivery::Settings {
            instance,
            prefix: config.redis.key_prefix.clone(),
            lease_ttl: config.delivery.lease_ttl.get(),
            read_block: config.delivery.read_block.get(),
            read_linger: config.delivery.read_linger.get(),
            shards: config.delivery.shards,
            readers: config.delivery.readers,
            max_subscriptions: config.delivery.max_subscriptions,
            grace: config.server.shutdown_budget.get(),
            dlq: store::acks::DlqBound {
                max_len: config.retention.dlq_max_len,
                block: config.retention.dlq_when_full == config::WhenFull::Block,
            },
            tracer: tracer.clone(),
            // Set when the event store's outcome writer starts.
            outcomes: None,
        };
        Ok(Self {
            archive: eventstore.is_some(),
            connected: delivery::Runtime::connect(target.clone(), &settings)?,
            settings,
            configured: configured(config, eventstore.is_some()),
            connector,
        })
    }
}

/// The subscriptions of the config, and the event store's archive when it is on.
/// Validation checked every spec; compiling one can still fail only on what it could not
/// check, and such a subscription is left out with a warning.
fn configured(config: &Config, archive: bool) -> Vec<Subscription> {
    let archive_spec = archive.then(|| eventstore::archive_spec(&config.eventstore));
    config
        .subscriptions
        .iter()
        .chain(archive_spec.iter())
        .filter_map(|spec| match Subscription::new(spec.clone()) {
            Ok(sub) => Some(sub),
            Err(problems) => {
                tracing::warn!(subscription = %spec.name, ?problems, "configured subscription left out");
                None
            }
        })
        .collect()
}

/// Subscribers for delivery: the event store's archive writes to PostgreSQL, every other
/// subscription is called over HTTP.
pub(crate) struct Connectors {
    webhooks: Webhooks,
    archive: Option<Arc<dyn Subscriber>>,
}

impl Connector for Connectors {
    fn connect(&self, sub: &Arc<Subscription>) -> Arc<dyn Subscriber> {
        match &self.archive {
            Some(archive) if sub.spec.name == eventstore::ARCHIVE => archive.clone(),
            _ => self.webhooks.connect(sub),
        }
    }
}
