//! The unrolling engine: checkpoint plans as data ([`plan`]), executed by one sweep.

pub mod plan;
