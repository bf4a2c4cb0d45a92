//! Portcullis: an authenticating reverse proxy that lets through only people who signed
//! in with a password and a TOTP code, and tells each app who they are.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod accounts;
pub mod admin;
pub mod allocator;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod error;
pub mod gate;
pub mod identity;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod server;
pub mod state;
pub mod store;
pub mod web;
