//! kwarm: keeps container images warm on Kubernetes nodes with one DaemonSet of tiny holders.
//!
//! Pure core: [`holder`] (holder identity, image references), [`config`] (environment →
//! [`config::Config`]), [`images`] (the image set),
//! [`daemonset`] (the desired DaemonSet), [`status`] (pod states, quarantine). I/O shell:
//! [`controller`], [`leader`], [`http`], [`metrics`].
#![forbid(unsafe_code)]

pub mod access;
pub mod cli;
pub mod commands;
pub mod config;
pub mod controller;
pub mod daemonset;
pub mod error;
pub mod gate;
pub mod holder;
pub mod http;
pub mod images;
pub mod labels;
pub mod leader;
pub mod lean;
pub mod metrics;
pub mod quantity;
pub mod registry;
pub mod reload;
pub mod rollout;
pub mod status;
pub mod webhook;

pub use error::{Error, Result};
