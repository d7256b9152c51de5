//! Campaigns: many outbound calls from a durable queue, under calling rules.
//!
//! - [`import`]: contacts from CSV or JSON, checked row by row;
//! - [`rules`]: the compliance crate's verdicts applied to the queue;
//! - [`worker`]: the per-node task that dials due contacts and reconciles in-doubt attempts;
//! - [`api`]: `/v1/campaigns` and `/v1/dnc`.

pub mod api;
pub mod import;
pub mod rules;
pub mod worker;
