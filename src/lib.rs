//! `dispatcher`: runs long-running agent programs for a NecroCode task registry.
pub mod config;
pub mod fsutil;
pub mod names;
pub mod registry;
pub mod timefmt;
