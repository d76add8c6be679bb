//! regmirror: ordered registry mirrors for Docker, containerd and podman, and the pull-through
//! cache they point at.
//!
//! The core is pure: [`config`] reads daemon.json-format mirror configuration, [`reference`]
//! parses image references, and [`resolve`] turns a reference into the ordered endpoints a pull
//! tries (mirrors first, origin last), each with its TLS mode.
//!
//! ```
//! use regmirror::config::{ConfigSource, MirrorConfig};
//! use regmirror::reference::ImageRef;
//! use regmirror::resolve::Resolver;
//!
//! let config = MirrorConfig::from_sources(&[ConfigSource {
//!     path: "mirrors.json",
//!     text: r#"{"mirror-registries": [{"domain": "reg.test1.com",
//!               "mirrors": ["http://mirror.test1.com", "https://mirror.test2.com"]}]}"#,
//! }])?;
//! let resolver = Resolver::new(config)?;
//! let image = ImageRef::parse("reg.test1.com/library/nginx")?;
//! let urls: Vec<_> = resolver.resolve(&image).endpoints.iter().map(|e| e.url.to_string()).collect();
//! assert_eq!(urls, ["http://mirror.test1.com", "https://mirror.test2.com", "https://reg.test1.com"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cache;
pub mod cli;
pub mod config;
pub mod generate;
pub mod listen;
pub mod page;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod sendfile;
pub mod shim;
pub mod sync;
pub mod upstream;
pub mod warm;
