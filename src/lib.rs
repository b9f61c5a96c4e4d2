//! Rookery, an XMPP server. `server` wires the parts together; see `shared/design/ARCHITECTURE.md`
//! for the map: bytes enter through `transport` and `xml`, are negotiated by `stream`, become a
//! `session`, and are delivered by the `router` to sessions or to the `modules` that implement features.

pub mod addr;
pub mod admin;
pub mod auth;
pub mod config;
pub mod doap;
pub mod error;
pub mod modules;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod stream;
pub mod transport;
pub mod xml;
