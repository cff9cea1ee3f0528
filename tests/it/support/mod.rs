//! Shared support code for airlock's integration tests: throw-away
//! registries, deterministic test images, and wrappers for reference tools.

// Each test module uses only part of the harness; unused helpers are not
// a defect here.
#![allow(dead_code)]

mod http;
pub mod images;
pub mod layout;
mod push;
pub mod registry;
pub mod tools;
