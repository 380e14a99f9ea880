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
use crate::delivery::{self, Delivery};
use crate::devices::Devices;
use crate::durability;
use crate::mailbox::Mailbox;
use crate::overlay::gateway::service::{Gateway, Inbound, Settings as GatewaySettings};
use crate::overlay::{self, Event};
use crate::server::Limits;
use crate::server::auth::{Authenticator, HashSource};
use crate::store::Store;
use crate::{imap, pop3, smtp, tls};

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

/// A gateway's global side (docs/design.md "Rings and gateways").
pub struct GatewayConfig {
    /// The global ring's overlay: no PSK, its own peer key and listen addresses.
    pub overlay: overlay::Config,
    /// Its own store (what the global ring's peers put on this node stays apart from the
    /// ring's).
    pub store: Store,
    pub per_sender_per_minute: u32,
    pub per_minute: u32,
}

/// The mail servers a node runs on its mailbox (each `None` is off).
pub struct MailConfig {
    pub pop3: Option<SocketAddr>,
    pub pop3s: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    pub imaps: Option<SocketAddr>,
    pub smtp: Option<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The current password hash (re-read at each login).
    pub password: HashSource,
    pub max_message_size: u64,
    /// The name in SMTP greetings and Received headers.
    pub hostname: String,
    // --- mail flow (issue #7) ---
    /// The SMTP submission listener (AUTH, any recipient), if wanted.
    pub submission: Option<SocketAddr>,
    /// The same over implicit TLS (RFC 8314), if wanted.
    pub submissions: Option<SocketAddr>,
    /// Delivery's timings and smarthost (its address and hostname are the node's).
    pub delivery: delivery::Config,
    /// DKIM/SPF/DMARC checks on the SMTP intake (`[smtp] verify`); `None`: off.
    pub verify: Option<smtp::auth_check::Settings>,
    /// `[smtp] dns_records`: the `_peerpost` TXT answers of address ownership come from this
    /// file only (`None`: the system resolver), as the intake's checks do.
    pub dns_records: Option<PathBuf>,
    // --- hostile clients (issue #18) ---
    /// Where SMTP DATA past 1 MiB is spooled while it arrives; `None`: the temp directory.
    pub spool: Option<PathBuf>,
    /// Of each listener: sessions, per address, deadlines.
    pub limits: Limits,
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
        let (client, mut events, overlay_task) =
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
        let ev_cancel = cancel.clone();
        tasks.spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = ev_cancel.cancelled() => break,
                        ev = events.recv() => match ev {
                            Some(Event::Listening(addr)) => tracing::debug!(%addr, "listening"),
                            Some(Event::Notification { from, payload }) => {
                                tracing::debug!(%from, bytes = payload.len(), "notification received");
                                if notify_tx.try_send(payload).is_err() {
                                    tracing::debug!("notification not handed to delivery (busy or off)");
                                }
                            }
                            Some(Event::Connected(peer)) => {
                                let _ = connected_tx.try_send(peer);
                            }
                            Some(Event::ReplicaRequest { from, payload, reply }) => {
                                if replica_tx.try_send((from, payload, reply)).is_err() {
                                    tracing::debug!(%from, "replica request dropped (busy or no mailbox)");
                                }
                            }
                            Some(Event::GatewayRequest { from, payload, reply }) => {
                                if gateway_tx.try_send((from, payload, reply)).is_err() {
                                    tracing::debug!(%from, "gateway request dropped (busy or no gateway)");
                                }
                            }
                            None => break,
                        }
                    }
                }
            }
            .in_current_span(),
        );
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

/// Starts the gateway (issue #16): the global ring's overlay beside the ring's, its events
/// (gateway requests only) and the gateway service with both clients.
fn start_gateway(
    g: GatewayConfig,
    config: &NodeConfig,
    ring: &overlay::Client,
    from_ring: tokio::sync::mpsc::Receiver<Inbound>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<overlay::Client, Error> {
    let refuse = |m: &str| Error::Overlay(overlay::Error::Start(m.to_string()));
    if config.overlay.psk.is_none() {
        return Err(refuse(
            "a gateway joins a private ring to the global ring: set overlay.psk_file              (`peerpost ring join`)",
        ));
    }
    let Some(authority) = config.overlay.ring_authority else {
        return Err(refuse(
            "a gateway needs the ring authority (overlay.ring_authority, `peerpost ring join`)",
        ));
    };
    if g.overlay.psk.is_some() {
        return Err(refuse("a gateway's global side has no pre-shared key"));
    }
    let (global, mut events, task) = {
        let span = tracing::info_span!("gateway");
        let _in = span.enter();
        overlay::spawn(g.overlay, g.store, cancel.clone())?
    };
    tasks.spawn(
        async move {
            let _ = task.await;
        }
        .in_current_span(),
    );
    let (tx, from_global) = tokio::sync::mpsc::channel::<Inbound>(64);
    let ev_cancel = cancel.clone();
    tasks.spawn(
        async move {
            loop {
                tokio::select! {
                    _ = ev_cancel.cancelled() => break,
                    ev = events.recv() => match ev {
                        Some(Event::GatewayRequest { from, payload, reply }) => {
                            if tx.try_send((from, payload, reply)).is_err() {
                                tracing::debug!(%from, "gateway request dropped (busy)");
                            }
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
        }
        .in_current_span(),
    );
    let domain = overlay::gateway::domain_of(&config.address);
    tracing::info!(
        target: "peerpost::_events::gateway",
        %domain,
        global_peer = %global.peer_id(),
        "gateway between the ring and the global ring"
    );
    let gw = Gateway::new(
        ring.clone(),
        global.clone(),
        GatewaySettings {
            domain,
            authority,
            per_sender_per_minute: g.per_sender_per_minute,
            per_minute: g.per_minute,
        },
    );
    tasks.spawn(
        gw.run(from_ring, from_global, cancel.clone())
            .in_current_span(),
    );
    Ok(global)
}

/// Hands this member's certified record to the ring's gateways, which publish it in the
/// global ring (issue #16): every 10 s until one took it, then every 6 h.
async fn export_record(client: overlay::Client, cert: DirectoryRecord, cancel: CancellationToken) {
    loop {
        let wait = if cert.expires <= crate::overlay::gateway::now() {
            return;
        } else if client.export_record(&cert).await > 0 {
            Duration::from_secs(6 * 3600)
        } else {
            Duration::from_secs(10)
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Opens the mailbox engine on the node's store and starts the configured mail servers;
/// returns the engine and the bound addresses.
async fn start_mail(
    mail: &MailConfig,
    config: &NodeConfig,
    store: &Store,
    client: &overlay::Client,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(Mailbox, Vec<(&'static str, SocketAddr)>, Delivery), Error> {
    let keys = UserKeys::from_seed(*config.user_keys.seed());
    let mailbox = Mailbox::open(store.clone(), keys, config.device_public).await?;
    let acceptor = tls::Acceptor::load(&mail.tls_cert, &mail.tls_key)?;
    let auth = Arc::new(Authenticator::new(
        &config.address,
        Arc::clone(&mail.password),
    ));
    let bind = |what: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { what, addr, source })
    };
    let mut bound = Vec::new();
    let pop3_ctx = pop3::Context {
        mailbox: mailbox.clone(),
        auth: Arc::clone(&auth),
        tls: Some(acceptor.clone()),
    };
    for (what, addr, implicit) in [("pop3", mail.pop3, false), ("pop3s", mail.pop3s, true)] {
        if let Some(addr) = addr {
            let l = bind(what, addr).await?;
            bound.push((what, l.local_addr().unwrap_or(addr)));
            tasks.spawn(
                pop3::serve(
                    l,
                    pop3_ctx.clone(),
                    implicit,
                    mail.limits.clone(),
                    cancel.clone(),
                )
                .in_current_span(),
            );
        }
    }
    // IMAP (STARTTLS) and IMAPS.
    let mut imap_ctx = imap::Context::new(
        mailbox.clone(),
        Arc::clone(&pop3_ctx.auth),
        Some(acceptor.clone()),
    );
    // The node's message size limit is IMAP's too (APPEND literals, APPENDLIMIT).
    imap_ctx.max_literal = u32::try_from(mail.max_message_size).unwrap_or(u32::MAX);
    for (what, addr, implicit) in [("imap", mail.imap, false), ("imaps", mail.imaps, true)] {
        if let Some(addr) = addr {
            let l = bind(what, addr).await?;
            bound.push((what, l.local_addr().unwrap_or(addr)));
            tasks.spawn(
                imap::serve(
                    l,
                    imap_ctx.clone(),
                    implicit,
                    mail.limits.clone(),
                    cancel.clone(),
                )
                .in_current_span(),
            );
        }
    }
    if let Some(addr) = mail.smtp {
        // The records file is read (and refused with its line number) before we listen.
        let verify = match &mail.verify {
            Some(s) => Some(Arc::new(smtp::auth_check::Verifier::new(
                s,
                &mail.hostname,
            )?)),
            None => None,
        };
        let l = bind("smtp", addr).await?;
        bound.push(("smtp", l.local_addr().unwrap_or(addr)));
        let ctx = smtp::Context {
            mailbox: mailbox.clone(),
            local: vec![config.address.to_lowercase()],
            hostname: mail.hostname.clone(),
            max_message_size: mail.max_message_size,
            tls: Some(acceptor.clone()),
            mode: smtp::Mode::Intake { verify },
            spool: mail.spool.clone(),
        };
        tasks.spawn(smtp::serve(l, ctx, mail.limits.clone(), cancel.clone()).in_current_span());
    }
    // --- mail flow (issue #7): delivery and the submission listener ---
    let mut dc = mail.delivery.clone();
    dc.address = config.address.to_lowercase();
    dc.hostname = mail.hostname.clone();
    // Address ownership (issue #18): who vouches for a recipient's or sender's key.
    let ownership = Arc::new(smtp::auth_check::OwnershipDns::new(
        mail.dns_records.as_deref(),
    )?);
    dc.vouches = Some(delivery::ownership::Vouches(Arc::new(
        move |domain: String| {
            let dns = Arc::clone(&ownership);
            Box::pin(async move { dns.peerpost_txt(&domain).await })
        },
    )));
    dc.ring_authority = config.overlay.ring_authority;
    let delivery = Delivery::new(
        dc,
        UserKeys::from_seed(*config.user_keys.seed()),
        client.clone(),
        store.clone(),
        mailbox.clone(),
    );
    let submission_ctx = smtp::Context {
        mailbox: mailbox.clone(),
        local: vec![config.address.to_lowercase()],
        hostname: mail.hostname.clone(),
        max_message_size: mail.max_message_size,
        tls: Some(acceptor),
        mode: smtp::Mode::Submission {
            auth,
            delivery: delivery.clone(),
        },
        spool: mail.spool.clone(),
    };
    if let Some(addr) = mail.submission {
        let l = bind("submission", addr).await?;
        bound.push(("submission", l.local_addr().unwrap_or(addr)));
        let serving = smtp::serve(
            l,
            submission_ctx.clone(),
            mail.limits.clone(),
            cancel.clone(),
        );
        tasks.spawn(serving.in_current_span());
    }
    if let Some(addr) = mail.submissions {
        let l = bind("submissions", addr).await?;
        bound.push(("submissions", l.local_addr().unwrap_or(addr)));
        let serving =
            smtp::serve_implicit_tls(l, submission_ctx, mail.limits.clone(), cancel.clone());
        tasks.spawn(serving.in_current_span());
    }
    // Mail written by other processes of this device (import, sync) shows up within a second.
    let (mb, token) = (mailbox.clone(), cancel.clone());
    tasks.spawn(
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = mb.refresh().await {
                            tracing::warn!(error = %e, "mailbox refresh failed");
                        }
                    }
                }
            }
        }
        .in_current_span(),
    );
    Ok((mailbox, bound, delivery))
}

// --- durability (issue #6): backup of the user's mailbox into the ring, maintenance of the
// fragments this node holds, and restore from the phrase ---

/// When the durability tasks run.
#[derive(Debug, Clone)]
pub struct DurabilityConfig {
    pub backup: durability::backup::BackupConfig,
    /// How often the backup task looks for new mail and at the ring.
    pub tick: Duration,
    /// When passes run: new mail within `schedule.backup_every`, re-coding, compaction.
    pub schedule: durability::schedule::ScheduleConfig,
    /// The owner's repair and lease renewal pass over its own bundles.
    pub maintain_every: Duration,
    /// The holders' pass over the fragments held for others (repair when owners are away,
    /// expiry of fragments nobody renews).
    pub holder_every: Duration,
    pub limits: durability::repair::RepairLimits,
    /// One backup per user (issue #15): another device's root this old is stale, and this
    /// device takes the backup over; the backing-up device republishes its root every quarter
    /// of it.
    pub takeover_after: Duration,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            backup: durability::backup::BackupConfig::default(),
            tick: Duration::from_secs(2),
            schedule: durability::schedule::ScheduleConfig::default(),
            maintain_every: Duration::from_secs(6 * 3600),
            holder_every: Duration::from_secs(3600),
            limits: durability::repair::RepairLimits::default(),
            takeover_after: Duration::from_secs(3 * 3600),
        }
    }
}

fn spawn_durability(
    d: &DurabilityConfig,
    config: &NodeConfig,
    client: &overlay::Client,
    store: &Store,
    mailbox: Option<Mailbox>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    use durability::backup::Backup;
    let (c, s, token, cfg) = (client.clone(), store.clone(), cancel.clone(), d.clone());
    tasks.spawn(
        async move {
            // A first pass after the ring had time to fill the routing table.
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + cfg.holder_every.min(Duration::from_secs(600)),
                cfg.holder_every,
            );
            let mut state = durability::repair::HolderState::default();
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        let pass = durability::repair::holder_pass(
                            &c, &s, &durability::ReedSolomon8, cfg.limits, overlay::now_secs(),
                            &mut state,
                        );
                        match pass.await {
                            Ok(st) => tracing::info!(?st, "holder maintenance pass"),
                            Err(e) => tracing::warn!("holder maintenance failed: {e}"),
                        }
                        // The pass read every held lease through the store's map.
                        s.release_resident();
                    }
                }
            }
        }
        .in_current_span(),
    );
    let Some(mailbox) = mailbox else {
        return;
    };
    // The user's share of the ring: contribution ÷ overhead, first for a large ring, then for
    // the ring as the backup passes see it.
    let contribution = config.overlay.contribution;
    let (ff, target) = (d.backup.failure_fraction, d.backup.target_loss);
    mailbox.set_quota(Some(durability::backup::quota(
        contribution,
        None,
        ff,
        target,
    )));
    let keys = UserKeys::from_seed(*config.user_keys.seed());
    let b = Backup::new(client.clone(), store.clone(), keys, d.backup.clone())
        .with_address(&config.address)
        .with_device(config.device_public);
    let (token, cfg, resident) = (cancel.clone(), d.clone(), store.clone());
    tasks.spawn(
        async move {
            use durability::backup::{Error as BackupError, PassOptions};
            use durability::schedule::{Decision, Schedule};
            let mut schedule = Schedule::new(cfg.schedule.clone());
            let mut tick = tokio::time::interval(cfg.tick);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The owner's first maintenance follows its first clean pass (it renews every
            // holder's lease with a signed one: holders drop fragments no valid lease names).
            let mut last_maintain: Option<tokio::time::Instant> = None;
            let mut passed_once = false;
            let mut devices = BackupTurn::new(cfg.takeover_after);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let routing = match b.ring_size().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!("backup: no ring size: {e}");
                        0
                    }
                };
                let counter = match b.log_counter().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("backup: {e}");
                        continue;
                    }
                };
                let now = tokio::time::Instant::now();
                let decision = schedule.tick(now, routing, counter);
                let due = !matches!(decision, Decision::Wait);
                if !devices.mine(&b, &mut schedule, routing, due).await {
                    // Another device backs this user up: nothing is placed or maintained here.
                    if matches!(decision, Decision::Pass { .. }) {
                        schedule.passed(counter);
                    }
                    continue;
                }
                let opts = match decision {
                    Decision::Wait => None,
                    Decision::Pass {
                        ring,
                        force,
                        compact,
                    } => Some(PassOptions {
                        force,
                        compact,
                        ring: Some(ring),
                    }),
                    Decision::Check { ring, compact } => {
                        match b.needs_recode(ring, compact).await {
                            Ok(true) => Some(PassOptions {
                                force: false,
                                compact,
                                ring: Some(ring),
                            }),
                            Ok(false) => None,
                            Err(e) => {
                                tracing::warn!("backup check failed: {e}");
                                None
                            }
                        }
                    }
                };
                if let Some(opts) = opts {
                    match b.run_pass(opts).await {
                        Ok(r) => {
                            schedule.passed(counter);
                            passed_once = true;
                            if let Some(ring) = opts.ring {
                                let q =
                                    (contribution as f64 / b.params_for(ring).overhead()) as u64;
                                mailbox.set_quota(Some(q));
                            }
                            if r.bundles > 0 || r.recoded > 0 {
                                tracing::info!(?r, "backup pass");
                            }
                        }
                        Err(BackupError::NoPeers) => {
                            schedule.failed(now);
                            tracing::debug!("backup waits for a peer");
                        }
                        Err(e) => {
                            schedule.failed(now);
                            tracing::warn!("backup pass failed (retried): {e}");
                        }
                    }
                }
                if passed_once {
                    devices.heartbeat(&b).await;
                }
                let maintain_due = last_maintain.is_none_or(|t| t.elapsed() >= cfg.maintain_every);
                if passed_once && maintain_due {
                    last_maintain = Some(tokio::time::Instant::now());
                    match b.maintain(cfg.limits).await {
                        Ok(st) => tracing::info!(?st, "backup maintenance pass"),
                        Err(e) => tracing::warn!("backup maintenance failed: {e}"),
                    }
                    // A fresh expiry for the root even when no mail came in.
                    if let Err(e) = b.republish().await {
                        tracing::warn!("backup root not republished: {e}");
                    }
                    // Maintenance read every receipt and held fragment through the map.
                    resident.release_resident();
                }
            }
        }
        .in_current_span(),
    );
}

/// Which of the user's devices backs up (issue #15; durability/backup/share.rs): asked
/// before every pass and every heartbeat.
struct BackupTurn {
    takeover_after: Duration,
    /// `None` until the first look (then every change is logged).
    turn: Option<durability::backup::Turn>,
    checked: Option<tokio::time::Instant>,
    republished: Option<tokio::time::Instant>,
}

impl BackupTurn {
    fn new(takeover_after: Duration) -> Self {
        BackupTurn {
            takeover_after,
            turn: None,
            checked: None,
            republished: None,
        }
    }

    /// Whether this device backs up now; looks at the user's newest root when a pass is
    /// `due` or a heartbeat has passed. Taking over restarts `schedule` with a forced pass.
    async fn mine(
        &mut self,
        b: &durability::backup::Backup,
        schedule: &mut durability::schedule::Schedule,
        routing: usize,
        due: bool,
    ) -> bool {
        use durability::backup::Turn;
        let beat = durability::backup::heartbeat(self.takeover_after);
        let stale = self.checked.is_none_or(|t| t.elapsed() >= beat);
        if routing > 0 && (due || stale) {
            self.checked = Some(tokio::time::Instant::now());
            match b.turn(self.takeover_after).await {
                Ok(t) if Some(t) != self.turn => {
                    match t {
                        Turn::Mine => {
                            tracing::info!("backup: this device backs up the user's mailbox now");
                            schedule.again();
                        }
                        Turn::Removed => tracing::warn!(
                            "backup: this device was removed from the user's device list: it \
                             no longer backs up"
                        ),
                        Turn::Theirs { device, seq } => tracing::info!(
                            "backup: device {} backs up the user's mailbox (root {seq}); this \
                             device waits",
                            device.map_or("(unnamed)".to_string(), |d| d[..8]
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<String>())
                        ),
                    }
                    self.turn = Some(t);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("backup: whose turn is unknown: {e}"),
            }
        }
        !matches!(self.turn, Some(Turn::Theirs { .. } | Turn::Removed))
    }

    /// The backing-up device republishes its root every heartbeat, so the others see it alive.
    async fn heartbeat(&mut self, b: &durability::backup::Backup) {
        let beat = durability::backup::heartbeat(self.takeover_after);
        if self.republished.is_some_and(|t| t.elapsed() < beat) {
            return;
        }
        self.republished = Some(tokio::time::Instant::now());
        if let Err(e) = b.republish().await {
            tracing::debug!("backup root not republished: {e}");
        }
    }
}

/// What [`restore_mailbox`] rebuilt.
#[derive(Debug, Clone, Default)]
pub struct RestoreSummary {
    pub bundles: usize,
    pub bytes: u64,
    pub objects: usize,
    pub log_entries: usize,
    pub folders: usize,
    pub messages: usize,
}

/// Restores a user's mailbox from the ring into `store` (a fresh home's): bodies into the
/// store, log entries verified and merged by the engine. Returns the opened engine.
pub async fn restore_mailbox(
    client: &overlay::Client,
    store: &Store,
    keys: &UserKeys,
    device_public: [u8; 32],
    progress: &(dyn Fn(durability::restore::Progress) + Sync),
) -> Result<(Mailbox, RestoreSummary), RestoreError> {
    let restored = durability::restore::restore(client, store, keys, progress).await?;
    let mailbox = Mailbox::open(
        store.clone(),
        UserKeys::from_seed(*keys.seed()),
        device_public,
    )
    .await?;
    let log_entries = restored.entries.len();
    let mut entries = restored.entries;
    while !entries.is_empty() {
        let rest = entries.split_off(entries.len().min(2048));
        mailbox.merge_entries(entries).await?;
        entries = rest;
    }
    let folders = mailbox.folders();
    let summary = RestoreSummary {
        bundles: restored.bundles,
        bytes: restored.bytes,
        objects: restored.objects,
        log_entries,
        folders: folders.len(),
        messages: folders.iter().map(|f| f.exists).sum(),
    };
    Ok((mailbox, summary))
}

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error(transparent)]
    Ring(#[from] durability::restore::RestoreError),
    #[error("the restored mailbox was refused: {0}")]
    Mailbox(#[from] crate::mailbox::Error),
}

/// Many full nodes in one process over the memory transport (tests and benchmarks).
pub mod testing;

mod measure;
mod publisher;
use measure::{ring_stats, serve_metrics};
use publisher::Publisher;
