//! `cargo xtask deploy`: renders ringgate's Kubernetes objects as typed values (k8s-openapi,
//! plus a small typed `ServiceMonitor` for the prometheus-operator CRD) and applies them with
//! `kubectl apply --server-side -f -`. `--dry-run` prints them as YAML and touches no cluster.
//!
//! The objects: Namespace, ConfigMap (read from configmaps/ringgate-config.yaml), Secret
//! (the template configmaps/provider-secret.yaml), Deployment, Service, Ingress, HPA, PDB,
//! ServiceMonitor and NetworkPolicy, carrying over the seed article's resources, probes,
//! ingress annotations and HPA behaviour.
//!
//! Two rules this file exists to keep:
//! - The ConfigMap and the Secret are mounted as *directories*, never with `subPath`: a
//!   subPath mount is a copy made once at container start and never receives updates
//!   (kubernetes #50345), so a ConfigMap edit would never reach the gateway.
//! - The pod template carries NO config-hash/checksum annotation. That Helm idiom restarts
//!   every pod on each ConfigMap edit, which is exactly what ringgate's in-place reload
//!   (directory watch + atomic swap) makes unnecessary: an edit must reload, not roll.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    HTTPGetAction, Lifecycle, LifecycleHandler, Namespace, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, TopologySpreadConstraint,
    Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

/// Where the ConfigMap is mounted (a directory; `--config` points here).
pub const CONFIG_DIR: &str = "/etc/ringgate/config";
/// Where the Secret is mounted (a directory; `api_key_file` names a file in it).
pub const SECRETS_DIR: &str = "/etc/ringgate/secrets";
/// The Localhost seccomp profile, relative to kubelet's seccomp root
/// (`/var/lib/kubelet/seccomp/`); the file is configmaps/seccomp-io-uring.json.
pub const LOCALHOST_PROFILE: &str = "ringgate/seccomp-io-uring.json";
/// The preStop pause: long enough for the endpoint to leave the Service (and the ingress
/// controller's upstream list) before SIGTERM starts the drain.
pub const PRESTOP_SLEEP_SECONDS: i64 = 5;
/// Slack added on top of preStop + the config's `shutdown_grace_ms` before SIGKILL.
pub const GRACE_MARGIN_SECONDS: i64 = 5;
/// The UID/GID the container runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;

const APP: &str = "ringgate";
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// Which seccomp profile the pod runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seccomp {
    /// The container runtime's default: io_uring is blocked, ringgate falls back to epoll
    /// (and says so in its log and in `ringgate_io_driver_info`).
    RuntimeDefault,
    /// The shipped profile (runtime default + io_uring_setup/enter/register), installed on
    /// every node under kubelet's seccomp root.
    Localhost,
}

/// Output format of `--dry-run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `---`-separated YAML documents with a comment on each (the default).
    Yaml,
    /// One JSON `v1/List` holding every object (for scripts and the tests).
    Json,
}

/// What `cargo xtask deploy` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Print instead of applying.
    pub dry_run: bool,
    /// Namespace of every object.
    pub namespace: String,
    /// Container image.
    pub image: String,
    /// The floor of pods the HPA keeps (its `minReplicas`).
    pub replicas: i32,
    /// Seccomp profile choice.
    pub seccomp: Seccomp,
    /// The Ingress host.
    pub host: String,
    /// Namespace the Prometheus scraping the admin port runs in (NetworkPolicy).
    pub monitoring_namespace: String,
    /// ConfigMap manifest.
    pub config: PathBuf,
    /// Secret template manifest.
    pub secret: PathBuf,
    /// `--dry-run` output format.
    pub format: Format,
}

impl Options {
    /// The defaults, with manifests under `root/configmaps`.
    pub fn defaults(root: &Path) -> Options {
        Options {
            dry_run: false,
            namespace: "ai-gateway".into(),
            image: "ghcr.io/ringgate/ringgate:0.1.0".into(),
            replicas: 3,
            seccomp: Seccomp::RuntimeDefault,
            host: "api.yourdomain.com".into(),
            monitoring_namespace: "monitoring".into(),
            config: root.join("configmaps/ringgate-config.yaml"),
            secret: root.join("configmaps/provider-secret.yaml"),
            format: Format::Yaml,
        }
    }

    /// Parses the command line after `deploy`.
    pub fn parse(args: &[String], root: &Path) -> Result<Options, String> {
        let mut o = Options::defaults(root);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--dry-run" => o.dry_run = true,
                "--namespace" | "-n" => o.namespace = value(a)?,
                "--image" => o.image = value(a)?,
                "--replicas" => {
                    let v = value(a)?;
                    o.replicas = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| format!("--replicas {v}: want a number from 1 to 1000"))?;
                }
                "--seccomp" => {
                    o.seccomp = match value(a)?.as_str() {
                        "runtime-default" => Seccomp::RuntimeDefault,
                        "localhost" => Seccomp::Localhost,
                        other => {
                            return Err(format!(
                                "--seccomp {other}: want runtime-default or localhost"
                            ))
                        }
                    }
                }
                "--host" => o.host = value(a)?,
                "--monitoring-namespace" => o.monitoring_namespace = value(a)?,
                "--config" => o.config = PathBuf::from(value(a)?),
                "--secret" => o.secret = PathBuf::from(value(a)?),
                "--format" => {
                    o.format = match value(a)?.as_str() {
                        "yaml" => Format::Yaml,
                        "json" => Format::Json,
                        other => return Err(format!("--format {other}: want yaml or json")),
                    }
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if o.namespace.is_empty() || o.image.is_empty() {
            return Err("--namespace and --image must not be empty".into());
        }
        Ok(o)
    }
}

/// The usage text.
pub const USAGE: &str = "usage: cargo xtask deploy [--dry-run] [--namespace NS (ai-gateway)] \
[--image IMG (ghcr.io/ringgate/ringgate:0.1.0)] [--replicas N (3)] \
[--seccomp runtime-default|localhost] [--host api.yourdomain.com] \
[--monitoring-namespace monitoring] [--config configmaps/ringgate-config.yaml] \
[--secret configmaps/provider-secret.yaml] [--format yaml|json]";

/// The prometheus-operator `ServiceMonitor` (monitoring.coreos.com/v1): a CRD, so not in
/// k8s-openapi; only the fields used here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitor {
    /// Always `monitoring.coreos.com/v1`.
    pub api_version: String,
    /// Always `ServiceMonitor`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// What to scrape.
    pub spec: ServiceMonitorSpec,
}

/// `ServiceMonitor.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitorSpec {
    /// Services to scrape.
    pub selector: LabelSelector,
    /// Their ports to scrape.
    pub endpoints: Vec<ServiceMonitorEndpoint>,
    /// Namespaces the Services are in.
    pub namespace_selector: ServiceMonitorNamespaceSelector,
}

/// One scraped Service port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitorEndpoint {
    /// The Service port's name.
    pub port: String,
    /// HTTP path of the metrics.
    pub path: String,
    /// Scrape interval, e.g. `15s`.
    pub interval: String,
}

/// `ServiceMonitor.spec.namespaceSelector`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitorNamespaceSelector {
    /// Namespaces by name.
    pub match_names: Vec<String>,
}

/// One rendered object: a comment for the YAML output, its YAML, and its JSON value.
#[derive(Clone, Debug)]
pub struct Doc {
    /// Kind, for messages.
    pub kind: String,
    /// Comment lines printed above the YAML document.
    pub comment: String,
    /// The object as YAML.
    pub yaml: String,
    /// The object as JSON.
    pub json: serde_json::Value,
}

fn doc<T: Serialize>(kind: &str, name: &str, comment: &str, obj: &T) -> Result<Doc, String> {
    Ok(Doc {
        kind: kind.into(),
        comment: comment.into(),
        yaml: serde_yaml::to_value(obj)
            .map(|v| yaml::emit(&v))
            .map_err(|e| format!("{kind} {name}: to YAML: {e}"))?,
        json: serde_json::to_value(obj).map_err(|e| format!("{kind} {name}: to JSON: {e}"))?,
    })
}

/// A small block-style YAML emitter. serde_yaml writes YAML 1.2, where `off`, `on`, `yes` and
/// `no` are plain strings; kubectl (sigs.k8s.io/yaml) and PyYAML read YAML 1.1, where they are
/// booleans, so `proxy-buffering: off` would reach the API server as `false` and be refused.
/// Here every string that is not plainly a word is double-quoted (JSON escaping is valid
/// YAML), multi-line strings become `|` blocks (the `gateway.toml: |` form users write), and
/// key order is the typed objects' own.
pub mod yaml {
    use serde_yaml::Value;

    /// The document for `v` (a mapping at the top), ending in a newline.
    pub fn emit(v: &Value) -> String {
        let mut out = String::new();
        match v {
            Value::Mapping(m) if !m.is_empty() => map(&mut out, m, 0),
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
        out
    }

    fn plain_ok(s: &str) -> bool {
        const WORDS: [&str; 9] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null"];
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
            && !WORDS.contains(&s.to_ascii_lowercase().as_str())
    }

    fn string(s: &str) -> String {
        if plain_ok(s) {
            s.to_string()
        } else {
            // JSON string syntax is YAML's double-quoted scalar.
            serde_json::Value::String(s.to_string()).to_string()
        }
    }

    fn scalar(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => string(s),
            Value::Sequence(_) => "[]".into(),
            Value::Mapping(_) => "{}".into(),
            Value::Tagged(t) => scalar(&t.value),
        }
    }

    /// A `|` / `|-` block for `s`, when one keeps it exactly.
    fn block(s: &str) -> Option<&'static str> {
        let body = s.strip_suffix('\n').unwrap_or(s);
        let ok = s.contains('\n')
            && !body.ends_with('\n')
            && !body.starts_with([' ', '\t'])
            && !body.is_empty()
            && s.chars().all(|c| c == '\n' || !c.is_control() || c == '\t')
            && !body.lines().any(|l| l.ends_with([' ', '\t']));
        ok.then_some(if s.ends_with('\n') { "|" } else { "|-" })
    }

    fn indent(out: &mut String, n: usize) {
        out.extend(std::iter::repeat_n(' ', n));
    }

    /// `value` after `key:` or `- ` at `level` (the key's indentation).
    fn value_after(out: &mut String, v: &Value, level: usize, in_seq: bool) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                out.push('\n');
                map(out, m, level + 2);
            }
            Value::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                seq(out, s, if in_seq { level + 2 } else { level });
            }
            Value::String(s) => match block(s) {
                Some(style) => {
                    out.push(' ');
                    out.push_str(style);
                    out.push('\n');
                    for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
                        if !line.is_empty() {
                            indent(out, level + 2);
                            out.push_str(line);
                        }
                        out.push('\n');
                    }
                }
                None => {
                    out.push(' ');
                    out.push_str(&string(s));
                    out.push('\n');
                }
            },
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }

    fn map(out: &mut String, m: &serde_yaml::Mapping, level: usize) {
        for (k, v) in m {
            indent(out, level);
            out.push_str(&scalar(k));
            out.push(':');
            value_after(out, v, level, false);
        }
    }

    fn seq(out: &mut String, s: &[Value], level: usize) {
        for item in s {
            indent(out, level);
            out.push('-');
            match item {
                Value::Mapping(m) if !m.is_empty() => {
                    // The first key goes on the dash's line, the rest under it.
                    let mut inner = String::new();
                    map(&mut inner, m, level + 2);
                    out.push(' ');
                    out.push_str(&inner[level + 2..]);
                }
                Value::String(s) if s.contains('\n') => {
                    out.push(' ');
                    out.push_str(&serde_json::Value::String(s.clone()).to_string());
                    out.push('\n');
                }
                other => value_after(out, other, level, true),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn yaml_1_1_booleans_and_odd_strings_are_quoted_and_read_back() {
            let text = "a:\n  b: \"off\"\n  c: \"10\"\n  d: \"x: y\"\n  e: \"\"\n  f: [\"--config\", \"on\", \"/etc\"]\n  g: \"one\\ntwo\\n\"\n  h: \"one\\ntwo\"\n  i: \"  lead\\nx\"\n  j: [{k: 1, l: [2, 3]}, []]\n  m: {}\n";
            let v: Value = serde_yaml::from_str(text).expect("parse");
            let out = emit(&v);
            assert!(out.contains("b: \"off\"\n"), "{out}");
            assert!(out.contains("- \"on\"\n"), "{out}");
            assert!(out.contains("g: |\n    one\n    two\n"), "{out}");
            assert!(out.contains("h: |-\n"), "{out}");
            let back: Value = serde_yaml::from_str(&out).expect("re-parse");
            assert_eq!(back, v, "{out}");
        }
    }
}

/// What deploy needs to know from the gateway's own config.
#[derive(Clone, Copy, Debug)]
pub struct GatewayFacts {
    /// Client listener port.
    pub http_port: i32,
    /// Admin listener port.
    pub admin_port: i32,
    /// `server.shutdown_grace_ms`, rounded up to seconds.
    pub shutdown_grace_seconds: i64,
}

/// Reads a manifest into a typed object, naming the file in errors.
fn read_manifest<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Validates the ConfigMap's `gateway.toml` exactly as `ringgate check` does and returns the
/// facts the Deployment is built from. An invalid config is never deployed.
pub fn gateway_facts(cm: &ConfigMap, source: &Path) -> Result<GatewayFacts, String> {
    let toml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("gateway.toml"))
        .ok_or_else(|| {
            format!(
                "{}: the ConfigMap has no gateway.toml key",
                source.display()
            )
        })?;
    let config = ringgate::config::load_bytes_with(
        toml.as_bytes(),
        Path::new(CONFIG_DIR),
        ringgate::config::SecretFiles::Skip,
    )
    .map_err(|e| {
        format!(
            "{}: gateway.toml does not validate, refusing to deploy it:\n{e}",
            source.display()
        )
    })?;
    let grace = config.server.shutdown_grace;
    Ok(GatewayFacts {
        http_port: i32::from(config.server.listen.port()),
        admin_port: i32::from(config.admin_listen.port()),
        shutdown_grace_seconds: i64::try_from(grace.as_millis().div_ceil(1000))
            .map_err(|_| "shutdown_grace_ms is out of range".to_string())?,
    })
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_LABEL.to_string(), APP.to_string())])
}

fn selector() -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels()),
        ..Default::default()
    }
}

fn meta(name: &str, ns: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        labels: Some(labels()),
        ..Default::default()
    }
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.into())),
        ("memory".to_string(), Quantity(memory.into())),
    ])
}

fn probe(path: &str, initial_delay: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn seccomp_profile(choice: Seccomp) -> SeccompProfile {
    match choice {
        Seccomp::RuntimeDefault => SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        },
        Seccomp::Localhost => SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some(LOCALHOST_PROFILE.into()),
        },
    }
}

/// The Deployment. `config_map` and `secret` are the names of the objects it mounts.
pub fn deployment(o: &Options, facts: &GatewayFacts, config_map: &str, secret: &str) -> Deployment {
    let container = Container {
        name: APP.into(),
        image: Some(o.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["--config".into(), CONFIG_DIR.into()]),
        env: Some(vec![EnvVar {
            name: "RINGGATE_LOG_FORMAT".into(),
            value: Some("json".into()),
            ..Default::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: facts.http_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: facts.admin_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        // Both volumes are directories: kubelet swaps `..data` inside them and ringgate's
        // watcher sees it. Never `subPath` (a one-time copy that is never updated).
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "secrets".into(),
                mount_path: SECRETS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("250m", "256Mi")),
            limits: Some(quantities("1000m", "512Mi")),
            ..Default::default()
        }),
        liveness_probe: Some(probe("/health", 10, 5)),
        readiness_probe: Some(probe("/ready", 5, 3)),
        // Kubernetes' own sleep action (1.30+): no shell or `sleep` binary needed in the
        // distroless image. While it runs the pod is already leaving the endpoints; SIGTERM
        // (and ringgate's drain) comes after it.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRESTOP_SLEEP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        termination_grace_period_seconds: Some(
            PRESTOP_SLEEP_SECONDS + facts.shutdown_grace_seconds + GRACE_MARGIN_SECONDS,
        ),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            // The Secret's files are root:fsGroup 0440, readable by the gateway only.
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(seccomp_profile(o.seccomp)),
            ..Default::default()
        }),
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(selector()),
            ..Default::default()
        }]),
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "secrets".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.into()),
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(APP, &o.namespace),
        spec: Some(DeploymentSpec {
            // No `replicas`: the HPA owns the count (minReplicas = --replicas). A replica
            // count in this manifest would, on every re-apply, fight the HPA (a server-side
            // apply conflict, or a busy fleet scaled back down).
            replicas: None,
            selector: selector(),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                // Labels only. NO config-hash/checksum annotation: a ConfigMap edit is
                // reloaded in place and must not restart the pods.
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service: `http` on port 80 (as in the seed) and `admin` for the ServiceMonitor.
pub fn service(o: &Options) -> Service {
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Service {
        metadata: meta(APP, &o.namespace),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(labels()),
            ports: Some(vec![port("http", 80), port("admin", 9901)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Ingress annotations: the seed's, with its non-existent `rate-limit`/`rate-limit-window`
/// pair written as the ingress-nginx annotation that means "1000 per minute" (`limit-rpm`).
pub fn ingress_annotations() -> BTreeMap<String, String> {
    [
        ("nginx.ingress.kubernetes.io/ssl-redirect", "true"),
        ("nginx.ingress.kubernetes.io/proxy-connect-timeout", "10"),
        ("nginx.ingress.kubernetes.io/proxy-send-timeout", "300"),
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "300"),
        ("nginx.ingress.kubernetes.io/limit-rpm", "1000"),
        // SSE must reach the client as it is produced, both ways.
        ("nginx.ingress.kubernetes.io/proxy-buffering", "off"),
        ("nginx.ingress.kubernetes.io/proxy-request-buffering", "off"),
        // ingress-nginx defaults to 1m; the gateway's max_body_bytes is 10 MiB.
        ("nginx.ingress.kubernetes.io/proxy-body-size", "10m"),
        ("cert-manager.io/cluster-issuer", "letsencrypt-prod"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The Ingress (ingress-nginx, TLS by cert-manager), `/v1` to the Service's `http` port.
pub fn ingress(o: &Options) -> Ingress {
    let mut m = meta(APP, &o.namespace);
    m.annotations = Some(ingress_annotations());
    Ingress {
        metadata: m,
        spec: Some(IngressSpec {
            ingress_class_name: Some("nginx".into()),
            tls: Some(vec![IngressTLS {
                hosts: Some(vec![o.host.clone()]),
                secret_name: Some(format!("{APP}-tls")),
            }]),
            rules: Some(vec![IngressRule {
                host: Some(o.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/v1".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: APP.into(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The HPA (autoscaling/v2): the seed's targets and behaviour, minReplicas = `--replicas`.
pub fn hpa(o: &Options) -> HorizontalPodAutoscaler {
    let utilization = |name: &str, pct: i32| MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: name.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(pct),
                ..Default::default()
            },
        }),
        ..Default::default()
    };
    let policy = |type_: &str, value: i32, period: i32| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds: period,
    };
    HorizontalPodAutoscaler {
        metadata: meta(APP, &o.namespace),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: APP.into(),
            },
            min_replicas: Some(o.replicas),
            max_replicas: o.replicas.max(20),
            metrics: Some(vec![utilization("cpu", 70), utilization("memory", 80)]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(300),
                    policies: Some(vec![policy("Percent", 10, 60)]),
                    ..Default::default()
                }),
                scale_up: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(0),
                    policies: Some(vec![policy("Percent", 100, 15), policy("Pods", 4, 15)]),
                    select_policy: Some("Max".into()),
                    ..Default::default()
                }),
            }),
        }),
        ..Default::default()
    }
}

/// The PDB: at most one pod voluntarily down at a time.
pub fn pdb(o: &Options) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(APP, &o.namespace),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ServiceMonitor: the Service's `admin` port, `/metrics`, every 15 s.
pub fn service_monitor(o: &Options) -> ServiceMonitor {
    let mut m = meta(APP, &o.namespace);
    if let Some(l) = m.labels.as_mut() {
        // The seed's label: what a kube-prometheus-stack release selects ServiceMonitors by.
        l.insert("release".into(), "prometheus".into());
    }
    ServiceMonitor {
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "ServiceMonitor".into(),
        metadata: m,
        spec: ServiceMonitorSpec {
            selector: selector(),
            endpoints: vec![ServiceMonitorEndpoint {
                port: "admin".into(),
                path: "/metrics".into(),
                interval: "15s".into(),
            }],
            namespace_selector: ServiceMonitorNamespaceSelector {
                match_names: vec![o.namespace.clone()],
            },
        },
    }
}

/// The NetworkPolicy: `http` open to all; `admin` (metrics, /config) only from this namespace
/// and the monitoring namespace. Kubelet probes come from the node and are not affected.
pub fn network_policy(o: &Options) -> NetworkPolicy {
    let port = |name: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    NetworkPolicy {
        metadata: meta(APP, &o.namespace),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port("http")]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        NetworkPolicyPeer {
                            pod_selector: Some(LabelSelector::default()),
                            ..Default::default()
                        },
                        NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([(
                                    "kubernetes.io/metadata.name".to_string(),
                                    o.monitoring_namespace.clone(),
                                )])),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ports: Some(vec![port("admin")]),
                },
            ]),
            ..Default::default()
        }),
    }
}

/// The Namespace, labelled for the `restricted` Pod Security Standard the pod meets.
pub fn namespace(o: &Options) -> Namespace {
    let mut m = meta(&o.namespace, &o.namespace);
    m.namespace = None;
    if let Some(l) = m.labels.as_mut() {
        l.insert(
            "pod-security.kubernetes.io/enforce".into(),
            "restricted".into(),
        );
    }
    Namespace {
        metadata: m,
        ..Default::default()
    }
}

/// Everything, in apply order. `with_secret` false leaves the Secret out (it exists in the
/// cluster already and must not be overwritten by the template).
pub fn render(o: &Options, with_secret: bool) -> Result<Vec<Doc>, String> {
    let mut cm: ConfigMap = read_manifest(&o.config)?;
    cm.metadata.namespace = Some(o.namespace.clone());
    let facts = gateway_facts(&cm, &o.config)?;
    let cm_name = cm
        .metadata
        .name
        .clone()
        .ok_or_else(|| format!("{}: the ConfigMap has no name", o.config.display()))?;
    let mut secret: Secret = read_manifest(&o.secret)?;
    secret.metadata.namespace = Some(o.namespace.clone());
    let secret_name = secret
        .metadata
        .name
        .clone()
        .ok_or_else(|| format!("{}: the Secret has no name", o.secret.display()))?;
    let seccomp_note = match o.seccomp {
        Seccomp::RuntimeDefault => "seccomp RuntimeDefault: io_uring is blocked, ringgate runs on epoll (ringgate_io_driver_info{driver=\"epoll\"}).",
        Seccomp::Localhost => "seccomp Localhost ringgate/seccomp-io-uring.json (configmaps/seccomp-io-uring.json, installed on every node): io_uring allowed.",
    };
    let mut docs = vec![
        doc("Namespace", &o.namespace, "ringgate's namespace; the pod meets the restricted Pod Security Standard.", &namespace(o))?,
        doc("ConfigMap", &cm_name, &format!("From {}. Edit that file and `kubectl apply -f` it:\nthe pods reload it in place (60-90 s kubelet sync), no restart.", shown(&o.config)), &cm)?,
    ];
    if with_secret {
        docs.push(doc(
            "Secret",
            &secret_name,
            &format!(
                "TEMPLATE from {}: replace the placeholder key before relying on it.",
                shown(&o.secret)
            ),
            &secret,
        )?);
    }
    let grace = PRESTOP_SLEEP_SECONDS + facts.shutdown_grace_seconds + GRACE_MARGIN_SECONDS;
    docs.extend([
        doc("Deployment", APP, &format!(
            "The ConfigMap and the Secret are mounted as DIRECTORIES, never with subPath (a subPath\n\
             mount is copied once and never updated). No config-hash annotation on the pod template:\n\
             a ConfigMap edit is reloaded in place and must not restart the pods. No replicas: the HPA\n\
             owns the count. terminationGracePeriodSeconds {grace} = preStop {PRESTOP_SLEEP_SECONDS} s + shutdown_grace {} s + {GRACE_MARGIN_SECONDS} s.\n{seccomp_note}",
            facts.shutdown_grace_seconds
        ), &deployment(o, &facts, &cm_name, &secret_name))?,
        doc("Service", APP, "Ports named http and admin (the ServiceMonitor scrapes admin /metrics).", &service(o))?,
        doc("Ingress", APP, "The seed's timeouts; proxy-buffering off so SSE streams are not held.", &ingress(o))?,
        doc("HorizontalPodAutoscaler", APP, "The seed's HPA: cpu 70 %, memory 80 %, fast scale-up, slow scale-down.", &hpa(o))?,
        doc("PodDisruptionBudget", APP, "At most one pod voluntarily disrupted at a time.", &pdb(o))?,
        doc("ServiceMonitor", APP, "prometheus-operator CRD: scrape admin /metrics every 15 s.", &service_monitor(o))?,
        doc("NetworkPolicy", APP, "http open; admin only from this namespace and the monitoring namespace.", &network_policy(o))?,
    ]);
    Ok(docs)
}

/// The documents as one `---`-separated YAML stream with a comment above each.
pub fn to_yaml(docs: &[Doc]) -> String {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        for line in d.comment.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&d.yaml);
    }
    out
}

/// The documents as one JSON `v1/List`.
pub fn to_json(docs: &[Doc]) -> Result<String, String> {
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": docs.iter().map(|d| d.json.clone()).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&list).map_err(|e| e.to_string())
}

/// Runs kubectl with `args`; Ok(stdout) on success, Err(stderr) otherwise.
fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<Result<String, String>, String> {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            "kubectl is not installed (not on PATH); install it, or use --dry-run to print the \
             manifests"
                .to_string()
        } else {
            format!("cannot run kubectl: {e}")
        }
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing to kubectl: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for kubectl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Ok(if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    })
}

/// Checks that kubectl exists and a cluster answers within 5 s.
pub fn preflight() -> Result<(), String> {
    match kubectl(&["version", "--request-timeout=5s"], None)? {
        Ok(_) => Ok(()),
        Err(stderr) => Err(format!(
            "no Kubernetes cluster answers (kubectl version --request-timeout=5s failed):\n  {}\n\
             Check the current context (`kubectl config current-context`) and that the cluster \
             is up, or use --dry-run to print the manifests without a cluster.",
            stderr.lines().last().unwrap_or("(no message)")
        )),
    }
}

fn apply(o: &Options) -> Result<(), String> {
    preflight()?;
    // The Secret template holds a placeholder: never overwrite a Secret that already exists.
    let secret: Secret = read_manifest(&o.secret)?;
    let secret_name = secret.metadata.name.unwrap_or_default();
    let secret_exists = match kubectl(
        &[
            "get",
            "secret",
            "-n",
            &o.namespace,
            &secret_name,
            "-o",
            "name",
        ],
        None,
    )? {
        Ok(_) => true,
        Err(e) if e.contains("NotFound") || e.contains("not found") => false,
        Err(e) => {
            return Err(format!(
                "cannot tell whether Secret {secret_name} exists: {e}"
            ))
        }
    };
    let mut docs = render(o, !secret_exists)?;
    if secret_exists {
        say(format!(
            "deploy: Secret {}/{secret_name} exists; left as it is",
            o.namespace
        ))?;
    } else {
        say(format!(
            "deploy: creating Secret {}/{secret_name} from the TEMPLATE {}: put the real key in it \
             (kubectl -n {} create secret generic {secret_name} --from-literal=api-key=... \
             --dry-run=client -o yaml | kubectl apply -f -)",
            o.namespace,
            shown(&o.secret),
            o.namespace
        ))?;
    }
    let has_crd = kubectl(
        &[
            "get",
            "crd",
            "servicemonitors.monitoring.coreos.com",
            "-o",
            "name",
        ],
        None,
    )?
    .is_ok();
    if !has_crd {
        docs.retain(|d| d.kind != "ServiceMonitor");
        say(
            "deploy: no ServiceMonitor CRD (prometheus-operator) in this cluster; skipping \
             the ServiceMonitor"
                .to_string(),
        )?;
    }
    let yaml = to_yaml(&docs);
    match kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=ringgate-xtask",
            "-f",
            "-",
        ],
        Some(&yaml),
    )? {
        Ok(out) => {
            stdout(&out)?;
            say(format!(
                "deploy: applied. Watch the rollout: kubectl -n {} rollout status deployment/{APP}",
                o.namespace
            ))?;
            Ok(())
        }
        Err(stderr) => Err(format!("kubectl apply failed:\n{stderr}")),
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends the output quietly.
fn stdout(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// One line of progress on stdout.
fn say(line: String) -> Result<(), String> {
    stdout(&(line + "\n"))
}

fn root() -> PathBuf {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    r.canonicalize().unwrap_or(r)
}

/// `path` relative to the repository root when it is inside it (for comments).
fn shown(path: &Path) -> String {
    let r = root();
    path.canonicalize()
        .ok()
        .and_then(|p| p.strip_prefix(&r).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// Runs `cargo xtask deploy ARGS`; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return 0;
    }
    let result = Options::parse(args, &root()).and_then(|o| {
        if o.dry_run {
            let docs = render(&o, true)?;
            match o.format {
                Format::Yaml => stdout(&to_yaml(&docs)),
                Format::Json => stdout(&format!("{}\n", to_json(&docs)?)),
            }
        } else {
            apply(&o)
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("xtask deploy: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    fn rendered(seccomp: Seccomp) -> String {
        let mut o = Options::defaults(&root());
        o.seccomp = seccomp;
        to_yaml(&render(&o, true).expect("render"))
    }

    /// Parses `value` as `T` and serializes it back: equal only if every field is known to
    /// the typed schema (k8s-openapi drops unknown fields, so a typo would show here).
    fn round_trip<T: DeserializeOwned + Serialize>(value: &serde_json::Value) {
        let typed: T = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", value["kind"]));
        let back = serde_json::to_value(&typed).expect("serialize");
        assert_eq!(&back, value, "{} did not round-trip", value["kind"]);
    }

    #[test]
    fn every_rendered_object_round_trips_through_its_type() {
        for seccomp in [Seccomp::RuntimeDefault, Seccomp::Localhost] {
            let yaml = rendered(seccomp);
            let mut kinds = Vec::new();
            for d in serde_yaml::Deserializer::from_str(&yaml) {
                let v: serde_json::Value = serde_json::Value::deserialize(d).expect("yaml doc");
                let kind = v["kind"].as_str().expect("kind").to_string();
                match kind.as_str() {
                    "Namespace" => round_trip::<Namespace>(&v),
                    "ConfigMap" => round_trip::<ConfigMap>(&v),
                    "Secret" => round_trip::<Secret>(&v),
                    "Deployment" => round_trip::<Deployment>(&v),
                    "Service" => round_trip::<Service>(&v),
                    "Ingress" => round_trip::<Ingress>(&v),
                    "HorizontalPodAutoscaler" => round_trip::<HorizontalPodAutoscaler>(&v),
                    "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(&v),
                    "ServiceMonitor" => round_trip::<ServiceMonitor>(&v),
                    "NetworkPolicy" => round_trip::<NetworkPolicy>(&v),
                    other => panic!("unexpected kind {other}"),
                }
                kinds.push(kind);
            }
            assert_eq!(kinds.len(), 10, "{kinds:?}");
        }
    }

    #[test]
    fn the_deployment_mounts_directories_and_never_restarts_on_config_edits() {
        let o = Options::defaults(&root());
        let docs = render(&o, true).expect("render");
        let d = docs
            .iter()
            .find(|d| d.kind == "Deployment")
            .expect("deployment");
        let dep: Deployment = serde_json::from_value(d.json.clone()).expect("typed");
        let spec = dep.spec.expect("spec");
        assert!(spec.replicas.is_none(), "the HPA owns replicas");
        let tmpl = spec.template;
        let annotations = tmpl
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert!(annotations.is_empty(), "{annotations:?}");
        let pod = tmpl.spec.expect("pod");
        assert!(pod.termination_grace_period_seconds.expect("grace") > 25);
        let c = &pod.containers[0];
        for m in c.volume_mounts.as_ref().expect("mounts") {
            assert!(m.sub_path.is_none() && m.sub_path_expr.is_none());
        }
        assert_eq!(
            c.args.as_deref(),
            Some(&["--config".to_string(), CONFIG_DIR.to_string()][..])
        );
        assert!(!d.yaml.contains("subPath:"));
    }

    #[test]
    fn the_seccomp_choice_is_rendered() {
        assert!(rendered(Seccomp::RuntimeDefault).contains("type: RuntimeDefault"));
        let local = rendered(Seccomp::Localhost);
        assert!(local.contains("type: Localhost"));
        assert!(local.contains(&format!("localhostProfile: {LOCALHOST_PROFILE}")));
    }

    #[test]
    fn the_shipped_seccomp_profile_is_the_default_plus_io_uring() {
        let text = std::fs::read_to_string(root().join("configmaps/seccomp-io-uring.json"))
            .expect("profile");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = v["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .filter(|r| {
                r["action"] == "SCMP_ACT_ALLOW"
                    && r.get("includes").is_none()
                    && r.get("excludes").is_none()
                    && r.get("args").is_none()
            })
            .flat_map(|r| r["names"].as_array().expect("names"))
            .filter_map(|n| n.as_str())
            .collect();
        for s in [
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "epoll_wait",
            "read",
        ] {
            assert!(allowed.contains(&s), "{s} not allowed");
        }
        assert!(!allowed.contains(&"mount") && !allowed.contains(&"unshare"));
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() {
        let r = root();
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = Options::parse(
            &args("--dry-run --namespace ns1 --image img:1 --replicas 5 --seccomp localhost"),
            &r,
        )
        .expect("parse");
        assert!(o.dry_run);
        assert_eq!((o.namespace.as_str(), o.image.as_str()), ("ns1", "img:1"));
        assert_eq!((o.replicas, o.seccomp), (5, Seccomp::Localhost));
        let docs = render(&o, true).expect("render");
        assert!(docs
            .iter()
            .filter(|d| d.kind != "Namespace")
            .all(|d| d.json["metadata"]["namespace"] == "ns1"));
        for bad in ["--replicas 0", "--seccomp off", "--frobnicate", "--image"] {
            assert!(Options::parse(&args(bad), &r).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_invalid_config_is_not_deployed() {
        let dir = std::env::temp_dir().join(format!("xtask-deploy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bad = dir.join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  gateway.toml: |\n    [server]\n    listen = \"nope\"\n",
        )
        .expect("write");
        let mut o = Options::defaults(&root());
        o.config = bad;
        let err = render(&o, true).expect_err("must refuse");
        assert!(err.contains("server.listen"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
