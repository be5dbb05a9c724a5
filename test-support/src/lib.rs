//! Test fixtures for llmesh. Not product code.
//!
//! - [`mock_server`]: a loopback HTTP server that records every call and
//!   plays scripted faults, shared by the provider mocks.
//! - One module per provider wire format ([`openai`], [`anthropic`], …),
//!   each answering in that provider's real shapes: bodies, SSE or
//!   event-stream frames, errors.
//! - [`harness`]: starts a real sidecar on loopback from YAML manifests.
//! - [`redis_server`]: a real `redis-server` on a free loopback port.
//! - [`otlp_grpc`]: an OTLP/gRPC trace collector.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod harness;
pub mod mock_server;
pub mod openai;
pub mod otlp_grpc;
pub mod processes;
pub mod redis_server;

pub use harness::Sidecar;
pub use mock_server::{Behavior, Call, MockServer};
pub use redis_server::RedisServer;
