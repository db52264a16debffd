//! Dapr apps as subscribers: the bodies they are sent, their own [`subscriber`], the
//! discovery of their subscriptions ([`apps`]), their health checks ([`health`]), and the
//! gRPC calls to an app that speaks gRPC ([`grpc`]).

pub mod apps;
pub mod bodies;
pub mod grpc;
pub mod health;
pub mod subscriber;
