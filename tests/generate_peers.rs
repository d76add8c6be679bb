//! Generated engine configuration used by the real engines: containerd 1.6 (`ctr images pull
//! --hosts-dir`) over `regmirror containerd-hosts` output, and skopeo over
//! `regmirror registries-conf` output, mirrors-only rules included (the origin's access log
//! must stay silent). Registries are real distribution registries on 127.0.0.1.

mod peers;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use peers::{Containerd, Images, Missing, Registry, RegistryOptions, engine_lock, skopeo_pull};

/// A registry holding library/demo:v1, v2 and v3.
fn seeded(images: &Images) -> Result<Registry, Missing> {
    let registry = Registry::start(RegistryOptions::default())?;
    for tag in ["v1", "v2", "v3"] {
        images.push(
            "v1",
            &format!("{}/library/demo:{tag}", registry.host()),
            &[],
        );
    }
    Ok(registry)
}

fn generate(args: &[&str], config: &str, out: &Path) {
    let file = out.with_extension("json");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(args)
        .arg("--config")
        .arg(&file)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn rules(domain: &str, mirrors: &[String]) -> String {
    let list: Vec<String> = mirrors.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        r#"{{"mirror-registries": [{{"domain": "{domain}", "mirrors": [{}]}}]}}"#,
        list.join(",")
    )
}

/// A `mirrors-only` rule for `domain`.
fn mirrors_only(domain: &str, mirrors: &[String]) -> String {
    let list: Vec<String> = mirrors.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        r#"{{"mirror-registries": [{{"domain": "{domain}", "mirrors": [{}], "mirrors-only": true}}]}}"#,
        list.join(",")
    )
}

/// An origin holding library/demo:v1, v2 and v3, a mirror holding v1 only, and a mirror URL
/// nothing listens on.
fn origin_and_partial_mirror(images: &Images) -> Result<(Registry, Registry, String), Missing> {
    images.build("v1", &[("hello", b"hello\n")]);
    let origin = seeded(images)?;
    let mirror = Registry::start(RegistryOptions::default())?;
    images.push("v1", &format!("{}/library/demo:v1", mirror.host()), &[]);
    let dead = format!("http://127.0.0.1:{}", peers::free_port());
    Ok((origin, mirror, dead))
}

fn manifests(registry: &Registry) -> usize {
    registry.count("GET", "/v2/library/demo/manifests/")
        + registry.count("HEAD", "/v2/library/demo/manifests/")
}

#[test]
fn containerd_pulls_through_generated_hosts_files() {
    let _engine = engine_lock();
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hello\n")]);
    let origin = or_skip!(seeded(&images));
    let mut first = or_skip!(seeded(&images));
    let mut second = or_skip!(seeded(&images));
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("certs.d");
    generate(
        &["containerd-hosts", "--containerd-version", "1.6.20"],
        &rules(&origin.host(), &[first.url(), second.url()]),
        &hosts,
    );
    let text = std::fs::read_to_string(hosts.join(origin.host()).join("hosts.toml")).unwrap();
    assert!(
        text.contains(&format!("server = \"http://{}\"", origin.host())),
        "a loopback origin is insecure: plain http\n{text}"
    );
    let containerd = or_skip!(Containerd::start());
    let pull = |tag: &str| {
        containerd
            .pull(
                &hosts,
                &format!("{}/library/demo:{tag}", origin.host()),
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("ctr pull {tag}: {e}\n{}", containerd.log()))
    };
    let origin_before =
        origin.count("GET", "/v2/library/demo/") + origin.count("HEAD", "/v2/library/demo/");

    // 1. The first mirror serves; the origin sees no manifest or blob request.
    pull("v1");
    assert!(manifests(&first) >= 1, "the first mirror served v1");
    assert_eq!(
        origin.count("GET", "/v2/library/demo/") + origin.count("HEAD", "/v2/library/demo/"),
        origin_before
    );

    // 2. The first mirror stopped: the next one serves.
    first.stop();
    let second_before = manifests(&second);
    pull("v2");
    assert!(
        manifests(&second) > second_before,
        "the second mirror served v2"
    );

    // 3. Every mirror stopped: the plain-http origin serves.
    second.stop();
    let origin_before = manifests(&origin);
    pull("v3");
    assert!(manifests(&origin) > origin_before, "the origin served v3");
}

#[test]
fn containerd_reaches_an_unlisted_registry_through_default() {
    let _engine = engine_lock();
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hello\n")]);
    let unlisted = or_skip!(seeded(&images));
    let mirror = or_skip!(seeded(&images));
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("certs.d");
    generate(
        &["containerd-hosts", "--containerd-version", "1.6.20"],
        &rules("*", &[mirror.url()]),
        &hosts,
    );
    assert!(hosts.join("_default/hosts.toml").exists());
    let containerd = or_skip!(Containerd::start());
    let before = manifests(&unlisted);
    containerd
        .pull(
            &hosts,
            &format!("{}/library/demo:v1", unlisted.host()),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("ctr pull: {e}\n{}", containerd.log()));
    assert!(
        mirror
            .log()
            .contains(&format!("ns={}", unlisted.host().replace(':', "%3A"))),
        "containerd {} used _default and sent ?ns= to the mirror:\n{}",
        String::from_utf8_lossy(
            &Command::new("containerd")
                .arg("--version")
                .output()
                .unwrap()
                .stdout
        )
        .trim(),
        mirror.log()
    );
    assert_eq!(
        manifests(&unlisted),
        before,
        "the unlisted registry itself was not asked"
    );

    // The mirror pulled by its own name: the resolver drops it as a mirror of itself, so its own
    // hosts.toml (the origin as the one host table) wins over _default: no ?ns= hop.
    let asked_with_ns = |registry: &Registry| registry.log().matches("ns=").count();
    let before = asked_with_ns(&mirror);
    containerd
        .pull(
            &hosts,
            &format!("{}/library/demo:v2", mirror.host()),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("ctr pull: {e}\n{}", containerd.log()));
    assert_eq!(
        asked_with_ns(&mirror),
        before,
        "pulled from the origin directly:\n{}",
        std::fs::read_to_string(hosts.join(mirror.host()).join("hosts.toml")).unwrap()
    );
}

#[test]
fn skopeo_pulls_through_a_generated_registries_conf() {
    let images = or_skip!(Images::new());
    images.build("v1", &[("hello", b"hello\n")]);
    let origin = or_skip!(seeded(&images));
    let mirror = or_skip!(seeded(&images));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("50-regmirror.conf");
    generate(
        &["registries-conf"],
        &rules(&origin.host(), &[mirror.url()]),
        &conf,
    );
    let origin_before = manifests(&origin);
    let mirror_before = manifests(&mirror);
    skopeo_pull(
        &format!("{}/library/demo:v1", origin.host()),
        &dir.path().join("out"),
        &["--registries-conf", conf.to_str().unwrap()],
    )
    .unwrap();
    assert!(
        manifests(&mirror) > mirror_before,
        "the mirror served the pull:\n{}",
        std::fs::read_to_string(&conf).unwrap()
    );
    assert_eq!(
        manifests(&origin),
        origin_before,
        "the origin was not asked"
    );
}

#[test]
fn containerd_never_reaches_the_origin_of_a_mirrors_only_rule() {
    let _engine = engine_lock();
    let images = or_skip!(Images::new());
    let (origin, mirror, dead) = or_skip!(origin_and_partial_mirror(&images));
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("certs.d");
    generate(
        &["containerd-hosts", "--containerd-version", "1.6.20"],
        &mirrors_only(&origin.host(), &[dead.clone(), mirror.url()]),
        &hosts,
    );
    let text = std::fs::read_to_string(hosts.join(origin.host()).join("hosts.toml")).unwrap();
    assert!(
        text.contains(&format!(
            "server = \"{}\"\ncapabilities = [\"pull\", \"resolve\"]\n",
            mirror.url()
        )) && text.contains(&format!("[host.\"{dead}\"]")),
        "the last mirror is the server, the first a host table:\n{text}"
    );
    let containerd = or_skip!(Containerd::start());
    let before = origin.requests();

    // On the mirror (the first one is down): served by the last mirror, as `server`, with ?ns=.
    containerd
        .pull(
            &hosts,
            &format!("{}/library/demo:v1", origin.host()),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("ctr pull v1: {e}\n{}", containerd.log()));
    assert!(
        mirror
            .log()
            .contains(&format!("ns={}", origin.host().replace(':', "%3A"))),
        "{}",
        mirror.log()
    );

    // Only on the origin: the pull fails, and the origin never hears of it.
    let failed = containerd.pull(
        &hosts,
        &format!("{}/library/demo:v2", origin.host()),
        Duration::from_secs(60),
    );
    assert!(failed.is_err(), "v2 is on the origin only: {failed:?}");
    assert_eq!(
        origin.requests(),
        before,
        "the origin was never asked:\n{}",
        origin.log()
    );
}

#[test]
fn skopeo_never_reaches_the_origin_of_a_mirrors_only_rule() {
    let images = or_skip!(Images::new());
    let (origin, mirror, dead) = or_skip!(origin_and_partial_mirror(&images));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("50-regmirror.conf");
    generate(
        &["registries-conf"],
        &mirrors_only(&origin.host(), &[dead, mirror.url()]),
        &conf,
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains(&format!(
            "prefix = \"{}\"\nlocation = \"{}\"\ninsecure = true\n",
            origin.host(),
            mirror.host()
        )),
        "the last mirror is the location:\n{text}"
    );
    let before = origin.requests();
    let mirror_before = manifests(&mirror);
    let pull = |tag: &str| {
        skopeo_pull(
            &format!("{}/library/demo:{tag}", origin.host()),
            &dir.path().join(tag),
            &["--registries-conf", conf.to_str().unwrap()],
        )
    };
    pull("v1").unwrap();
    assert!(manifests(&mirror) > mirror_before, "the mirror served v1");
    let failed = pull("v2");
    assert!(failed.is_err(), "v2 is on the origin only: {failed:?}");
    assert_eq!(
        origin.requests(),
        before,
        "the origin was never asked:\n{}",
        origin.log()
    );
}

/// `containerd-hosts --watch` as the node agent runs it: the mirror file in a ConfigMap-style
/// mount (`mirrors.json -> ..data/mirrors.json`, `..data -> ..<timestamp>`), updated by a
/// symlink swap while containerd runs; the next pull uses the new mirror, with no restart of
/// containerd, and the agent survives a broken config (the last good files stay).
#[test]
fn the_watching_agent_moves_containerd_to_a_new_mirror_without_a_restart() {
    let _engine = engine_lock();
    let images = or_skip!(Images::new());
    let (origin, first, _) = or_skip!(origin_and_partial_mirror(&images));
    let second = or_skip!(Registry::start(RegistryOptions::default()));
    images.push("v1", &format!("{}/library/demo:v1", second.host()), &[]);
    let containerd = or_skip!(Containerd::start());
    let work = tempfile::tempdir().unwrap();
    let mount = work.path().join("config");
    let hosts = work.path().join("certs.d");
    std::fs::create_dir_all(&hosts).unwrap();
    // A file someone wrote by hand stays as it is.
    let manual = hosts.join("manual.example");
    std::fs::create_dir_all(&manual).unwrap();
    std::fs::write(
        manual.join("hosts.toml"),
        "server = \"https://manual.example\"\n",
    )
    .unwrap();
    let publish = |version: u32, text: &str| {
        let data = mount.join(format!("..{version}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("mirrors.json"), text).unwrap();
        let swap = mount.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &swap).unwrap();
        std::fs::rename(&swap, mount.join("..data")).unwrap();
        let file = mount.join("mirrors.json");
        if !file.exists() {
            std::os::unix::fs::symlink("..data/mirrors.json", &file).unwrap();
        }
    };
    let origin_host = origin.host();
    publish(1, &rules(&origin_host, &[first.url()]));
    let mut agent = peers::Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args([
                "containerd-hosts",
                "--watch",
                "--watch-interval",
                "0.1",
                "--mirrors",
            ])
            .arg(mount.join("mirrors.json"))
            .arg("--out")
            .arg(&hosts),
        work.path().join("agent.log"),
    );
    let generated = hosts.join(&origin_host).join("hosts.toml");
    let wait_for = |wanted: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&generated).is_ok_and(|t| t.contains(wanted)) {
            assert!(
                std::time::Instant::now() < deadline,
                "hosts.toml never named {wanted}: {}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&first.url());
    let reference = format!("{origin_host}/library/demo:v1");
    containerd
        .pull(&hosts, &reference, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
    assert!(manifests(&first) >= 1, "the first mirror served");
    assert_eq!(manifests(&second), 0);

    // A broken config is logged; the files stay.
    publish(2, "{ not json");
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        std::fs::read_to_string(&generated)
            .unwrap()
            .contains(&first.url())
    );
    // The ConfigMap moves to the second mirror: the next pull uses it, containerd untouched.
    publish(3, &rules(&origin_host, &[second.url()]));
    wait_for(&second.url());
    containerd
        .pull(&hosts, &reference, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
    assert!(manifests(&second) >= 1, "the second mirror served");
    // A rule the config drops is pruned; the hand-written file is left alone.
    publish(4, "{}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while generated.exists() {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(manual.join("hosts.toml").is_file());
    agent.stop();
    let log = agent.log_text();
    assert!(
        log.contains("the files of the last good config stay"),
        "{log}"
    );
    for change in ["written", "rewritten", "removed"] {
        assert!(
            log.contains(&format!("containerd-hosts: {change}")),
            "{log}"
        );
    }
}

#[test]
fn the_watching_agent_exits_on_a_config_error_at_start() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("mirrors.json");
    std::fs::write(&file, "{ not json").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["containerd-hosts", "--watch", "--mirrors"])
        .arg(&file)
        .arg("--out")
        .arg(work.path().join("certs.d"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
