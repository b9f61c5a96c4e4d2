//! User management for the operator: `rookery user add|passwd|del|list`.
//!
//! While the server runs it holds the database (sled allows one process), so the command line talks
//! to it over a local Unix socket (`[admin] socket`, mode 0600) with one JSON request and one JSON
//! answer per connection. When the server is not running, the command line opens the store itself.
//! Both paths run the same `execute`.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::Accounts;
use crate::server::ServerState;

/// One user-management request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Add { user: String, password: String },
    Passwd { user: String, password: String },
    Del { user: String },
    List,
}

/// The answer: `ok`, a message for the operator, and the user list for `list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub users: Vec<String>,
}

impl Response {
    fn ok(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: message.into(),
            users: Vec::new(),
        }
    }

    fn err(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            message: message.into(),
            users: Vec::new(),
        }
    }
}

/// Carries out a request. `running` is given when the server runs, so that a deleted account's
/// sessions end and its in-memory state goes with it.
pub async fn execute(
    accounts: &Accounts,
    running: Option<&ServerState>,
    request: Request,
) -> Response {
    match request {
        Request::Add { user, password } => match accounts.parse_user(&user) {
            Ok(jid) => match accounts.create(&jid, &password).await {
                Ok(()) => Response::ok(format!("created {jid}")),
                Err(e) => Response::err(e.to_string()),
            },
            Err(e) => Response::err(e.to_string()),
        },
        Request::Passwd { user, password } => match accounts.parse_user(&user) {
            Ok(jid) => match accounts.set_password(&jid, &password).await {
                Ok(()) => Response::ok(format!("changed the password of {jid}")),
                Err(e) => Response::err(e.to_string()),
            },
            Err(e) => Response::err(e.to_string()),
        },
        Request::Del { user } => match accounts.parse_user(&user) {
            Ok(jid) => match accounts.delete(&jid).await {
                Ok(()) => {
                    if let Some(state) = running {
                        state.account_removed(&jid);
                    }
                    Response::ok(format!("deleted {jid}"))
                }
                Err(e) => Response::err(e.to_string()),
            },
            Err(e) => Response::err(e.to_string()),
        },
        Request::List => match accounts.list() {
            Ok(users) => Response {
                ok: true,
                message: format!("{} accounts", users.len()),
                users: users.into_iter().map(|j| j.to_string()).collect(),
            },
            Err(e) => Response::err(e.to_string()),
        },
    }
}

/// Binds the admin socket and returns the task that serves it.
#[cfg(unix)]
pub fn serve(state: Arc<ServerState>) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let path = state.config.admin_socket();
    if path.exists() {
        // A socket left behind by a server that did not stop cleanly (we hold the database lock, so no
        // other server is using it).
        let _ = std::fs::remove_file(&path);
    }
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| {
        format!(
            "cannot create the admin socket {} ([admin] socket)",
            path.display()
        )
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict the admin socket {}", path.display()))?;
    tracing::info!("admin socket listening on {}", path.display());
    Ok(async move {
        let mut shutdown = state.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read).take(64 * 1024);
                let response = match reader.read_line(&mut line).await {
                    Ok(_) => match serde_json::from_str::<Request>(&line) {
                        Ok(request) => execute(&state.accounts, Some(&state), request).await,
                        Err(e) => Response::err(format!("bad request: {e}")),
                    },
                    Err(e) => Response::err(format!("cannot read the request: {e}")),
                };
                if let Ok(mut text) = serde_json::to_string(&response) {
                    text.push('\n');
                    let _ = write.write_all(text.as_bytes()).await;
                }
            });
        }
    })
}

#[cfg(not(unix))]
pub fn serve(_state: Arc<ServerState>) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {})
}

/// Sends a request to a running server. `Ok(None)` when no server answers at that path.
#[cfg(unix)]
pub async fn send(path: &Path, request: &Request) -> anyhow::Result<Option<Response>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = match tokio::net::UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => anyhow::bail!(
            "cannot reach the running server's admin socket {}: {e}",
            path.display()
        ),
    };
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = serde_json::from_str(&line)
        .map_err(|e| anyhow::anyhow!("the server's admin socket gave an unreadable answer: {e}"))?;
    Ok(Some(response))
}

#[cfg(not(unix))]
pub async fn send(_path: &Path, _request: &Request) -> anyhow::Result<Option<Response>> {
    Ok(None)
}
