//! The hostile suite: what a tenant of a shared evrouter, or anyone who can reach its
//! ports, may try. For each endpoint, page and listener: who may call it, what it refuses,
//! what it escapes, and what a flood or an idle connection costs. It grows with every new
//! endpoint; docs/security.md lists each threat with the test here that holds it.

#[path = "../support/mod.rs"]
mod support;

mod audit_flood;
mod dapr;
mod inputs;
mod listeners;
mod pages;
mod subscriptions;
