//! `cargo xtask deploy --dry-run` renders manifests a cluster would accept: every built-in
//! object passes the offline Kubernetes schema check (`kubernetes-validate --strict`, 1.31
//! and the newest it knows; installed by .ci/run), the CRD objects (HTTPRoute,
//! ServiceMonitor, PrometheusRule) have the structure asserted here, and the alert rules pass
//! `promtool check rules` and `promtool test rules`. The rules the design rests on hold:
//! ConfigMap and Secret mounted as directories (no `subPath` anywhere), no config-hash
//! annotation on the pod template, no Secret unless asked for, `--namespace` everywhere,
//! nothing in front of the gateway cutting long streams, the docs' in-cluster check pod
//! admitted by restricted Pod Security. The renderer lives in the xtask crate (which this
//! package cannot depend on), so the tests run it as a command, as users do. A missing
//! python3 module or promtool fails the test unless RINGGATE_TEST_ALLOW_SKIP=1.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{json, Value};

fn xtask_deploy_output(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "-p", "xtask", "--", "deploy"])
        .args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run cargo xtask deploy")
}

fn xtask_deploy(args: &[&str]) -> String {
    let out = xtask_deploy_output(args, &[]);
    assert!(
        out.status.success(),
        "xtask deploy {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `--dry-run --format json ARGS` as the List's items.
fn items_of(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--dry-run", "--format", "json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&xtask_deploy(&all)).expect("json");
    v["items"].as_array().expect("items").clone()
}

/// Every optional object at once: the Secret template, Ingress and HTTPRoute, the in-flight HPA.
const EVERYTHING: &[&str] = &[
    "--with-secret-template",
    "--route",
    "both",
    "--gateway",
    "eg/infra",
    "--hpa-metric",
    "in-flight",
];

/// Whether a missing tool may skip a test: only when RINGGATE_TEST_ALLOW_SKIP=1, so CI
/// (which installs the tools) can never pass by skipping.
fn skip_without(tool: &str, error: &std::io::Error) -> bool {
    if std::env::var("RINGGATE_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {tool} cannot run ({error}); RINGGATE_TEST_ALLOW_SKIP=1");
        return true;
    }
    panic!(
        "{tool} cannot run ({error}): .ci/run installs it (set RINGGATE_TEST_ALLOW_SKIP=1 to skip)"
    );
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringgate-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// The default rendering as YAML (what users see) and as a JSON List (what the asserts walk).
fn rendered() -> &'static (String, Vec<Value>) {
    static R: OnceLock<(String, Vec<Value>)> = OnceLock::new();
    R.get_or_init(|| {
        let yaml = xtask_deploy(&["--dry-run"]);
        let json: Value =
            serde_json::from_str(&xtask_deploy(&["--dry-run", "--format", "json"])).expect("json");
        let items = json["items"].as_array().expect("items").clone();
        (yaml, items)
    })
}

fn object<'a>(items: &'a [Value], kind: &str) -> &'a Value {
    items
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// Every key anywhere in `v`, with its value.
fn walk<'a>(v: &'a Value, out: &mut Vec<(&'a str, &'a Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push((k.as_str(), x));
                walk(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

#[test]
fn every_object_is_rendered_once_in_order() {
    let (yaml, items) = rendered();
    let kinds: Vec<&str> = items.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service",
            "Ingress",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
            "NetworkPolicy"
        ]
    );
    assert_eq!(yaml.matches("\n---\n").count(), items.len() - 1);
    let kinds: Vec<String> = items_of(EVERYTHING)
        .iter()
        .filter_map(|o| o["kind"].as_str().map(String::from))
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "Ingress",
            "HTTPRoute",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
            "NetworkPolicy"
        ]
    );
}

/// `--dry-run | kubectl apply -f -` (or GitOps) must never replace a real key with the
/// template's placeholder: no Secret by default, the template only when asked for.
#[test]
fn the_default_output_holds_no_secret() {
    let (yaml, items) = rendered();
    assert!(items.iter().all(|o| o["kind"] != "Secret"));
    assert!(!yaml.contains("kind: Secret"), "{yaml}");
    assert!(!yaml.contains("YOUR_HOLYSHEEP_API_KEY") && !yaml.contains("stringData"));
    // The Deployment still mounts the Secret by the template's name.
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configmaps/provider-secret.yaml"),
    )
    .expect("template");
    assert!(template.contains("name: ringgate-provider"));
    let volumes = &object(items, "Deployment")["spec"]["template"]["spec"]["volumes"];
    assert!(volumes
        .as_array()
        .expect("volumes")
        .iter()
        .any(|v| v["secret"]["secretName"] == "ringgate-provider"));
    let with = xtask_deploy(&["--dry-run", "--with-secret-template"]);
    assert!(with.contains("kind: Secret") && with.contains("YOUR_HOLYSHEEP_API_KEY"));
    assert!(
        with.contains("PLACEHOLDER"),
        "the template is labelled as one"
    );
}

/// Applying (with kubectl replaced by a recording fake): an existing Secret is never
/// applied over, a missing one stops the deploy unless `--with-secret-template`, CRD
/// objects are left out when their CRDs are absent, and an HTTPRoute without Gateway API
/// CRDs is an error.
#[test]
fn apply_never_overwrites_a_secret_and_never_creates_one_unasked() {
    let dir = temp_dir("fake-kubectl");
    let fake = dir.join("kubectl");
    std::fs::write(
        &fake,
        r#"#!/bin/sh
echo "$*" >> "$FAKE_KUBECTL_DIR/calls"
case "$1" in
  version) exit 0 ;;
  get)
    if [ "$2" = secret ] && [ -e "$FAKE_KUBECTL_DIR/secret-exists" ]; then echo secret/ringgate-provider; exit 0; fi
    echo "Error from server (NotFound): $2 \"$3\" not found" >&2; exit 1 ;;
  apply) cat > "$FAKE_KUBECTL_DIR/applied"; echo applied; exit 0 ;;
esac
exit 3
"#,
    )
    .expect("write fake kubectl");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = dir.display().to_string();
    let run = |args: &[&str]| {
        let _ = std::fs::remove_file(dir.join("applied"));
        let _ = std::fs::remove_file(dir.join("calls"));
        let out = xtask_deploy_output(args, &[("PATH", &path), ("FAKE_KUBECTL_DIR", &d)]);
        let applied = std::fs::read_to_string(dir.join("applied")).ok();
        (out, applied)
    };
    // No Secret in the cluster, no flag: refused before anything is applied.
    let (out, applied) = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not exist") && err.contains("--with-secret-template"),
        "{err}"
    );
    assert!(
        err.contains("create secret generic ringgate-provider"),
        "{err}"
    );
    assert!(applied.is_none(), "nothing may be applied");
    // No Secret, the flag: the template is created.
    let (out, applied) = run(&["--with-secret-template"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = applied.expect("applied");
    assert!(applied.contains("\nkind: Secret\n"), "{applied}");
    // A Secret exists: never applied over, flag or not.
    std::fs::write(dir.join("secret-exists"), "").expect("marker");
    for args in [&[][..], &["--with-secret-template"][..]] {
        let (out, applied) = run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let applied = applied.expect("applied");
        assert!(!applied.contains("kind: Secret"), "{args:?}: {applied}");
        assert!(applied.contains("\nkind: Deployment\n"));
        // No prometheus-operator CRDs in the fake cluster: both of its objects skipped.
        for kind in ["ServiceMonitor", "PrometheusRule"] {
            assert!(!applied.contains(&format!("kind: {kind}")), "{kind}");
            assert!(text.contains(&format!("no {kind} CRD")), "{text}");
        }
    }
    // An HTTPRoute asked for, no Gateway API CRDs: an error, nothing applied.
    let (out, applied) = run(&["--route", "httproute", "--gateway", "eg"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Gateway API"), "{err}");
    assert!(applied.is_none());
    let _ = std::fs::remove_dir_all(dir);
}

/// Every rendering variant through the offline schema check, strict (unknown fields are
/// errors), against Kubernetes 1.31 and the newest version kubernetes-validate knows. The
/// CRD kinds have no bundled schema (a WARN); their structure is asserted in the tests
/// below and by their typed round trip in xtask/src/deploy.rs.
#[test]
fn the_manifests_pass_the_kubernetes_schema_check() {
    let newest = match Command::new("python3")
        .args([
            "-c",
            "import kubernetes_validate.utils as u; print(u.latest_version())",
        ])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            let e = std::io::Error::other(String::from_utf8_lossy(&o.stderr).into_owned());
            if skip_without("python3 -m kubernetes_validate", &e) {
                return;
            }
            unreachable!()
        }
        Err(e) => {
            if skip_without("python3", &e) {
                return;
            }
            unreachable!()
        }
    };
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    let versions = ["1.31".to_string(), minor(&newest)];
    assert!(
        versions[1].as_str() > "1.31",
        "kubernetes-validate {newest} is older than 1.31"
    );
    let dir = temp_dir("schema");
    let variants: [&[&str]; 6] = [
        &[],
        &["--seccomp", "localhost"],
        EVERYTHING,
        &["--with-redis", "--with-secret-template"],
        &[
            "--redis-url",
            "rediss://redis.example.net:6380",
            "--redis-password-secret",
            "my-redis",
        ],
        &[
            "--namespace",
            "gw-test",
            "--route",
            "httproute",
            "--gateway",
            "eg",
        ],
    ];
    let crds = ["HTTPRoute", "ServiceMonitor", "PrometheusRule"];
    let mut files = Vec::new();
    let mut expected = BTreeSet::new();
    let mut builtins = 0;
    for (i, args) in variants.iter().enumerate() {
        let f = dir.join(format!("variant-{i}.yaml"));
        let mut all = vec!["--dry-run"];
        all.extend_from_slice(args);
        std::fs::write(&f, xtask_deploy(&all)).expect("write");
        for o in items_of(args) {
            let kind = o["kind"].as_str().expect("kind").to_string();
            if crds.contains(&kind.as_str()) {
                continue;
            }
            builtins += 1;
            for v in &versions {
                expected.insert(format!(
                    "INFO {} passed for resource {}/{} against version {v}",
                    f.display(),
                    kind.to_lowercase(),
                    o["metadata"]["name"].as_str().expect("name")
                ));
            }
        }
        files.push(f);
    }
    // PyYAML reads YAML 1.1 as kubectl does, so an unquoted `off` would fail here too.
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(
            versions
                .iter()
                .flat_map(|v| ["-k".to_string(), format!("{v}.0")]),
        )
        .args(&files)
        .output()
        .expect("python3 -m kubernetes_validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
    let passed: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("INFO "))
        .map(String::from)
        .collect();
    assert_eq!(passed, expected, "{text}");
    assert_eq!(passed.len(), builtins * versions.len());
    for warn in text.lines().filter(|l| l.starts_with("WARN ")) {
        assert!(
            crds.iter().any(|k| warn.contains(&format!("kind {k} "))),
            "unexpected: {warn}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `--namespace` reaches every object (the ConfigMap read from a file included) and every
/// place a namespace is named (the ServiceMonitor's selector, the alert expressions, the
/// comments): the default namespace appears nowhere. The shipped manifests name none, so
/// `kubectl -n NS apply -f` works on them.
#[test]
fn the_namespace_reaches_every_object() {
    let mut args = vec!["--namespace", "gw-test"];
    args.extend_from_slice(EVERYTHING);
    let items = items_of(&args);
    assert_eq!(object(&items, "Namespace")["metadata"]["name"], "gw-test");
    assert!(object(&items, "Namespace")["metadata"]
        .get("namespace")
        .is_none());
    for o in items.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(o["metadata"]["namespace"], "gw-test", "{}", o["kind"]);
    }
    assert_eq!(
        object(&items, "ServiceMonitor")["spec"]["namespaceSelector"]["matchNames"],
        json!(["gw-test"])
    );
    let json_text = serde_json::to_string(&items).expect("json");
    assert!(!json_text.contains("ai-gateway"), "{json_text}");
    let mut yaml_args = vec!["--dry-run"];
    yaml_args.extend_from_slice(&args);
    let yaml = xtask_deploy(&yaml_args);
    assert!(!yaml.contains("ai-gateway"), "{yaml}");
    for expr in alert_exprs(&items) {
        assert!(expr.contains("namespace=\"gw-test\""), "{expr}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configmaps");
    for file in ["ringgate-config.yaml", "provider-secret.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).expect("manifest");
        // `metadata:` is the only top-level mapping whose keys sit at two spaces.
        assert!(text.contains("\nmetadata:\n  name: "), "{file}");
        assert!(
            !text.lines().any(|l| l.starts_with("  namespace:")),
            "{file} names a namespace"
        );
    }
}

#[test]
fn config_and_secret_are_directory_mounts_and_nothing_uses_subpath() {
    let (yaml, items) = rendered();
    let mut keys = Vec::new();
    items.iter().for_each(|o| walk(o, &mut keys));
    assert!(
        !keys.iter().any(|(k, _)| k.starts_with("subPath")),
        "subPath found"
    );
    assert!(!yaml.contains("subPath:"));
    let dep = object(items, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["args"],
        serde_json::json!(["--config", "/etc/ringgate/config"])
    );
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no mount of {volume}"))
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    let cm_name = object(items, "ConfigMap")["metadata"]["name"].clone();
    let secret_name = object(&items_of(EVERYTHING), "Secret")["metadata"]["name"].clone();
    let cm_vol = volumes
        .iter()
        .find(|v| v["configMap"]["name"] == cm_name)
        .expect("configMap volume");
    let secret_vol = volumes
        .iter()
        .find(|v| v["secret"]["secretName"] == secret_name)
        .expect("secret volume");
    let cm_mount = mount_of(cm_vol["name"].as_str().expect("name"));
    assert_eq!(cm_mount["mountPath"], "/etc/ringgate/config");
    let secret_mount = mount_of(secret_vol["name"].as_str().expect("name"));
    assert_eq!(secret_mount["mountPath"], "/etc/ringgate/secrets");
    for m in [cm_mount, secret_mount] {
        assert!(m.get("subPath").is_none() && m.get("subPathExpr").is_none());
        assert_eq!(m["readOnly"], true);
    }
    // The config names its key inside the mounted Secret directory.
    let toml = object(items, "ConfigMap")["data"]["gateway.toml"]
        .as_str()
        .expect("gateway.toml");
    assert!(toml.contains("api_key_file = \"/etc/ringgate/secrets/api-key\""));
}

#[test]
fn config_edits_never_restart_pods() {
    let (_, items) = rendered();
    let tmpl = &object(items, "Deployment")["spec"]["template"];
    let annotations = tmpl["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        !annotations.keys().any(|k| {
            let k = k.to_ascii_lowercase();
            k.contains("checksum") || k.contains("hash") || k.contains("config")
        }),
        "{annotations:?}"
    );
}

#[test]
fn pod_lifecycle_probes_and_security() {
    let (_, items) = rendered();
    let pod = &object(items, "Deployment")["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace");
    assert!(grace > 25, "{grace}");
    let c = &pod["containers"][0];
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .expect("preStop sleep");
    assert!(pre_stop > 0 && grace > 25 + pre_stop, "{pre_stop} {grace}");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    let ports: Vec<(&str, i64)> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["containerPort"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(ports, [("http", 8080), ("admin", 9901)]);
    assert_eq!(c["resources"]["requests"]["cpu"], "250m");
    assert_eq!(c["resources"]["requests"]["memory"], "256Mi");
    assert_eq!(c["resources"]["limits"]["cpu"], "1000m");
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let local: Value = serde_json::from_str(&xtask_deploy(&[
        "--dry-run",
        "--format",
        "json",
        "--seccomp",
        "localhost",
    ]))
    .expect("json");
    let items = local["items"].as_array().expect("items");
    let profile = &object(items, "Deployment")["spec"]["template"]["spec"]["securityContext"]
        ["seccompProfile"];
    assert_eq!(profile["type"], "Localhost");
    let file = profile["localhostProfile"].as_str().expect("profile");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configmaps")
        .join(Path::new(file).file_name().expect("file name"));
    assert!(shipped.is_file(), "{} not shipped", shipped.display());
}

#[test]
fn service_pdb_monitor_and_admin_access() {
    let (_, items) = rendered();
    let svc_ports = object(items, "Service")["spec"]["ports"].clone();
    let names: Vec<&str> = svc_ports
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["http", "admin"]);
    let pdb = &object(items, "PodDisruptionBudget")["spec"];
    assert_eq!(pdb["maxUnavailable"], 1);
    // A pod that is not ready must not block a node drain.
    assert_eq!(pdb["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    let sm = object(items, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        object(items, "Service")["metadata"]["labels"]
    );
    // What kube-prometheus-stack selects ServiceMonitors and PrometheusRules by.
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        object(items, "PrometheusRule")["metadata"]["labels"]["release"],
        "prometheus"
    );
    let kps = items_of(&["--prometheus-release", "kps"]);
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert_eq!(object(&kps, kind)["metadata"]["labels"]["release"], "kps");
    }
    let np = &object(items, "NetworkPolicy")["spec"];
    let rules = np["ingress"].as_array().expect("rules");
    let http = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == "http")
        .expect("http rule");
    assert!(http.get("from").is_none(), "http must be open");
    let admin = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == "admin")
        .expect("admin rule");
    assert!(!admin["from"].as_array().expect("admin from").is_empty());
}

/// Parses a Gateway API duration (GEP-2257: up to four `<1-5 digits><h|m|s|ms>` parts).
fn gateway_duration_ms(s: &str) -> Option<u64> {
    let (mut total, mut rest, mut parts) = (0u64, s, 0);
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return None;
        };
        total += n * unit;
        rest = &rest[len..];
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// The longest `read_timeout_ms` of the shipped config's routes.
fn longest_route_read_timeout_ms(items: &[Value]) -> u64 {
    let toml = object(items, "ConfigMap")["data"]["gateway.toml"]
        .as_str()
        .expect("gateway.toml");
    toml.lines()
        .filter_map(|l| l.trim().strip_prefix("read_timeout_ms = "))
        .map(|v| v.trim().parse::<u64>().expect("number"))
        .max()
        .expect("routes set read_timeout_ms")
}

/// Neither the Ingress nor the HTTPRoute cuts a long stream before the gateway's own
/// per-route timeouts would; the HTTPRoute is well formed and reaches the Service.
#[test]
fn ingress_and_http_route_let_long_streams_run() {
    let items = items_of(EVERYTHING);
    let longest = longest_route_read_timeout_ms(&items);
    let ann = &object(&items, "Ingress")["metadata"]["annotations"];
    assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-request-buffering"],
        "off"
    );
    for key in ["proxy-read-timeout", "proxy-send-timeout"] {
        let secs: u64 = ann[format!("nginx.ingress.kubernetes.io/{key}")]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect(key);
        assert!(secs >= 3600 && secs * 1000 > longest, "{key} {secs}");
    }
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-connect-timeout"],
        "10"
    );
    let route = object(&items, "HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    let spec = &route["spec"];
    assert_eq!(
        spec["parentRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg", "namespace": "infra"}])
    );
    assert_eq!(spec["hostnames"], json!(["api.yourdomain.com"]));
    let rules = spec["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(
        rule["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/v1"}}])
    );
    let http_port = object(&items, "Service")["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "http")
        .expect("http port")["port"]
        .clone();
    assert_eq!(
        rule["backendRefs"],
        json!([{"group": "", "kind": "Service", "name": object(&items, "Service")["metadata"]["name"], "port": http_port}])
    );
    let t = &rule["timeouts"];
    let ms = |k: &str| {
        let v = t[k].as_str().unwrap_or_else(|| panic!("timeouts.{k}"));
        gateway_duration_ms(v)
            .unwrap_or_else(|| panic!("timeouts.{k} {v} is not a Gateway API duration"))
    };
    let (request, backend) = (ms("request"), ms("backendRequest"));
    // "0s" would mean no timeout; anything else must outlast the gateway's own.
    assert!(
        request == 0 || (request >= 3_600_000 && request > longest),
        "{t}"
    );
    assert!(
        backend == 0 || (backend >= 3_600_000 && backend > longest),
        "{t}"
    );
    assert!(
        request == 0 || (backend != 0 && backend <= request),
        "backendRequest <= request: {t}"
    );
    // A gateway namespace is optional; the route alone, no Ingress.
    let only = items_of(&["--route", "httproute", "--gateway", "eg"]);
    assert!(only.iter().all(|o| o["kind"] != "Ingress"));
    assert!(object(&only, "HTTPRoute")["spec"]["parentRefs"][0]
        .get("namespace")
        .is_none());
    assert!(rendered().1.iter().all(|o| o["kind"] != "HTTPRoute"));
    let out = xtask_deploy_output(&["--dry-run", "--route", "httproute"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gateway"));
    assert_eq!(gateway_duration_ms("1h30m"), Some(5_400_000));
    assert_eq!(gateway_duration_ms("3600"), None);
    assert_eq!(gateway_duration_ms("123456s"), None);
}

/// CPU (metrics-server only) by default; `--hpa-metric in-flight` scales on the per-pod
/// average of the gauge the gateway exports, the name the documented adapter rule serves.
#[test]
fn the_hpa_scales_on_cpu_or_on_requests_in_flight() {
    let (_, items) = rendered();
    let hpa = &object(items, "HorizontalPodAutoscaler")["spec"];
    assert_eq!(hpa["minReplicas"], 3);
    assert_eq!(hpa["maxReplicas"], 20);
    assert_eq!(
        hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
    assert_eq!(hpa["behavior"]["scaleUp"]["selectPolicy"], "Max");
    let metrics = hpa["metrics"].as_array().expect("metrics");
    assert!(
        metrics.iter().all(|m| m["type"] == "Resource"),
        "{metrics:?}"
    );
    let items = items_of(&["--hpa-metric", "in-flight", "--in-flight-target", "40"]);
    let metrics = object(&items, "HorizontalPodAutoscaler")["spec"]["metrics"].clone();
    let pods = metrics
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["type"] == "Pods")
        .expect("a Pods metric");
    assert_eq!(
        pods["pods"]["metric"]["name"],
        "ringgate_requests_in_flight"
    );
    assert_eq!(
        pods["pods"]["target"],
        json!({"type": "AverageValue", "averageValue": "40"})
    );
    assert!(metrics
        .as_array()
        .expect("metrics")
        .iter()
        .any(|m| m["resource"]["name"] == "cpu"));
    // The gateway exports that family, and the docs give the adapter rule serving it.
    let render = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics/render.rs"),
    )
    .expect("render.rs");
    assert!(render.contains("\"ringgate_requests_in_flight\",\n        \"gauge\""));
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configmaps/README.md"))
            .expect("README");
    assert!(docs.contains("seriesQuery: 'ringgate_requests_in_flight{namespace!=\"\",pod!=\"\"}'"));
    assert!(docs.contains("as: \"ringgate_requests_in_flight\""));
}

/// Zone then node spread per rollout, the pod's own token-less ServiceAccount, and the
/// rollout settings.
#[test]
fn spread_service_account_and_rollout_settings() {
    let (_, items) = rendered();
    let spec = &object(items, "Deployment")["spec"];
    assert!(spec["minReadySeconds"].as_i64().expect("minReadySeconds") > 0);
    let history = spec["revisionHistoryLimit"]
        .as_i64()
        .expect("revisionHistoryLimit");
    assert!((1..10).contains(&history), "{history}");
    let pod = &spec["template"]["spec"];
    let spread = pod["topologySpreadConstraints"].as_array().expect("spread");
    let keys: Vec<&str> = spread
        .iter()
        .filter_map(|c| c["topologyKey"].as_str())
        .collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    for c in spread {
        assert_eq!(c["matchLabelKeys"], json!(["pod-template-hash"]));
        assert_eq!(c["labelSelector"], spec["selector"]);
        assert_eq!(c["maxSkew"], 1);
    }
    let sa = object(items, "ServiceAccount");
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["automountServiceAccountToken"], false);
}

/// Egress: DNS to kube-dns only, and exactly the ports of the config's upstreams.
#[test]
fn egress_allows_dns_and_the_upstream_ports_only() {
    let (_, items) = rendered();
    let np = &object(items, "NetworkPolicy")["spec"];
    assert_eq!(np["policyTypes"], json!(["Ingress", "Egress"]));
    let egress = np["egress"].as_array().expect("egress");
    assert_eq!(egress.len(), 2, "{egress:?}");
    assert_eq!(
        egress[0]["to"],
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}])
    );
    assert_eq!(
        egress[0]["ports"],
        json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
    );
    assert_eq!(
        egress[1]["ports"],
        json!([{"port": 443, "protocol": "TCP"}])
    );
    assert_eq!(
        egress[1]["to"],
        json!([{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}])
    );
    // The ports come from the config: an in-cluster http upstream on 8000 beside the provider.
    let dir = temp_dir("egress");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configmaps/ringgate-config.yaml"),
    )
    .expect("config");
    let edited = shipped.replace(
        "    [limits.general]",
        "    [upstreams.vllm]\n    url = \"http://vllm.models.svc:8000/v1\"\n\n    [limits.general]",
    );
    assert_ne!(edited, shipped);
    let file = dir.join("config.yaml");
    std::fs::write(&file, edited).expect("write");
    let items = items_of(&["--config", file.to_str().expect("path")]);
    let egress = &object(&items, "NetworkPolicy")["spec"]["egress"];
    assert_eq!(
        egress[1]["ports"],
        json!([{"port": 443, "protocol": "TCP"}, {"port": 8000, "protocol": "TCP"}])
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn alert_exprs(items: &[Value]) -> Vec<String> {
    object(items, "PrometheusRule")["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .map(|r| r["expr"].as_str().expect("expr").to_string())
        .collect()
}

/// promtool's unit tests of the alerts: each fires on the series that should fire it, for
/// this namespace only, and not on healthy ones. `{}` is the rules file.
const ALERT_TESTS: &str = r#"rule_files: ["{}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ringgate_config_last_reload_successful{namespace="ai-gateway",pod="bad"}'
        values: '0x10'
      - series: 'ringgate_config_last_reload_successful{namespace="ai-gateway",pod="good"}'
        values: '1x10'
      - series: 'ringgate_config_last_reload_successful{namespace="elsewhere",pod="other"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: RinggateConfigReloadFailing
      - eval_time: 6m
        alertname: RinggateConfigReloadFailing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ai-gateway, pod: bad}
  - interval: 1m
    input_series:
      - series: 'ringgate_requests_total{namespace="ai-gateway",route="chat",method="POST",status="200"}'
        values: '0+90x30'
      - series: 'ringgate_requests_total{namespace="ai-gateway",route="chat",method="POST",status="502"}'
        values: '0+10x30'
      - series: 'ringgate_requests_total{namespace="elsewhere",route="chat",method="POST",status="502"}'
        values: '0+10x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: RinggateHigh5xxRatio
        exp_alerts:
          - exp_labels: {severity: critical, namespace: ai-gateway}
  - interval: 1m
    input_series:
      - series: 'ringgate_requests_total{namespace="ai-gateway",route="chat",method="POST",status="200"}'
        values: '0+99x30'
      - series: 'ringgate_requests_total{namespace="ai-gateway",route="chat",method="POST",status="502"}'
        values: '0+1x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: RinggateHigh5xxRatio
  - interval: 1m
    input_series:
      - series: 'ringgate_upstream_requests_total{namespace="ai-gateway",pod="p",upstream="down",class="5xx"}'
        values: '0+60x20'
      - series: 'ringgate_upstream_requests_total{namespace="ai-gateway",pod="p",upstream="down",class="2xx"}'
        values: '0+40x20'
      - series: 'ringgate_upstream_requests_total{namespace="ai-gateway",pod="p",upstream="up",class="2xx"}'
        values: '0+90x20'
      - series: 'ringgate_upstream_requests_total{namespace="ai-gateway",pod="p",upstream="up",class="5xx"}'
        values: '0+10x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: RinggateUpstreamFailing
        exp_alerts:
          - exp_labels: {severity: critical, namespace: ai-gateway, upstream: down}
  - interval: 1m
    input_series:
      - series: 'ringgate_upstream_endpoints_ejected{namespace="ai-gateway",pod="p",upstream="flaky"}'
        values: '1x20'
      - series: 'ringgate_upstream_endpoints_ejected{namespace="ai-gateway",pod="p",upstream="fine"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 5m
        alertname: RinggateUpstreamEndpointEjected
      - eval_time: 15m
        alertname: RinggateUpstreamEndpointEjected
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ai-gateway, upstream: flaky}
  - interval: 1m
    input_series:
      - series: 'ringgate_tls_certificate_expiry_timestamp_seconds{namespace="ai-gateway",pod="p",server_name="soon.example.com"}'
        values: '864000x60'
      - series: 'ringgate_tls_certificate_expiry_timestamp_seconds{namespace="ai-gateway",pod="p",server_name="later.example.com"}'
        values: '2592000x60'
    alert_rule_test:
      - eval_time: 30m
        alertname: RinggateCertificateExpiringSoon
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ai-gateway, pod: p, server_name: soon.example.com}
  - interval: 1m
    input_series:
      - series: 'ringgate_worker_heartbeat_age_seconds{namespace="ai-gateway",pod="p",worker="0"}'
        values: '1 1 1 25 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'ringgate_worker_heartbeat_age_seconds{namespace="ai-gateway",pod="p",worker="1"}'
        values: '1x15'
      - series: 'ringgate_worker_heartbeat_age_seconds{namespace="ai-gateway",pod="q",worker="0"}'
        values: '1x15'
    alert_rule_test:
      - eval_time: 2m
        alertname: RinggateWorkerDown
      - eval_time: 5m
        alertname: RinggateWorkerDown
        exp_alerts:
          - exp_labels: {severity: critical, namespace: ai-gateway, pod: p}
      - eval_time: 14m
        alertname: RinggateWorkerDown
  - interval: 1m
    input_series:
      - series: 'ringgate_panics_total{namespace="ai-gateway",pod="p"}'
        values: '0 0 0 1 1 1 1 1 1 1'
      - series: 'ringgate_panics_total{namespace="ai-gateway",pod="q"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 6m
        alertname: RinggatePanics
        exp_alerts:
          - exp_labels: {severity: warning, namespace: ai-gateway, pod: p}
"#;

fn promtool(args: &[&str]) -> Option<(bool, String)> {
    match Command::new("promtool").args(args).output() {
        Ok(o) => Some((
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )),
        Err(e) => {
            skip_without("promtool (Debian package prometheus)", &e);
            None
        }
    }
}

/// The PrometheusRule's groups, as a plain rules file, pass `promtool check rules` (PromQL,
/// durations, label and template syntax) and its unit tests (each alert fires when it
/// should, in this namespace only, and not otherwise).
#[test]
fn the_alert_rules_pass_promtool() {
    let (_, items) = rendered();
    let rule = object(items, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let groups = rule["spec"]["groups"].clone();
    let alerts: Vec<&str> = groups
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| r["alert"].as_str().expect("alert"))
        .collect();
    assert_eq!(
        alerts,
        [
            "RinggateConfigReloadFailing",
            "RinggateHigh5xxRatio",
            "RinggateUpstreamFailing",
            "RinggateUpstreamEndpointEjected",
            "RinggateCertificateExpiringSoon",
            "RinggateWorkerDown",
            "RinggatePanics"
        ]
    );
    // Every metric the alerts read is one the gateway exports.
    let render = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics/render.rs"),
    )
    .expect("render.rs");
    for expr in alert_exprs(items) {
        for metric in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ringgate_"))
        {
            assert!(
                render.contains(&format!("\"{metric}\"")),
                "{metric} is not exported"
            );
        }
    }
    let dir = temp_dir("rules");
    let full = dir.join("rules.json");
    std::fs::write(&full, json!({ "groups": groups }).to_string()).expect("write");
    let Some((ok, text)) = promtool(&["check", "rules", full.to_str().expect("path")]) else {
        return;
    };
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{text}"
    );
    // promtool's unit tests compare annotations too; these test the conditions.
    let mut bare = groups.clone();
    for g in bare.as_array_mut().expect("groups") {
        for r in g["rules"].as_array_mut().expect("rules") {
            r.as_object_mut().expect("rule").remove("annotations");
        }
    }
    let bare_file = dir.join("bare.json");
    std::fs::write(&bare_file, json!({ "groups": bare }).to_string()).expect("write");
    let tests = dir.join("tests.yaml");
    std::fs::write(
        &tests,
        ALERT_TESTS.replace("{}", bare_file.to_str().expect("path")),
    )
    .expect("write");
    let Some((ok, text)) = promtool(&["test", "rules", tests.to_str().expect("path")]) else {
        return;
    };
    assert!(ok, "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The restricted Pod Security Standard's checks (those a `kubectl run` pod could trip):
/// what a namespace labelled `enforce: restricted` admits.
fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let psc = &pod["securityContext"];
    for c in pod["containers"].as_array().expect("containers") {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if c["image"].as_str().is_none_or(str::is_empty) {
            v.push(format!("{name}: no image"));
        }
        if !(sc["runAsNonRoot"] == true
            || (sc["runAsNonRoot"].is_null() && psc["runAsNonRoot"] == true))
        {
            v.push(format!("{name}: runAsNonRoot != true"));
        }
        for uid in [&sc["runAsUser"], &psc["runAsUser"]] {
            if uid == 0 {
                v.push(format!("{name}: runAsUser 0"));
            }
        }
        let seccomp = if sc["seccompProfile"].is_null() {
            &psc["seccompProfile"]["type"]
        } else {
            &sc["seccompProfile"]["type"]
        };
        if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
            v.push(format!("{name}: seccompProfile {seccomp}"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            v.push(format!("{name}: allowPrivilegeEscalation != false"));
        }
        if !sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        {
            v.push(format!("{name}: capabilities.drop lacks ALL"));
        }
        if sc["capabilities"]["add"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x != "NET_BIND_SERVICE"))
        {
            v.push(format!("{name}: capabilities.add"));
        }
        if sc["privileged"] == true {
            v.push(format!("{name}: privileged"));
        }
    }
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host] == true {
            v.push(host.into());
        }
    }
    v
}

/// RFC 7386 merge patch, or (strategic) the same with `containers` merged by name, as
/// `kubectl run --override-type` does.
fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    t.remove(k);
                } else if strategic && k == "containers" && t.get(k).is_some_and(Value::is_array) {
                    let list = t.get_mut(k).and_then(Value::as_array_mut).expect("list");
                    for pc in pv.as_array().expect("containers patch") {
                        match list.iter_mut().find(|c| c["name"] == pc["name"]) {
                            Some(c) => merge(c, pc, strategic),
                            None => list.push(pc.clone()),
                        }
                    }
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), pv, strategic);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The docs' in-cluster check pod (`kubectl run ... curl`), as kubectl builds it from the
/// command line and the overrides, is admitted by the namespace's restricted Pod Security,
/// keeps its image and command, and passes the schema check; the Deployment's pod passes
/// the same checks, and the bare command (the old docs) does not.
#[test]
fn the_docs_in_cluster_check_pod_meets_restricted_pod_security() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configmaps/README.md"))
            .expect("README");
    // The command: from `kubectl ... run` to the end of its continued lines.
    let lines: Vec<&str> = docs.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("kubectl ") && l.contains(" run "))
        .expect("a kubectl run command in configmaps/README.md");
    let mut cmd = String::new();
    for l in &lines[start..] {
        cmd.push_str(l.trim_end_matches('\\').trim());
        cmd.push(' ');
        if !l.ends_with('\\') {
            break;
        }
    }
    let (before, after) = cmd.split_once(" -- ").expect("-- ARGS");
    let args: Vec<&str> = after.split_whitespace().collect();
    let flag = |name: &str| -> Option<String> {
        before.find(&format!("{name}=")).map(|i| {
            let rest = &before[i + name.len() + 1..];
            match rest.strip_prefix('\'') {
                Some(q) => q[..q.find('\'').expect("closing quote")].to_string(),
                None => rest.split_whitespace().next().unwrap_or("").to_string(),
            }
        })
    };
    let name = before
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .expect("pod name");
    let image = flag("--image").expect("--image");
    // What `kubectl run NAME --image=IMG -i --restart=Never -- ARGS` generates.
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"run": name}},
        "spec": {
            "containers": [{"name": name, "image": image, "args": args, "stdin": true, "stdinOnce": true}],
            "restartPolicy": "Never"
        }
    });
    assert!(
        !restricted_violations(&pod["spec"]).is_empty(),
        "the checker must refuse the bare pod"
    );
    let overrides: Value =
        serde_json::from_str(&flag("--overrides").expect("--overrides")).expect("overrides JSON");
    assert_eq!(
        overrides["apiVersion"], "v1",
        "kubectl requires apiVersion in overrides"
    );
    let strategic = flag("--override-type").as_deref() == Some("strategic");
    merge(&mut pod, &overrides, strategic);
    assert_eq!(
        restricted_violations(&pod["spec"]),
        Vec::<String>::new(),
        "{pod}"
    );
    let c = &pod["spec"]["containers"];
    assert_eq!(c.as_array().expect("containers").len(), 1, "{pod}");
    assert_eq!(c[0]["image"], image.as_str());
    assert_eq!(c[0]["args"], json!(args));
    assert!(args.iter().any(|a| a.contains(":9901/metrics")), "{args:?}");
    let (_, items) = rendered();
    let dep_pod = &object(items, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(restricted_violations(dep_pod), Vec::<String>::new());
    // And the pod is one the API server would parse.
    let dir = temp_dir("pss");
    let f = dir.join("pod.json");
    std::fs::write(&f, pod.to_string()).expect("write");
    match Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.31.0"])
        .arg(&f)
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("passed for resource pod/"),
                "{text}"
            );
        }
        Err(e) => {
            skip_without("python3 -m kubernetes_validate", &e);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn image_and_replicas_are_honoured() {
    let items = items_of(&["--image", "registry.local/ringgate:dev", "--replicas", "5"]);
    assert_eq!(
        object(&items, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/ringgate:dev"
    );
    assert_eq!(
        object(&items, "HorizontalPodAutoscaler")["spec"]["minReplicas"],
        5
    );
}

#[test]
fn without_a_cluster_deploy_fails_clearly() {
    // An empty kubeconfig pointing nowhere: kubectl (when installed) finds no cluster; without
    // kubectl the message says so. Either way: exit 1 and a sentence, never a hang.
    let dir = std::env::temp_dir().join(format!("ringgate-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: none\n  context:\n    cluster: none\ncurrent-context: none\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "-p", "xtask", "--", "deploy"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no Kubernetes cluster answers") || err.contains("kubectl is not installed"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `--with-redis`: a small Redis (pinned official image, one pod, no persistence, password
/// from a Secret that is never in the output unless asked for, restricted Pod Security,
/// reachable only from ringgate pods, no egress) wired into the gateway: `[cluster]` added
/// to the config (which still validates), the password Secret mounted as a directory, and
/// the gateway's egress opened to the Redis pods only. `--redis-url` wires an existing one.
#[test]
fn with_redis_renders_a_locked_down_redis_wired_into_the_gateway() {
    let items = items_of(&["--with-redis"]);
    let named = |kind: &str, name: &str| -> Value {
        items
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    assert!(
        items.iter().all(|o| o["kind"] != "Secret"),
        "no Secret unless --with-secret-template"
    );
    let deploy = named("Deployment", "ringgate-redis");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let image = c["image"].as_str().expect("image");
    assert!(
        image.starts_with("redis:7.")
            && image.ends_with("-alpine")
            && image.matches('.').count() == 2,
        "the official image, pinned to a release: {image}"
    );
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(restricted_violations(pod), Vec::<String>::new());
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let script = c["command"][2].as_str().expect("script");
    assert!(
        script.contains("--save ''") && script.contains("--appendonly no"),
        "{script}"
    );
    assert!(
        script.contains("\"$REDIS_PASSWORD\" > /run/redis/redis.conf"),
        "{script}"
    );
    assert_eq!(
        c["env"][0]["valueFrom"]["secretKeyRef"],
        json!({"name": "ringgate-redis", "key": "password", "optional": false})
    );
    let svc = named("Service", "ringgate-redis");
    assert_eq!(svc["spec"]["ports"][0]["port"], 6379);
    let np = named("NetworkPolicy", "ringgate-redis")["spec"].clone();
    assert_eq!(np["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(np["egress"], json!([]), "the Redis pod talks to no one");
    assert_eq!(
        np["ingress"],
        json!([{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ringgate"}}}],
                "ports": [{"port": 6379, "protocol": "TCP"}]}])
    );
    // The gateway: [cluster] in its config, the password mounted, egress to the Redis pods.
    let toml = named("ConfigMap", "ringgate-config")["data"]["gateway.toml"]
        .as_str()
        .expect("toml")
        .to_string();
    assert!(
        toml.contains("[cluster]\nredis_url = \"redis://ringgate-redis:6379\"\npassword_file = \"/etc/ringgate/redis/password\"\n"),
        "{toml}"
    );
    let gw = named("Deployment", "ringgate");
    let gpod = &gw["spec"]["template"]["spec"];
    assert!(gpod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .any(|v| v["secret"]["secretName"] == "ringgate-redis"
            && v["secret"]["defaultMode"] == 0o440));
    assert!(gpod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["mountPath"] == "/etc/ringgate/redis" && m["subPath"].is_null()));
    let egress = named("NetworkPolicy", "ringgate")["spec"]["egress"].clone();
    assert!(
        egress.as_array().expect("egress").contains(&json!({
            "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ringgate-redis"}}}],
            "ports": [{"port": 6379, "protocol": "TCP"}]
        })),
        "{egress}"
    );
    // The template, only when asked for, says it is one.
    let with = xtask_deploy(&["--dry-run", "--with-redis", "--with-secret-template"]);
    assert!(
        with.contains("CHANGE_ME_REDIS_PASSWORD") && with.contains("PLACEHOLDER Redis password")
    );

    // An existing Redis: its URL in the config, its port open, its password Secret mounted.
    let items = items_of(&[
        "--redis-url",
        "rediss://redis.example.net:6380",
        "--redis-password-secret",
        "my-redis",
    ]);
    assert!(items
        .iter()
        .all(|o| o["metadata"]["name"] != "ringgate-redis"));
    let cm = items.iter().find(|o| o["kind"] == "ConfigMap").expect("cm");
    assert!(cm["data"]["gateway.toml"]
        .as_str()
        .expect("toml")
        .contains("redis_url = \"rediss://redis.example.net:6380\"\npassword_file = \"/etc/ringgate/redis/password\""));
    let np = items
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .expect("np");
    assert!(np["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .any(|r| r["ports"] == json!([{"port": 6380, "protocol": "TCP"}])));
    let items = items_of(&["--redis-url", "redis://10.1.2.3:6379"]);
    let cm = items.iter().find(|o| o["kind"] == "ConfigMap").expect("cm");
    let toml = cm["data"]["gateway.toml"].as_str().expect("toml");
    assert!(
        toml.contains("redis_url = \"redis://10.1.2.3:6379\"") && !toml.contains("password_file")
    );

    // Refused: both at once, a stray flag, a bad URL, and a config that has [cluster] already.
    for (args, want) in [
        (
            &["--with-redis", "--redis-url", "redis://r:6379"][..],
            "exclude each other",
        ),
        (
            &["--redis-password-secret", "x"][..],
            "goes with --redis-url",
        ),
        (&["--redis-url", "http://r:6379"][..], "want redis://"),
        (
            &["--redis-url", "redis://u:pw@r"][..],
            "password in the URL",
        ),
    ] {
        let mut all = vec!["--dry-run"];
        all.extend_from_slice(args);
        let out = xtask_deploy_output(&all, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let dir = temp_dir("has-cluster");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configmaps/ringgate-config.yaml"),
    )
    .expect("config");
    let edited = shipped.replace(
        "    [limits.general]",
        "    [cluster]\n    redis_url = \"redis://mine:6379\"\n\n    [limits.general]",
    );
    assert_ne!(edited, shipped);
    let file = dir.join("config.yaml");
    std::fs::write(&file, edited).expect("write");
    let out = xtask_deploy_output(
        &[
            "--dry-run",
            "--with-redis",
            "--config",
            file.to_str().expect("path"),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already has a [cluster]"), "{err}");
    // Its own [cluster]: the egress follows its port.
    let items = items_of(&["--config", file.to_str().expect("path")]);
    let np = items
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .expect("np");
    assert!(np["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .any(|r| r["ports"] == json!([{"port": 6379, "protocol": "TCP"}])));
    let _ = std::fs::remove_dir_all(dir);
}

/// Applying `--with-redis` (kubectl replaced by a recording fake): the Redis password
/// Secret is created once, with a random password that is never printed or applied as a
/// manifest, and never replaced on a re-deploy.
#[test]
fn with_redis_apply_creates_a_random_password_secret_once() {
    let dir = temp_dir("fake-kubectl-redis");
    let fake = dir.join("kubectl");
    std::fs::write(
        &fake,
        r#"#!/bin/sh
echo "$*" >> "$FAKE_KUBECTL_DIR/calls"
case "$1" in
  version) exit 0 ;;
  get)
    if [ "$2" = secret ] && [ -e "$FAKE_KUBECTL_DIR/secret-$5" ]; then echo "secret/$5"; exit 0; fi
    echo "Error from server (NotFound): $2 \"$5\" not found" >&2; exit 1 ;;
  apply) cat > "$FAKE_KUBECTL_DIR/applied"; echo applied; exit 0 ;;
  create) cat > "$FAKE_KUBECTL_DIR/created"; exit 0 ;;
esac
exit 3
"#,
    )
    .expect("write fake kubectl");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write(dir.join("secret-ringgate-provider"), "").expect("marker");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = dir.display().to_string();
    let run = |args: &[&str]| {
        for f in ["applied", "created", "calls"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let out = xtask_deploy_output(args, &[("PATH", &path), ("FAKE_KUBECTL_DIR", &d)]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            std::fs::read_to_string(dir.join("applied")).expect("applied"),
            std::fs::read_to_string(dir.join("created")).ok(),
        )
    };
    let (stdout, applied, created) = run(&["--with-redis", "--with-secret-template"]);
    let created = created.expect("the Redis Secret is created");
    let secret: Value = serde_json::from_str(&created).expect("json");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "ringgate-redis");
    let pw = secret["stringData"]["password"].as_str().expect("password");
    assert!(
        pw.len() == 64 && pw.bytes().all(|b| b.is_ascii_hexdigit()),
        "32 random bytes, hex: {pw:?}"
    );
    assert!(
        !stdout.contains(pw) && !applied.contains(pw),
        "never printed or applied"
    );
    assert!(
        !applied.contains("CHANGE_ME_REDIS_PASSWORD"),
        "the template is never applied"
    );
    assert!(applied.contains("name: ringgate-redis"), "{applied}");
    let (_, _, again) = run(&["--with-redis"]);
    let pw2 = serde_json::from_str::<Value>(&again.expect("still absent: created again"))
        .expect("json")["stringData"]["password"]
        .as_str()
        .expect("password")
        .to_string();
    assert_ne!(pw, pw2, "random each time");
    // It exists now: left as it is.
    std::fs::write(dir.join("secret-ringgate-redis"), "").expect("marker");
    let (_, _, created) = run(&["--with-redis"]);
    assert!(
        created.is_none(),
        "an existing Redis password is never replaced"
    );
    // An external Redis's password Secret must exist.
    let out = xtask_deploy_output(
        &[
            "--redis-url",
            "redis://r:6379",
            "--redis-password-secret",
            "nope",
        ],
        &[("PATH", &path), ("FAKE_KUBECTL_DIR", &d)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Secret ai-gateway/nope"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
