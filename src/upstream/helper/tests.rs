//! Helpers as shell scripts speaking the protocol (real processes, real pipes).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use super::*;

/// A script `helper` in `dir` running `body` (`sh`); `runs` counts its runs.
fn script(dir: &Path, body: &str) -> String {
    let path = dir.join("docker-credential-test");
    let text = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 9\necho run >> '{}'\n{body}\n",
        dir.join("runs").display()
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn helper(program: String, lifetime: Option<Duration>) -> HelperCredentials {
    let helper = CredentialHelper {
        program,
        lifetime,
        timeout: Duration::from_secs(20),
    };
    HelperCredentials::new(helper, "127.0.0.1:5001", "up.example")
}

/// Answers with the server it was asked about as the username.
const ANSWER: &str = "read server; printf '{\"ServerURL\":\"%s\",\"Username\":\"%s\",\"Secret\":\"s3cret\"}' \"$server\" \"$server\"";

#[tokio::test]
async fn an_answer_is_kept_for_the_lifetime_and_shared() {
    let dir = tempfile::tempdir().unwrap();
    let once = helper(script(dir.path(), ANSWER), None);
    let credentials = once.get().await.unwrap().unwrap();
    assert_eq!(
        (credentials.username(), credentials.password()),
        ("127.0.0.1:5001", "s3cret"),
        "asked about the upstream's host:port on stdin"
    );
    once.get().await.unwrap();
    assert_eq!(runs(dir.path()), 1, "no lifetime: run once");

    let dir = tempfile::tempdir().unwrap();
    let every = helper(
        script(dir.path(), &format!("sleep 0.3\n{ANSWER}")),
        Some(Duration::ZERO),
    );
    every.get().await.unwrap();
    every.get().await.unwrap();
    assert_eq!(runs(dir.path()), 2, "lifetime 0: every request");
    let answers = futures_util::future::join_all((0..8).map(|_| every.get())).await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(runs(dir.path()), 3, "concurrent requests share one run");
}

#[tokio::test]
async fn failures_name_the_helper_and_the_upstream_never_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let failing = helper(
        script(
            dir.path(),
            "echo 'Secret: FAKE-SECRET-1234'; echo 'FAKE-SECRET-1234' >&2; exit 3",
        ),
        None,
    );
    let error = failing.get().await.unwrap_err();
    let text = error.to_string();
    assert!(!text.contains("FAKE-SECRET"), "{text}");
    assert!(
        text.starts_with("credential helper ")
            && text.contains("docker-credential-test for upstream up.example")
            && text.contains("exit status: 3"),
        "{text}"
    );
    assert!(!format!("{error:?}").contains("FAKE-SECRET"));
    failing.get().await.unwrap_err();
    assert_eq!(runs(dir.path()), 2, "a failure is not kept");

    let dir = tempfile::tempdir().unwrap();
    let invalid = helper(script(dir.path(), "echo 'FAKE-SECRET-1234'"), None);
    let error = invalid.get().await.unwrap_err();
    assert_eq!(error.failure, Failure::Invalid);
    assert!(!error.to_string().contains("FAKE-SECRET"), "{error}");
}

#[tokio::test]
async fn a_helper_without_credentials_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let empty = helper(
        script(
            dir.path(),
            "echo 'credentials not found in native keychain'; exit 1",
        ),
        None,
    );
    let error = empty.get().await.unwrap_err();
    assert_eq!(error.failure, Failure::NotFound("127.0.0.1:5001".into()));

    let dir = tempfile::tempdir().unwrap();
    let blank = helper(
        script(
            dir.path(),
            "echo '{\"ServerURL\":\"x\",\"Username\":\"\",\"Secret\":\"\"}'",
        ),
        None,
    );
    let error = blank.get().await.unwrap_err();
    assert_eq!(error.failure, Failure::NotFound("127.0.0.1:5001".into()));
    let anonymous = helper(blank.helper.program.clone(), None).missing_is_anonymous();
    assert_eq!(
        anonymous.get().await,
        Ok(None),
        "a config.json helper: no credentials"
    );
    anonymous.get().await.unwrap();
    assert_eq!(runs(dir.path()), 2, "that answer is kept too");
    assert!(
        error
            .to_string()
            .ends_with("it has no credentials for 127.0.0.1:5001"),
        "{error}"
    );
}

#[tokio::test]
async fn a_slow_helper_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut slow = helper(script(dir.path(), &format!("sleep 30\n{ANSWER}")), None);
    slow.helper.timeout = Duration::from_millis(200);
    let error = slow.get().await.unwrap_err();
    assert_eq!(error.failure, Failure::Timeout(Duration::from_millis(200)));
    assert!(error.to_string().contains("exec.timeout"), "{error}");
}

#[tokio::test]
async fn a_missing_program_or_a_huge_answer_fails() {
    let missing = helper("/nonexistent/docker-credential-none".into(), None);
    let error = missing.get().await.unwrap_err();
    assert!(matches!(error.failure, Failure::Start(_)), "{error}");

    let dir = tempfile::tempdir().unwrap();
    let huge = helper(
        script(dir.path(), "head -c 1000000 /dev/zero | tr '\\0' x"),
        None,
    );
    assert_eq!(huge.get().await.unwrap_err().failure, Failure::TooLarge);
}

#[tokio::test]
async fn an_answer_the_upstream_refused_is_asked_for_again() {
    let dir = tempfile::tempdir().unwrap();
    let once = helper(script(dir.path(), ANSWER), None);
    let first = once.get().await.unwrap().unwrap();
    once.refused(&Credentials::new("someone", "else")).await;
    once.get().await.unwrap();
    assert_eq!(
        runs(dir.path()),
        1,
        "another answer's refusal changes nothing"
    );
    once.refused(&first).await;
    once.get().await.unwrap();
    assert_eq!(runs(dir.path()), 2, "run again after the refusal");
}
