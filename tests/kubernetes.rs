//! contrib/kubernetes as a cluster would get it. Each kustomization (the bases `cache` and
//! `node-agent`, the overlays `cache-filesystem` and `node-agent-k3s`, and the overlays of one's
//! own that README's "Kubernetes" section shows) is rendered by `kubectl kustomize`, validated by
//! kubernetes-validate `--strict` against the schemas of every Kubernetes minor from 1.32 (the
//! kubectl these machines ship) to 1.37 (the newest kubernetes-validate 1.37.0 knows; upstream
//! supports the newest three), and its objects are held to what the section promises. Then each
//! pod's container is started as its kubelet would start it (see [`Pod`]): as a process of this
//! build, the fleet's replica on a real S3 server (moto_server), the filesystem variant's on its
//! claim, the node agent writing its hostPath; and in the image contrib/image/build makes, under
//! a real dockerd with the pods' users and security contexts (the engine lock held). kubectl
//! comes with the machine's image, the validator from the venv `.ci/run` creates
//! (`$REGMIRROR_KUBERNETES_VALIDATE`).

mod peers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_yaml_ng::Value;

use peers::{MotoServer, Process, free_port, http};

/// The Kubernetes minors the manifests must validate for.
const KUBERNETES: [&str; 6] = ["1.32", "1.33", "1.34", "1.35", "1.36", "1.37"];

/// Every kustomization under contrib/kubernetes: a new one needs its assertions here.
const KUSTOMIZATIONS: [&str; 4] = ["cache", "cache-filesystem", "node-agent", "node-agent-k3s"];

const CERTS_D: &str = "/etc/containerd/certs.d";
const K3S_CERTS_D: &str = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn contrib(dir: &str) -> PathBuf {
    root().join("contrib/kubernetes").join(dir)
}

/// kubectl on PATH (1.32+: kustomize 5.5 built in), or [`peers::Missing`] saying where it comes
/// from.
fn kubectl() -> Result<PathBuf, peers::Missing> {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("kubectl"))
        .find(|path| path.is_file());
    match found {
        Some(path) => Ok(path),
        None => peers::missing(
            "kubectl not found: install kubectl 1.32 or later (the `kubectl` package of \
             pkgs.k8s.io, or the release binary; Debian's kubernetes-client conflicts with it)"
                .to_owned(),
        ),
    }
}

/// `$REGMIRROR_KUBERNETES_VALIDATE` (which `.ci/run` exports), else the venv `.ci/run` creates,
/// else [`peers::Missing`] saying how to install it.
fn validator() -> Result<PathBuf, peers::Missing> {
    let path = std::env::var_os("REGMIRROR_KUBERNETES_VALIDATE")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || root().join(".ci/k8s-venv/bin/kubernetes-validate"),
            PathBuf::from,
        );
    if path.is_file() {
        return Ok(path);
    }
    peers::missing(format!(
        "kubernetes-validate not found at {}: `bash .ci/run` creates the venv .ci/k8s-venv with \
         kubernetes-validate==1.37.0 (or point REGMIRROR_KUBERNETES_VALIDATE at one)",
        path.display()
    ))
}

/// What `kubectl kustomize dir` renders: the text and its objects.
fn render(dir: &Path) -> Result<(String, Vec<Value>), peers::Missing> {
    let out = peers::run(Command::new(kubectl()?).arg("kustomize").arg(dir));
    let text = String::from_utf8(out.stdout).unwrap();
    let objects = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    Ok((text, objects))
}

/// Validates rendered text for every version in [`KUBERNETES`], strictly (unknown fields are
/// errors). A kind the validator has no schema for is only a warning to it: here, a failure.
fn validate(name: &str, text: &str, objects: usize) -> Result<(), peers::Missing> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    let mut command = Command::new(validator()?);
    command.arg("--strict");
    for version in KUBERNETES {
        command.args(["-k", version]);
    }
    let out = command.arg(&file).output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let passed = printed.lines().filter(|l| l.starts_with("INFO ")).count();
    assert!(
        out.status.success()
            && passed == objects * KUBERNETES.len()
            && passed == printed.lines().count(),
        "{name}: {passed} of {objects} objects x {} versions passed:\n{printed}{}",
        KUBERNETES.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of `kind`.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    match &find(objects, kind)[..] {
        [object] => object,
        found => panic!("{} objects of kind {kind}", found.len()),
    }
}

fn str_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

fn list(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

/// The item of a list whose `name` is `name`.
fn named<'a>(items: &'a Value, name: &str) -> &'a Value {
    list(items)
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {items:?}"))
}

/// A workload's pod spec and its one container.
fn pod(workload: &Value) -> (&Value, &Value) {
    let spec = &workload["spec"]["template"]["spec"];
    let [container] = list(&spec["containers"]) else {
        panic!("one container: {spec:?}")
    };
    (spec, container)
}

/// The container runs `image` through the image's own entrypoint (/usr/bin/regmirror).
fn assert_image(container: &Value, image: &str) {
    assert_eq!(container["image"], image, "{container:?}");
    assert!(
        container["command"].is_null(),
        "the image's entrypoint (/usr/bin/regmirror) runs"
    );
}

/// Every ConfigMap a workload mounts is among the rendered objects, in its namespace (a
/// generated name's hash suffix resolved), and so is every Secret it names unless
/// `external_secrets` lists it as one the user creates.
fn assert_references_resolve(objects: &[Value], workload: &Value, external_secrets: &[&str]) {
    let namespace = &workload["metadata"]["namespace"];
    let (spec, container) = pod(workload);
    let exists = |kind: &str, name: &Value| {
        find(objects, kind)
            .iter()
            .any(|o| o["metadata"]["name"] == *name && o["metadata"]["namespace"] == *namespace)
    };
    for volume in list(&spec["volumes"]) {
        if let Some(config_map) = volume.get("configMap") {
            assert!(
                exists("ConfigMap", &config_map["name"]),
                "ConfigMap {:?} is not rendered in {namespace:?}",
                config_map["name"]
            );
        }
    }
    for variable in list(&container["env"]) {
        let reference = &variable["valueFrom"]["secretKeyRef"]["name"];
        if !reference.is_null() && !external_secrets.contains(&str_of(reference)) {
            assert!(
                exists("Secret", reference),
                "Secret {reference:?} is not rendered"
            );
        }
    }
}

/// Probes on /healthz at the container's port 5000, requests and a memory limit, the pod and
/// the container locked down, `/metrics` annotated for scraping; no API token.
fn assert_cache_pod(workload: &Value) {
    let (spec, container) = pod(workload);
    let port = named(&container["ports"], "http");
    assert_eq!(port["containerPort"], 5000);
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert_eq!(get["port"], "http", "{probe}");
    }
    let resources = &container["resources"];
    for key in ["cpu", "memory"] {
        assert!(resources["requests"][key].is_string(), "requests.{key}");
    }
    assert!(resources["limits"]["memory"].is_string(), "limits.memory");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_locked_down(container);
    let annotations = &workload["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "5000");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(spec["automountServiceAccountToken"], false);
}

fn assert_locked_down(container: &Value) {
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(
        security["capabilities"]["drop"],
        Value::Sequence(vec!["ALL".into()])
    );
    assert!(security["capabilities"]["add"].is_null());
    assert!(security["privileged"].is_null() || security["privileged"] == false);
}

/// The Service and the PodDisruptionBudget select the workload's pods; the Service reaches
/// their port.
fn assert_service_and_budget(objects: &[Value], workload: &Value) {
    let labels = workload["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    let selects = |selector: &Value| {
        let selector = selector.as_mapping().expect("a selector");
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&workload["spec"]["selector"]["matchLabels"]));
    let service = one(objects, "Service");
    assert!(selects(&service["spec"]["selector"]), "{service:?}");
    let port = named(&service["spec"]["ports"], "http");
    assert_eq!(port["port"], 5000);
    assert_eq!(port["targetPort"], "http");
    let budget = one(objects, "PodDisruptionBudget");
    assert!(selects(&budget["spec"]["selector"]["matchLabels"]));
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
}

/// The text of `key` in the ConfigMap whose name starts with `prefix` (a generated name goes on
/// with its hash suffix).
fn config_map_data<'a>(objects: &'a [Value], prefix: &str, key: &str) -> &'a str {
    let map = find(objects, "ConfigMap")
        .into_iter()
        .find(|o| str_of(&o["metadata"]["name"]).starts_with(prefix))
        .unwrap_or_else(|| panic!("no ConfigMap {prefix}"));
    str_of(&map["data"][key])
}

/// A pod's container started as its kubelet would, from the rendered objects, either as a
/// process here ([`command`](Self::command)) or in the real image under dockerd
/// ([`docker_run`](Self::docker_run)). Its volumes are directories of a scratch root, made as
/// kubelet makes them: a ConfigMap's keys as files, an emptyDir empty and writable by all, a
/// hostPath (`DirectoryOrCreate`) or a claim empty, 0755 and the test's (root's here). The
/// environment is the container's alone, nothing inherited: `$(VAR)` expanded from the variables
/// before it, the downward API's `status.podIP` as 127.0.0.1, a Secret's key from the test (or
/// left unset when `optional`).
///
/// As a process, every path under a mount (in the args, in the environment and in the
/// ConfigMaps' files) is mapped to its directory; the entrypoint is the image's, `regmirror`,
/// from this build, and the working directory the scratch root, so that anything written
/// outside the mounts shows there ([`strays`](Self::strays)).
struct Pod {
    root: tempfile::TempDir,
    /// The process's log, apart from what it writes.
    logs: tempfile::TempDir,
    /// (mount path, its directory here, read-only), longest path first.
    mounts: Vec<(String, PathBuf, bool)>,
    spec: Value,
    container: Value,
    /// The ConfigMaps' files here, and their text as rendered.
    files: Vec<(PathBuf, String)>,
}

impl Pod {
    fn new(objects: &[Value], workload: &Value) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let (spec, container) = pod(workload);
        let mut mounts = Vec::new();
        for mount in list(&container["volumeMounts"]) {
            let name = &mount["name"];
            let dir = root.path().join(str_of(name));
            std::fs::create_dir(&dir).unwrap();
            let volume = list(&spec["volumes"]).iter().find(|v| v["name"] == *name);
            let mode = if volume.is_some_and(|v| !v["emptyDir"].is_null()) {
                0o777
            } else {
                0o755
            };
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let read_only = mount["readOnly"] == true;
            mounts.push((str_of(&mount["mountPath"]).to_owned(), dir, read_only));
        }
        mounts.sort_by_key(|(path, ..)| std::cmp::Reverse(path.len()));
        let mut pod = Pod {
            root,
            logs: tempfile::tempdir().unwrap(),
            mounts,
            spec: spec.clone(),
            container: container.clone(),
            files: Vec::new(),
        };
        for volume in list(&spec["volumes"]) {
            let Some(config_map) = volume.get("configMap") else {
                continue;
            };
            let map = find(objects, "ConfigMap")
                .into_iter()
                .find(|o| o["metadata"]["name"] == config_map["name"])
                .expect("the ConfigMap is rendered");
            let dir = pod.root.path().join(str_of(&volume["name"]));
            for (key, text) in map["data"].as_mapping().unwrap() {
                pod.files
                    .push((dir.join(str_of(key)), str_of(text).to_owned()));
            }
        }
        pod
    }

    /// `text` with every mount path replaced by its directory here.
    fn mapped(&self, text: &str) -> String {
        self.mounts
            .iter()
            .fold(text.to_owned(), |text, (path, dir, _)| {
                text.replace(path.as_str(), dir.to_str().unwrap())
            })
    }

    /// The directory here of the volume mounted at `path`.
    fn dir(&self, path: &str) -> &Path {
        &self.mounts.iter().find(|(p, ..)| p == path).unwrap().1
    }

    /// The container's environment, resolved.
    fn environment(&self, secrets: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for variable in list(&self.container["env"]) {
            let from = &variable["valueFrom"];
            let value = if let Some(value) = variable["value"].as_str() {
                env.iter().fold(value.to_owned(), |value, (name, known)| {
                    value.replace(&format!("$({name})"), known)
                })
            } else if from["fieldRef"]["fieldPath"] == "status.podIP" {
                "127.0.0.1".to_owned()
            } else if let Some(key) = from["secretKeyRef"]["key"].as_str() {
                match secrets.iter().find(|(k, _)| *k == key) {
                    Some((_, value)) => (*value).to_owned(),
                    None if from["secretKeyRef"]["optional"] == true => continue,
                    None => panic!("the test gives no Secret key {key}"),
                }
            } else {
                panic!("an environment variable this test cannot set: {variable:?}")
            };
            env.push((str_of(&variable["name"]).to_owned(), value));
        }
        env
    }

    /// The container as a process of this build's binary, its paths mapped.
    fn command(&self, secrets: &[(&str, &str)]) -> Command {
        for (file, text) in &self.files {
            std::fs::write(file, self.mapped(text)).unwrap();
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_regmirror"));
        command.env_clear().current_dir(self.root.path());
        for arg in list(&self.container["args"]) {
            command.arg(self.mapped(str_of(arg)));
        }
        for (name, value) in self.environment(secrets) {
            command.env(name, self.mapped(&value));
        }
        command
    }

    /// Starts `command` (from [`command`](Self::command)), its output in a log of its own.
    fn start(&self, command: &mut Command) -> Process {
        Process::spawn(command, self.logs.path().join("container.log"))
    }

    /// `docker run` arguments for the container in `image` as kubelet would run it: its user
    /// and group, its security context (`readOnlyRootFilesystem` as `--read-only`, dropped
    /// capabilities as `--cap-drop`, `allowPrivilegeEscalation: false` as no-new-privileges),
    /// its volumes bound at their mount paths, its environment and `extra_env`, its args.
    fn docker_run(
        &self,
        name: &str,
        image: &str,
        network: &str,
        secrets: &[(&str, &str)],
        extra_env: &[(&str, String)],
    ) -> Vec<String> {
        for (file, text) in &self.files {
            std::fs::write(file, text).unwrap();
        }
        let pod_security = &self.spec["securityContext"];
        let security = &self.container["securityContext"];
        let id = |key: &str| {
            let value = &security[key];
            let value = if value.is_null() {
                &pod_security[key]
            } else {
                value
            };
            value.as_u64().unwrap_or_else(|| panic!("{key} is set"))
        };
        let mut args: Vec<String> = ["run", "-d", "--name", name, "--network", network]
            .map(str::to_owned)
            .to_vec();
        args.push(format!("--user={}:{}", id("runAsUser"), id("runAsGroup")));
        if security["readOnlyRootFilesystem"] == true {
            args.push("--read-only".to_owned());
        }
        for capability in list(&security["capabilities"]["drop"]) {
            args.push(format!("--cap-drop={}", str_of(capability)));
        }
        if security["allowPrivilegeEscalation"] == false {
            args.push("--security-opt=no-new-privileges".to_owned());
        }
        for (path, dir, read_only) in &self.mounts {
            let mode = if *read_only { ":ro" } else { "" };
            args.push(format!("--volume={}:{path}{mode}", dir.display()));
        }
        let env = self.environment(secrets).into_iter();
        for (key, value) in env.chain(extra_env.iter().map(|(k, v)| ((*k).to_owned(), v.clone()))) {
            args.push(format!("--env={key}={value}"));
        }
        args.push(image.to_owned());
        args.extend(
            list(&self.container["args"])
                .iter()
                .map(|a| str_of(a).to_owned()),
        );
        args
    }

    /// What was written outside the mounts (the working directory).
    fn strays(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !self.mounts.iter().any(|(_, dir, _)| dir == p))
            .map(|p| p.display().to_string())
            .collect()
    }
}

/// Polls `/healthz` until it answers (the container's readiness), failing with the log when the
/// process exits or does not answer within 30 s.
fn wait_ready(process: &Process, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        let state =
            std::fs::read_to_string(format!("/proc/{}/stat", process.pid())).unwrap_or_default();
        assert!(
            !state.contains(") Z ") && Instant::now() < deadline,
            "serve did not start: {}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cache's container answering its probes and the scrape: `/healthz`, `/metrics`.
fn assert_serves_probes(process: &Process, addr: SocketAddr) {
    wait_ready(process, addr);
    let (status, _, body) = http("GET", addr, "/healthz", &[]);
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    let (status, _, body) = http("GET", addr, "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("regmirror_"));
}

/// Neither a warning (an unknown key in config.yml, say) nor an error in a log.
fn assert_quiet(log: &str) {
    for level in [" WARN ", " ERROR ", "warning:", "error:"] {
        assert!(!log.contains(level), "{level} in the log:\n{log}");
    }
}

#[test]
fn every_kustomization_renders_valid_objects_for_every_supported_kubernetes() {
    let mut found: Vec<String> = std::fs::read_dir(root().join("contrib/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    found.sort();
    assert_eq!(found, KUSTOMIZATIONS, "each kustomization has its test");
    for name in KUSTOMIZATIONS {
        let (text, objects) = or_skip!(render(&contrib(name)));
        or_skip!(validate(name, &text, objects.len()));
        assert!(
            find(&objects, "Secret").is_empty(),
            "{name}: no secret is kept in git"
        );
    }
}

#[test]
fn the_fleet_is_replicas_on_one_bucket_and_its_pod_serves_from_it() {
    let (_, objects) = or_skip!(render(&contrib("cache")));
    let deployment = one(&objects, "Deployment");
    assert!(find(&objects, "StatefulSet").is_empty());
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["metadata"]["namespace"], "regmirror");
    assert_cache_pod(deployment);
    assert_service_and_budget(&objects, deployment);
    assert_references_resolve(&objects, deployment, &["regmirror"]);
    let (_, container) = pod(deployment);
    assert_image(
        container,
        &format!("regmirror:{}", env!("CARGO_PKG_VERSION")),
    );
    let env = &container["env"];
    let secret = &named(env, "REGISTRY_HTTP_SECRET")["valueFrom"]["secretKeyRef"];
    assert_eq!(secret["name"], "regmirror");
    assert_eq!(secret["key"], "http-secret");
    assert!(secret["optional"].is_null(), "no replica starts without it");
    let variables: Vec<&str> = list(env).iter().map(|v| str_of(&v["name"])).collect();
    let pod_ip = variables
        .iter()
        .position(|v| *v == "POD_IP")
        .expect("POD_IP");
    assert_eq!(
        named(env, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        named(env, "REGISTRY_HTTP_HOST")["value"],
        "http://$(POD_IP):5000"
    );
    let host = variables.iter().position(|v| *v == "REGISTRY_HTTP_HOST");
    assert!(
        host.is_some_and(|host| pod_ip < host),
        "$(POD_IP) expands only after POD_IP"
    );
    let config: Value =
        serde_yaml_ng::from_str(config_map_data(&objects, "regmirror-config-", "config.yml"))
            .unwrap();
    let bucket = str_of(&config["storage"]["s3"]["bucket"]);
    assert!(config["storage"]["filesystem"].is_null());

    // The pod, on moto_server standing for the bucket's endpoint (the config names AWS's) and
    // on a free port instead of 5000.
    let moto = or_skip!(MotoServer::start());
    moto.create_bucket(bucket);
    let container_pod = Pod::new(&objects, deployment);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = container_pod.command(&[
        ("http-secret", "0123456789abcdef0123456789abcdef"),
        ("s3-accesskey", "test"),
        ("s3-secretkey", "test"),
    ]);
    command
        .env("REGISTRY_HTTP_ADDR", addr.to_string())
        .env("REGISTRY_STORAGE_S3_REGIONENDPOINT", moto.endpoint());
    let mut cache = container_pod.start(&mut command);
    assert_serves_probes(&cache, addr);
    let log = cache.log_text();
    assert!(
        log.contains(&format!("object storage reachable storage=s3://{bucket}/")),
        "{log}"
    );
    assert!(moto.count("GET", &format!("/{bucket}?list-type=2")) > 0);
    cache.stop();
    assert_quiet(&cache.log_text());
    assert!(
        container_pod
            .dir("/var/lib/regmirror")
            .join("spool")
            .is_dir()
    );
    assert_eq!(container_pod.strays(), Vec::<String>::new());
}

#[test]
fn the_filesystem_variant_is_a_stateful_set_on_a_claim_and_its_pod_serves_from_it() {
    let (_, objects) = or_skip!(render(&contrib("cache-filesystem")));
    assert!(
        find(&objects, "Deployment").is_empty(),
        "the fleet's Deployment is gone"
    );
    let set = one(&objects, "StatefulSet");
    assert_eq!(set["metadata"]["namespace"], "regmirror");
    assert_cache_pod(set);
    assert_service_and_budget(&objects, set);
    assert_references_resolve(&objects, set, &[]);
    let (spec, container) = pod(set);
    assert_image(
        container,
        &format!("regmirror:{}", env!("CARGO_PKG_VERSION")),
    );
    assert!(container["env"].is_null(), "no fleet settings, no Secret");
    let [claim] = list(&set["spec"]["volumeClaimTemplates"]) else {
        panic!("one claim")
    };
    assert!(claim["spec"]["resources"]["requests"]["storage"].is_string());
    let data = list(&container["volumeMounts"])
        .iter()
        .find(|m| m["name"] == claim["metadata"]["name"])
        .expect("the claim is mounted");
    assert!(
        list(&spec["volumes"])
            .iter()
            .all(|v| v["name"] != data["name"]),
        "a claim, not a pod volume"
    );
    let config: Value =
        serde_yaml_ng::from_str(config_map_data(&objects, "regmirror-config-", "config.yml"))
            .unwrap();
    assert!(config["storage"]["s3"].is_null());
    assert_eq!(
        config["storage"]["filesystem"]["rootdirectory"], data["mountPath"],
        "the data on the claim"
    );

    // The pod, the claim a directory here (a StatefulSet's claims are volumes the pod mounts).
    let container_pod = Pod::new(&objects, set);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = container_pod.command(&[]);
    command.env("REGISTRY_HTTP_ADDR", addr.to_string());
    let mut cache = container_pod.start(&mut command);
    assert_serves_probes(&cache, addr);
    cache.stop();
    assert_quiet(&cache.log_text());
    let claimed = container_pod.dir(str_of(&data["mountPath"]));
    assert!(
        std::fs::read_dir(claimed).unwrap().next().is_some(),
        "the cache keeps its data on the claim"
    );
    assert_eq!(container_pod.strays(), Vec::<String>::new());
}

/// The DaemonSet's volume holding the node's directory, and its mount.
fn host_path(daemon_set: &Value) -> (&Value, &Value) {
    let (spec, container) = pod(daemon_set);
    let [volume] = &list(&spec["volumes"])
        .iter()
        .filter(|v| !v["hostPath"].is_null())
        .collect::<Vec<_>>()[..]
    else {
        panic!("one hostPath volume: {spec:?}")
    };
    (volume, named_mount(container, &volume["name"]))
}

fn named_mount<'a>(container: &'a Value, volume: &Value) -> &'a Value {
    list(&container["volumeMounts"])
        .iter()
        .find(|m| m["name"] == *volume)
        .unwrap_or_else(|| panic!("{volume:?} is not mounted"))
}

/// The value after `flag` in a container's args.
fn flag<'a>(container: &'a Value, flag: &str) -> &'a str {
    let args = list(&container["args"]);
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    str_of(&args[at + 1])
}

/// The registries a mirror file's `mirror-registries` name (containerd-hosts writes
/// `<registry>/hosts.toml` for each).
fn mirrored_registries(mirrors_json: &str) -> Vec<String> {
    let mirrors: serde_json::Value = serde_json::from_str(mirrors_json).unwrap();
    mirrors["mirror-registries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["domain"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_node_agent_watches_the_mirror_config_and_writes_only_the_nodes_certs_d() {
    let (_, objects) = or_skip!(render(&contrib("node-agent")));
    let daemon_set = one(&objects, "DaemonSet");
    assert_eq!(daemon_set["metadata"]["namespace"], "regmirror-node-agent");
    assert_references_resolve(&objects, daemon_set, &[]);
    let (spec, container) = pod(daemon_set);
    assert_image(
        container,
        &format!("regmirror:{}", env!("CARGO_PKG_VERSION")),
    );

    // Every taint tolerated; no API token, no host namespaces.
    let every_taint: Value = serde_yaml_ng::from_str("[{operator: Exists}]").unwrap();
    assert_eq!(spec["tolerations"], every_taint);
    assert_eq!(spec["automountServiceAccountToken"], false);
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(spec[host].is_null(), "{host}");
    }
    // Root, to write the node's root-owned directory, and nothing more.
    assert_eq!(container["securityContext"]["runAsUser"], 0);
    assert_locked_down(container);
    assert!(container["resources"]["limits"]["memory"].is_string());

    // Writable: exactly the node's /etc/containerd/certs.d, mounted where it is written.
    let (volume, mount) = host_path(daemon_set);
    assert_eq!(volume["hostPath"]["path"], CERTS_D);
    assert_eq!(volume["hostPath"]["type"], "DirectoryOrCreate");
    let writable: Vec<&Value> = list(&container["volumeMounts"])
        .iter()
        .filter(|m| m["readOnly"] != true)
        .collect();
    assert_eq!(writable, [mount], "the one writable mount");
    for other in list(&spec["volumes"]).iter().filter(|v| *v != volume) {
        assert!(other["configMap"].is_mapping(), "{other:?}");
    }

    // `containerd-hosts --watch`, the mirror file from the ConfigMap, the files into the mount.
    let args: Vec<&str> = list(&container["args"]).iter().map(str_of).collect();
    assert_eq!(args[..2], ["containerd-hosts", "--watch"]);
    assert_eq!(flag(container, "--out"), str_of(&mount["mountPath"]));
    let mirrors_file = Path::new(flag(container, "--mirrors"));
    let mirrors_volume = list(&spec["volumes"])
        .iter()
        .find(|v| !v["configMap"].is_null())
        .unwrap();
    let mirrors_mount = named_mount(container, &mirrors_volume["name"]);
    assert_eq!(
        mirrors_file.parent().unwrap(),
        Path::new(str_of(&mirrors_mount["mountPath"]))
    );
    assert_eq!(
        mirrors_volume["configMap"]["name"], "regmirror-mirrors",
        "a fixed name: an edit reaches the running agents, no rollout"
    );
    let key = mirrors_file.file_name().unwrap().to_str().unwrap();
    let mirrors_json = config_map_data(&objects, "regmirror-mirrors", key);

    // The container, until it has written every registry's hosts.toml.
    let container_pod = Pod::new(&objects, daemon_set);
    let out = container_pod.dir(str_of(&mount["mountPath"]));
    let registries = mirrored_registries(mirrors_json);
    let mut agent = container_pod.start(&mut container_pod.command(&[]));
    let written = |registry: &String| {
        let path = out.join(registry).join("hosts.toml");
        let line = format!("containerd-hosts: written path={}", path.display());
        path.is_file() && agent.log_text().contains(&line)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !registries.iter().all(written) {
        assert!(
            Instant::now() < deadline,
            "not every file written within 30 s: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
    let log = agent.log_text();
    assert!(
        log.contains("containerd-hosts: watching the mirror config"),
        "{log}"
    );
    for registry in &registries {
        let hosts = std::fs::read_to_string(out.join(registry).join("hosts.toml")).unwrap();
        assert!(hosts.starts_with("# Generated by regmirror"), "{hosts}");
    }
    let mut in_out: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_owned())
        .collect();
    in_out.sort();
    let mut expected = registries.clone();
    expected.sort();
    assert_eq!(in_out, expected, "one directory per registry, nothing else");
    let config_dir = container_pod.dir(str_of(&mirrors_mount["mountPath"]));
    assert_eq!(
        std::fs::read_dir(config_dir).unwrap().count(),
        1,
        "the ConfigMap untouched"
    );
    assert_eq!(container_pod.strays(), Vec::<String>::new());
}

#[test]
fn the_k3s_overlay_is_the_node_agent_writing_the_k3s_directory() {
    let (_, base) = or_skip!(render(&contrib("node-agent")));
    let (_, k3s) = or_skip!(render(&contrib("node-agent-k3s")));
    let (volume, _) = host_path(one(&k3s, "DaemonSet"));
    assert_eq!(volume["hostPath"]["path"], K3S_CERTS_D);
    assert_eq!(volume["hostPath"]["type"], "DirectoryOrCreate");

    // Everything else as the base renders it (the patch moves the volume it patches first in
    // the list, whose order means nothing).
    let mut expected = base.clone();
    for volume in volumes_mut(&mut expected) {
        if !volume["hostPath"].is_null() {
            volume["hostPath"]["path"] = K3S_CERTS_D.into();
        }
    }
    let mut k3s = k3s;
    volumes_mut(&mut k3s);
    assert_eq!(k3s, expected);
}

/// The DaemonSet's volumes, sorted by name.
fn volumes_mut(objects: &mut [Value]) -> &mut Vec<Value> {
    let daemon_set = objects
        .iter_mut()
        .find(|o| o["kind"] == "DaemonSet")
        .unwrap();
    let volumes = daemon_set["spec"]["template"]["spec"]["volumes"]
        .as_sequence_mut()
        .unwrap();
    volumes.sort_by(|a, b| str_of(&a["name"]).cmp(str_of(&b["name"])));
    volumes
}

/// README's "Kubernetes" section.
fn readme_section() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("\n## Kubernetes\n")
        .expect("README has a Kubernetes section");
    let section = &readme[start + 1..];
    section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)].to_owned()
}

/// The files README's section shows (each fenced block after a line naming a
/// `my-regmirror/...` file): (path, text).
fn readme_files(section: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut named: Option<String> = None;
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            let block: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            if let Some(path) = named.take() {
                files.push((path, block.join("\n") + "\n"));
            }
            continue;
        }
        if let Some(path) = line
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with("my-regmirror/") && !s.ends_with('/'))
            .last()
        {
            named = Some(path.to_owned());
        }
    }
    files
}

#[test]
fn the_overlays_readme_shows_deploy_the_image_they_name_with_their_own_files() {
    let section = readme_section();
    let files = readme_files(&section);
    let names: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        names,
        [
            "my-regmirror/cache/kustomization.yaml",
            "my-regmirror/node-agent/mirrors.json",
            "my-regmirror/node-agent/kustomization.yaml",
        ]
    );
    // A scratch checkout: contrib/kubernetes, README's files, and what its commands write
    // (config.yml copied from the base, secret.env with the keys README's printf writes).
    let work = tempfile::tempdir().unwrap();
    let kubernetes = work.path().join("contrib/kubernetes");
    for dir in KUSTOMIZATIONS {
        std::fs::create_dir_all(kubernetes.join(dir)).unwrap();
        for entry in std::fs::read_dir(contrib(dir)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, kubernetes.join(dir).join(path.file_name().unwrap())).unwrap();
        }
    }
    for (path, text) in &files {
        let path = work.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let cache_dir = work.path().join("my-regmirror/cache");
    assert!(section.contains("cp contrib/kubernetes/cache/config.yml my-regmirror/cache/"));
    std::fs::copy(
        contrib("cache").join("config.yml"),
        cache_dir.join("config.yml"),
    )
    .unwrap();
    let keys = ["http-secret", "s3-accesskey", "s3-secretkey"];
    assert!(
        section.contains(&format!(
            "printf '{}=%s\\n{}=%s\\n{}=%s\\n'",
            keys[0], keys[1], keys[2]
        )),
        "README's printf writes {keys:?}"
    );
    let secret_env: String = keys
        .iter()
        .map(|k| format!("{k}=0123456789abcdef\n"))
        .collect();
    std::fs::write(cache_dir.join("secret.env"), secret_env).unwrap();

    let image = |kustomization: &str| {
        let config: Value = serde_yaml_ng::from_str(kustomization).unwrap();
        let [entry] = list(&config["images"]) else {
            panic!("one images entry")
        };
        assert_eq!(entry["name"], "regmirror");
        assert_eq!(entry["newTag"], env!("CARGO_PKG_VERSION"));
        format!("{}:{}", str_of(&entry["newName"]), str_of(&entry["newTag"]))
    };

    let (text, objects) = or_skip!(render(&cache_dir));
    or_skip!(validate("my-cache", &text, objects.len()));
    let deployment = one(&objects, "Deployment");
    assert_image(pod(deployment).1, &image(&files[0].1));
    assert_references_resolve(&objects, deployment, &[]);
    let secret = one(&objects, "Secret");
    assert_eq!(secret["metadata"]["namespace"], "regmirror");
    let data = secret["data"].as_mapping().unwrap();
    assert_eq!(data.len(), keys.len(), "README's secret.env, as the Secret");

    let (text, objects) = or_skip!(render(&work.path().join("my-regmirror/node-agent")));
    or_skip!(validate("my-node-agent", &text, objects.len()));
    let daemon_set = one(&objects, "DaemonSet");
    assert_image(pod(daemon_set).1, &image(&files[2].1));
    assert_references_resolve(&objects, daemon_set, &[]);
    assert_eq!(
        config_map_data(&objects, "regmirror-mirrors", "mirrors.json"),
        files[1].1,
        "README's mirrors.json, in the ConfigMap the agents read"
    );
    assert!(
        section.contains(
            "containerd-hosts: written path=/etc/containerd/certs.d/docker.io/hosts.toml"
        ),
        "README shows the agent's log line"
    );
}

/// Polls `done` until it holds, failing with the container's log when it exits first or
/// after 60 s.
fn wait_for(dockerd: &peers::Dockerd, container: &str, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        let state = dockerd.docker(&["inspect", "-f", "{{.State.Running}}", container]);
        let running = String::from_utf8_lossy(&state.stdout).trim() == "true";
        assert!(
            running && Instant::now() < deadline,
            "{what}: not within 60 s (running: {running}): {}",
            container_log(dockerd, container)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A container removed (`docker rm -f`) on drop, success or failure: its shim would outlive
/// dockerd.
struct Removed<'a>(&'a peers::Dockerd, String);

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        self.0.docker(&["rm", "-f", &self.1]);
    }
}

fn container_log(dockerd: &peers::Dockerd, container: &str) -> String {
    let out = dockerd.docker(&["logs", container]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The image contrib/image/build makes, loaded into a real dockerd, runs the rendered pods as
/// their security contexts say: the fleet's replica as 65532 on a read-only root file system
/// with no capability, serving from the bucket with its spool in the emptyDir; the node agent
/// as root with no capability on a read-only root file system, writing the node's root-owned
/// directory (the log line README shows included). Engine-level: it takes the engine lock.
#[test]
fn the_image_runs_the_pods_under_their_security_contexts() {
    let _engine = peers::engine_lock();
    let image_dir = tempfile::tempdir().unwrap();
    or_skip!(peers::require("umoci", "umoci"));
    or_skip!(peers::require("skopeo", "skopeo"));
    peers::run(
        Command::new(root().join("contrib/image/build"))
            .arg(image_dir.path())
            .env("REGMIRROR", env!("CARGO_BIN_EXE_regmirror")),
    );
    let dockerd = or_skip!(peers::Dockerd::start_for_containers("{}"));
    let tar = image_dir.path().join("regmirror.tar");
    let loaded = dockerd.docker(&["load", "-i", tar.to_str().unwrap()]);
    assert!(loaded.status.success(), "{}", dockerd.log());
    let image = format!("regmirror:{}", env!("CARGO_PKG_VERSION"));
    let docker = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = dockerd.docker(&args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // The node agent: its files on the node, root's, as README's log line says.
    let (_, objects) = or_skip!(render(&contrib("node-agent")));
    let daemon_set = one(&objects, "DaemonSet");
    let agent = Pod::new(&objects, daemon_set);
    let (_, mount) = host_path(daemon_set);
    let node_dir = agent.dir(str_of(&mount["mountPath"]));
    let name = format!("regmirror-agent-{}", free_port());
    let running = Removed(&dockerd, name.clone());
    docker(&agent.docker_run(&name, &image, "none", &[], &[]));
    let registries = mirrored_registries(config_map_data(
        &objects,
        "regmirror-mirrors",
        "mirrors.json",
    ));
    let readme_line = "containerd-hosts: written path=/etc/containerd/certs.d/docker.io/hosts.toml";
    wait_for(
        &dockerd,
        &name,
        "every registry's hosts.toml written and logged",
        || {
            registries
                .iter()
                .all(|r| node_dir.join(r).join("hosts.toml").is_file())
                && container_log(&dockerd, &name).contains(readme_line)
        },
    );
    drop(running);
    for registry in &registries {
        let metadata = std::fs::metadata(node_dir.join(registry).join("hosts.toml")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&metadata), 0);
    }

    // A replica of the fleet, on moto_server (the host's network: the bucket on loopback).
    let (_, objects) = or_skip!(render(&contrib("cache")));
    let deployment = one(&objects, "Deployment");
    let config: Value =
        serde_yaml_ng::from_str(config_map_data(&objects, "regmirror-config-", "config.yml"))
            .unwrap();
    let bucket = str_of(&config["storage"]["s3"]["bucket"]);
    let moto = or_skip!(MotoServer::start());
    moto.create_bucket(bucket);
    let replica = Pod::new(&objects, deployment);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let name = format!("regmirror-cache-{}", free_port());
    let running = Removed(&dockerd, name.clone());
    docker(&replica.docker_run(
        &name,
        &image,
        "host",
        &[
            ("http-secret", "0123456789abcdef0123456789abcdef"),
            ("s3-accesskey", "test"),
            ("s3-secretkey", "test"),
        ],
        &[
            ("REGISTRY_HTTP_ADDR", addr.to_string()),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", moto.endpoint()),
        ],
    ));
    wait_for(&dockerd, &name, "/healthz answered", || {
        std::net::TcpStream::connect(addr).is_ok() && http("GET", addr, "/healthz", &[]).0 == 200
    });
    let log = container_log(&dockerd, &name);
    drop(running);
    assert!(
        log.contains(&format!("object storage reachable storage=s3://{bucket}/")),
        "{log}"
    );
    assert_quiet(&log);
    let spool = replica.dir("/var/lib/regmirror").join("spool");
    let metadata = std::fs::metadata(&spool).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&metadata),
        65532,
        "the spool is the replica's"
    );
}
