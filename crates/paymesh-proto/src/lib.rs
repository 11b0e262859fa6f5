//! The paymesh wire contract, generated from the `.proto` files in the
//! workspace's `proto/` directory.
//!
//! This crate is the only place where gRPC types exist. It holds no logic:
//! servers and clients in other crates convert between these messages and the
//! domain types of `paymesh-core` at their edges, so the core never depends on
//! the wire format. Each module mirrors one protobuf package:
//!
//! * [`common::v1`]: money, corridor ids, positions and the business
//!   [`RejectCode`](common::v1::RejectCode) shared by every API.
//! * [`partner::v1`]: `PartnerService`, the API wallet partners call in
//!   their home region (quotes, transfers, positions, the event stream).
//! * [`interregion::v1`]: `InterRegionService`, the batched two-phase
//!   prepare/decide protocol between regions.
//! * [`raft::v1`]: `RaftService`, the openraft transport between the nodes of
//!   a region, multiplexing several Raft groups.
//! * [`admin::v1`]: `AdminService`, operator configuration of a region;
//!   `ClusterService`, its Raft group; `HistoryService`, a node's history
//!   archives and retention.
//!
//! Each package module contains the messages, a `*_client` module with the
//! tonic client and a `*_server` module with the service trait and tonic
//! server. The `.proto` files are the source of truth for every field's
//! format and limits; their comments appear here as the items' docs.
//!
//! The contract only grows by addition: see the conventions at the top of
//! `proto/paymesh/common/v1/common.proto`.
//!
//! Every public item here must be documented: the generated items take their
//! docs from the `.proto` comments (the `contract` test requires a comment on
//! every declaration), and `missing_docs` turns a gap into a build warning.

#![warn(missing_docs)]

/// Shared types of every paymesh API (package `paymesh.common.v1`).
pub mod common {
    /// Version 1 of the shared types.
    #[allow(unused_qualifications, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("paymesh.common.v1");
    }
}

/// The partner-facing API (package `paymesh.partner.v1`).
pub mod partner {
    /// Version 1 of the partner API.
    #[allow(unused_qualifications, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("paymesh.partner.v1");
    }
}

/// The region-to-region two-phase protocol (package `paymesh.interregion.v1`).
pub mod interregion {
    /// Version 1 of the inter-region protocol.
    #[allow(unused_qualifications, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("paymesh.interregion.v1");
    }
}

/// The Raft transport between the nodes of a region (package `paymesh.raft.v1`).
pub mod raft {
    /// Version 1 of the Raft transport.
    #[allow(unused_qualifications, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("paymesh.raft.v1");
    }
}

/// The operators' API (package `paymesh.admin.v1`).
pub mod admin {
    /// Version 1 of the operator API.
    #[allow(unused_qualifications, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("paymesh.admin.v1");
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of every paymesh `.proto`
/// file, for gRPC server reflection (for example `tonic-reflection`'s
/// `register_encoded_file_descriptor_set`) and for tools that need the schema
/// at run time.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("paymesh_descriptor");
