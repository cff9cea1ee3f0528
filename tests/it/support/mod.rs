//! Shared support code for airlock's integration tests: throw-away
//! registries, deterministic test images, and wrappers for reference tools.
//!
//! ```ignore
//! let reg = Registry::start();
//! let img = images::push_multiarch_oci(&reg, "team/app", "v1", 7, &["linux/amd64"], 4096);
//! tools::airlock().args(["export", &img.reference()]).assert().success();
//! let report = layout::check_oci_layout(dir);
//! assert_eq!(report.refs["v1"], img.digest);
//! ```
//!
//! Things worth knowing about the tools on this machine:
//! - distribution 2.8 negotiates by `Accept`: a v2s2 manifest is served as
//!   a converted schema 1 manifest (other digest) to clients that do not
//!   accept v2s2, a Docker list is replaced by its linux/amd64 child, and
//!   OCI manifests/indexes are answered with 404 `MANIFEST_UNKNOWN`. This
//!   happens whether or not `compatibility.schema1` is enabled; that switch
//!   only allows schema 1 *pushes*.
//! - `oci-image-tool validate --type imageLayout` is "unimplemented"; the
//!   layout check uses `--type image` plus per-document validation.
//! - skopeo refuses `--preserve-digests` when copying a Docker list into
//!   `oci:` (it would have to convert it), and gzips uncompressed layers
//!   unless given `--dest-oci-accept-uncompressed-layers`.
//!
//! The HTTP helpers use `reqwest::blocking`: call them from plain `#[test]`
//! functions, not from inside an async runtime.

// Each test module uses only part of the harness; unused helpers are not
// a defect here.
#![allow(dead_code)]

pub mod faulty;
mod http;
pub mod images;
pub mod layout;
mod push;
pub mod registry;
pub mod tools;
