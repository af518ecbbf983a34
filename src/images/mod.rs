//! OCI images on disk: a content-addressed store of image manifests, configs and unpacked
//! layers shared by every image and sandbox, filled by importing OCI layouts and `docker save`
//! archives or by pulling from a registry. Runs in the caller's process (the CLI, a grader);
//! monitors only ever see the layer directories a sandbox's config names.
//!
//! On disk (format version 1, under `/var/lib/runbox` by default, see [`ImageStore::open`]):
//!
//! | path | what |
//! |---|---|
//! | `store.json` | `{"format_version": 1}` |
//! | `lock` | `flock`ed shared by imports, pulls and launches, exclusively by `rm` and `prune` |
//! | `blobs/sha256/<hex>` | manifests and configs, by digest, verified |
//! | `layers/<hex>/` | one unpacked layer per diff_id (the sha256 of its uncompressed tar) |
//! | `images/<hex>.json` | one record per image, by manifest digest: its config and layers |
//! | `names/<escaped name>` | a name's manifest digest |
//! | `pins/<hex>/<n>` | an image in use: the sandbox directory using it |
//! | `tmp/` | staging: everything is written here first and renamed into place |

pub(crate) mod import;
pub(crate) mod manifest;
pub(crate) mod reference;
pub(crate) mod store;
mod targuard;
pub(crate) mod unpack;

#[cfg(feature = "registry")]
mod pull;
#[cfg(feature = "registry")]
mod registry;

pub use store::{
    ImageDetails, ImageInfo, ImageStore, Progress, PruneReport, RemoveReport, DEFAULT_IMAGE_STORE,
};

#[cfg(feature = "registry")]
pub use pull::PullOptions;

pub(crate) use store::ResolvedImage;
