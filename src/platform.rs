//! OCI platforms: `os/arch[/variant]` as `regmirror warm --platform` and the cache's
//! `proxy.platforms` take them, an index child's `platform` as a descriptor states it, and which
//! children a platform keeps (architectures and variants normalised as containerd reads them).
//!
//! Pure: no I/O.

use std::fmt;

use serde::Deserialize;

/// A platform to keep from multi-platform indexes: `os/arch[/variant]`, as `--platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`, `windows/amd64`. Architectures are
    /// normalised as containerd does (`x86_64` is `amd64`, `aarch64` is `arm64`).
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return Err(PlatformError { text: s.to_owned() });
        }
        let architecture = normalise_architecture(&parts[1].to_ascii_lowercase());
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            variant: parts
                .get(2)
                .map(|v| normalise_variant(&architecture, &v.to_ascii_lowercase())),
            architecture,
        })
    }

    /// Whether an index child for `platform` is kept. Without a variant every variant of the
    /// architecture is; with one, the child's variant must be it (arm64 without a variant is
    /// v8, arm without one is v7, as containerd reads them).
    pub fn matches(&self, platform: &IndexPlatform) -> bool {
        let architecture = normalise_architecture(&platform.architecture.to_ascii_lowercase());
        if !platform.os.eq_ignore_ascii_case(&self.os) || architecture != self.architecture {
            return false;
        }
        let Some(wanted) = &self.variant else {
            return true;
        };
        let variant = platform
            .variant
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        let variant = match (architecture.as_str(), variant.as_str()) {
            ("arm64", "") => "v8".to_owned(),
            ("arm", "") => "v7".to_owned(),
            _ => normalise_variant(&architecture, &variant),
        };
        &variant == wanted
    }
}

/// A `--platform` that is not `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a platform: write OS/ARCH or OS/ARCH/VARIANT (linux/amd64, linux/arm64/v8)"
)]
pub struct PlatformError {
    pub text: String,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

fn normalise_architecture(architecture: &str) -> String {
    match architecture {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        other => other,
    }
    .to_owned()
}

fn normalise_variant(architecture: &str, variant: &str) -> String {
    match (architecture, variant) {
        ("arm64", "8") => "v8".to_owned(),
        ("arm", "5" | "6" | "7" | "8") => format!("v{variant}"),
        _ => variant.to_owned(),
    }
}

/// A descriptor's `platform`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IndexPlatform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl fmt::Display for IndexPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(os: &str, architecture: &str, variant: Option<&str>) -> IndexPlatform {
        IndexPlatform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn platform_parsing_and_matching() {
        assert_eq!(
            Platform::parse("linux/amd64").unwrap(),
            Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None
            }
        );
        assert_eq!(
            Platform::parse("Linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/aarch64/8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux amd64",
            "",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
        // (wanted, candidate, kept)
        let cases = [
            ("linux/amd64", platform("linux", "amd64", None), true),
            ("linux/amd64", platform("linux", "arm64", None), false),
            ("linux/amd64", platform("windows", "amd64", None), false),
            ("linux/amd64", platform("linux", "x86_64", None), true),
            ("linux/arm64", platform("linux", "arm64", Some("v8")), true),
            ("linux/arm64/v8", platform("linux", "arm64", None), true),
            (
                "linux/arm64/v8",
                platform("linux", "arm64", Some("v8")),
                true,
            ),
            ("linux/arm/v7", platform("linux", "arm", None), true),
            ("linux/arm/v7", platform("linux", "arm", Some("v6")), false),
            ("linux/arm", platform("linux", "arm", Some("v6")), true),
            ("linux/amd64/v3", platform("linux", "amd64", None), false),
            ("linux/amd64", platform("unknown", "unknown", None), false),
        ];
        for (wanted, candidate, kept) in cases {
            assert_eq!(
                Platform::parse(wanted).unwrap().matches(&candidate),
                kept,
                "{wanted} against {candidate}"
            );
        }
    }
}
