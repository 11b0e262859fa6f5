//! A paymesh node.
//!
//! A node hosts its region's Raft group: the log and state machine from
//! `paymesh-store`, the Raft transport over gRPC ([`network`] as client,
//! [`raft_service`] as server), and the cluster operations of
//! [`cluster_service`] (bootstrap, status, membership, proposals), with
//! [`cluster_client`] as their client. [`node`]
//! wires them together and runs them until shutdown; [`config`] reads the
//! node's TOML file; [`tls`] and [`identity`] are mutual TLS and who is calling.
//!
//! On the leader, [`actors`] (actix) carry the partner pipeline: a partner
//! actor per partner, a corridor actor per corridor and the group-commit
//! proposer. The partner API ([`partner_service`]) and the admin API
//! ([`admin_service`]) reach them through [`gateway`]; [`convert`] maps the wire
//! contract to the core's types.

#![warn(missing_docs)]
// openraft's error types are large and are its API; they are returned as is.
#![allow(clippy::result_large_err)]

pub mod actors;
pub mod admin_service;
pub mod cluster_client;
pub mod cluster_service;
pub mod codec;
pub mod config;
pub mod console;
pub mod convert;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod history_service;
pub mod identity;
pub mod interregion;
pub mod listener;
pub mod members;
pub mod metrics;
pub mod network;
pub mod node;
pub mod outbox;
pub mod partner_service;
pub mod raft_service;
pub mod rate;
pub mod reconcile;
pub mod retention;
pub mod settlement_files;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod webhooks;

pub use config::NodeConfig;
pub use node::{Node, NodeError};
