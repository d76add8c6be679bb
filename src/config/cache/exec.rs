//! `exec` on `proxy` and on each `remoteregistries[]` entry: a Docker credential helper that
//! gives the upstream's credentials, as distribution's `proxy.exec` (`command`, `lifetime`), plus
//! regmirror's `timeout`. When it is set, `username` and `password` beside it are ignored, as
//! distribution ignores them (a warning says so).

use super::raw::{RawExec, Slot};
use super::report::{FieldPath, Report, Zero};
use crate::config::{CredentialHelper, DEFAULT_HELPER_TIMEOUT};

/// The helper configured at `at` (`proxy`, `proxy.remoteregistries[0]`), if any.
pub(super) fn helper(
    exec: Option<&RawExec>,
    username: &Slot,
    at: &str,
    r: &mut Report<'_>,
) -> Option<CredentialHelper> {
    let exec = exec?;
    let lifetime = r.duration(
        &exec.lifetime,
        &format!("{at}.exec.lifetime"),
        Zero::Allowed,
    );
    let timeout = r.duration(&exec.timeout, &format!("{at}.exec.timeout"), Zero::Refused);
    let command_field = format!("{at}.exec.command");
    let program = r.required(&exec.command, &command_field)?;
    if program.trim().is_empty() {
        r.error(&command_field, "is empty: name a credential helper program");
        return None;
    }
    if username.is_some() {
        r.warn_at(
            &FieldPath::parse(&format!("{at}.username")),
            "ignored: exec is set, its credential helper gives the credentials",
        );
    }
    Some(CredentialHelper {
        program,
        lifetime,
        timeout: timeout.unwrap_or(DEFAULT_HELPER_TIMEOUT),
    })
}

/// `proxy.exec` without `proxy.remoteurl`: it belongs to that upstream only (as `username` and
/// `password` beside it), so it is ignored, with a warning.
pub(super) fn warn_unused(r: &mut Report<'_>) {
    r.warn_at(
        &FieldPath::parse("proxy.exec"),
        "ignored without proxy.remoteurl: it gives that upstream's credentials; set exec on \
         each remoteregistries[] entry",
    );
}
