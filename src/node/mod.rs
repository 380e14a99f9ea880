//! The composition root: the one place that knows every module. [`Node::start`] wires the
//! store, the overlay, the directory publisher and the control socket; [`Node::shutdown`]
//! stops them in reverse order.
//!
//! Start-up order: store (opened by the caller) → overlay (listen, dial bootstrap peers) →
//! control socket (bound) → mailbox engine and the mail servers (POP3, POP3S, SMTP intake,
//! SMTP submission) with delivery (queue worker, inbox collector, notification handler; the
//! overlay's notifications are handed to it), when configured → control socket (served) →
//! publisher (publishes this user's directory record, retries with backoff
//! while no peer accepts it, republishes well before expiry). Every task belongs to the
//! node's `JoinSet` and stops when its cancellation token fires.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::control;
use crate::crypto::{DirectoryRecord, UserKeys};
use crate::delivery::Delivery;
use crate::devices::Devices;
use crate::durability;
use crate::mailbox::Mailbox;
use crate::overlay::gateway::service::Inbound;
use crate::overlay::{self, Event};
use crate::store::Store;
use crate::{smtp, tls};

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Overlay(#[from] overlay::Error),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error("devices: {0}")]
    Devices(#[from] crate::devices::Error),
    #[error("cannot build the directory record: {0}")]
    Record(#[from] crate::crypto::Error),
    #[error("cannot open the mailbox: {0}")]
    Mailbox(#[from] crate::mailbox::Error),
    #[error(transparent)]
    Tls(#[from] tls::LoadError),
    #[error(transparent)]
    MailAuth(#[from] smtp::auth_check::Error),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a node needs; `cli/run.rs` builds it from the config, tests from scratch.
pub struct NodeConfig {
    pub address: String,
    pub user_keys: UserKeys,
    pub device_public: [u8; 32],
    pub overlay: overlay::Config,
    /// Lifetime of each published directory record.
    pub record_lifetime: Duration,
    /// Republish this long after a successful publication (well before expiry).
    pub republish_every: Duration,
    /// Publish in the background (a `run`); tests publish explicitly with [`Node::publish`].
    pub auto_publish: bool,
    /// Where to serve the control socket, if anywhere.
    pub control_socket: Option<PathBuf>,
    /// The mailbox engine and the mail servers, if wanted.
    pub mail: Option<MailConfig>,
    /// Backup of the mailbox into the ring and maintenance of fragments held for others
    /// (durability, issue #6); `None`: off (the test rings drive passes themselves).
    pub durability: Option<DurabilityConfig>,
    /// Where to serve the OpenMetrics endpoint (`GET /metrics`), if anywhere. A bind failure
    /// is logged and the node runs without it.
    pub metrics: Option<SocketAddr>,
    /// Run the ring statistics rounds (overlay::stats; `stats.share` decides whether this
    /// node's own figures are sent). Off in in-process test rings.
    pub ring_stats: bool,
    // --- devices (issue #15) ---
    /// Anti-entropy with the user's other devices this often (also on every connection to
    /// one, and at once after every change).
    pub devices_sync_every: Duration,
    /// This user's record as a ring authority certified it (`peerpost ring issue`, issue
    /// #16): published as is while it is valid and names this user's keys and device, so the
    /// ring's members see the address as verified-ring. `None`: a fresh self-signed record.
    pub certified_record: Option<DirectoryRecord>,
    // --- gateways (issue #16) ---
    /// Run as a gateway between this node's private ring and the global ring.
    pub gateway: Option<GatewayConfig>,
}

impl NodeConfig {
    pub fn new(
        address: &str,
        user_keys: UserKeys,
        device_public: [u8; 32],
        overlay: overlay::Config,
    ) -> Self {
        NodeConfig {
            address: address.to_string(),
            user_keys,
            device_public,
            overlay,
            record_lifetime: Duration::from_secs(24 * 3600),
            republish_every: Duration::from_secs(6 * 3600),
            auto_publish: true,
            control_socket: None,
            mail: None,
            durability: Some(DurabilityConfig::default()),
            metrics: None,
            ring_stats: false,
            devices_sync_every: Duration::from_secs(10),
            certified_record: None,
            gateway: None,
        }
    }
}

/// A running node.
pub struct Node {
    client: overlay::Client,
    store: Store,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    publisher: Publisher,
    mailbox: Option<Mailbox>,
    servers: Vec<(&'static str, SocketAddr)>,
    delivery: Option<Delivery>,
    metrics: Option<SocketAddr>,
    devices: Option<Devices>,
    /// The gateway's global-ring overlay, when this node is a gateway.
    gateway: Option<overlay::Client>,
}

impl Node {
    /// Starts a node on an open store. Call inside the node's tracing span: every task it
    /// spawns inherits it.
    pub async fn start(mut config: NodeConfig, store: Store) -> Result<Node, Error> {
        let cancel = CancellationToken::new();
        let (client, events, overlay_task) =
            overlay::spawn(config.overlay.clone(), store.clone(), cancel.clone())?;
        let mut tasks = JoinSet::new();
        tasks.spawn(
            async move {
                let _ = overlay_task.await;
            }
            .in_current_span(),
        );
        if config.ring_stats {
            tasks.spawn(
                ring_stats(client.clone(), store.clone(), &config, cancel.clone())
                    .in_current_span(),
            );
        }
        // Notifications go to delivery (when the node runs mail); a full channel drops them:
        // the notice waits in the DHT inbox for the next collection.
        let (notify_tx, notify_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
        // Replica requests and new connections go to the devices task (a full channel drops
        // a request unanswered: the other device retries at its next sync).
        let (replica_tx, replica_rx) = tokio::sync::mpsc::channel(64);
        let (connected_tx, connected_rx) = tokio::sync::mpsc::channel::<overlay::PeerId>(256);
        // Gateway requests go to the gateway service, when this node is one (dropped, so
        // unanswered, otherwise).
        let (gateway_tx, gateway_rx) = tokio::sync::mpsc::channel::<Inbound>(64);
        forward_events(events, cancel.clone(), &mut tasks, move |ev| match ev {
            Event::Listening(addr) => tracing::debug!(%addr, "listening"),
            Event::Notification { from, payload } => {
                tracing::debug!(%from, bytes = payload.len(), "notification received");
                if notify_tx.try_send(payload).is_err() {
                    tracing::debug!("notification not handed to delivery (busy or off)");
                }
            }
            Event::Connected(peer) => {
                let _ = connected_tx.try_send(peer);
            }
            Event::ReplicaRequest {
                from,
                payload,
                reply,
            } => {
                if replica_tx.try_send((from, payload, reply)).is_err() {
                    tracing::debug!(%from, "replica request dropped (busy or no mailbox)");
                }
            }
            Event::GatewayRequest {
                from,
                payload,
                reply,
            } => {
                if gateway_tx.try_send((from, payload, reply)).is_err() {
                    tracing::debug!(%from, "gateway request dropped (busy or no gateway)");
                }
            }
        });
        let mut gateway = None;
        if let Some(g) = config.gateway.take() {
            match start_gateway(g, &config, &client, gateway_rx, &cancel, &mut tasks) {
                Ok(global) => gateway = Some(global),
                Err(e) => {
                    cancel.cancel();
                    while tasks.join_next().await.is_some() {}
                    return Err(e);
                }
            }
        }
        if config.overlay.psk.is_some()
            && let Some(cert) = config.certified_record.clone()
        {
            tasks.spawn(export_record(client.clone(), cert, cancel.clone()).in_current_span());
        }
        // Bound first (a second node in this home is refused before any port is taken),
        // served once delivery exists (the socket's `send` hands messages to it).
        let mut control_listener = None;
        if let Some(path) = &config.control_socket {
            match control::bind(path).await {
                Ok(l) => control_listener = Some((l, path.clone())),
                Err(e) => {
                    cancel.cancel();
                    return Err(e.into());
                }
            };
        }
        let mut mailbox = None;
        let mut servers = Vec::new();
        let mut delivery = None;
        if let Some(mail) = &config.mail {
            let started = start_mail(mail, &config, &store, &client, &cancel, &mut tasks).await;
            match started.map(|(mb, bound, d)| {
                d.spawn(&mut tasks, cancel.clone(), notify_rx);
                (mb, bound, d)
            }) {
                Ok((mb, bound, d)) => {
                    mailbox = Some(mb);
                    servers = bound;
                    delivery = Some(d);
                }
                Err(e) => {
                    cancel.cancel();
                    while tasks.join_next().await.is_some() {}
                    return Err(e);
                }
            }
        }
        let metrics = match config.metrics {
            Some(addr) => {
                let backup = config.durability.as_ref().map(|d| d.backup.clone());
                let mb = mailbox.clone();
                serve_metrics(addr, &store, &client, mb, backup, &cancel, &mut tasks).await
            }
            None => None,
        };
        if let Some((listener, path)) = control_listener {
            let ctx = control::Context {
                metrics,
                address: config.address.clone(),
                client: client.clone(),
                delivery: delivery.clone(),
                store: store.clone(),
                backup: config
                    .durability
                    .as_ref()
                    .map(|d| d.backup.clone())
                    .unwrap_or_default(),
            };
            tasks.spawn(control::serve(listener, path, ctx, cancel.clone()).in_current_span());
        }
        if let Some(d) = &config.durability {
            spawn_durability(
                d,
                &config,
                &client,
                &store,
                mailbox.clone(),
                &cancel,
                &mut tasks,
            );
        }
        let keys = std::sync::Arc::new(config.user_keys);
        let mut devices = None;
        let live = match &mailbox {
            Some(mb) => match Devices::open(
                mb.clone(),
                client.clone(),
                Arc::clone(&keys),
                config.address.clone(),
                config.device_public,
                config.devices_sync_every,
                config
                    .mail
                    .as_ref()
                    .map_or(crate::crypto::content::MAX_PLAINTEXT as u64, |m| {
                        m.max_message_size
                    }),
            )
            .await
            {
                Ok(d) => {
                    tasks.spawn(
                        d.clone()
                            .run(replica_rx, connected_rx, cancel.clone())
                            .in_current_span(),
                    );
                    let live = d.live();
                    devices = Some(d);
                    live
                }
                Err(e) => {
                    cancel.cancel();
                    while tasks.join_next().await.is_some() {}
                    return Err(Error::Devices(e));
                }
            },
            None => tokio::sync::watch::channel(vec![config.device_public]).1,
        };
        let publisher = Publisher {
            client: client.clone(),
            address: config.address.clone(),
            keys,
            devices: live,
            lifetime: config.record_lifetime,
            last_seq: Default::default(),
            certified: config.certified_record.map(std::sync::Arc::new),
        };
        if config.auto_publish {
            tasks.spawn(
                publisher
                    .clone()
                    .run(config.republish_every, cancel.clone())
                    .in_current_span(),
            );
        }
        Ok(Node {
            client,
            store,
            cancel,
            tasks,
            publisher,
            mailbox,
            servers,
            delivery,
            metrics,
            devices,
            gateway,
        })
    }

    /// The gateway's global-ring overlay, when this node is a gateway (issue #16).
    pub fn gateway(&self) -> Option<&overlay::Client> {
        self.gateway.as_ref()
    }

    /// The user's devices and their replication (when the node runs a mailbox).
    pub fn devices(&self) -> Option<&Devices> {
        self.devices.as_ref()
    }

    /// The metrics endpoint's address, when it is served.
    pub fn metrics(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Delivery (outbound queue, arriving mail), when the node runs the mail servers.
    pub fn delivery(&self) -> Option<&Delivery> {
        self.delivery.as_ref()
    }

    /// The mailbox engine, when the node runs the mail servers.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        self.mailbox.as_ref()
    }

    /// The mail servers and the addresses they listen on.
    pub fn servers(&self) -> &[(&'static str, SocketAddr)] {
        &self.servers
    }

    pub fn client(&self) -> &overlay::Client {
        &self.client
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn address(&self) -> &str {
        &self.publisher.address
    }

    /// Publishes this user's directory record now.
    pub async fn publish(&self) -> Result<(), overlay::PublishError> {
        self.publisher.publish().await
    }

    /// Stops every task (the reverse of start-up: publisher and control socket, then the
    /// overlay) and waits for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Many full nodes in one process over the memory transport (tests and benchmarks).
pub mod testing;

mod durable;
mod gateway;
mod mail;
mod measure;
mod publisher;
use durable::spawn_durability;
pub use durable::{DurabilityConfig, RestoreError, RestoreSummary, restore_mailbox};
pub use gateway::GatewayConfig;
use gateway::{export_record, start_gateway};
pub use mail::MailConfig;
use mail::start_mail;
use measure::{ring_stats, serve_metrics};
use publisher::Publisher;

/// Hands each of the overlay's events to `route` until the node stops or the overlay ends.
fn forward_events(
    mut events: tokio::sync::mpsc::Receiver<Event>,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
    mut route: impl FnMut(Event) + Send + 'static,
) {
    tasks.spawn(
        async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    ev = events.recv() => match ev {
                        Some(ev) => route(ev),
                        None => break,
                    }
                }
            }
        }
        .in_current_span(),
    );
}
