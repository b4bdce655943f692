#![allow(
    unreachable_pub,
    reason = "test helpers are shared between modules of one binary"
)]
//! The one integration-test binary: real HTTP on 127.0.0.1, real SQLite
//! files in temporary directories, and the real `trailkeep` binary where a
//! process boundary matters (crash and CLI tests).

mod api;
mod cli;
mod crash;
mod dialects;
mod postgres;
mod store;
mod support;
mod verifiable;
mod webhooks;
