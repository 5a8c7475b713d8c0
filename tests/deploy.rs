//! `cargo xtask deploy --dry-run` renders manifests a cluster would accept: every object
//! passes the offline Kubernetes schema check (`kubernetes-validate --strict`, installed by
//! .ci/run), and the rules the zero-restart design rests on hold: ConfigMap and Secret
//! mounted as directories (no `subPath` anywhere), no config-hash annotation on the pod
//! template, a grace period above `shutdown_grace_ms`, probes on `/health` and `/ready`, and
//! an Ingress that does not buffer SSE. The renderer lives in the xtask crate (which this
//! package cannot depend on), so the tests run it as a command, as users do.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

fn xtask_deploy(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "-p", "xtask", "--", "deploy"])
        .args(args)
        .output()
        .expect("run cargo xtask deploy");
    assert!(
        out.status.success(),
        "xtask deploy {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
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
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "Ingress",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "NetworkPolicy"
        ]
    );
    assert_eq!(yaml.matches("\n---\n").count(), items.len() - 1);
    for o in items.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(o["metadata"]["namespace"], "ai-gateway", "{}", o["kind"]);
    }
}

#[test]
fn the_manifests_pass_the_kubernetes_schema_check() {
    let dir = std::env::temp_dir().join(format!("ringgate-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut files = Vec::new();
    for seccomp in ["runtime-default", "localhost"] {
        let f = dir.join(format!("{seccomp}.yaml"));
        std::fs::write(&f, xtask_deploy(&["--dry-run", "--seccomp", seccomp])).expect("write");
        files.push(f);
    }
    // PyYAML reads YAML 1.1 as kubectl does, so an unquoted `off` would fail here too.
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.33.0"])
        .args(&files)
        .output()
        .expect("python3 -m kubernetes_validate (pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // 9 built-in kinds per file pass; the ServiceMonitor is a CRD with no bundled schema (it
    // is checked by its typed round trip in xtask/src/deploy.rs instead).
    assert_eq!(text.matches("passed for resource").count(), 18, "{text}");
    assert!(!text.contains("ERROR"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
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
    let secret_name = object(items, "Secret")["metadata"]["name"].clone();
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
fn service_ingress_hpa_pdb_monitor_and_network_policy() {
    let (_, items) = rendered();
    let svc_ports = object(items, "Service")["spec"]["ports"].clone();
    let names: Vec<&str> = svc_ports
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["http", "admin"]);
    let ann = &object(items, "Ingress")["metadata"]["annotations"];
    assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"], "300");
    assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"], "300");
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-connect-timeout"],
        "10"
    );
    let hpa = &object(items, "HorizontalPodAutoscaler")["spec"];
    assert_eq!(hpa["minReplicas"], 3);
    assert_eq!(hpa["maxReplicas"], 20);
    assert_eq!(
        hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
    assert_eq!(hpa["behavior"]["scaleUp"]["selectPolicy"], "Max");
    let pdb = &object(items, "PodDisruptionBudget")["spec"];
    assert!(pdb["maxUnavailable"] == 1 || pdb["minAvailable"].is_number());
    let sm = object(items, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
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

#[test]
fn options_are_honoured() {
    let v: Value = serde_json::from_str(&xtask_deploy(&[
        "--dry-run",
        "--format",
        "json",
        "--namespace",
        "gw-test",
        "--image",
        "registry.local/ringgate:dev",
        "--replicas",
        "5",
    ]))
    .expect("json");
    let items = v["items"].as_array().expect("items");
    assert_eq!(object(items, "Namespace")["metadata"]["name"], "gw-test");
    assert!(items
        .iter()
        .filter(|o| o["kind"] != "Namespace")
        .all(|o| o["metadata"]["namespace"] == "gw-test"));
    assert_eq!(
        object(items, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/ringgate:dev"
    );
    assert_eq!(
        object(items, "HorizontalPodAutoscaler")["spec"]["minReplicas"],
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
