//! How the agent applies what it renders (`--apply`), and which mode each
//! backend may run with.
//!
//! Pure: flag values in, a mode or the reason it is refused out. A mode a
//! backend cannot run without disturbing the rest of the node is refused
//! here, at start, never discovered during an apply.

use std::time::Duration;

use crate::backend::Backend;

/// How the agent applies what it renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Files, then the node's own daemon for exactly the changed interfaces
    /// (`wicked ifreload <names>`, NetworkManager's load and activation of
    /// our profile) run in the host's namespaces; renames by netlink first.
    /// Not offered where the backend refuses it ([`Backend::host`]).
    Host,
    /// Files, then the runtime state set directly through netlink.
    Netlink,
    /// Render files only (dry run): success means the files say what is desired.
    None,
}

impl ApplyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Netlink => "netlink",
            Self::None => "none",
        }
    }

    /// How long verification waits for the kernel to settle after an apply.
    pub fn settle_time(self) -> Duration {
        match self {
            // wicked, and NetworkManager on a reapply, finish after their call returns.
            Self::Host => Duration::from_secs(30),
            Self::Netlink => Duration::from_secs(1),
            Self::None => Duration::ZERO,
        }
    }
}

impl std::str::FromStr for ApplyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Self::Host),
            "netlink" => Ok(Self::Netlink),
            "none" => Ok(Self::None),
            other => Err(format!("unknown apply mode {other:?}: expected host, netlink or none")),
        }
    }
}

/// `--apply`: a mode, or `auto` for the backend's own default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyChoice {
    Auto,
    Mode(ApplyMode),
}

impl ApplyChoice {
    /// The mode to run with on `backend`: `auto` is the backend's default
    /// ([`Backend::default_apply`]); a mode the backend cannot run without
    /// disturbing the rest of the node is refused, saying why.
    pub fn resolve(self, backend: &dyn Backend) -> Result<ApplyMode, HostApplyRefused> {
        let mode = match self {
            Self::Auto => return Ok(backend.default_apply()),
            Self::Mode(mode) => mode,
        };
        match (mode, backend.host()) {
            (ApplyMode::Host, Err(why)) => {
                Err(HostApplyRefused { backend: backend.name(), why, auto: backend.default_apply() })
            }
            _ => Ok(mode),
        }
    }
}

/// `--apply host` asked of a backend whose tool cannot apply one interface
/// without disturbing the rest of the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--apply host is not offered with the {backend} backend: {why}; use --apply {} (what auto chooses there)",
    .auto.as_str()
)]
pub struct HostApplyRefused {
    pub backend: &'static str,
    pub why: &'static str,
    /// What `--apply auto` chooses on that backend.
    pub auto: ApplyMode,
}

impl std::str::FromStr for ApplyChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            other => other
                .parse()
                .map(Self::Mode)
                .map_err(|_| format!("unknown apply mode {other:?}: expected auto, host, netlink or none")),
        }
    }
}
