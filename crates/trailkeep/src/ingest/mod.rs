//! Turning untrusted input into canonical events: structural limits on
//! raw bodies and field-by-field validation that reports every violation.

pub mod enrich;
pub mod validate;

pub use validate::{Checker, Violation, json_depth_ok};
