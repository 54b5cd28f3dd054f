//! `docker build`: the classic builder (`POST /build`). A Dockerfile is parsed
//! ([`dockerfile`]) and run a step at a time ([`builder`]); COPY and ADD layers are made on
//! the host from the build context ([`copy`]) or, for ADD's URLs, from what the daemon
//! fetched ([`fetch`]); RUN steps run in microVMs.

pub mod builder;
pub mod copy;
pub mod dockerfile;
pub mod fetch;

pub use builder::{BuildEvent, BuildOptions, Builder};
