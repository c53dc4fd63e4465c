//! `dispatcher.toml`: the settings, their defaults, and validation with errors that name the
//! file, the dotted key and the line.

mod duration;

pub use duration::parse_duration;
