//! Who may use `regmirror shim` and where its tunnels go, when it listens beyond loopback.
//!
//! Each test runs the shim on 0.0.0.0 (a real non-loopback listen address, so the real
//! start-up rules apply) inside a private network namespace whose only interface is its own
//! loopback: nothing outside 127.0.0.0/8 of that namespace is reachable, and the ports 443 and
//! 5000 are free there. Real distribution registries are the hosts behind the tunnels and behind
//! `?ns=`; curl is the client, from 127.0.0.1 or, bound with `--interface`, from 127.0.0.2.

mod peers;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use peers::{Missing, Netns, Process, require};

const SHIM: &str = "127.0.0.1:3128";

/// A plain distribution registry on 127.0.0.1:`port` inside `netns`.
fn registry(netns: &Netns, port: u16) -> Result<Process, Missing> {
    let binary = require("docker-registry", "docker-registry")?;
    let dir = netns.dir.path().join(format!("registry-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let process = Process::spawn(
        netns.command(binary).arg("serve").arg(&config),
        dir.join("registry.log"),
    );
    wait_until_http(netns, &format!("http://127.0.0.1:{port}/v2/"), &process);
    Ok(process)
}

/// `regmirror shim` on 0.0.0.0:3128 inside `netns` with `json` as its rules.
fn shim(netns: &Netns, json: &str, extra: &[&str]) -> Process {
    let dir = netns.dir.path().join("shim");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mirrors.json"), json).unwrap();
    let mut command = shim_command(netns, &dir);
    command.args(extra).env("REGMIRROR_LOG", "info");
    let process = Process::spawn(&mut command, dir.join("shim.log"));
    wait_until_http(netns, &format!("http://{SHIM}/"), &process);
    process
}

fn shim_command(netns: &Netns, dir: &Path) -> Command {
    let mut command = netns.command(env!("CARGO_BIN_EXE_regmirror"));
    command
        .arg("shim")
        .arg("--config")
        .arg(dir.join("mirrors.json"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listen", "0.0.0.0:3128"]);
    command
}

/// Polls `url` from inside `netns` until it answers with any HTTP status.
fn wait_until_http(netns: &Netns, url: &str, process: &Process) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = netns
            .command(&netns.curl)
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .unwrap();
        if out.stdout != b"000" && !out.stdout.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer within 20 s: {}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One curl request through the shim from `source`: (CONNECT status, final status, body).
/// `tunnel` sends CONNECT first (`-p`); otherwise an absolute-form request.
fn via_shim(netns: &Netns, source: &str, tunnel: bool, url: &str, extra: &[&str]) -> Reply {
    let mut command = netns.command(&netns.curl);
    command
        .args(["-sS", "--interface", source, "-x"])
        .arg(format!("http://{SHIM}"))
        .args(["-w", "\n%{http_connect} %{http_code}"])
        .args(extra);
    if tunnel {
        command.arg("-p");
    }
    let out: Output = command.arg(url).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, codes) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut codes = codes.split(' ').map(|c| c.parse().unwrap_or(0));
    Reply {
        connect: codes.next().unwrap_or(0),
        status: codes.next().unwrap_or(0),
        body: format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

#[derive(Debug)]
struct Reply {
    connect: u16,
    status: u16,
    body: String,
}

#[test]
fn listening_beyond_loopback_needs_allow_clients() {
    let netns = or_skip!(Netns::new());
    let dir = netns.dir.path().join("shim");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mirrors.json"),
        r#"{"mirror-registries": [{"domain": "reg.example.test", "mirrors": ["http://127.0.0.1:9"]}]}"#,
    )
    .unwrap();
    for (extra, named) in [
        (&[][..], "--allow-clients"),
        (&["--allow-clients", "corp.example"][..], "corp.example"),
    ] {
        // Under `timeout`: a shim that starts anyway is stopped, and the test fails on its code.
        let mut command = Command::new("timeout");
        let shim = shim_command(&netns, &dir);
        command
            .arg("10")
            .arg(shim.get_program())
            .args(shim.get_args())
            .args(extra);
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(named) && stderr.contains("--allow-clients"),
            "{extra:?}: {stderr}"
        );
    }
}

#[test]
fn clients_outside_allow_clients_are_refused() {
    let netns = or_skip!(Netns::new());
    let _registry = or_skip!(registry(&netns, 5000));
    let shim = shim(
        &netns,
        r#"{"mirror-registries": [{"domain": "reg.example.test", "mirrors": ["http://127.0.0.1:9"]}]}"#,
        &["--allow-clients", "127.0.0.1/32"],
    );
    let url = "http://127.0.0.1:5000/v2/";
    let allowed = via_shim(&netns, "127.0.0.1", true, url, &[]);
    assert_eq!((allowed.connect, allowed.status), (200, 200), "{allowed:?}");

    let secrets = [
        "-H",
        "Authorization: Basic c2VjcmV0LXVzZXI6c2VjcmV0LXBhc3M=",
        "-U",
        "proxyuser:proxy-secret",
    ];
    let tunnel = via_shim(&netns, "127.0.0.2", true, url, &secrets);
    assert_eq!(tunnel.connect, 403, "{tunnel:?}");
    let forward = via_shim(&netns, "127.0.0.2", false, url, &secrets);
    assert_eq!(forward.status, 403, "{forward:?}");
    assert!(
        forward
            .body
            .contains("127.0.0.2 may not use this proxy (not in --allow-clients)"),
        "{forward:?}"
    );

    let log = shim.log_text();
    assert!(log.contains("LISTENING BEYOND LOOPBACK"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("refused a client outside --allow-clients")
                && l.contains("peer=127.0.0.2:")),
        "{log}"
    );
    assert!(
        !log.contains("c2VjcmV0") && !log.contains("proxy-secret") && !log.contains("cHJveHl1c2Vy"),
        "credentials never logged: {log}"
    );
}

#[test]
fn beyond_loopback_hosts_without_rules_are_reached_on_443_and_5000_only() {
    let netns = or_skip!(Netns::new());
    let _registries: Vec<Process> = or_skip!(
        [443, 5000, 5001, 5002]
            .into_iter()
            .map(|port| registry(&netns, port))
            .collect()
    );
    let shim = shim(
        &netns,
        r#"{"mirror-registries": [{"domain": "127.0.0.1:5002", "mirrors": ["http://127.0.0.1:9"]}]}"#,
        &["--allow-clients", "127.0.0.0/8"],
    );
    let local =
        |tunnel: bool, url: &str, extra: &[&str]| via_shim(&netns, "127.0.0.1", tunnel, url, extra);

    // Hosts without a rule: tunnels and plain-http forwards to 443 and 5000 only.
    for port in [443, 5000] {
        let url = format!("http://127.0.0.1:{port}/v2/");
        let tunnel = local(true, &url, &[]);
        assert_eq!((tunnel.connect, tunnel.status), (200, 200), "{tunnel:?}");
        let forward = local(false, &url, &[]);
        assert_eq!(forward.status, 200, "{forward:?}");
    }
    let refused = local(true, "http://127.0.0.1:5001/v2/", &[]);
    assert_eq!(refused.connect, 403, "{refused:?}");
    let refused = local(false, "http://127.0.0.1:5001/v2/", &[]);
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.body.contains("127.0.0.1:5001 refused") && refused.body.contains("[443, 5000]"),
        "{refused:?}"
    );

    // A host with a rule is a registry the operator named: any port, intercepted or plain.
    let plain = local(false, "http://127.0.0.1:5002/v2/", &[]);
    assert_eq!(plain.status, 200, "{plain:?}");
    let ca = netns.dir.path().join("shim").join("state").join("ca.crt");
    let ca = ca.to_str().unwrap();
    let intercepted = local(true, "https://127.0.0.1:5002/v2/", &["--cacert", ca]);
    assert_eq!(
        (intercepted.connect, intercepted.status),
        (200, 200),
        "{intercepted:?}\n{}",
        shim.log_text()
    );
}

/// One origin-form request to the shim itself from 127.0.0.1 (the shim as a registry endpoint,
/// as containerd uses a mirror): (status, body).
fn to_shim(netns: &Netns, path: &str) -> (u16, String) {
    let out = netns
        .command(&netns.curl)
        .args(["-sS", "-w", "\n%{http_code}"])
        .arg(format!("http://{SHIM}{path}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (status.parse().unwrap_or(0), body.to_owned())
}

#[test]
fn beyond_loopback_ns_reaches_registries_without_rules_on_443_and_5000_only() {
    let netns = or_skip!(Netns::new());
    let registries: Vec<Process> = or_skip!(
        [5000, 5001]
            .into_iter()
            .map(|port| registry(&netns, port))
            .collect()
    );
    let shim = shim(
        &netns,
        r#"{"mirror-registries": [{"domain": "reg.example.test", "mirrors": ["http://127.0.0.1:9"]}]}"#,
        &["--allow-clients", "127.0.0.0/8"],
    );
    let asked = |registry: &Process| {
        registry
            .log_text()
            .matches("\"GET /v2/library/demo/manifests/v1 ")
            .count()
    };
    let path = |ns: &str| format!("/v2/library/demo/manifests/v1?ns={ns}");

    // Port 5000: reached (the registry answers that it has no such manifest).
    let (status, body) = to_shim(&netns, &path("127.0.0.1:5000"));
    assert_eq!(status, 404, "{body}\n{}", shim.log_text());
    assert!(body.contains("MANIFEST_UNKNOWN"), "{body}");
    assert_eq!(asked(&registries[0]), 1, "{}", registries[0].log_text());

    // Port 5001, and a loopback host without a port (https on 443, then plain http on 80, as
    // dockerd tries an insecure registry): DENIED before anything is sent.
    for ns in ["127.0.0.1:5001", "127.0.0.1"] {
        let (status, body) = to_shim(&netns, &path(ns));
        assert_eq!(status, 403, "{ns}: {body}\n{}", shim.log_text());
        assert!(
            body.contains("\"DENIED\"") && body.contains("ports [443, 5000] only"),
            "{ns}: {body}"
        );
    }
    assert_eq!(
        asked(&registries[1]),
        0,
        "the registry on 5001 was reached:\n{}",
        registries[1].log_text()
    );
    assert!(
        shim.log_text()
            .contains("refused a request for a registry without a rule"),
        "{}",
        shim.log_text()
    );
}
