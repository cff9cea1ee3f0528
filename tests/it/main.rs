//! airlock's integration tests, in one binary so the harness and the
//! dependency graph are compiled once.

mod archive;
mod export;
mod faults;
mod harness;
mod hostile;
mod import;
mod incremental;
mod referrers;
mod schema1;
mod support;
mod tls;
