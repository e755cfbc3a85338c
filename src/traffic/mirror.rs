//! Route mirrors.
