//! Traffic policy compiled into the snapshot: sticky sessions and mirrors.

pub mod mirror;
pub mod sticky;
