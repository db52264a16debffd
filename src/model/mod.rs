//! The bottom floor: plain data and pure functions every other floor shares. Nothing here
//! does I/O or knows Redis, HTTP or the config file.

pub mod audit;
pub mod clock;
pub mod cloudevent;
pub mod dead_letter;
pub mod envelope;
pub mod event;
pub mod pattern;
pub mod redact;
pub mod route;
pub mod signing;
pub mod subscription;
pub mod sync;
pub mod topic;
pub mod trace;
pub mod violation;
