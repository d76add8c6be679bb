//! `regmirror serve` reaching a private upstream (the distribution registry behind htpasswd) with
//! credentials from a Docker credential helper (`proxy.exec`): a script speaking the protocol,
//! and docker-credential-pass with a throwaway GPG key. A failing helper's output (which may hold
//! a secret) appears nowhere: not in the client's error, the log, `/metrics` or the status page.
//! The shim's and warm's config.json helpers (`credHelpers`, `credsStore`). A token service's
//! share of the credentials is checked on the FAKE registry (no token service peer is installed).

mod fake;
mod peers;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use peers::{Images, Missing, Registry, RegistryOptions, Regmirror, http};

const ACCEPT: (&str, &str) = ("Accept", "application/vnd.oci.image.manifest.v1+json");
const USER: &str = "alice";
const PASSWORD: &str = "origin-pa55word";

/// The origin behind htpasswd, holding `library/demo:v1`.
fn private_origin() -> Result<(Registry, Images), Missing> {
    let origin = Registry::start(RegistryOptions {
        htpasswd: Some((USER, PASSWORD)),
        ..Default::default()
    })?;
    let images = Images::new()?;
    images.build("v1", &[("hello", b"hello, private\n")]);
    images.push(
        "v1",
        &format!("{}/library/demo:v1", origin.host()),
        &[&format!("--dest-creds={USER}:{PASSWORD}")],
    );
    Ok((origin, images))
}

/// An executable `dir`/`name` running `body` after noting its run (and the server it was asked
/// about) in `dir`/runs.
fn helper_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 9\nread server\necho \"$server\" >> '{}'\n{body}\n",
        dir.join("runs").display()
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The servers the helper in `dir` was asked about, one per run.
fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A config.yml proxying `origin` with credentials from the helper `command`.
fn exec_config(origin: &str, command: &str) -> String {
    format!("proxy: {{remoteurl: {origin}, exec: {{command: {command}}}}}")
}

fn manifest(cache: &Regmirror) -> (u16, Vec<u8>) {
    let (status, _, body) = http(
        "GET",
        cache.addr,
        "/v2/library/demo/manifests/v1",
        &[ACCEPT],
    );
    (status, body)
}

#[test]
fn a_credential_helper_opens_a_private_upstream() {
    let (origin, _images) = or_skip!(private_origin());
    let scripts = tempfile::tempdir().unwrap();
    let helper = helper_script(
        scripts.path(),
        "docker-credential-test",
        &format!(
            r#"printf '{{"ServerURL":"%s","Username":"{USER}","Secret":"{PASSWORD}"}}' "$server""#
        ),
    );

    // Without credentials the origin refuses the cache.
    let anonymous = Regmirror::serve(&format!("proxy: {{remoteurl: {}}}", origin.url()), &[]);
    assert_ne!(manifest(&anonymous).0, 200);

    // lifetime unset: the helper runs once, asked about the origin's host:port.
    let cache = Regmirror::serve(
        &exec_config(&origin.url(), &helper.display().to_string()),
        &[],
    );
    let (status, body) = manifest(&cache);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let dest = cache.dir.path().join("pulled");
    peers::skopeo_pull(&format!("{}/library/demo:v1", cache.host()), &dest, &[])
        .unwrap_or_else(|e| panic!("pull through the cache: {e}\n{}", cache.log()));
    assert_eq!(
        runs(scripts.path()),
        [origin.host()],
        "one run, for the origin"
    );
    for secret in [PASSWORD, "YWxpY2U6b3JpZ2luLXBhNTV3b3Jk"] {
        assert!(!cache.log().contains(secret), "the log shows no secret");
    }

    // lifetime 0, per remoteregistries entry: every request that needs credentials runs it.
    let scripts = tempfile::tempdir().unwrap();
    let helper = helper_script(
        scripts.path(),
        "docker-credential-every",
        &format!(r#"echo '{{"Username":"{USER}","Secret":"{PASSWORD}"}}'"#),
    );
    let cache = Regmirror::serve(
        &format!(
            "proxy: {{remoteregistries: [{{url: {}, exec: {{command: {}, lifetime: 0s}}}}]}}",
            origin.url(),
            helper.display()
        ),
        &[],
    );
    assert_eq!(manifest(&cache).0, 200, "{}", cache.log());
    let first = runs(scripts.path()).len();
    assert_eq!(manifest(&cache).0, 200, "{}", cache.log());
    assert!(runs(scripts.path()).len() > first, "ran again");
}

#[test]
fn credentials_the_upstream_refuses_are_asked_for_again() {
    let (origin, _images) = or_skip!(private_origin());
    let scripts = tempfile::tempdir().unwrap();
    // The first answer is out of date (an expired token); later ones are current.
    let helper = helper_script(
        scripts.path(),
        "docker-credential-rotating",
        &format!(
            r#"if [ "$(wc -l < '{}')" -le 1 ]; then secret=expired; else secret={PASSWORD}; fi
echo "{{\"Username\":\"{USER}\",\"Secret\":\"$secret\"}}""#,
            scripts.path().join("runs").display()
        ),
    );
    let cache = Regmirror::serve(
        &exec_config(&origin.url(), &helper.display().to_string()),
        &[],
    );
    assert_eq!(manifest(&cache).0, 401, "the out-of-date answer is refused");
    let (status, body) = manifest(&cache);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        runs(scripts.path()).len(),
        2,
        "run again once, not per request"
    );
    assert_eq!(manifest(&cache).0, 200);
    assert_eq!(runs(scripts.path()).len(), 2);
}

#[test]
fn a_failing_helper_is_an_error_naming_it_and_never_its_output() {
    let (origin, _images) = or_skip!(private_origin());
    let scripts = tempfile::tempdir().unwrap();
    let helper = helper_script(
        scripts.path(),
        "docker-credential-broken",
        "echo '{\"Username\":\"alice\",\"Secret\":\"FAKE-SECRET-7f3a\"}'\necho 'FAKE-SECRET-7f3a' >&2\nexit 1",
    );
    let cache = Regmirror::serve(
        &exec_config(&origin.url(), &helper.display().to_string()),
        &[],
    );
    let (status, body) = manifest(&cache);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "credential helper {} for upstream {}: it failed (exit status: 1)",
            helper.display(),
            origin.host()
        )),
        "{body}"
    );
    let (_, _, metrics) = http("GET", cache.addr, "/metrics", &[]);
    let (_, _, status_json) = http("GET", cache.addr, "/_regmirror/status", &[]);
    let (_, _, status_page) = http("GET", cache.addr, "/", &[]);
    for (what, text) in [
        ("the answer", body.to_string()),
        ("the log", cache.log()),
        ("/metrics", String::from_utf8_lossy(&metrics).into_owned()),
        (
            "the status",
            String::from_utf8_lossy(&status_json).into_owned(),
        ),
        (
            "the status page",
            String::from_utf8_lossy(&status_page).into_owned(),
        ),
    ] {
        assert!(
            !text.contains("FAKE-SECRET"),
            "{what} shows the helper's output"
        );
    }
    assert!(
        String::from_utf8_lossy(&status_json).contains("docker-credential-broken"),
        "the status page's recent failures name the helper"
    );
}

/// A password store in a temporary directory, with a GPG key of its own; its gpg-agent is stopped
/// on drop.
struct PassStore {
    dir: tempfile::TempDir,
}

impl PassStore {
    fn new() -> Result<Self, Missing> {
        peers::require("docker-credential-pass", "golang-docker-credential-helpers")?;
        peers::require("pass", "pass")?;
        peers::require("gpg", "gnupg")?;
        let store = PassStore {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(store.gnupg()).unwrap();
        std::fs::set_permissions(store.gnupg(), std::fs::Permissions::from_mode(0o700)).unwrap();
        peers::run(store.command("gpg").args([
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "regmirror test <test@regmirror.invalid>",
            "default",
            "default",
            "never",
        ]));
        peers::run(
            store
                .command("pass")
                .args(["init", "test@regmirror.invalid"]),
        );
        Ok(store)
    }

    fn gnupg(&self) -> PathBuf {
        self.dir.path().join("gnupg")
    }

    fn env(&self) -> [(&'static str, String); 3] {
        [
            ("GNUPGHOME", self.gnupg().display().to_string()),
            (
                "PASSWORD_STORE_DIR",
                self.dir.path().join("store").display().to_string(),
            ),
            ("HOME", self.dir.path().display().to_string()),
        ]
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.envs(self.env());
        command
    }

    /// `docker-credential-pass store`, as `docker login` does.
    fn store(&self, server: &str, user: &str, secret: &str) {
        use std::io::Write as _;
        let mut child = self
            .command("docker-credential-pass")
            .arg("store")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        write!(
            child.stdin.take().unwrap(),
            r#"{{"ServerURL":"{server}","Username":"{user}","Secret":"{secret}"}}"#
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        let _ = self
            .command("gpgconf")
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

#[test]
fn docker_credential_pass_opens_a_private_upstream() {
    let (origin, _images) = or_skip!(private_origin());
    let store = or_skip!(PassStore::new());
    store.store(&origin.host(), USER, PASSWORD);
    let env = store.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cache = Regmirror::serve_with_env(
        tempfile::tempdir().unwrap(),
        &exec_config(&origin.url(), "docker-credential-pass"),
        &[],
        &env,
    );
    let (status, body) = manifest(&cache);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(!cache.log().contains(PASSWORD));

    // A server the store does not hold: pass answers empty credentials, which are none.
    let other = Registry::start(RegistryOptions {
        htpasswd: Some((USER, PASSWORD)),
        ..Default::default()
    })
    .unwrap();
    let cache = Regmirror::serve_with_env(
        tempfile::tempdir().unwrap(),
        &exec_config(&other.url(), "docker-credential-pass"),
        &[],
        &env,
    );
    let (status, body) = manifest(&cache);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "credential helper docker-credential-pass for upstream {0}: it has no credentials for {0}",
            other.host()
        )),
        "{body}"
    );
}

/// `PATH` with `dir` first, where config.json's `docker-credential-<suffix>` helpers are found.
fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn the_shim_takes_mirror_credentials_from_config_json_helpers() {
    let (mirror, images) = or_skip!(private_origin());
    let origin = or_skip!(Registry::start(RegistryOptions::default()));
    images.push("v1", &format!("{}/library/demo:v1", origin.host()), &[]);
    let rules = format!(
        r#"{{"mirror-registries": [{{"domain": "{}", "mirrors": ["{}"]}}]}}"#,
        origin.host(),
        mirror.url()
    );
    let scripts = tempfile::tempdir().unwrap();
    helper_script(
        scripts.path(),
        "docker-credential-regmirror-test",
        &format!(r#"echo '{{"Username":"{USER}","Secret":"{PASSWORD}"}}'"#),
    );
    helper_script(
        scripts.path(),
        "docker-credential-regmirror-empty",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    let path = path_with(scripts.path());
    let config = scripts.path().join("config.json");
    let manifest_via = |config_json: String| {
        std::fs::write(&config, config_json).unwrap();
        let shim = peers::Shim::start_with_env(
            &rules,
            &["--mirror-credentials", config.to_str().unwrap()],
            &[("PATH", &path)],
        );
        let (status, _, _) = http(
            "GET",
            shim.addr,
            &format!("/v2/library/demo/manifests/v1?ns={}", origin.host()),
            &[ACCEPT],
        );
        assert_eq!(status, 200, "{}", shim.log());
        assert!(!shim.log().contains(PASSWORD));
    };

    // credHelpers names the mirror's helper: the mirror serves.
    let served = mirror.count_status("GET", "/v2/library/demo/manifests/", 200);
    manifest_via(format!(
        r#"{{"credHelpers": {{"{}": "regmirror-test"}}, "credsStore": "regmirror-empty"}}"#,
        mirror.host()
    ));
    assert_eq!(
        mirror.count_status("GET", "/v2/library/demo/manifests/", 200),
        served + 1,
        "the mirror served with the helper's credentials"
    );
    assert_eq!(runs(scripts.path()), [mirror.host()]);

    // credsStore holds nothing for the mirror: it is asked without credentials (as Docker
    // does), refuses, and the origin serves.
    let before = origin.count("GET", "/v2/library/demo/manifests/");
    let refused = mirror.count_status("GET", "/v2/library/demo/manifests/", 401);
    manifest_via(r#"{"credsStore": "regmirror-empty"}"#.to_owned());
    assert_eq!(
        mirror.count_status("GET", "/v2/library/demo/manifests/", 401),
        refused + 1,
        "asked once: without credentials, its 401 stands"
    );
    assert_eq!(
        origin.count("GET", "/v2/library/demo/manifests/"),
        before + 1
    );
    assert_eq!(
        mirror.count_status("GET", "/v2/library/demo/manifests/", 200),
        served + 1
    );
}

#[test]
fn warm_takes_the_caches_credentials_from_a_config_json_helper() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, cache) = or_skip!(peers::demo_behind_a_password(dir.path(), USER, PASSWORD));
    helper_script(
        dir.path(),
        "docker-credential-regmirror-test",
        &format!(r#"echo '{{"Username":"{USER}","Secret":"{PASSWORD}"}}'"#),
    );
    helper_script(
        dir.path(),
        "docker-credential-regmirror-broken",
        "echo 'FAKE-SECRET-7f3a'; echo 'FAKE-SECRET-7f3a' >&2; exit 2",
    );
    let config = dir.path().join("config.json");
    let warm = |store: &str| {
        std::fs::write(&config, format!(r#"{{"credsStore": "{store}"}}"#)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args(["warm", "--cache", &cache.url(), "--credentials"])
            .arg(&config)
            .arg(format!("{}/library/demo:v1", origin.host()))
            .env("PATH", path_with(dir.path()))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let run = warm("regmirror-test");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{output}");
    assert!(output.contains("warmed 1 of 1 image"), "{output}");
    assert_eq!(runs(dir.path()), [cache.host()], "asked about the cache");

    let run = warm("regmirror-broken");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("credential helper docker-credential-regmirror-broken for upstream")
            && stderr.contains("it failed (exit status: 2)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("FAKE-SECRET")
            && !String::from_utf8_lossy(&run.stdout).contains("FAKE-SECRET")
    );
}

/// Runs `regmirror serve --config CONFIG`, which must exit: one still running after 60 s
/// (started despite its configuration) is killed and fails the test.
fn serve_until_exit(config: &Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("serve started: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn serve_refuses_to_start_when_a_helper_cannot_be_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    for (command, reason) in [
        ("docker-credential-regmirror-absent", "not found in PATH"),
        (
            "/nonexistent/docker-credential-x",
            "no executable file there",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "proxy: {{remoteurl: https://registry.example, exec: {{command: {command}}}}}\nhttp: {{addr: 127.0.0.1:0}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let run = serve_until_exit(&config);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "exec.command: credential helper {command} for upstream registry.example: cannot start it: {reason}"
            )),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn a_token_service_gets_the_helpers_credentials() {
    // A FAKE registry with its own token service, which records what it is sent.
    let upstream = fake::FakeUpstream::start().await;
    *upstream.state.bearer.lock().unwrap() = Some(fake::Bearer {
        realm: format!("{}/token", upstream.url()),
        token: "t0k3n".into(),
        expires_in: 300,
    });
    for repository in ["library/a", "library/b"] {
        upstream.manifest(repository, "v1", r#"{"schemaVersion":2,"layers":[]}"#);
    }
    let scripts = tempfile::tempdir().unwrap();
    let helper = helper_script(
        scripts.path(),
        "docker-credential-test",
        &format!(r#"echo '{{"Username":"{USER}","Secret":"{PASSWORD}"}}'"#),
    );
    let cache =
        fake::Cache::start(&exec_config(&upstream.url(), &helper.display().to_string())).await;
    for repository in ["library/a", "library/b"] {
        let response = fake::client()
            .get(cache.url(&format!("/v2/{repository}/manifests/v1")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{repository}");
    }
    let sent = upstream.state.authorizations.lock().unwrap()["/token"].clone();
    let basic = format!("Basic {}", "YWxpY2U6b3JpZ2luLXBhNTV3b3Jk");
    assert_eq!(
        sent,
        [Some(basic.clone()), Some(basic)],
        "one token per scope"
    );
    assert_eq!(runs(scripts.path()).len(), 1, "one run for both");
}
