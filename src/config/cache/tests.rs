//! config.yml as users write it: what each key means, what each mistake says and where.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<CacheConfig, String> {
    CacheConfig::parse("config.yml", Some(text), &[]).map_err(|e| e.to_string())
}

const SEED_MULTI: &str = "version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
proxy:
  remoteregistries:
  - url: https://registry-1.docker.io
    username:
    password:
  - url: https://reg.test1.com
    username: username
    password: password
  - url: http://reg.test2.com
    username: username
    password: password
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
";

#[test]
fn seed_remoteregistries() {
    let config = parse(SEED_MULTI).unwrap();
    assert_eq!(config.listen, "0.0.0.0:5000");
    assert_eq!(config.root, PathBuf::from("/var/lib/registry"));
    let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["docker.io", "reg.test1.com", "reg.test2.com"]);
    assert!(config.upstreams[0].credentials.is_none());
    assert_eq!(
        config.upstreams[1].credentials.as_ref().unwrap().username(),
        "username"
    );
    assert_eq!(config.upstreams[2].url.to_string(), "http://reg.test2.com");
    assert_eq!(
        config.headers,
        [("X-Content-Type-Options".into(), "nosniff".into())]
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.ttl, DEFAULT_TTL);
}

#[test]
fn seed_dynamic() {
    let config = parse("version: 0.1\nproxy:\n  on: true\n").unwrap();
    assert!(config.dynamic_upstreams);
    assert!(config.upstreams.is_empty());
}

#[test]
fn fetch_policy_lists_combine_and_locate_their_warnings() {
    let config = parse(
        "proxy:
  allow: [\"library/*\"]
  deny: [\"**/internal\", \"Library/x\"]
  platforms: [linux/amd64, linux/arm64/v8]
  remoteregistries:
  - url: https://r1.io
  - url: https://r2.io
    allow: [\"team/**\", \"/abs\"]
    deny: [\"team/old\"]
",
    )
    .unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "config.yml:3:25: proxy.deny[1]: \"Library/x\" can never match a repository name: \
             repository names are lowercase",
            "config.yml:8:24: proxy.remoteregistries[1].allow[1]: \"/abs\" can never match a \
             repository name: repository names do not start with `/` (write `org/*`, not `/org/*`)",
        ]
    );
    let (r1, r2) = (&config.upstreams[0].filter, &config.upstreams[1].filter);
    assert!(r1.check("library/nginx").is_ok());
    assert_eq!(r1.check("team/app").unwrap_err().rule, "proxy.allow");
    assert!(r2.check("team/app/x").is_ok(), "the entry's allow replaces");
    assert_eq!(
        r2.check("team/old").unwrap_err().rule,
        "proxy.remoteregistries[1].deny[0]"
    );
    assert_eq!(
        r2.check("team/internal").unwrap_err().rule,
        "proxy.deny[0]",
        "the global deny adds to the entry's"
    );
    assert_eq!(
        config.filter, *r1,
        "dynamic upstreams take the proxy level's"
    );
    let platforms: Vec<String> = config.platforms.iter().map(ToString::to_string).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
}

#[test]
fn fetch_policy_errors_and_overrides() {
    let errors = errors_of(
        "proxy:\n  remoteurl: https://r.io\n  deny: \"library/*\"\n  allow: [\"a/[b\"]\n  platforms: [linux]\n",
        &[],
    );
    assert_eq!(
        errors,
        [
            "config.yml:3:3: proxy.deny: \"library/*\" is not a list of repository patterns",
            "config.yml:4:11: proxy.allow[0]: \"a/[b\" is not a pattern: unclosed character class; missing ']'",
            "config.yml:5:15: proxy.platforms[0]: \"linux\" is not a platform: write OS/ARCH or \
             OS/ARCH/VARIANT (linux/amd64, linux/arm64/v8)",
        ]
    );
    let env = [("REGISTRY_PROXY_DENY".to_owned(), "[secret/**]".to_owned())];
    let config = CacheConfig::parse(
        "config.yml",
        Some("proxy: {remoteurl: https://r.io}\n"),
        &env,
    )
    .unwrap();
    assert_eq!(
        config.upstreams[0]
            .filter
            .check("secret/a/b")
            .unwrap_err()
            .rule,
        "proxy.deny[0]"
    );
    let config = parse("proxy: {remoteurl: https://r.io, allow: []}\n").unwrap();
    assert_eq!(
        config.warnings[0].to_string(),
        "config.yml:1:34: proxy.allow: an empty allow list refuses every repository"
    );
}

#[test]
fn the_packaged_examples_policy_lines_load_without_warnings_when_uncommented() {
    let text = include_str!("../../../contrib/examples/config.yml")
        .replace("  # deny:", "  deny:")
        .replace("  # allow:", "  allow:")
        .replace("  # platforms:", "  platforms:");
    let config = parse(&text).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.platforms.len(), 1);
    let hub = &config.upstreams[0].filter;
    assert!(hub.check("library/nginx").is_ok());
    assert_eq!(
        hub.check("library/internal-x").unwrap_err().rule,
        "proxy.deny[0]"
    );
}

#[test]
fn upstream_etiquette_keys_default_from_the_proxy_level() {
    let config = parse(
            "proxy:\n  ratelimit_reserve: 5\n  max_rate: 2.5\n  remoteregistries:\n  - url: https://a.io\n  - url: https://b.io\n    ratelimit_reserve: 25%\n    max_concurrent: 4\n    max_rate: 0.5\nlimits: {upstream_queue_timeout: 5s}\n",
        )
        .unwrap();
    let (a, b) = (&config.upstreams[0], &config.upstreams[1]);
    assert_eq!(a.ratelimit_reserve, RateLimitReserve::Pulls(5));
    assert_eq!(
        a.requests,
        RequestLimits {
            max_concurrent: None,
            max_rate: Some(2.5)
        }
    );
    assert_eq!(b.ratelimit_reserve, RateLimitReserve::Percent(25));
    assert_eq!(
        b.requests,
        RequestLimits {
            max_concurrent: Some(4),
            max_rate: Some(0.5)
        }
    );
    assert_eq!(config.proxy_reserve, RateLimitReserve::Pulls(5));
    assert_eq!(config.limits.upstream_queue_timeout, Duration::from_secs(5));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let defaults = parse("proxy: {remoteurl: https://a.io}\n").unwrap();
    assert_eq!(
        defaults.upstreams[0].ratelimit_reserve,
        RateLimitReserve::Percent(10)
    );
    assert_eq!(defaults.upstreams[0].requests, RequestLimits::default());
    assert_eq!(
        defaults.limits.upstream_queue_timeout,
        Duration::from_secs(30)
    );
    for (yaml, field) in [
        (
            "proxy: {remoteurl: https://a.io, ratelimit_reserve: 120%}\n",
            "proxy.ratelimit_reserve",
        ),
        (
            "proxy: {remoteregistries: [{url: https://a.io, ratelimit_reserve: lots}]}\n",
            "proxy.remoteregistries[0].ratelimit_reserve",
        ),
        (
            "proxy: {remoteregistries: [{url: https://a.io, max_concurrent: 0}]}\n",
            "proxy.remoteregistries[0].max_concurrent",
        ),
        (
            "proxy: {remoteurl: https://a.io, max_rate: 0}\n",
            "proxy.max_rate",
        ),
        (
            "proxy: {remoteurl: https://a.io}\nlimits: {upstream_queue_timeout: 0s}\n",
            "limits.upstream_queue_timeout",
        ),
    ] {
        let error = parse(yaml).unwrap_err();
        assert!(error.contains(field), "{field} in {error}");
    }
}

#[test]
fn memos_take_a_size_or_0_to_turn_them_off() {
    let defaults = parse("proxy: {remoteurl: https://a.io}\n").unwrap();
    assert_eq!(defaults.limits.blob_memo, 128 << 20);
    assert_eq!(defaults.limits.manifest_memo, 64 << 20);
    let config =
        parse("proxy: {remoteurl: https://a.io}\nlimits: {blob_memo: 0, manifest_memo: 8MiB}\n")
            .unwrap();
    assert_eq!(config.limits.blob_memo, 0);
    assert_eq!(config.limits.manifest_memo, 8 << 20);
    let error = parse("proxy: {remoteurl: https://a.io}\nlimits: {blob_memo: lots}\n").unwrap_err();
    assert!(error.contains("limits.blob_memo"), "{error}");
    assert!(error.contains("0 turns it off"), "{error}");
}

#[test]
fn referrer_and_fill_share_limits() {
    let defaults = parse("proxy: {remoteurl: https://a.io}\n").unwrap().limits;
    assert_eq!(
        (defaults.max_referrers, defaults.max_referrers_size),
        (1000, 1 << 20)
    );
    assert_eq!(
        (defaults.max_fills, defaults.max_fills_per_upstream),
        (256, 192)
    );
    let limits = |yaml: &str| {
        parse(&format!(
            "proxy: {{remoteurl: https://a.io}}\nlimits: {yaml}\n"
        ))
    };
    let derived = limits("{max_fills: 4, max_referrers: 5, max_referrers_size: 64KiB}")
        .unwrap()
        .limits;
    assert_eq!(
        derived.max_fills_per_upstream, 3,
        "three quarters of max_fills"
    );
    assert_eq!(
        (derived.max_referrers, derived.max_referrers_size),
        (5, 64 << 10)
    );
    assert_eq!(
        limits("{max_fills: 1}")
            .unwrap()
            .limits
            .max_fills_per_upstream,
        1
    );
    assert_eq!(
        limits("{max_fills: 8, max_fills_per_upstream: 8}")
            .unwrap()
            .limits
            .max_fills_per_upstream,
        8
    );
    for (yaml, expected) in [
        (
            "{max_fills: 4, max_fills_per_upstream: 5}",
            "limits.max_fills_per_upstream",
        ),
        (
            "{max_fills_per_upstream: 0}",
            "limits.max_fills_per_upstream",
        ),
        ("{max_referrers: 0}", "limits.max_referrers"),
        ("{max_referrers_size: 0}", "limits.max_referrers_size"),
    ] {
        let error = limits(yaml).unwrap_err();
        assert!(error.contains(expected), "{yaml}: {error}");
    }
}

#[test]
fn a_fleet_secret_is_at_least_16_bytes() {
    let with = |secret: &str| {
        parse(&format!(
            "proxy: {{remoteurl: https://a.io}}\nhttp: {{secret: {secret}}}\n"
        ))
    };
    let error = with("x").unwrap_err();
    assert!(
        error.contains("http.secret")
            && error.contains("1 bytes is too short")
            && error.contains("at least 16"),
        "{error}"
    );
    assert!(!error.contains(": x"), "the secret is not shown: {error}");
    assert!(with("0123456789abcdef").unwrap().secret.is_some());
    assert!(with("''").unwrap().secret.is_none(), "empty: none");
}

#[test]
fn the_reserve_is_reached_under_its_share_of_the_limit() {
    let ten = RateLimitReserve::Percent(10);
    assert!(!ten.reached(100, 10));
    assert!(ten.reached(100, 9));
    assert!(!ten.reached(5, 0), "10% of 5 pulls is none");
    assert!(RateLimitReserve::Pulls(3).reached(100, 2));
    assert!(!RateLimitReserve::Pulls(3).reached(100, 3));
    assert!(!RateLimitReserve::Percent(100).reached(u64::MAX, u64::MAX));
}

#[test]
fn the_packaged_example_config_loads_without_warnings() {
    let config = parse(include_str!("../../../contrib/examples/config.yml")).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(config.upstreams[0].name, "docker.io");
    assert_eq!(config.root, PathBuf::from("/var/lib/regmirror"));
}

#[test]
fn distribution_remoteurl() {
    let config = parse(
        "proxy:\n  remoteurl: http://127.0.0.1:5001\n  username: u\n  password: p\n  ttl: 1h30m\n",
    )
    .unwrap();
    assert_eq!(config.upstreams[0].name, "127.0.0.1:5001");
    assert_eq!(config.ttl, Duration::from_secs(5400));
}

#[test]
fn unknown_and_unsupported_keys_warn_at_their_place() {
    let config =
        parse("bogus: 1\nproxy: {remoteurl: https://r.io, extra: x}\nauth: {token: {realm: x}}\n")
            .unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "config.yml:1:1: bogus: unknown key, ignored",
            "config.yml:2:34: proxy.extra: unknown key, ignored",
            "config.yml:3:8: auth.token: a distribution setting regmirror does not implement; \
             ignored",
        ]
    );
}

#[test]
fn wrong_type_names_file_line_and_column() {
    let e = parse("version: 0.1\nproxy:\n  on: [1]\n  remoteurl: https://r.io\n").unwrap_err();
    assert_eq!(e, "config.yml:3:3: proxy.on: a list is not true or false");
}

#[test]
fn tag_revalidation_windows() {
    let config = parse(
            "proxy:\n  tag_revalidate: 10m\n  serve_stale_on_404: true\n  remoteregistries:\n  - url: https://a.io\n  - url: https://b.io\n    tag_revalidate: 30s\n",
        )
        .unwrap();
    assert_eq!(config.upstreams[0].tag_revalidate, Duration::from_secs(600));
    assert_eq!(config.upstreams[1].tag_revalidate, Duration::from_secs(30));
    assert!(config.serve_stale_on_404);
    assert_eq!(
        CacheConfig::embedded_default().upstreams[0].tag_revalidate,
        Duration::ZERO
    );
    assert!(
        parse("proxy: {remoteregistries: [{url: https://a.io, tag_revalidate: soon}]}\n")
            .unwrap_err()
            .contains("proxy.remoteregistries[0].tag_revalidate")
    );
}

#[test]
fn local_repositories() {
    let config = parse("proxy: {remoteurl: https://r.io}\nlocal: [{prefix: myteam/}, {prefix: ci/}]\nstorage: {delete: {enabled: true}}\n").unwrap();
    assert!(config.local.contains("myteam/app") && config.local.contains("ci/x"));
    assert!(!config.local.contains("library/nginx"));
    assert!(config.delete_enabled);
    assert_eq!(config.local.describe(), "myteam/, ci/");
    let all = parse("local: all\n").unwrap();
    assert_eq!(all.local, LocalRepositories::All);
    assert!(all.upstreams.is_empty());
    assert!(
        parse("local: [{nope: x}]\n")
            .unwrap_err()
            .contains("local[0]")
    );
    assert!(parse("local: 5\n").unwrap_err().contains("local:"));
}

#[test]
fn env_overrides_apply() {
    let env = vec![
        ("REGISTRY_HTTP_ADDR".to_owned(), "127.0.0.1:6000".to_owned()),
        (
            "REGISTRY_PROXY_REMOTEURL".to_owned(),
            "http://127.0.0.1:5001".to_owned(),
        ),
        (
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".to_owned(),
            "/data".to_owned(),
        ),
        ("HOME".to_owned(), "/root".to_owned()),
        ("REGISTRY_STORAGE_GC_INTERVAL".to_owned(), "1s".to_owned()),
        ("REGISTRY_PROXY_TAG_REVALIDATE".to_owned(), "1m".to_owned()),
    ];
    let config = CacheConfig::parse(
        "config.yml",
        Some("proxy: {remoteurl: https://x.io}\n"),
        &env,
    )
    .unwrap();
    assert_eq!(config.listen, "127.0.0.1:6000");
    assert_eq!(config.upstreams[0].name, "127.0.0.1:5001");
    assert_eq!(config.root, PathBuf::from("/data"));
    assert_eq!(
        config.gc_interval,
        Duration::from_secs(1),
        "keys with underscores are found"
    );
    assert_eq!(config.upstreams[0].tag_revalidate, Duration::from_secs(60));
    // Without a file, overrides apply to an empty document.
    let config = CacheConfig::parse("(none)", None, &env).unwrap();
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.listen, "127.0.0.1:6000");
}

#[test]
fn embedded_default() {
    let config = CacheConfig::parse("(none)", None, &[]).unwrap();
    assert_eq!(config.listen, "127.0.0.1:5000");
    assert_eq!(config.upstreams[0].name, "docker.io");
    assert_eq!(
        config.upstreams[0].url.to_string(),
        "https://registry-1.docker.io"
    );
    assert_eq!(config.upstreams.len(), 7);
}

/// Seed 000's "cache off" file, verbatim: no proxy section, a plain registry.
const SEED_CACHE_OFF: &str = include_str!("../../../tests/fixtures/seed-000-cache-off.yml");

#[test]
fn without_a_proxy_section_every_repository_is_local() {
    let config = parse(SEED_CACHE_OFF).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert!(config.upstreams.is_empty() && !config.dynamic_upstreams);
    assert_eq!(config.local, LocalRepositories::All);
    assert!(!config.delete_enabled, "deletes stay off unless enabled");
    // An explicit `local` still decides.
    let some = parse("local: [{prefix: team/}]\n").unwrap();
    assert!(some.local.contains("team/x") && !some.local.contains("other/x"));
}

#[test]
fn invalid_values() {
    assert!(
        parse("proxy: {remoteurl: ftp://x}\n")
            .unwrap_err()
            .contains("proxy.remoteurl")
    );
    assert!(
        parse("http: {addr: ':1'}\nproxy: {ttl: 1h}\n")
            .unwrap_err()
            .contains("no upstream")
    );
    assert!(
        parse("proxy: {remoteurl: https://x, ttl: 5 days}\n")
            .unwrap_err()
            .contains("proxy.ttl")
    );
    assert!(
        parse("http: {tls: {key: /k}}\nproxy: {on: true}\n")
            .unwrap_err()
            .contains("together")
    );
    assert!(
            parse("proxy: {remoteurl: https://registry-1.docker.io, remoteregistries: [{url: https://docker.io}]}\n")
                .unwrap_err()
                .contains("configured twice")
        );
}

#[test]
fn seed_004_s3_environment_verbatim() {
    let env: Vec<(String, String)> = [
        ("REGISTRY_STORAGE", "s3"),
        ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
        ("REGISTRY_STORAGE_S3_BUCKET", "registry"),
        ("REGISTRY_STORAGE_S3_REGION", "minio"),
        ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "http://s3:9000"),
        ("REGISTRY_STORAGE_S3_ACCESSKEY", "minioadmin"),
        ("REGISTRY_STORAGE_S3_SECRETKEY", "minioadmin"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // With no file at all (seed 004 passes only the environment), and over a file that
    // names the filesystem driver: the environment selects s3.
    for text in [
        None,
        Some(
            "storage: {filesystem: {rootdirectory: /x}, delete: {enabled: true}}\nproxy: {on: true}\n",
        ),
    ] {
        let c = CacheConfig::parse("c.yml", text, &env).unwrap();
        let StorageBackend::S3(s3) = &c.storage else {
            panic!("s3 expected: {:?}", c.storage);
        };
        assert_eq!(s3.bucket, "registry");
        assert_eq!(s3.region, "minio");
        assert_eq!(s3.endpoint.as_deref(), Some("http://s3:9000"));
        assert!(s3.path_style, "path style with an endpoint");
        assert!(!s3.redirect, "REDIRECT_DISABLE");
        assert_eq!(s3.chunk_size, DEFAULT_S3_CHUNK_SIZE);
        let shown = format!("{s3:?}");
        assert!(
            shown.contains("<redacted>") && shown.matches("minioadmin").count() == 1,
            "the secret key is never shown: {shown}"
        );
        if text.is_some() {
            assert!(
                c.delete_enabled,
                "other storage keys survive the driver choice"
            );
        }
    }
}

#[test]
fn s3_settings() {
    let c = parse(
            "proxy: {on: true}\nstorage: {s3: {bucket: b, regionendpoint: 127.0.0.1:9000, secure: false, rootdirectory: /cache/, chunksize: 16MiB}, spool: /var/spool/rm}",
        )
        .unwrap();
    let StorageBackend::S3(s3) = &c.storage else {
        panic!()
    };
    assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s3.prefix, "cache");
    assert_eq!(s3.chunk_size, 16 << 20);
    assert!(s3.redirect, "distribution redirects by default");
    assert!(s3.credentials.is_none(), "the AWS environment then");
    assert_eq!(c.root, PathBuf::from("/var/spool/rm"));
    for (text, field) in [
        ("storage: {s3: {region: x}}", "storage.s3.bucket"),
        (
            "storage: {s3: {bucket: b, chunksize: 1MiB}}",
            "storage.s3.chunksize",
        ),
        (
            "storage: {s3: {bucket: b, accesskey: a}}",
            "storage.s3.accesskey",
        ),
        (
            "storage: {s3: {bucket: b}, filesystem: {rootdirectory: /x}}",
            "storage",
        ),
    ] {
        let e = parse(&format!("proxy: {{on: true}}\n{text}")).unwrap_err();
        assert!(e.contains(field), "{text}: {e}");
    }
}

#[test]
fn azure_settings() {
    let key = "a2V5LWJ5dGVz";
    let c = parse(&format!(
        "proxy: {{on: true}}\nstorage: {{azure: {{accountname: acct, accountkey: {key}, container: reg, rootdirectory: /cache/}}}}"
    ))
    .unwrap();
    let StorageBackend::Azure(azure) = &c.storage else {
        panic!("azure expected: {:?}", c.storage)
    };
    assert_eq!(azure.account, "acct");
    assert_eq!(azure.container, "reg");
    assert_eq!(azure.service_url, "https://acct.blob.core.windows.net");
    assert_eq!(azure.prefix, "cache");
    assert_eq!(
        azure.credentials,
        AzureCredentials::SharedKey(Secret(key.into()))
    );
    assert!(azure.redirect, "distribution redirects by default");
    assert!(
        !format!("{azure:?}").contains(key),
        "the key is never shown"
    );
    // realm, an emulator's service URL, the other credential types.
    let c = parse(
        "proxy: {on: true}\nstorage: {azure: {accountname: a, container: c, realm: core.chinacloudapi.cn, credentials: {type: default_credentials}}}",
    )
    .unwrap();
    let StorageBackend::Azure(azure) = &c.storage else {
        panic!()
    };
    assert_eq!(azure.service_url, "https://a.blob.core.chinacloudapi.cn");
    assert_eq!(azure.credentials, AzureCredentials::Default);
    let c = parse(
        "proxy: {on: true}\nstorage: {azure: {accountname: a, container: c, serviceurl: 'http://127.0.0.1:10000/a/', credentials: {type: client_secret, clientid: i, tenantid: t, secret: s}}}",
    )
    .unwrap();
    let StorageBackend::Azure(azure) = &c.storage else {
        panic!()
    };
    assert_eq!(azure.service_url, "http://127.0.0.1:10000/a");
    assert!(
        matches!(&azure.credentials, AzureCredentials::ClientSecret { client_id, tenant_id, .. } if client_id == "i" && tenant_id == "t")
    );
    for (text, field) in [
        (
            "storage: {azure: {accountname: a}}",
            "storage.azure.container",
        ),
        (
            "storage: {azure: {container: c}}",
            "storage.azure.accountname",
        ),
        (
            "storage: {azure: {accountname: a, container: c, credentials: {type: shared_key}}}",
            "storage.azure.credentials.type: shared_key needs storage.azure.accountkey",
        ),
        (
            "storage: {azure: {accountname: a, container: c, credentials: {type: magic}}}",
            "storage.azure.credentials.type: \"magic\": one of",
        ),
        (
            "storage: {azure: {accountname: a, container: c, credentials: {type: client_secret, clientid: i}}}",
            "storage.azure.credentials.tenantid: is required",
        ),
        (
            "storage: {azure: {accountname: a, container: c, serviceurl: 'not a url'}}",
            "storage.azure.serviceurl",
        ),
        (
            "storage: {azure: {accountname: a, container: c, connectionstring: 'AccountName=a'}}",
            "storage.azure.connectionstring: takes the place of accountname",
        ),
        (
            "storage: {azure: {container: c, connectionstring: 'AccountKey=k'}}",
            "storage.azure.connectionstring: has no AccountName",
        ),
        (
            "storage: {azure: {container: c, connectionstring: 'AccountName'}}",
            "storage.azure.connectionstring: \"AccountName\" is not Name=value",
        ),
        (
            "storage: {azure: {accountname: a, container: c}, s3: {bucket: b}}",
            "storage: both s3 and azure are configured",
        ),
        (
            "storage: {azure: {accountname: a, container: c, skipverify: true}}",
            "",
        ),
    ] {
        let result = parse(&format!("proxy: {{on: true}}\n{text}"));
        if field.is_empty() {
            assert!(result.is_ok(), "{text}: {result:?}");
            continue;
        }
        let e = result.unwrap_err();
        assert!(e.contains(field), "{text}: {e}");
    }
}

#[test]
fn azure_from_a_connection_string_and_the_environment() {
    let connection = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
    let env: Vec<(String, String)> = [
        ("REGISTRY_STORAGE", "azure"),
        ("REGISTRY_STORAGE_AZURE_CONTAINER", "registry"),
        ("REGISTRY_STORAGE_AZURE_CONNECTIONSTRING", connection),
        ("REGISTRY_STORAGE_AZURE_ROOTDIRECTORY", "fleet"),
        ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // Over a file naming the filesystem driver too: the environment selects azure.
    let c = CacheConfig::parse(
        "c.yml",
        Some("storage: {filesystem: {rootdirectory: /x}}\nproxy: {on: true}\n"),
        &env,
    )
    .unwrap();
    let StorageBackend::Azure(azure) = &c.storage else {
        panic!("azure expected: {:?}", c.storage)
    };
    assert_eq!(azure.account, "devstoreaccount1");
    assert_eq!(azure.service_url, "http://127.0.0.1:10000/devstoreaccount1");
    assert_eq!(
        azure.credentials,
        AzureCredentials::SharedKey(Secret("a2V5".into()))
    );
    assert_eq!(azure.prefix, "fleet");
    assert!(!azure.redirect);
    // EndpointSuffix in place of BlobEndpoint.
    let c = parse(
        "proxy: {on: true}\nstorage: {azure: {container: c, connectionstring: 'AccountName=x;AccountKey=k;EndpointSuffix=core.usgovcloudapi.net'}}",
    )
    .unwrap();
    let StorageBackend::Azure(azure) = &c.storage else {
        panic!()
    };
    assert_eq!(azure.service_url, "https://x.blob.core.usgovcloudapi.net");
    // A missing key names the variable that chose the driver.
    let env = [("REGISTRY_STORAGE".to_owned(), "azure".to_owned())];
    let errors = CacheConfig::parse("(embedded default)", None, &env).unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("$REGISTRY_STORAGE: storage.azure.container: is required"),
        "{errors}"
    );
}

#[test]
fn huge_values_are_errors_not_panics() {
    let huge = "9".repeat(400);
    let e = parse(&format!(
        "proxy: {{remoteurl: https://r.io, ttl: {huge}h}}\n"
    ))
    .unwrap_err();
    assert!(e.contains("proxy.ttl"), "{e}");
    let env = vec![(
        "REGISTRY_STORAGE_GC_INTERVAL".to_owned(),
        "18446744073709551615s".to_owned(),
    )];
    let e = CacheConfig::parse("config.yml", Some("proxy: {on: true}\n"), &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage.gc_interval"), "{e}");
}

fn errors_of(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CacheConfig::parse("config.yml", Some(text), &env)
        .expect_err("the configuration should be refused")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_slip_of_a_key_is_an_error_naming_the_key() {
    let errors = errors_of(
        "http:\n  adr: 127.0.0.1:6000\nproxy:\n  remoteurl: https://r.io\n  tag_revalidte: 10m\n",
        &[],
    );
    assert_eq!(
        errors,
        [
            "config.yml:2:3: http.adr: unknown key; did you mean `addr`?",
            "config.yml:5:3: proxy.tag_revalidte: unknown key; did you mean `tag_revalidate`?",
        ]
    );
    // In a list entry, in flow style, in another case, and for a section.
    assert_eq!(
        errors_of(
            "proxy: {remoteregistries: [{url: https://a.io, max_rat: 1}]}\nStorage: {}\n",
            &[]
        ),
        [
            "config.yml:1:48: proxy.remoteregistries[0].max_rat: unknown key; did you mean \
             `max_rate`?",
            "config.yml:2:1: Storage: unknown key; did you mean `storage`?",
        ]
    );
    // A slip of a key regmirror does not read stays a warning, with the hint.
    let config = parse("proxy: {on: true}\nhelth: {}\n").unwrap();
    assert_eq!(
        config.warnings[0].to_string(),
        "config.yml:2:1: helth: unknown key, ignored; did you mean `health`?"
    );
}

#[test]
fn every_value_error_is_reported_at_its_key_in_line_order() {
    let errors = errors_of(
        "storage:\n  maxsize: lots\nproxy:\n  remoteurl: not a url\n  ttl: forever\nlimits:\n  max_fills: 0\n",
        &[],
    );
    assert_eq!(
        errors,
        [
            "config.yml:2:3: storage.maxsize: \"lots\" is not a size like 50GiB",
            "config.yml:4:3: proxy.remoteurl: \"not a url\" is not a URL: relative URL without a \
             base",
            "config.yml:5:3: proxy.ttl: \"forever\" is not a duration like 168h, 30m or 1h30m",
            "config.yml:7:3: limits.max_fills: must be at least 1",
        ]
    );
}

#[test]
fn a_negative_maxsize_is_an_error_not_no_cap() {
    let errors = errors_of("proxy: {on: true}\nstorage: {maxsize: -1}\n", &[]);
    assert_eq!(
        errors,
        ["config.yml:2:11: storage.maxsize: -1 is not a size like 50GiB"]
    );
    assert_eq!(
        parse("proxy: {on: true}\nstorage: {maxsize: 50GiB}\n")
            .unwrap()
            .max_size,
        Some(50 << 30)
    );
}

#[test]
fn an_error_from_the_environment_names_the_variable() {
    let file = "proxy:\n  remoteurl: https://r.io\n";
    assert_eq!(
        errors_of(file, &[("REGISTRY_PROXY_TTL", "forever")]),
        [
            "$REGISTRY_PROXY_TTL: proxy.ttl: \"forever\" is not a duration like 168h, 30m or \
             1h30m"
        ]
    );
    assert_eq!(
        errors_of(file, &[("REGISTRY_PROXY_ON", "maybe")]),
        ["$REGISTRY_PROXY_ON: proxy.on: \"maybe\" is not true or false"]
    );
    assert_eq!(
        errors_of(file, &[("REGISTRY_HTTP_ADR", ":5000")]),
        ["$REGISTRY_HTTP_ADR: http.adr: unknown key; did you mean `addr`?"]
    );
    assert_eq!(
        errors_of(file, &[("REGISTRY_PROXY_TAG_REVALIDTE", "1m")]),
        [
            "$REGISTRY_PROXY_TAG_REVALIDTE: proxy.tag_revalidte: unknown key; did you mean \
             `tag_revalidate`?"
        ]
    );
    // The file's own errors come first, by line; the environment's after.
    assert_eq!(
        errors_of(
            "proxy:\n  remoteurl: https://r.io\n  max_rate: 0\n",
            &[("REGISTRY_PROXY_TTL", "x")]
        )
        .len(),
        2
    );
    // Without a file, an error on what a variable set names it too.
    let env = [("REGISTRY_STORAGE".to_owned(), "s3".to_owned())];
    let errors = CacheConfig::parse("(embedded default)", None, &env).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "$REGISTRY_STORAGE: storage.s3.bucket: is required"
    );
}

#[test]
fn a_string_reads_a_number_or_boolean_as_written() {
    let config = parse(
        "proxy:\n  remoteurl: https://r.io\n  username: 1e3\n  password: 0x1F\nhttp: {secret: 1234567890123456.50}\n",
    )
    .unwrap();
    let credentials = config.upstreams[0].credentials.as_ref().unwrap();
    assert_eq!(credentials.username(), "1e3");
    assert_eq!(credentials.password(), "0x1F");
    assert_eq!(config.secret, Some(Secret("1234567890123456.50".into())));
    // A variable is read as its text.
    let env = [("REGISTRY_PROXY_PASSWORD".to_owned(), "1.50".to_owned())];
    let config = CacheConfig::parse(
        "c.yml",
        Some("proxy: {remoteurl: https://r.io, username: u}\n"),
        &env,
    )
    .unwrap();
    assert_eq!(
        config.upstreams[0].credentials.as_ref().unwrap().password(),
        "1.50"
    );
}

#[test]
fn syntax_and_shape_errors_are_located() {
    assert_eq!(
        errors_of("proxy:\n  on: true\n  x: [\n", &[]),
        [
            "config.yml:4:1: invalid YAML: did not find expected node content, while parsing a \
          flow node"
        ]
    );
    assert_eq!(
        errors_of("- a\n- b\n", &[]),
        ["config.yml:1:1: the file must hold a mapping of sections (proxy:, storage:, http: ...)"]
    );
    assert_eq!(
        errors_of("proxy: 5\nhttp: [1]\n", &[]),
        [
            "config.yml:1:1: proxy: 5 is not a mapping",
            "config.yml:2:1: http: a list is not a mapping",
        ]
    );
    assert_eq!(
        errors_of("proxy: {remoteregistries: [x, {url: https://a.io}]}\n", &[]),
        ["config.yml:1:28: proxy.remoteregistries[0]: \"x\" is not a mapping"]
    );
}

#[test]
fn distributions_own_keys_are_never_errors() {
    // distribution 2 and 3 keys that regmirror does not read: accepted, at most with a warning.
    let config = parse(
        "version: 0.1
log: {level: info, formatter: text, fields: {a: b}, reportcaller: true}
storage:
  filesystem: {rootdirectory: /r, maxthreads: 100}
  cache: {blobdescriptor: inmemory}
  maintenance: {uploadpurging: {enabled: false}}
  tag: {concurrencylimit: 8}
http:
  addr: :5000
  prefix: /
  relativeurls: false
  draintimeout: 60s
  debug: {addr: 'localhost:5001'}
  http2: {disabled: false}
  h2c: {enabled: false}
  tls: {clientauth: require-and-verify-client-cert, minimumtls: tls1.2, ciphersuites: [x]}
proxy: {remoteurl: https://r.io}
health: {storagedriver: {enabled: true}}
notifications: {events: {includereferences: true}}
redis: {addr: x}
validation: {disabled: true}
catalog: {maxentries: 1000}
middleware: {}
",
    )
    .unwrap();
    assert!(
        config
            .warnings
            .iter()
            .all(|w| w.message.contains("does not implement")),
        "{:?}",
        config.warnings
    );
}

/// Every field path of `raw`'s structs as serde walks them (`proxy.remoteregistries[].url`),
/// found by reading them from a deserializer that records what it is asked for.
fn raw_fields() -> std::collections::BTreeSet<String> {
    use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    type Fields = RefCell<std::collections::BTreeSet<String>>;
    struct Tracer<'a>(String, &'a Fields);
    struct Struct<'a>(String, &'static [&'static str], usize, &'a Fields);
    struct One<'a>(Option<Tracer<'a>>);

    impl<'de, 'a> de::Deserializer<'de> for Tracer<'a> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
            v.visit_unit()
        }
        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
            v.visit_some(self)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
            let item = Tracer(format!("{}[]", self.0), self.1);
            v.visit_seq(One(Some(item)))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Self::Error> {
            v.visit_map(Struct(self.0, fields, 0, self.1))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf unit
            unit_struct newtype_struct tuple tuple_struct map enum identifier ignored_any
        }
    }
    impl<'de> MapAccess<'de> for Struct<'_> {
        type Error = de::value::Error;
        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Self::Error> {
            let Some(name) = self.1.get(self.2) else {
                return Ok(None);
            };
            seed.deserialize(name.into_deserializer()).map(Some)
        }
        fn next_value_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<S::Value, Self::Error> {
            let name = self.1[self.2];
            self.2 += 1;
            let path = match self.0.as_str() {
                "" => name.to_owned(),
                parent => format!("{parent}.{name}"),
            };
            self.3.borrow_mut().insert(path.clone());
            seed.deserialize(Tracer(path, self.3))
        }
    }
    impl<'de> SeqAccess<'de> for One<'_> {
        type Error = de::value::Error;
        fn next_element_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<Option<S::Value>, Self::Error> {
            self.0.take().map(|item| seed.deserialize(item)).transpose()
        }
    }

    let fields = Fields::default();
    raw::RawConfig::deserialize(Tracer(String::new(), &fields)).expect("the tracer reads all");
    fields.into_inner()
}

/// Every key path of the key table that regmirror reads.
fn read_keys() -> std::collections::BTreeSet<String> {
    fn walk(key: &keys::Key, path: &str, out: &mut std::collections::BTreeSet<String>) {
        match key {
            keys::Key::Map(fields) => {
                for (name, sub) in fields.iter().filter(|(_, sub)| sub.is_read()) {
                    let child = match path {
                        "" => name.to_string(),
                        parent => format!("{parent}.{name}"),
                    };
                    out.insert(child.clone());
                    walk(sub, &child, out);
                }
            }
            keys::Key::List(item) => walk(item, &format!("{path}[]"), out),
            _ => {}
        }
    }
    let mut out = Default::default();
    walk(&keys::KEYS, "", &mut out);
    out
}

#[test]
fn every_key_read_reaches_a_field_and_every_field_has_its_key() {
    let (keys, fields) = (read_keys(), raw_fields());
    let no_field: Vec<_> = keys.difference(&fields).collect();
    let no_key: Vec<_> = fields.difference(&keys).collect();
    assert!(
        no_field.is_empty() && no_key.is_empty(),
        "keys read without a field: {no_field:?}; fields without a key: {no_key:?}"
    );
    assert!(
        keys.contains("proxy.remoteregistries[].max_rate"),
        "{keys:?}"
    );
    assert!(keys.len() > 60, "{}", keys.len());
}

#[test]
fn a_wrong_value_of_every_key_read_is_reported_at_that_key() {
    // A list of a list is no key's value: each validation must report it under its own name.
    for path in read_keys() {
        let (keys, leaf) = match path.rsplit_once('.') {
            _ if path == "local" || path == "http.headers" => continue,
            Some((parent, leaf)) => (parent.to_owned(), leaf.to_owned()),
            None => (String::new(), path.clone()),
        };
        if read_keys()
            .iter()
            .any(|k| k.starts_with(&format!("{path}.")))
        {
            continue; // a section: its keys are tried one by one
        }
        let mut yaml = format!("{leaf}: [[1]]");
        for key in keys.rsplit('.').filter(|k| !k.is_empty()) {
            yaml = match key.strip_suffix("[]") {
                Some(list) => format!("{list}: [{{{yaml}}}]"),
                None => format!("{key}: {{{yaml}}}"),
            };
        }
        let text = format!("{yaml}\nproxy: {{on: true}}\n");
        let text = if path.starts_with("proxy.") {
            yaml.clone()
        } else {
            text
        };
        let errors = match CacheConfig::parse("c.yml", Some(&text), &[]) {
            Err(errors) => errors,
            Ok(_) => panic!("{text}: accepted"),
        };
        let field = path.replace("[]", "[0]");
        assert!(
            errors.0.iter().any(|e| e.field.starts_with(&field)),
            "{text}: no error for {field}: {errors}"
        );
    }
}

#[test]
fn exec_gives_an_upstream_a_credential_helper() {
    let config = parse(
        "proxy:\n  remoteurl: https://r.io\n  username: ignored\n  exec:\n    command: docker-credential-ecr-login\n    lifetime: 1h\n  remoteregistries:\n  - url: https://a.io\n    exec: {command: /usr/local/bin/helper, lifetime: 0, timeout: 5s}\n  - url: https://b.io\n    exec: {command: helper}\n",
    )
    .unwrap();
    let [r, a, b] = &config.upstreams[..] else {
        panic!("{:?}", config.upstreams)
    };
    let r = r.credential_helper.as_ref().unwrap();
    assert_eq!(r.program, "docker-credential-ecr-login");
    assert_eq!(r.lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(r.timeout, crate::config::DEFAULT_HELPER_TIMEOUT);
    let a = a.credential_helper.as_ref().unwrap();
    assert_eq!(
        (a.program.as_str(), a.lifetime, a.timeout),
        (
            "/usr/local/bin/helper",
            Some(Duration::ZERO),
            Duration::from_secs(5)
        )
    );
    assert_eq!(b.credential_helper.as_ref().unwrap().lifetime, None, "once");
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("proxy.username: ignored: exec is set")),
        "{warnings:?}"
    );
}

#[test]
fn exec_beside_no_remoteurl_is_a_warning() {
    let config =
        parse("proxy: {exec: {command: h}, remoteregistries: [{url: https://a.io}]}\n").unwrap();
    assert!(config.upstreams[0].credential_helper.is_none());
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("proxy.exec: ignored without proxy.remoteurl")),
        "{warnings:?}"
    );
}

#[test]
fn exec_mistakes_are_errors_at_their_key() {
    for (text, expected) in [
        (
            "proxy: {remoteurl: https://r.io, exec: {lifetime: 1h}}\n",
            "proxy.exec.command: is required",
        ),
        (
            "proxy: {remoteurl: https://r.io, exec: {command: ' '}}\n",
            "proxy.exec.command: is empty",
        ),
        (
            "proxy: {remoteregistries: [{url: https://a.io, exec: {command: h, lifetime: soon}}]}\n",
            "proxy.remoteregistries[0].exec.lifetime",
        ),
        (
            "proxy: {remoteurl: https://r.io, exec: {command: h, timeout: 0}}\n",
            "proxy.exec.timeout: \"0\" is not a positive duration",
        ),
        (
            "proxy: {remoteurl: https://r.io, exec: {comand: h}}\n",
            "did you mean `command`?",
        ),
    ] {
        let error = parse(text).unwrap_err();
        assert!(error.contains(expected), "{text}: {error}");
    }
}

#[test]
fn exec_takes_distributions_environment_overrides() {
    let env = [
        (
            "REGISTRY_PROXY_REMOTEURL".to_owned(),
            "https://r.io".to_owned(),
        ),
        (
            "REGISTRY_PROXY_EXEC_COMMAND".to_owned(),
            "docker-credential-gcr".to_owned(),
        ),
        ("REGISTRY_PROXY_EXEC_LIFETIME".to_owned(), "30m".to_owned()),
    ];
    let config = CacheConfig::parse("config.yml", None, &env).unwrap();
    let helper = config.upstreams[0].credential_helper.as_ref().unwrap();
    assert_eq!(helper.program, "docker-credential-gcr");
    assert_eq!(helper.lifetime, Some(Duration::from_secs(1800)));
}
