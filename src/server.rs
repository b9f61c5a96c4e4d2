//! Builds the services from the configuration, starts the listeners, and shuts down gracefully:
//! on SIGTERM/SIGINT every stream gets `<system-shutdown/>`, connections drain, the store is flushed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::auth::throttle::FailureThrottle;
use crate::auth::Accounts;
use crate::config::Config;
use crate::error::{StreamError, StreamErrorCondition};
use crate::router::Router;
use crate::store::Stores;
use crate::transport::tls;

/// Everything a connection needs, shared by all of them.
pub struct ServerState {
    pub config: Config,
    /// The served domain, normalized.
    pub domain: String,
    pub stores: Stores,
    pub accounts: Accounts,
    pub router: Router,
    pub tls: TlsAcceptor,
    pub throttle: FailureThrottle,
    /// Recent user activity for "last seen" (XEP-0012), written to the store in batches.
    pub activity: crate::modules::activity::Activity,
    /// Orders offline storage against delivery per user (see `offline::Gate`).
    pub offline_gate: crate::modules::offline::Gate,
    /// Stored messages that live sessions are delivering (see `offline::Claims`).
    pub offline_claims: crate::modules::offline::Claims,
    /// The group chat service (XEP-0045) at `[muc] domain`.
    pub muc: crate::modules::muc::Service,
    /// Users' blocklists (XEP-0191), kept in memory once read.
    pub blocklists: crate::modules::blocking::Blocklists,
    /// Users' message archives (XEP-0313): key clocks and preferences, in memory once read.
    pub mam: crate::modules::mam::Archives,
    /// Clients' capabilities (XEP-0115), for PEP notifications.
    pub caps: crate::modules::caps::Caps,
    /// Orders changes to each account's PEP nodes (XEP-0163).
    pub pep_locks: crate::modules::pep::Locks,
    /// File sharing (XEP-0363) at `[upload] domain`.
    pub upload: crate::modules::upload::Service,
    pub started: Instant,
    /// The base URL of the HTTPS server as clients reach it (`[http] public_url`, or from the
    /// domain and the bound port), once it listens.
    pub http_base: std::sync::OnceLock<String>,
    /// Connections held, all listeners together (`[server] max_connections`).
    pub connections: Arc<Semaphore>,
    /// Becomes true when the server is shutting down.
    pub shutdown: watch::Receiver<bool>,
    session_ids: AtomicU64,
}

impl ServerState {
    /// After an account was deleted: its sessions end with `<not-authorized/>`, and its recent
    /// activity and cached blocklist are forgotten (neither must outlive it).
    pub fn account_removed(&self, jid: &jid::BareJid) {
        self.activity.forget(jid);
        self.blocklists.forget(jid);
        self.mam.forget(jid);
        self.router.close_account(
            jid,
            crate::router::Closing::Error(StreamError::with_text(
                StreamErrorCondition::NotAuthorized,
                "the account was removed",
            )),
        );
    }

    pub fn next_session_id(&self) -> u64 {
        self.session_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Listen for signals before anything announces readiness, so an early SIGTERM is a clean stop
    // rather than the default (immediate death).
    let signal = shutdown_signal()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let server = start(config, shutdown_rx).await?;
    signal.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    server.finish().await
}

/// A started server: listeners are bound and accepting.
pub struct Running {
    state: Arc<ServerState>,
    limit: Arc<Semaphore>,
    max: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds everything and starts accepting; returns once the listeners are up.
pub async fn start(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<Running> {
    let domain = config.domain();
    if tls::ensure_certificate(&domain, &config.tls.cert, &config.tls.key)? {
        tracing::info!(
            cert = %config.tls.cert.display(),
            key = %config.tls.key.display(),
            "generated a self-signed certificate for {domain} (clients will have to trust it)"
        );
    }
    let tls_config = tls::server_config(&config.tls.cert, &config.tls.key)?;
    let stores = Stores::open_sled(&config.server.data_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let accounts = Accounts::new(
        stores.clone(),
        domain.clone(),
        config.auth.clone(),
        config.upload_dir(),
    );
    let upload = crate::modules::upload::Service::new(
        config.upload_domain(),
        config.upload_dir(),
        config.upload.clone(),
    );
    let http_tls = crate::transport::http::tls_config(&tls_config);
    // Before anything can upload: what a stop left half done goes.
    let (uploads, dir) = (stores.uploads.clone(), config.upload_dir());
    match tokio::task::spawn_blocking(move || crate::modules::upload::sweep(uploads.as_ref(), &dir))
        .await
    {
        Ok(Ok(0)) => {}
        Ok(Ok(deleted)) => tracing::info!(deleted, "deleted stray files in the upload directory"),
        Ok(Err(err)) => tracing::error!(error = %err, "cannot sweep the upload directory"),
        Err(err) => tracing::error!(error = %err, "the upload sweep failed"),
    }

    let muc = crate::modules::muc::Service::new(
        config.muc_domain(),
        config.muc.max_occupants,
        config.archive.default == crate::config::ArchiveMode::Permanent,
    );
    let rooms = muc
        .load(&stores)
        .map_err(|e| anyhow::anyhow!("cannot load the group chat rooms: {e}"))?;
    if rooms > 0 {
        tracing::info!(rooms, service = %muc.domain, "persistent group chat rooms loaded");
    }

    let state = Arc::new(ServerState {
        domain: domain.clone(),
        stores,
        accounts,
        router: Router::new(),
        tls: TlsAcceptor::from(tls_config),
        throttle: FailureThrottle::new(Duration::from_millis(config.auth.failure_delay_ms)),
        activity: crate::modules::activity::Activity::new(),
        offline_gate: Default::default(),
        offline_claims: Default::default(),
        muc,
        blocklists: Default::default(),
        mam: Default::default(),
        upload,
        caps: Default::default(),
        pep_locks: Default::default(),
        started: Instant::now(),
        shutdown: shutdown.clone(),
        session_ids: AtomicU64::new(1),
        connections: Arc::new(Semaphore::new(config.server.max_connections)),
        http_base: std::sync::OnceLock::new(),
        config,
    });

    let max = state.config.server.max_connections;
    let limit = state.connections.clone();
    let mut tasks = Vec::new();
    for (addr, direct_tls, key) in [
        (state.config.c2s_listen(), false, "[c2s] listen"),
        (
            state.config.direct_tls_listen(),
            true,
            "[c2s] direct_tls_listen",
        ),
    ] {
        let Some(addr) = addr else { continue };
        let listener = listen(addr).with_context(|| format!("cannot listen on {addr} ({key})"))?;
        let local = listener.local_addr().unwrap_or(addr);
        if direct_tls {
            tracing::info!("c2s (direct TLS) listening on {local}");
        } else {
            tracing::info!("c2s (STARTTLS) listening on {local}");
        }
        tasks.push(tokio::spawn(accept_loop(
            state.clone(),
            listener,
            direct_tls,
            limit.clone(),
        )));
    }
    if let Some(addr) = state.config.http_listen() {
        let listener =
            listen(addr).with_context(|| format!("cannot listen on {addr} ([http] listen)"))?;
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!("https listening on {local}");
        let public = state.config.http.public_url.trim_end_matches('/');
        let base = if public.is_empty() {
            format!("https://{}:{}", state.domain, local.port())
        } else {
            public.to_string()
        };
        let _ = state.http_base.set(base.clone());
        tracing::info!(
            "XMPP over WebSocket at {}{}",
            base.replacen("https://", "wss://", 1),
            crate::transport::websocket::PATH
        );
        if state.config.upload.enabled {
            tracing::info!(service = %state.upload.domain, "file upload at {base}");
            state.upload.enable(base);
        }
        tasks.push(tokio::spawn(crate::transport::http::serve(
            state.clone(),
            listener,
            TlsAcceptor::from(http_tls),
            limit.clone(),
        )));
    } else if state.config.upload.enabled {
        tracing::info!("no [http] listen: file upload is off");
    }
    tasks.push(tokio::spawn(crate::admin::serve(state.clone())?));
    tokio::spawn(crate::modules::activity::writer(state.clone()));
    tokio::spawn(crate::modules::offline::checkpoint(state.clone()));
    tokio::spawn(crate::modules::mam::expire(state.clone()));
    tokio::spawn(crate::modules::upload::expire(state.clone()));
    tokio::spawn(close_sessions_at_shutdown(state.clone()));
    tracing::info!(domain = %domain, data = %state.config.server.data_dir.display(), "Rookery {} ready", env!("CARGO_PKG_VERSION"));
    Ok(Running {
        state,
        limit,
        max,
        tasks,
    })
}

impl Running {
    /// Waits for connections to drain (bounded by `[server] shutdown_timeout`), then flushes the store.
    pub async fn finish(self) -> anyhow::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        let wait = Duration::from_secs(self.state.config.server.shutdown_timeout);
        let max = u32::try_from(self.max).unwrap_or(u32::MAX);
        if tokio::time::timeout(wait, self.limit.acquire_many(max))
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {wait:?}; stopping anyway");
        }
        let _ = std::fs::remove_file(self.state.config.admin_socket());
        // Last-seen times of everyone who just went offline, then everything, to disk.
        self.state
            .activity
            .write(self.state.stores.activity.as_ref());
        self.state
            .stores
            .flush()
            .await
            .map_err(|e| anyhow::anyhow!("final flush failed: {e}"))?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// At shutdown every session gets `<system-shutdown/>` through its control block: one waiter for
/// the whole server rather than one per session (an idle session's memory is the figure that
/// counts).
async fn close_sessions_at_shutdown(state: Arc<ServerState>) {
    let mut shutdown = state.shutdown.clone();
    if shutdown.wait_for(|stop| *stop).await.is_ok() {
        state.router.close_all(crate::router::Closing::Error(
            crate::error::StreamError::new(crate::error::StreamErrorCondition::SystemShutdown),
        ));
    }
}

/// Connections the kernel queues for `accept` (capped by net.core.somaxconn). The usual 128 drops
/// connection attempts when a few hundred clients reconnect at once (after a restart or a network
/// change), and each dropped attempt costs its client a one-second SYN retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(
    state: Arc<ServerState>,
    listener: TcpListener,
    direct_tls: bool,
    limit: Arc<Semaphore>,
) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let incoming = Box::new(crate::stream::Incoming {
                            tcp,
                            peer,
                            direct_tls,
                            permit,
                        });
                        tokio::spawn(crate::stream::serve(state.clone(), incoming));
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "connection limit reached; refusing a connection");
                        tokio::spawn(refuse(tcp, direct_tls, state.domain.clone()));
                    }
                }
            }
            Err(err) => {
                // Usually out of file descriptors: wait a little instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Tells a connection over the limit why it is closed (on a plain stream; a TLS port just closes).
async fn refuse(mut tcp: TcpStream, direct_tls: bool, domain: String) {
    if !direct_tls {
        let mut bytes = crate::xml::stream_header(&domain, "refused", "en");
        bytes.extend(
            StreamError::with_text(
                StreamErrorCondition::ResourceConstraint,
                "too many connections",
            )
            .to_bytes(),
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&bytes)).await;
    }
    let _ = tcp.shutdown().await;
}

/// A future that completes on SIGTERM or SIGINT; the handlers are installed when this is called.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
