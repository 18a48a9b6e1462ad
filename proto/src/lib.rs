//! The `nudge.v1` gRPC contract: generated messages, clients and servers, and the encoded
//! descriptor set that server reflection needs. Nothing else lives here.

// Generated code: a oneof's variants are as large as their messages (AuditEntry's verdict).
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("nudge.v1");
}

/// Encoded `FileDescriptorSet` of every `nudge.v1` file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nudge_descriptor.bin"));
