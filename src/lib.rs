//! `dispatcher`: runs long-running agent programs for a NecroCode task registry.
pub mod config;
