//! A small HTTPS client for tests, over hyper's client connection API: one request per
//! connection, trusting the test certificate, the body read whole.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// A response: status, headers and the whole body.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TLS connection to the HTTPS server at `addr` (SNI "localhost", the test certificate trusted).
pub async fn connect(addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    super::tls_connector()
        .connect(name, tcp)
        .await
        .expect("TLS to the HTTPS server")
}

/// Sends one request to `addr` over TLS (SNI "localhost"); `target` is the path (and query).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let tls = connect(addr).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from(body))).expect("request");
    let response = tokio::time::timeout(super::WAIT, sender.send_request(request))
        .await
        .expect("HTTP response in time")
        .expect("HTTP response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(super::WAIT, response.into_body().collect())
        .await
        .expect("HTTP body in time")
        .expect("HTTP body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// The path (and query) of a URL the server handed out, after checking that it points at this
/// server's HTTPS listener.
pub fn path_of(url: &str, addr: SocketAddr) -> String {
    let rest = url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("not an https URL: {url}"));
    let (authority, path) = rest.split_at(rest.find('/').expect("a path"));
    assert_eq!(
        authority,
        format!("localhost:{}", addr.port()),
        "the URL names the server's HTTPS listener"
    );
    path.to_string()
}
