//! A paymesh node.
//!
//! A node hosts its region's Raft group: the log and state machine from
//! `paymesh-store`, the Raft transport over gRPC ([`network`] as client,
//! [`raft_service`] as server), and the cluster operations of
//! [`cluster_service`] (bootstrap, status, membership, proposals), with
//! [`cluster_client`] as their client. [`node`]
//! wires them together and runs them until shutdown; [`config`] reads the
//! node's TOML file.

#![warn(missing_docs)]
// openraft's error types are large and are its API; they are returned as is.
#![allow(clippy::result_large_err)]

pub mod cluster_client;
pub mod cluster_service;
pub mod codec;
pub mod config;
pub mod network;
pub mod node;
pub mod raft_service;

pub use config::NodeConfig;
pub use node::{Node, NodeError};
