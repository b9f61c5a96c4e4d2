//! The HTTP side of file sharing: PUT into a slot, GET and HEAD of stored files (ETag, ranges,
//! caching headers, so that a CDN can front downloads), CORS for web clients.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt as _;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use super::{file_path, now, partial_path, PATH_PREFIX};
use crate::server::ServerState;
use crate::store::{UploadRecord, UploadState};

/// The routes of the upload service, under `PATH_PREFIX`.
pub fn routes() -> axum::Router<Arc<ServerState>> {
    axum::Router::new().route(
        &format!("{PATH_PREFIX}/{{id}}/{{name}}"),
        get(download).put(upload).options(preflight),
    )
}

/// A response with a status and a short plain-text explanation, and the CORS headers.
fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{text}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    cors(headers);
    response
}

/// XEP-0363 §8: headers that let web clients hosted elsewhere upload and download.
fn cors(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("OPTIONS, HEAD, GET, PUT"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, Range, If-None-Match"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, Content-Range, ETag, Accept-Ranges"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
}

async fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    cors(response.headers_mut());
    response
}

/// The record behind a URL, if the URL is exactly one that was handed out.
fn lookup(state: &ServerState, id: &str, name: &str) -> Result<UploadRecord, Lookup> {
    let record = state.stores.uploads.upload(id).map_err(|e| {
        tracing::error!(error = %e, "cannot read an upload record");
        Lookup::Failed
    })?;
    match record {
        Some(record) if record.filename == name => Ok(record),
        _ => Err(Lookup::NotFound),
    }
}

/// Why `lookup` found nothing.
enum Lookup {
    NotFound,
    Failed,
}

impl Lookup {
    fn response(self) -> Response<Body> {
        match self {
            Lookup::NotFound => plain(StatusCode::NOT_FOUND, "no such file"),
            Lookup::Failed => plain(StatusCode::INTERNAL_SERVER_ERROR, "storage failure"),
        }
    }
}

fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// PUT into a slot: the secret of the slot's Authorization header, the announced size and type;
/// the file is written beside its final name and moved there once complete and on disk.
async fn upload(
    State(state): State<Arc<ServerState>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let record = match lookup(&state, &id, &name) {
        Ok(record) => record,
        Err(missing) => return missing.response(),
    };
    let UploadState::Slot { secret, until } = &record.state else {
        return plain(
            StatusCode::CONFLICT,
            "this slot was used already; request a new one",
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| sha2::Sha256::digest(token.trim().as_bytes()).to_vec());
    if presented.as_ref() != Some(secret) {
        return plain(
            StatusCode::FORBIDDEN,
            "the Authorization header of the slot is missing or wrong",
        );
    }
    if now() >= *until {
        return plain(StatusCode::GONE, "this slot has lapsed; request a new one");
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        None => {
            return plain(
                StatusCode::LENGTH_REQUIRED,
                "Content-Length is required and must be the slot's size",
            )
        }
        Some(length) if length > record.size => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the slot is for {} bytes, not {length}", record.size),
            )
        }
        Some(length) if length != record.size => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("the slot is for {} bytes, not {length}", record.size),
            )
        }
        Some(_) => {}
    }
    if let Some(sent) = headers.get(header::CONTENT_TYPE) {
        let sent = essence(sent.to_str().unwrap_or(""));
        if sent != essence(&record.content_type)
            && record.content_type != "application/octet-stream"
        {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "the slot is for {}, not {sent}",
                    essence(&record.content_type)
                ),
            );
        }
    }
    // Claim the slot: one PUT at a time, and never a second one once it succeeded.
    let receiving = UploadRecord {
        state: UploadState::Receiving { since: now() },
        ..record.clone()
    };
    match state
        .stores
        .uploads
        .replace_upload(&id, &record, &receiving)
    {
        Ok(true) => {}
        Ok(false) => {
            return plain(
                StatusCode::CONFLICT,
                "this slot is being used or was used already",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot claim an upload slot");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "storage failure");
        }
    }
    let dir = state.upload.dir().to_path_buf();
    match receive(&dir, &id, record.size, body).await {
        Ok(etag) => {
            let stored = UploadRecord {
                state: UploadState::Stored {
                    etag,
                    stored: now(),
                },
                ..record.clone()
            };
            // The account may have been deleted while the bytes came: then they must not stay.
            let exists = match jid::BareJid::new(&record.owner) {
                Ok(owner) => state.accounts.exists(&owner),
                Err(_) => Ok(false),
            };
            let saved = match exists {
                Ok(true) => state
                    .stores
                    .uploads
                    .replace_upload(&id, &receiving, &stored),
                Ok(false) => Ok(false),
                Err(e) => Err(e),
            };
            let durable = match saved {
                Ok(true) => match state.stores.flush().await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let _ = state.stores.uploads.remove_upload_if(&id, &stored);
                        Err(e.to_string())
                    }
                },
                Ok(false) => {
                    let _ = state.stores.uploads.remove_upload_if(&id, &receiving);
                    Err("the account or the record went during the upload".into())
                }
                Err(e) => Err(e.to_string()),
            };
            match durable {
                Ok(()) => {
                    tracing::debug!(id, size = record.size, "file uploaded");
                    plain(StatusCode::CREATED, "stored")
                }
                Err(e) => {
                    // The account may have been deleted meanwhile: the file must not stay.
                    tracing::warn!(id, error = %e, "an uploaded file could not be recorded");
                    super::delete_file(&dir, &id);
                    plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the file could not be kept",
                    )
                }
            }
        }
        Err(failure) => {
            super::delete_file(&dir, &id);
            // Give the slot back, so that the client may try again while it lasts.
            let _ = state
                .stores
                .uploads
                .replace_upload(&id, &receiving, &record);
            plain(failure.status, &failure.text)
        }
    }
}

/// How long a PUT may go without sending anything.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest a cache is told to keep a file, in seconds.
const MAX_CACHE_AGE: u64 = 86_400;

struct Failure {
    status: StatusCode,
    text: String,
}

/// Writes the body to the file's partial path, checking its length, then syncs it and moves it
/// into place. Returns the strong ETag (from the content's SHA-256).
async fn receive(
    dir: &std::path::Path,
    id: &str,
    size: u64,
    mut body: Body,
) -> Result<String, Failure> {
    let io = |e: std::io::Error| {
        tracing::error!(error = %e, "cannot write an uploaded file");
        Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            text: "the file could not be written".into(),
        }
    };
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let partial = partial_path(dir, id);
    let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
    let mut hash = sha2::Sha256::new();
    let mut received: u64 = 0;
    loop {
        // A client that stops sending holds a connection: it gets a while, not forever.
        let frame = match tokio::time::timeout(BODY_TIMEOUT, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(Failure {
                    status: StatusCode::REQUEST_TIMEOUT,
                    text: format!("nothing arrived for {} seconds", BODY_TIMEOUT.as_secs()),
                })
            }
        };
        let frame = frame.map_err(|e| Failure {
            status: StatusCode::BAD_REQUEST,
            text: format!("the upload was interrupted: {e}"),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > size {
            return Err(Failure {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                text: format!("more than the slot's {size} bytes"),
            });
        }
        hash.update(&data);
        file.write_all(&data).await.map_err(io)?;
    }
    if received != size {
        return Err(Failure {
            status: StatusCode::BAD_REQUEST,
            text: format!("{received} bytes arrived, the slot is for {size}"),
        });
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(&partial, file_path(dir, id))
        .await
        .map_err(io)?;
    // The rename itself must survive a crash before the client is told the file is stored.
    let dir_path = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir_path)?.sync_all())
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .map_err(io)?;
    let digest = hash.finalize();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

/// GET (and HEAD) of a stored file, with validators and ranges.
async fn download(
    State(state): State<Arc<ServerState>>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response<Body> {
    let record = match lookup(&state, &id, &name) {
        Ok(record) => record,
        Err(missing) => return missing.response(),
    };
    let now = now();
    let (UploadState::Stored { etag, stored }, true) = (
        &record.state,
        record.expires.is_none_or(|expires| expires > now),
    ) else {
        return plain(StatusCode::NOT_FOUND, "no such file");
    };
    let etag = format!("\"{etag}\"");
    let mut common = HeaderMap::new();
    cors(&mut common);
    common.insert(header::ETAG, header_value(&etag));
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The content at a URL never changes, but the file may be deleted (with its account): caches
    // keep it a day at most, and never beyond its expiry.
    let max_age = record
        .expires
        .map_or(MAX_CACHE_AGE, |e| e.saturating_sub(now).min(MAX_CACHE_AGE));
    common.insert(
        header::CACHE_CONTROL,
        header_value(&format!("public, max-age={max_age}, immutable")),
    );
    if let Some(modified) = chrono::DateTime::from_timestamp(*stored as i64, 0) {
        common.insert(
            header::LAST_MODIFIED,
            header_value(&modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
        );
    }
    if let Some(matches) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if matches
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
        {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = common;
            return response;
        }
    }
    let size = record.size;
    // RFC 9110 §14.2: a Range that does not parse is ignored; one that cannot be satisfied gets
    // 416; several ranges get the whole file (allowed, and simpler for everyone).
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if if_range_ok => match http_range_header::parse_range_header(value) {
            Ok(parsed) => match parsed.validate(size) {
                Ok(ranges) if ranges.len() == 1 && size > 0 => Some(ranges[0].clone()),
                Ok(_) => None,
                Err(_) => {
                    let mut response =
                        plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                    response.headers_mut().insert(
                        header::CONTENT_RANGE,
                        header_value(&format!("bytes */{size}")),
                    );
                    return response;
                }
            },
            Err(_) => None,
        },
        _ => None,
    };
    let (status, start, length) = match &range {
        Some(r) => (
            StatusCode::PARTIAL_CONTENT,
            *r.start(),
            r.end() - r.start() + 1,
        ),
        None => (StatusCode::OK, 0, size),
    };
    let mut response_headers = common;
    response_headers.insert(header::CONTENT_TYPE, header_value(&record.content_type));
    response_headers.insert(header::CONTENT_LENGTH, header_value(&length.to_string()));
    if let Some(r) = &range {
        response_headers.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {}-{}/{size}", r.start(), r.end())),
        );
    }
    response_headers.insert(
        header::CONTENT_DISPOSITION,
        header_value(&disposition(&record)),
    );
    // XEP-0363 §9: nothing uploaded runs as active content in a browser.
    response_headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    response_headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let mut file = match tokio::fs::File::open(file_path(state.upload.dir(), &id)).await {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(id, error = %e, "a stored file cannot be opened");
                return plain(StatusCode::NOT_FOUND, "no such file");
            }
        };
        if start > 0 {
            if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
                tracing::error!(id, error = %e, "cannot seek in a stored file");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "read failure");
            }
        }
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            file.take(length),
            256 * 1024,
        ))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    response
}

/// Images, audio and video show in the browser; anything else is a download. The name is
/// given in RFC 6266's UTF-8 form.
fn disposition(record: &UploadRecord) -> String {
    let kind = essence(&record.content_type);
    let inline = ["image/", "audio/", "video/"]
        .iter()
        .any(|prefix| kind.starts_with(prefix))
        && kind != "image/svg+xml";
    format!(
        "{}; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        percent_encoding::utf8_percent_encode(&record.filename, super::URL_SEGMENT)
    )
}

/// A header value from text already known to be printable ASCII (validated media types,
/// numbers, hex): anything else becomes an empty value rather than a panic.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
