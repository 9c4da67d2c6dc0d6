//! miauflix-gate: one binary that owns every security layer in front of a Miauflix
//! media server. See ARCHITECTURE.md for the code map.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod crypto;
pub mod healthcheck;
pub mod http;
pub mod maintenance;
pub mod monitor;
pub mod paths;
pub mod ratelimit;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tls;
pub mod validate;
pub mod vpn;
