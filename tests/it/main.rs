//! The one integration-test binary: every module drives the real server over sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod browser;
mod cli;
mod docs;
mod faults;
mod helpers;
mod housekeeping;
mod metrics;
mod proxy;
mod security;
mod signin;
