//! The host's `/etc/os-release`, as far as choosing a backend needs it.
//!
//! Pure: text in, fields out. The file is a list of shell-style
//! `KEY=value` assignments (os-release(5)); values may be double- or
//! single-quoted. Only the fields a backend's [`super::Backend::serves`]
//! looks at are kept, and the two that describe the OS to a human.
//! It never decides anything itself: each backend says which hosts it
//! serves.

use std::fmt;

/// The fields of an os-release file that identify the OS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, lower-case (`ubuntu`, `rhel`, `sles`).
    pub id: String,
    /// `ID_LIKE`, lower-case words (`debian`, `fedora`, `suse opensuse`).
    pub id_like: Vec<String>,
    /// `VERSION_ID` (`24.04`, `9.4`, `15.5`).
    pub version_id: String,
    /// `PRETTY_NAME`, as written.
    pub pretty_name: String,
    /// `NAME`, as written.
    pub name: String,
}

impl OsRelease {
    /// Parses the text of an os-release file; unknown keys and malformed
    /// lines are ignored, as os-release(5) asks.
    pub fn parse(text: &str) -> Self {
        let mut os = Self::default();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once('=') else { continue };
            let value = unquote(value.trim());
            match key.trim() {
                "ID" => os.id = value.to_ascii_lowercase(),
                "ID_LIKE" => os.id_like = value.to_ascii_lowercase().split_whitespace().map(str::to_owned).collect(),
                "VERSION_ID" => os.version_id = value,
                "PRETTY_NAME" => os.pretty_name = value,
                "NAME" => os.name = value,
                _ => {}
            }
        }
        os
    }

    /// Whether `ID` or any word of `ID_LIKE` is one of `ids`.
    pub fn is_like(&self, ids: &[&str]) -> bool {
        std::iter::once(&self.id).chain(&self.id_like).any(|word| ids.contains(&word.as_str()))
    }

    /// The major version: `VERSION_ID` up to its first dot, as a number.
    pub fn major_version(&self) -> Option<u32> {
        self.version_id.split('.').next().and_then(|major| major.parse().ok())
    }
}

impl fmt::Display for OsRelease {
    /// How the OS is named in messages: `PRETTY_NAME`, else `NAME` and
    /// `VERSION_ID`, else "this host".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.pretty_name.is_empty() {
            return f.write_str(&self.pretty_name);
        }
        match (self.name.is_empty(), self.version_id.is_empty()) {
            (false, false) => write!(f, "{} {}", self.name, self.version_id),
            (false, true) => f.write_str(&self.name),
            (true, _) => f.write_str("this host"),
        }
    }
}

/// A value without its surrounding quotes (`"a b"`, `'a b'`), with the
/// backslash escapes of double quotes undone.
fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.extend(chars.next());
            } else {
                out.push(c);
            }
        }
        return out;
    }
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.to_owned();
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_with_or_without_quotes() {
        let os = OsRelease::parse(
            "NAME=\"Red Hat Enterprise Linux\"\nVERSION_ID=\"9.4\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\n\
             PRETTY_NAME=\"Red Hat Enterprise Linux 9.4 (Plow)\"\n# a comment\nnot a line\n",
        );
        assert_eq!(os.id, "rhel");
        assert_eq!(os.id_like, vec!["fedora"]);
        assert_eq!(os.major_version(), Some(9));
        assert!(os.is_like(&["fedora"]) && !os.is_like(&["debian"]));
        assert_eq!(os.to_string(), "Red Hat Enterprise Linux 9.4 (Plow)");

        let leap = OsRelease::parse("ID='opensuse-leap'\nID_LIKE='suse opensuse'\nVERSION_ID=15.6\n");
        assert_eq!(leap.id_like, vec!["suse", "opensuse"]);
        assert_eq!(leap.major_version(), Some(15));
        assert_eq!(OsRelease::parse("NAME=\"A \\\"quoted\\\" OS\"\n").name, "A \"quoted\" OS");
    }

    #[test]
    fn the_os_is_named_without_gaps_when_fields_are_missing() {
        assert_eq!(OsRelease::parse("ID=rhel\nNAME=\"RHEL\"\nVERSION_ID=9.4\n").to_string(), "RHEL 9.4");
        assert_eq!(OsRelease::parse("ID=rhel\nNAME=\"RHEL\"\n").to_string(), "RHEL");
        assert_eq!(OsRelease::parse("ID=rhel\n").to_string(), "this host");
        assert_eq!(OsRelease::parse("").major_version(), None);
    }
}
