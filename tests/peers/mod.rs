//! Real peers for integration tests: the distribution registry, skopeo and umoci, containerd and
//! ctr, dockerd, object stores (moto_server for S3, Azurite for Azure: [`storage`]), and
//! regmirror's own binary, each started on 127.0.0.1 with an ephemeral port and stopped on drop
//! (success or panic). Nothing here uses DNS or leaves loopback.
//!
//! A peer whose binary is missing is a [`Missing`]: every helper that needs one returns
//! `Result<_, Missing>`, and a test takes its peers with [`or_skip!`], which ends the test there
//! with `skipped <test>: <binary> not found: install the Debian package ...` on stderr, so that
//! `cargo test` runs the unit and in-process tests on any machine. With
//! `REGMIRROR_REQUIRE_PEERS=1` (which `.ci/run` sets) a missing peer fails the test instead,
//! naming the package to install (for moto_server: `bash .ci/run`, which creates its venv).
#![allow(dead_code)] // each test binary uses a subset

pub mod oci;
pub mod storage;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Engine-level tests (containerd, dockerd) take this so they never run at the same time.
pub fn engine_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A peer this machine lacks: what is missing and how to install it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Missing {
    /// `Err(self)` for the test to skip, or, with `REGMIRROR_REQUIRE_PEERS=1`, a failure here.
    fn fail_or_skip<T>(self) -> Result<T, Missing> {
        if std::env::var_os("REGMIRROR_REQUIRE_PEERS").is_some_and(|v| v == "1") {
            panic!("{self}");
        }
        Err(self)
    }

    /// Says on stderr that the running test is skipped, and why: written to the process's
    /// stderr itself, which the test harness does not capture, so that it shows in every run.
    pub fn report_skip(&self) {
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("a test");
        let _ = writeln!(
            std::io::stderr(),
            "skipped {test}: {self} (REGMIRROR_REQUIRE_PEERS=1 makes this a failure)"
        );
    }
}

/// The value of a `Result<_, Missing>`; on `Err` the test ends here, skipped, with the reason on
/// stderr ([`Missing::report_skip`]). For `#[test]` functions; helpers pass `Missing` on with `?`.
#[macro_export]
macro_rules! or_skip {
    ($peer:expr) => {
        match $peer {
            Ok(value) => value,
            Err(missing) => {
                $crate::peers::Missing::report_skip(&missing);
                return;
            }
        }
    };
}

/// [`Missing`] saying `what` is missing and how to get it, for a peer found another way than on
/// `PATH` (a failure right here under `REGMIRROR_REQUIRE_PEERS=1`).
pub fn missing<T>(what: String) -> Result<T, Missing> {
    Missing(what).fail_or_skip()
}

/// The path of `binary`, or [`Missing`] naming the Debian package that provides it (a failure
/// right here under `REGMIRROR_REQUIRE_PEERS=1`).
pub fn require(binary: &str, package: &str) -> Result<PathBuf, Missing> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let path = Path::new(dir).join(binary);
        if path.is_file() {
            return Ok(path);
        }
    }
    missing(format!(
        "{binary} not found: install the Debian package `{package}` (bash .ci/run does)"
    ))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to completion, failing the test with its output when it fails.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A minimal HTTP/1.1 request over loopback: (status, headers, body).
pub fn http(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    exchange(method, addr, path, headers, None)
}

/// [`http`] with a request body (and its `Content-Length`, even when empty).
pub fn http_with_body(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    exchange(method, addr, path, headers, Some(body))
}

fn exchange(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

/// The value of header `name` (lower case) in a response head from [`http`].
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_owned())
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

/// Polls until `addr` answers `GET /v2/` with any HTTP status.
fn wait_for_http(addr: SocketAddr, child: &mut Child, log: &Path) {
    wait_for_http_path(addr, "/v2/", child, log);
}

/// Polls until `addr` answers `GET path` with any HTTP status.
fn wait_for_http_path(addr: SocketAddr, path: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "process exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            let mut buf = [0u8; 12];
            if stream
                .read(&mut buf)
                .map(|n| n >= 12 && buf.starts_with(b"HTTP/1.1"))
                .unwrap_or(false)
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{addr} did not answer within 20 s: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Polls until the command `make` builds succeeds, failing with `process`'s log after `timeout`.
fn wait_for_command(make: impl Fn() -> Command, timeout: Duration, what: &str, process: &Process) {
    let deadline = Instant::now() + timeout;
    while !make().output().map(|o| o.status.success()).unwrap_or(false) {
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process killed on drop.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(command: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        Process { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// TLS material made with the openssl CLI: a CA and a leaf for the given names.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, dns_names: &[&str]) -> Result<Self, Missing> {
        require("openssl", "openssl")?;
        let p = |name: &str| dir.join(name);
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=regmirror test CA",
            ])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.crt")));
        let san: Vec<String> = dns_names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .chain(["IP:127.0.0.1".to_owned()])
            .collect();
        std::fs::write(p("ext.cnf"), format!("subjectAltName={}\n", san.join(","))).unwrap();
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=registry",
            ])
            .arg("-keyout")
            .arg(p("leaf.key"))
            .arg("-out")
            .arg(p("leaf.csr")));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("leaf.csr"))
            .arg("-CA")
            .arg(p("ca.crt"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("leaf.crt")));
        Ok(TestCa {
            ca_cert: p("ca.crt"),
            cert: p("leaf.crt"),
            key: p("leaf.key"),
        })
    }
}

/// Options for a distribution registry.
#[derive(Default)]
pub struct RegistryOptions<'a> {
    pub tls: Option<&'a TestCa>,
    /// `(user, password)`: basic auth with an htpasswd file.
    pub htpasswd: Option<(&'a str, &'a str)>,
    /// Proxy mode: the upstream URL.
    pub proxy: Option<String>,
    /// Token authentication (`auth.token`).
    pub token: Option<TokenAuth<'a>>,
}

/// distribution's `auth.token` section: clients get a Bearer challenge naming `realm`, and
/// tokens are accepted when `issuer` signed them for `service` with a key whose certificate
/// chains to `rootcertbundle`.
pub struct TokenAuth<'a> {
    pub realm: &'a str,
    pub service: &'a str,
    pub issuer: &'a str,
    pub rootcertbundle: &'a Path,
}

/// The real distribution registry (`docker-registry serve`).
pub struct Registry {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    process: Process,
}

impl Registry {
    pub fn start(options: RegistryOptions<'_>) -> Result<Self, Missing> {
        let binary = require("docker-registry", "docker-registry")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = format!(
            "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some(ca) = options.tls {
            config.push_str(&format!(
                "  tls: {{certificate: {}, key: {}}}\n",
                ca.cert.display(),
                ca.key.display()
            ));
        }
        if let Some((user, password)) = options.htpasswd {
            let file = htpasswd_file(dir.path(), user, password)?;
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: test, path: {}}}}}\n",
                file.display()
            ));
        }
        if let Some(token) = &options.token {
            config.push_str(&format!(
                "auth: {{token: {{realm: \"{}\", service: {}, issuer: {}, rootcertbundle: {}}}}}\n",
                token.realm,
                token.service,
                token.issuer,
                token.rootcertbundle.display()
            ));
        }
        if let Some(upstream) = &options.proxy {
            config.push_str(&format!("proxy: {{remoteurl: {upstream}}}\n"));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut process = Process::spawn(
            Command::new(binary).arg("serve").arg(&config_path),
            dir.path().join("registry.log"),
        );
        if options.tls.is_none() {
            wait_for_http(addr, &mut process.child, &process.log);
        } else {
            wait_for_port(addr);
        }
        Ok(Registry { addr, dir, process })
    }

    /// `host:port`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Access-log lines for `METHOD path` requests whose path contains `fragment`.
    pub fn count(&self, method: &str, fragment: &str) -> usize {
        self.process
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!("\"{method} ")) && l.contains(fragment))
            .count()
    }

    /// Every request in the access log, whatever its method and path.
    pub fn requests(&self) -> usize {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|method| self.count(method, ""))
            .sum()
    }

    /// Like [`count`](Self::count), for answers with `status` only.
    pub fn count_status(&self, method: &str, fragment: &str, status: u16) -> usize {
        self.process
            .log_text()
            .lines()
            .filter(|l| {
                l.contains(&format!("\"{method} "))
                    && l.contains(fragment)
                    && l.contains(&format!("\" {status} "))
            })
            .count()
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// A numeric line of `/proc/<pid>/status` (`Threads`, `VmRSS`, `VmHWM` in kB).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Polls until something listens on `addr` (a server whose first answer cannot be asked for yet).
pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not open within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `regmirror serve` from this build, with a config.yml written from `yaml` (listen address and
/// storage are added).
pub struct Regmirror {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    process: Process,
}

impl Regmirror {
    pub fn serve(yaml: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::serve_in(dir, yaml, extra_args)
    }

    pub fn serve_in(dir: tempfile::TempDir, yaml: &str, extra_args: &[&str]) -> Self {
        Self::serve_with_env(dir, yaml, extra_args, &[])
    }

    /// With `REGISTRY_*`-style environment overrides; waits for the port only when they turn
    /// TLS on.
    pub fn serve_with_env(
        dir: tempfile::TempDir,
        yaml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(dir, yaml, extra_args, env, &[])
    }

    /// Like [`serve_with_env`](Self::serve_with_env), started through `launcher` (e.g. `prlimit
    /// --nofile=64:64`).
    pub fn spawn(
        dir: tempfile::TempDir,
        yaml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        launcher: &[&str],
    ) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http = if yaml.lines().any(|l| l.starts_with("http:")) {
            String::new()
        } else {
            format!("http: {{addr: {addr}}}\n")
        };
        let config = format!(
            "{yaml}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n{http}",
            dir.path().join("data").display()
        );
        let addr = yaml
            .lines()
            .find_map(|l| l.split("addr: ").nth(1))
            .and_then(|a| a.split([',', '}', ' ']).next())
            .map_or(addr, |a| a.parse().unwrap());
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let (program, launcher_args) = match launcher.split_first() {
            Some((program, args)) => (program.to_string(), args.to_vec()),
            None => (env!("CARGO_BIN_EXE_regmirror").to_owned(), Vec::new()),
        };
        let mut command = Command::new(program);
        command.args(launcher_args);
        if !launcher.is_empty() {
            command.arg(env!("CARGO_BIN_EXE_regmirror"));
        }
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .env("REGMIRROR_LOG", "info")
            .envs(env.iter().copied());
        let mut process = Process::spawn(&mut command, dir.path().join("regmirror.log"));
        if env.iter().any(|(k, _)| k.starts_with("REGISTRY_HTTP_TLS")) || yaml.contains("tls:") {
            wait_for_port(addr);
        } else {
            wait_for_http(addr, &mut process.child, &process.log);
        }
        Regmirror { addr, dir, process }
    }

    /// With `config` written as is (nothing added) to `dir`/config.yml, listening on `addr`
    /// (which the config or `env` must name), e.g. a seed's file with `REGISTRY_*` overrides for
    /// its paths.
    pub fn verbatim(
        dir: tempfile::TempDir,
        config: &str,
        addr: SocketAddr,
        env: &[(&str, &str)],
    ) -> Self {
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut process = Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_regmirror"))
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .env("REGMIRROR_LOG", "info")
                .envs(env.iter().copied()),
            dir.path().join("regmirror.log"),
        );
        wait_for_http(addr, &mut process.child, &process.log);
        Regmirror { addr, dir, process }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A line of `/proc/<pid>/status`, e.g. `Threads` or `VmRSS` (in kB), as a number.
    pub fn status(&self, field: &str) -> u64 {
        proc_status(self.pid(), field)
    }

    /// Open file descriptors of the server.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// CPU time (user + system) the server used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// kill -9, then hands back the directory (for a restart).
    pub fn kill(mut self) -> tempfile::TempDir {
        unsafe_kill(self.pid(), "KILL");
        self.process.stop();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Stops the server and hands back its directory (for a restart).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.process.stop();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

/// Test images built without a daemon (umoci), pushed with skopeo.
pub struct Images {
    pub dir: tempfile::TempDir,
}

impl Images {
    pub fn new() -> Result<Self, Missing> {
        require("umoci", "umoci")?;
        require("skopeo", "skopeo")?;
        Ok(Images {
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    /// Builds image `tag` in the OCI layout with `files` (path, content) in one layer.
    pub fn build(&self, tag: &str, files: &[(&str, &[u8])]) {
        let layout = self.layout();
        if !layout.exists() {
            run(Command::new("umoci")
                .arg("init")
                .arg("--layout")
                .arg(&layout));
        }
        let image = format!("{}:{tag}", layout.display());
        run(Command::new("umoci").args(["new", "--image"]).arg(&image));
        let bundle = self.dir.path().join(format!("bundle-{tag}"));
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(&image)
            .arg(&bundle));
        for (path, content) in files {
            let target = bundle.join("rootfs").join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(target, content).unwrap();
        }
        run(Command::new("umoci")
            .args(["repack", "--image"])
            .arg(&image)
            .arg(&bundle));
        run(Command::new("umoci")
            .args(["config", "--image"])
            .arg(&image)
            .args(["--config.cmd", "/hello"]));
    }

    /// Builds image `tag` as `base` plus one more layer with `files` (so images share `base`'s
    /// layers).
    pub fn build_on(&self, base: &str, tag: &str, files: &[(&str, &[u8])]) {
        let layout = self.layout();
        let bundle = self.dir.path().join(format!("bundle-{tag}"));
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{base}", layout.display()))
            .arg(&bundle));
        for (path, content) in files {
            let target = bundle.join("rootfs").join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(target, content).unwrap();
        }
        run(Command::new("umoci")
            .args(["repack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle));
    }

    /// Tags an OCI index in the layout as `tag`: one child per `(built tag, "os/arch")`, each
    /// with that platform. Push it with [`push`](Self::push) and `--all`.
    pub fn build_index(&self, tag: &str, children: &[(&str, &str)]) {
        use sha2::Digest as _;
        let layout = self.layout();
        let index_path = layout.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(child, platform)| {
                let mut d = self.descriptor(&index, child);
                let (os, arch) = platform.split_once('/').expect("os/arch");
                d["platform"] = serde_json::json!({"architecture": arch, "os": os});
                d
            })
            .collect();
        let multi = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&multi).unwrap();
        let hex = hex::encode(sha2::Sha256::digest(&bytes));
        std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
        index["manifests"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": format!("sha256:{hex}"),
                "size": bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }));
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// The layout's descriptor of `tag`, without its annotations.
    fn descriptor(&self, index: &serde_json::Value, tag: &str) -> serde_json::Value {
        let mut d = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no {tag} in the layout"))
            .clone();
        d.as_object_mut().unwrap().remove("annotations");
        d
    }

    /// What layout tag `tag` is: its manifest's `(digest, size)` and, for an image, its
    /// config's and layers' (for an index, its children's), read from the layout's files.
    pub fn contents(&self, tag: &str) -> ((String, u64), Vec<(String, u64)>) {
        let layout = self.layout();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let d = self.descriptor(&index, tag);
        let digest = d["digest"].as_str().unwrap().to_owned();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap(),
        )
        .unwrap();
        let pair = |d: &serde_json::Value| {
            (
                d["digest"].as_str().unwrap().to_owned(),
                d["size"].as_u64().unwrap(),
            )
        };
        let parts = match manifest.get("manifests") {
            Some(children) => children.as_array().unwrap().iter().map(pair).collect(),
            None => std::iter::once(&manifest["config"])
                .chain(manifest["layers"].as_array().unwrap())
                .map(pair)
                .collect(),
        };
        ((digest, d["size"].as_u64().unwrap()), parts)
    }

    /// Pushes `tag` to `docker://host/repository` (plain http, no TLS checks).
    pub fn push(&self, tag: &str, destination: &str, extra: &[&str]) {
        run(Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:{tag}", self.layout().display()))
            .arg(format!("docker://{destination}")));
    }
}

/// `skopeo copy docker://SRC dir:DEST`; the result and the manifest bytes copied. For tests that
/// made an [`Images`], which found skopeo.
pub fn skopeo_pull(source: &str, dest: &Path, extra: &[&str]) -> Result<Vec<u8>, String> {
    let output = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{source}"))
        .arg(format!("dir:{}", dest.display()))
        .output()
        .unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(std::fs::read(dest.join("manifest.json")).unwrap())
}

/// The blob files of a `skopeo copy ... dir:` result, sorted by name.
pub fn dir_blobs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().len() == 64)
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Uploads a blob read from `file` to `repository` (monolithic, streamed by curl).
pub fn push_blob(
    registry: SocketAddr,
    repository: &str,
    file: &Path,
    digest: &str,
) -> Result<(), Missing> {
    require("curl", "curl")?;
    let out = run(Command::new("curl")
        .args(["-sS", "-i", "-X", "POST"])
        .arg(format!("http://{registry}/v2/{repository}/blobs/uploads/")));
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .expect("upload location")
        .trim()
        .to_owned();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
        ])
        .arg(file)
        .arg(format!("{url}{separator}digest={digest}")));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "blob upload");
    Ok(())
}

/// Pushes a one-layer OCI image (a 300 KB layer) to `repository:v1` on `registry`; its
/// manifest's and layer's digests.
pub fn push_small_image(registry: SocketAddr, repository: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (layer, layer_digest) = random_file(dir.path(), "layer", 300_000);
    push_blob(registry, repository, &layer, &layer_digest).unwrap();
    let (config, config_digest) = random_file(dir.path(), "config", 2);
    push_blob(registry, repository, &config, &config_digest).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": 300_000}],
    })
    .to_string();
    let (status, head, _) = http_with_body(
        "PUT",
        registry,
        &format!("/v2/{repository}/manifests/v1"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        manifest.as_bytes(),
    );
    assert_eq!(status, 201, "{head}");
    (oci::sha256(manifest.as_bytes()), layer_digest)
}

/// The real containerd, with its own root, state and socket in a temp dir.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    process: Process,
}

impl Containerd {
    pub fn start() -> Result<Self, Missing> {
        let binary = require("containerd", "containerd")?;
        require("ctr", "containerd")?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let socket = root.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            root.display(),
            socket.display()
        );
        let config_path = root.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let process = Process::spawn(
            Command::new(binary).arg("--config").arg(&config_path),
            root.join("containerd.log"),
        );
        wait_for_command(
            || {
                let mut command = Command::new("ctr");
                command.arg("-a").arg(&socket).arg("version");
                command
            },
            Duration::from_secs(20),
            "containerd",
            &process,
        );
        Ok(Containerd {
            dir,
            socket,
            process,
        })
    }

    /// `ctr images pull --hosts-dir DIR REF` (content only), killed after `timeout`.
    pub fn pull(
        &self,
        hosts_dir: &Path,
        reference: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let mut child = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["images", "pull", "--hosts-dir"])
            .arg(hosts_dir)
            .arg(reference)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let output = child.wait_with_output().unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                return if status.success() {
                    Ok(text)
                } else {
                    Err(text)
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "ctr pull of {reference} did not finish within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

/// Writes `DIR/<host>/hosts.toml`.
pub fn hosts_toml(dir: &Path, host: &str, text: &str) {
    let host_dir = dir.join(host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hosts.toml"), text).unwrap();
}

/// A random file of `size` bytes and its sha256 digest.
pub fn random_file(dir: &Path, name: &str, size: usize) -> (PathBuf, String) {
    use sha2::Digest as _;
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut state: u64 = size as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        for b in &mut buf[..n] {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *b = (state >> 56) as u8;
        }
        file.write_all(&buf[..n]).unwrap();
        hasher.update(&buf[..n]);
        left -= n;
    }
    (path, format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The real dockerd (Debian `docker.io`), with no bridge, no iptables and vfs storage, its
/// `/etc/docker` replaced by a private directory in its own mount namespace, and every registry
/// request it would send beyond loopback routed to `proxy` (by default a closed local port, so
/// nothing can leave the machine).
pub struct Dockerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The private `/etc/docker` (certs.d lives here).
    pub etc: PathBuf,
    process: Process,
    _containerd: Containerd,
}

impl Dockerd {
    /// dockerd with a private `/etc/docker` (in a mount namespace of its own, so certs.d is the
    /// test's), its registry traffic through `proxy`.
    pub fn start(daemon_json: &str, proxy: Option<&str>) -> Result<Self, Missing> {
        Self::launch(daemon_json, proxy, true)
    }

    /// dockerd in the machine's mount namespace, for tests that run containers: with `--network
    /// host` dockerd hands runc the network namespace it bind-mounted under its exec root, which
    /// runc (started by containerd, outside a private namespace) cannot see.
    pub fn start_for_containers(daemon_json: &str) -> Result<Self, Missing> {
        Self::launch(daemon_json, None, false)
    }

    fn launch(daemon_json: &str, proxy: Option<&str>, private_etc: bool) -> Result<Self, Missing> {
        let dockerd = require("dockerd", "docker.io")?;
        require("docker", "docker.io")?;
        require("unshare", "util-linux")?;
        let containerd = Containerd::start()?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let etc = root.join("etc-docker");
        std::fs::create_dir_all(etc.join("certs.d")).unwrap();
        std::fs::create_dir_all("/etc/docker").unwrap();
        std::fs::write(root.join("daemon.json"), daemon_json).unwrap();
        let socket = root.join("docker.sock");
        let proxy = proxy.map_or_else(
            || format!("http://127.0.0.1:{}", free_port()),
            str::to_owned,
        );
        let daemon = format!(
            "exec {dockerd} --data-root {root}/data --exec-root {root}/exec \
             -H unix://{socket} --pidfile {root}/docker.pid --iptables=false --ip6tables=false --bridge=none \
             --storage-driver=vfs --containerd {ctd} --config-file {root}/daemon.json",
            dockerd = dockerd.display(),
            root = root.display(),
            socket = socket.display(),
            ctd = containerd.socket.display(),
        );
        let mut command = if private_etc {
            let mut command = Command::new("unshare");
            let script = format!("mount --bind {} /etc/docker && {daemon}", etc.display());
            command.args(["-m", "--propagation", "private", "sh", "-c", &script]);
            command
        } else {
            let mut command = Command::new("sh");
            command.args(["-c", &daemon]);
            command
        };
        command
            .env("HTTPS_PROXY", &proxy)
            .env("HTTP_PROXY", &proxy)
            .env("NO_PROXY", "")
            .env_remove("https_proxy")
            .env_remove("http_proxy")
            .env_remove("no_proxy");
        let process = Process::spawn(&mut command, root.join("dockerd.log"));
        wait_for_command(
            || {
                let mut command = Command::new("docker");
                command
                    .arg("-H")
                    .arg(format!("unix://{}", socket.display()))
                    .arg("version");
                command
            },
            Duration::from_secs(60),
            "dockerd",
            &process,
        );
        Ok(Dockerd {
            dir,
            socket,
            etc,
            process,
            _containerd: containerd,
        })
    }

    /// Runs `docker ARGS` against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

/// `regmirror shim` from this build, with its mirror config written from `json`.
pub struct Shim {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    process: Process,
}

impl Shim {
    pub fn start(json: &str, extra_args: &[&str]) -> Self {
        Self::start_with_env(json, extra_args, &[])
    }

    /// [`start`](Self::start) with more environment variables.
    pub fn start_with_env(json: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mirrors.json");
        std::fs::write(&config, json).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_regmirror"));
        command
            .arg("shim")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra_args)
            .env("REGMIRROR_LOG", "info,regmirror=debug")
            .envs(env.iter().copied());
        let process = Process::spawn(&mut command, dir.path().join("shim.log"));
        wait_for_port(addr);
        Shim { addr, dir, process }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mirrors.json")
    }

    /// Runs `regmirror shim install-ca` into `certs_dir`.
    pub fn install_ca(&self, certs_dir: &Path) {
        run(Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args(["shim", "install-ca", "--config"])
            .arg(self.config_path())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--docker-certs-dir")
            .arg(certs_dir));
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }

    pub fn signal(&self, signal: &str) {
        unsafe_kill(self.process.pid(), signal);
    }
}

/// A private network namespace (`unshare -n`, as root) holding nothing but its own loopback
/// interface: a test may listen on 0.0.0.0 there, or on ports below 1024, and still reach nothing
/// beyond that namespace's 127.0.0.0/8. Processes join it through [`Netns::command`]; it goes
/// away when the holder (stopped on drop) and every process that joined are gone.
pub struct Netns {
    pub dir: tempfile::TempDir,
    /// curl, the client of the tests that use a namespace.
    pub curl: PathBuf,
    holder: Process,
}

impl Netns {
    pub fn new() -> Result<Self, Missing> {
        require("unshare", "util-linux")?;
        require("nsenter", "util-linux")?;
        require("ip", "iproute2")?;
        let curl = require("curl", "curl")?;
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let script = format!(
            "ip link set lo up && touch {} && exec sleep 3600",
            ready.display()
        );
        let holder = Process::spawn(
            Command::new("unshare").args(["-n", "sh", "-c", &script]),
            dir.path().join("netns.log"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "no network namespace (unshare -n needs root): {}",
                holder.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Netns { dir, curl, holder })
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/proc/{}/ns/net", self.holder.pid()))
            .arg("--")
            .arg(program);
        command
    }
}

/// The moto_server binary: `$REGMIRROR_MOTO_SERVER` (which `.ci/run` exports), else the venv
/// `.ci/run` creates in the checkout, else [`Missing`] saying how to install it.
pub fn moto_server_binary() -> Result<PathBuf, Missing> {
    moto_server_at(
        std::env::var_os("REGMIRROR_MOTO_SERVER")
            .filter(|p| !p.is_empty())
            .map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/moto-venv/bin/moto_server"),
                PathBuf::from,
            ),
    )
}

/// `path`, or [`Missing`] saying how to install moto_server.
pub fn moto_server_at(path: PathBuf) -> Result<PathBuf, Missing> {
    if path.is_file() {
        return Ok(path);
    }
    missing(format!(
        "moto_server not found at {}: `bash .ci/run` creates the venv .ci/moto-venv with \
         moto[server]==5.2.5 (or point REGMIRROR_MOTO_SERVER at a moto_server)",
        path.display()
    ))
}

/// An `Authorization` header moto accepts: it parses the credential scope (to pick the service)
/// but checks no signature. Without any `Authorization`, moto answers 403 to every request on an
/// existing key (GET, HEAD, PUT over it) unless the bucket is public; bucket-level requests
/// (create, list, list uploads) and PUTs of new keys pass unsigned.
pub const MOTO_AUTHORIZATION: (&str, &str) = (
    "Authorization",
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
);

/// One line of moto_server's access log (werkzeug's: `127.0.0.1 - - [date] "PUT /bucket/key
/// HTTP/1.1" 200 -`, on stderr, written before the response is sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    pub method: String,
    /// The request target as logged: `/bucket/key?query`, path-style, with werkzeug's IRI
    /// decoding (`%20` stays encoded).
    pub target: String,
    pub status: u16,
}

/// A real S3-compatible server: moto_server (PyPI `moto[server]` 5.2.5, from the venv `.ci/run`
/// creates), bound to 127.0.0.1 on an ephemeral port, path-style (`/bucket/key`), plain http,
/// stopped on drop (success or panic).
///
/// moto keeps everything in memory: [`stop`](Self::stop) then [`start_again`](Self::start_again)
/// gives an empty server on the same port (buckets and objects are gone), so a test of "S3 down,
/// then back" must recreate its state, or use [`pause`](Self::pause)/[`resume`](Self::resume)
/// (SIGSTOP/SIGCONT), which keeps the data. While paused the port still accepts connections (the
/// kernel queues them) but nothing answers: clients see timeouts, not refusals, and a request
/// sent during the pause is still carried out on resume even when its client gave up.
///
/// The access log of every start is kept: [`request_log`](Self::request_log) and
/// [`count`](Self::count) see every S3 request so far (the harness's own readiness probes under
/// `/moto-api/` are left out).
pub struct MotoServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    binary: PathBuf,
    /// `None` between [`stop`](Self::stop) and [`start_again`](Self::start_again).
    process: Option<Process>,
    /// Log files written so far, one per start.
    logs: Vec<PathBuf>,
    paused: bool,
}

impl MotoServer {
    pub fn start() -> Result<Self, Missing> {
        let binary = moto_server_binary()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut server = MotoServer {
            addr,
            dir: tempfile::tempdir().unwrap(),
            binary,
            process: None,
            logs: Vec::new(),
            paused: false,
        };
        server.spawn();
        Ok(server)
    }

    fn spawn(&mut self) {
        let log = self
            .dir
            .path()
            .join(format!("moto-{}.log", self.logs.len() + 1));
        self.logs.push(log.clone());
        let mut command = Command::new(&self.binary);
        command
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("MOTO_PORT");
        let mut process = Process::spawn(&mut command, log);
        wait_for_http_path(self.addr, "/moto-api/", &mut process.child, &process.log);
        self.process = Some(process);
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A request with [`MOTO_AUTHORIZATION`] added: `target` is `/bucket/key?query`.
    pub fn s3(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let mut all = vec![MOTO_AUTHORIZATION];
        all.extend_from_slice(headers);
        http_with_body(method, self.addr, target, &all, body)
    }

    /// `PUT target` of `body` through [`s3`](Self::s3), as `application/octet-stream` (under a
    /// form content type, which curl sends by default, moto stores an empty object).
    pub fn put(
        &self,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let mut all = vec![("Content-Type", "application/octet-stream")];
        all.extend_from_slice(headers);
        self.s3("PUT", target, &all, body)
    }

    /// An unsigned `PUT /bucket` (moto accepts it; S3 bucket names: 3 to 63 characters).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, _, body) = http_with_body("PUT", self.addr, &format!("/{bucket}"), &[], b"");
        assert_eq!(
            status,
            200,
            "create bucket {bucket}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Every key under `prefix`, in S3's order, by unsigned ListObjectsV2 requests.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.list_keys_paged(bucket, prefix, 1000)
    }

    /// [`list_keys`](Self::list_keys) asking for `page` keys a request, following continuation
    /// tokens.
    pub fn list_keys_paged(&self, bucket: &str, prefix: &str, page: usize) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut target = format!(
                "/{bucket}?list-type=2&max-keys={page}&prefix={}",
                query_escape(prefix)
            );
            if let Some(token) = &token {
                target.push_str(&format!("&continuation-token={}", query_escape(token)));
            }
            let xml = self.unsigned_get_xml(&target);
            keys.extend(xml_texts(&xml, "Key"));
            match xml_texts(&xml, "NextContinuationToken").pop() {
                Some(next) => token = Some(next),
                None => return keys,
            }
        }
    }

    /// The multipart uploads in progress in `bucket`, `(key, upload id)`, by an unsigned
    /// ListMultipartUploads (moto answers every upload at once: it implements no `max-uploads`).
    pub fn list_multipart_uploads(&self, bucket: &str) -> Vec<(String, String)> {
        let xml = self.unsigned_get_xml(&format!("/{bucket}?uploads"));
        assert!(
            !xml.contains("<IsTruncated>true</IsTruncated>"),
            "a truncated ListMultipartUploads: this helper does not follow markers\n{xml}"
        );
        xml.split("<Upload>")
            .skip(1)
            .map(|upload| {
                let one = |tag| {
                    xml_texts(upload, tag)
                        .pop()
                        .unwrap_or_else(|| panic!("no {tag} in an upload of {xml}"))
                };
                (one("Key"), one("UploadId"))
            })
            .collect()
    }

    fn unsigned_get_xml(&self, target: &str) -> String {
        let (status, _, body) = http("GET", self.addr, target, &[]);
        let xml = String::from_utf8(body).expect("an XML answer");
        assert_eq!(status, 200, "GET {target}: {xml}");
        xml
    }

    /// The server's access log, every start included, oldest first.
    pub fn request_log(&self) -> Vec<S3Request> {
        self.logs
            .iter()
            .flat_map(|log| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                text.lines()
                    .filter_map(parse_access_line)
                    .collect::<Vec<_>>()
            })
            .filter(|request| !request.target.starts_with("/moto-api/"))
            .collect()
    }

    /// Requests with `method` whose target contains `key_fragment` (a key prefix such as
    /// `blobs/`, or a query such as `?uploads`).
    pub fn count(&self, method: &str, key_fragment: &str) -> usize {
        self.request_log()
            .iter()
            .filter(|r| r.method == method && r.target.contains(key_fragment))
            .count()
    }

    /// Everything the server wrote (access log, tracebacks), every start included.
    pub fn log(&self) -> String {
        self.logs
            .iter()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("moto_server is stopped").pid()
    }

    /// Whether the server answers a request within `timeout` (false while paused or stopped).
    pub fn responds_within(&self, timeout: Duration) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr, timeout) else {
            return false;
        };
        stream.set_read_timeout(Some(timeout)).unwrap();
        let request = b"GET /moto-api/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut buf = [0u8; 12];
        stream.write_all(request).is_ok()
            && stream
                .read(&mut buf)
                .is_ok_and(|n| n >= 12 && buf.starts_with(b"HTTP/1.1"))
    }

    /// SIGSTOP: the store keeps its data but answers nothing until [`resume`](Self::resume)
    /// (connections are still accepted by the kernel). Returns once every thread is stopped.
    pub fn pause(&mut self) {
        assert!(!self.paused, "moto_server is already paused");
        unsafe_kill(self.pid(), "STOP");
        self.paused = true;
        self.wait_stopped(true);
    }

    /// SIGCONT after [`pause`](Self::pause); requests queued meanwhile are served now.
    pub fn resume(&mut self) {
        assert!(self.paused, "moto_server is not paused");
        unsafe_kill(self.pid(), "CONT");
        self.paused = false;
        self.wait_stopped(false);
    }

    /// Waits until every thread of the server is (or none is) in the stopped state.
    fn wait_stopped(&self, stopped: bool) {
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let states: Vec<bool> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
                .map(|stat| stat[stat.rfind(')').unwrap() + 2..].starts_with('T'))
                .collect();
            if states.iter().all(|&s| s == stopped) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server threads not {} within 10 s",
                if stopped { "stopped" } else { "running" }
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait: the port refuses connections and everything stored is lost.
    pub fn stop(&mut self) {
        if self.paused {
            self.resume();
        }
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// A new, empty moto_server on the same port (no bucket survives a stop).
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "moto_server is running");
        self.spawn();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // A stopped process would hold SIGTERM until the 10 s SIGKILL fallback.
        if self.paused {
            if let Some(process) = &self.process {
                unsafe_kill(process.pid(), "CONT");
            }
        }
    }
}

/// `127.0.0.1 - - [01/Dec/2026 22:58:15] "PUT /bucket/key HTTP/1.1" 200 -`, with werkzeug's
/// ANSI colours (added to non-200 answers even when writing to a file) removed.
fn parse_access_line(line: &str) -> Option<S3Request> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    let (_, rest) = plain.split_once("] \"")?;
    let (request_line, after) = rest.rsplit_once("\" ")?;
    let mut words = request_line.split(' ');
    let (method, target) = (words.next()?, words.next()?);
    let status = after.split(' ').next()?.parse().ok()?;
    Some(S3Request {
        method: method.to_owned(),
        target: target.to_owned(),
        status,
    })
}

/// The texts of every `<tag>…</tag>` in `xml`, entities decoded. Enough for S3's flat listing
/// answers, where the tags asked for hold text only.
pub fn xml_texts(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut texts = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let end = rest
            .find(&close)
            .unwrap_or_else(|| panic!("no {close} in {xml}"));
        texts.push(xml_unescape(&rest[..end]));
        rest = &rest[end + close.len()..];
    }
    texts
}

fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semicolon = rest[amp..]
            .find(';')
            .unwrap_or_else(|| panic!("unterminated entity in {text}"))
            + amp;
        let entity = &rest[amp + 1..semicolon];
        let decoded = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(|code| char::from_u32(code.ok()?))
                .unwrap_or_else(|| panic!("unknown entity &{entity}; in {text}")),
        };
        out.push(decoded);
        rest = &rest[semicolon + 1..];
    }
    out.push_str(rest);
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters (S3's query encoding).
pub fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `clients` concurrent curl clients of `url`, each writing into `dir`; those for which
/// `head_first(i)` holds send a HEAD first, as a cache in front would. Every body must be
/// `digest`. For tests that pushed with [`push_blob`], which found curl.
pub fn concurrent_cold_clients(
    url: &str,
    digest: &str,
    dir: &Path,
    clients: usize,
    head_first: fn(usize) -> bool,
) {
    let handles: Vec<std::thread::JoinHandle<String>> = (0..clients)
        .map(|i| {
            let url = url.to_owned();
            let out = dir.join(format!("out{i}"));
            std::thread::spawn(move || {
                if head_first(i) {
                    let head = Command::new("curl")
                        .args(["-sS", "-f", "-I", "-o", "/dev/null"])
                        .arg(&url)
                        .status()
                        .unwrap();
                    assert!(head.success(), "client {i}: HEAD");
                }
                let status = Command::new("curl")
                    .args(["-sS", "-f", "-o"])
                    .arg(&out)
                    .arg(&url)
                    .status()
                    .unwrap();
                assert!(status.success(), "client {i}: GET");
                let output = Command::new("sha256sum").arg(&out).output().unwrap();
                String::from_utf8_lossy(&output.stdout)
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_owned()
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(
            format!("sha256:{}", handle.join().unwrap()),
            digest,
            "every body is digest-correct"
        );
    }
}

/// `dir`/htpasswd with one bcrypt entry, as `htpasswd -B` writes it (apache2-utils).
pub fn htpasswd_file(dir: &Path, user: &str, password: &str) -> Result<PathBuf, Missing> {
    let out =
        run(Command::new(require("htpasswd", "apache2-utils")?).args(["-Bbn", user, password]));
    let file = dir.join("htpasswd");
    std::fs::write(&file, out.stdout).unwrap();
    Ok(file)
}

/// An origin holding `library/demo:v1` and a cache in front of it whose clients must log in as
/// `user` with `password` (`auth.htpasswd`, its file in `dir`).
pub fn demo_behind_a_password(
    dir: &Path,
    user: &str,
    password: &str,
) -> Result<(Registry, Regmirror), Missing> {
    let origin = Registry::start(RegistryOptions::default())?;
    let images = Images::new()?;
    images.build("v1", &[("hello", b"hello from v1\n")]);
    images.push("v1", &format!("{}/library/demo:v1", origin.host()), &[]);
    let htpasswd = htpasswd_file(dir, user, password)?;
    let cache = Regmirror::serve(
        &format!(
            "proxy: {{remoteurl: {}}}\nauth: {{htpasswd: {{realm: cache, path: {}}}}}",
            origin.url(),
            htpasswd.display()
        ),
        &[],
    );
    Ok((origin, cache))
}
