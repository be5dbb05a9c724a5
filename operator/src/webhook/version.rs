//! Native sidecar or plain container: decided once at start from the API
//! server's version (`GET /version`), or forced by a flag.

use k8s_openapi::apimachinery::pkg::version::Info;

/// How the sidecar is added to pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// Native when the API server is 1.29 or newer, else a plain container.
    Auto,
    /// Always an init container with `restartPolicy: Always`.
    Native,
    /// Always a plain container, first in the list.
    Container,
}

/// The first Kubernetes minor version whose native sidecars are on by default (beta in 1.29).
const NATIVE_SIDECAR_MINOR: u32 = 29;

/// Whether an API server reporting `info` runs native sidecars. Managed
/// clusters report minors like `29+`; an unreadable version is treated as old,
/// because a plain container works everywhere.
pub fn supports_native_sidecars(info: &Info) -> bool {
    let number = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    match (number(&info.major), number(&info.minor)) {
        (Some(major), _) if major > 1 => true,
        (Some(1), Some(minor)) => minor >= NATIVE_SIDECAR_MINOR,
        _ => false,
    }
}

impl SidecarMode {
    /// Whether pods get a native sidecar, given the API server's version when it was read.
    pub fn native(self, server: Option<&Info>) -> bool {
        match self {
            Self::Native => true,
            Self::Container => false,
            Self::Auto => server.is_some_and(supports_native_sidecars),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.to_owned(),
            minor: minor.to_owned(),
            ..Info::default()
        }
    }

    #[test]
    fn native_sidecars_from_1_29() {
        for (major, minor, native) in [
            ("1", "28", false),
            ("1", "29", true),
            ("1", "29+", true),
            ("1", "33", true),
            ("2", "0", true),
            ("1", "", false),
            ("", "", false),
        ] {
            assert_eq!(
                supports_native_sidecars(&info(major, minor)),
                native,
                "{major}.{minor}"
            );
        }
    }

    #[test]
    fn flags_override_the_version() {
        let old = info("1", "27");
        assert!(SidecarMode::Native.native(Some(&old)));
        assert!(!SidecarMode::Container.native(Some(&info("1", "30"))));
        assert!(!SidecarMode::Auto.native(Some(&old)));
        assert!(!SidecarMode::Auto.native(None));
    }
}
