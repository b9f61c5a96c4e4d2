//! Rookery's HTTPS server (`[http] listen`): TLS with the certificate of `[tls]`, HTTP/1.1 by
//! hyper, routes by axum. It serves file uploads (XEP-0363); every connection counts against
//! `[server] max_connections` like an XMPP one and is closed gracefully at shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::server::ServerState;

/// Time a client has for the TLS handshake, and then for each request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The TLS configuration for HTTP: the XMPP one's certificate, offering HTTP/1.1 by ALPN.
pub fn tls_config(xmpp: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut config = xmpp.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Every route the HTTPS server answers.
pub fn app(state: Arc<ServerState>) -> axum::Router {
    crate::modules::upload::http::routes()
        .merge(super::websocket::routes())
        .with_state(state)
}

/// Accepts connections until shutdown.
pub async fn serve(
    state: Arc<ServerState>,
    listener: TcpListener,
    tls: TlsAcceptor,
    limit: Arc<Semaphore>,
) {
    let app = app(state.clone());
    let mut shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing an HTTP connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app, mut shutdown) = (tls.clone(), app.clone(), state.shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "HTTPS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // The peer's address for handlers (ConnectInfo), as axum::serve would give it.
            let app = app.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let stopping = async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping => {
                    // Finish the request in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
            }
        });
    }
}
