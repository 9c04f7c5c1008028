//! residency-operator: declares which countries' data may live in which clusters, places storage
//! and processing workloads onto compliant member clusters, relocates them safely and proves where
//! each country's data lives.
#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
pub mod api;
pub mod cli;
pub mod controller;
pub mod datamove;
pub mod desired;
pub mod drift;
pub mod facts;
pub mod fleet;
pub mod http;
pub mod join;
pub mod kinds;
pub mod leader;
pub mod location;
pub mod managed_fields;
pub mod metrics;
pub mod mover;
pub mod placement;
pub mod plan;
pub mod policy_report;
pub mod readiness;
pub mod report;
pub mod telemetry;
