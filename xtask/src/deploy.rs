//! `cargo xtask deploy`: renders ringgate's Kubernetes objects as typed values (k8s-openapi,
//! plus small typed structs for the CRDs: prometheus-operator's `ServiceMonitor` and
//! `PrometheusRule`, Gateway API's `HTTPRoute`) and applies them with
//! `kubectl apply --server-side -f -`. `--dry-run` prints them as YAML and touches no cluster.
//!
//! The objects: Namespace, ServiceAccount, ConfigMap (read from
//! configmaps/ringgate-config.yaml), the Secret template (configmaps/provider-secret.yaml,
//! only with `--with-secret-template`), Deployment, Service, Ingress and/or HTTPRoute, HPA,
//! PDB, ServiceMonitor, PrometheusRule and NetworkPolicy; with `--with-redis` the Redis of
//! cluster-scoped limits (`deploy_redis.rs`).
//!
//! Rules this file exists to keep:
//! - The ConfigMap and the Secret are mounted as *directories*, never with `subPath`: a
//!   subPath mount is a copy made once at container start and never receives updates
//!   (kubernetes #50345), so a ConfigMap edit would never reach the gateway.
//! - The pod template carries NO config-hash/checksum annotation. That Helm idiom restarts
//!   every pod on each ConfigMap edit, which is exactly what ringgate's in-place reload
//!   (directory watch + atomic swap) makes unnecessary: an edit must reload, not roll.
//! - The default output holds no Secret: `--dry-run | kubectl apply -f -` (or a GitOps
//!   repository fed from it) must never replace a real provider key with the placeholder.
//! - Nothing in front of the gateway cuts a stream before the gateway would: the Ingress and
//!   HTTPRoute timeouts are far above the routes' own (`read_timeout_ms`), which decide.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    HTTPGetAction, Lifecycle, LifecycleHandler, Namespace, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

#[path = "deploy_redis.rs"]
pub mod redis;
use redis::RedisChoice;

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
/// The Ingress's and HTTPRoute's stream timeouts: an hour, far above any route's own
/// `read_timeout_ms`, so the gateway (which knows the route) is what ends a stalled stream,
/// never the proxy in front of it. An LLM stream (a reasoning model, a long generation)
/// can go quiet or run for many minutes.
pub const STREAM_TIMEOUT_SECONDS: u32 = 3600;
/// How long a new pod must stay ready before it counts as available (and the rollout moves
/// on): a pod that passes one readiness probe and then fails on its first real traffic or
/// reload holds the rollout instead of replacing a good pod.
pub const MIN_READY_SECONDS: i32 = 10;
/// Old ReplicaSets kept for `kubectl rollout undo` (the default, 10, is clutter).
pub const REVISION_HISTORY_LIMIT: i32 = 5;

const APP: &str = "ringgate";
const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The metric the in-flight HPA scales on (a gauge per pod, through prometheus-adapter).
pub const IN_FLIGHT_METRIC: &str = "ringgate_requests_in_flight";

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

/// How client traffic reaches the Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// An ingress-nginx `Ingress` (the default).
    Ingress,
    /// A Gateway API `HTTPRoute` attached to `--gateway`.
    HttpRoute,
    /// Both, e.g. while moving from ingress-nginx to a Gateway.
    Both,
}

impl RouteKind {
    fn ingress(self) -> bool {
        matches!(self, RouteKind::Ingress | RouteKind::Both)
    }
    fn http_route(self) -> bool {
        matches!(self, RouteKind::HttpRoute | RouteKind::Both)
    }
}

/// What the HPA scales on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpaMetric {
    /// CPU 70 % and memory 80 % (metrics-server only; the default).
    Cpu,
    /// The per-pod average of `ringgate_requests_in_flight` (prometheus-adapter), with CPU
    /// 70 % beside it.
    InFlight,
}

/// The Gateway an HTTPRoute attaches to (`--gateway NAME[/NAMESPACE]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRef {
    /// The Gateway's name.
    pub name: String,
    /// Its namespace; `None`: the route's own.
    pub namespace: Option<String>,
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
    /// The Ingress / HTTPRoute host.
    pub host: String,
    /// Namespace the Prometheus scraping the admin port runs in (NetworkPolicy).
    pub monitoring_namespace: String,
    /// ConfigMap manifest.
    pub config: PathBuf,
    /// Secret template manifest (its name is what the pod mounts, rendered or not).
    pub secret: PathBuf,
    /// Render (dry run) or create when absent (apply) the Secret from its template.
    pub with_secret_template: bool,
    /// Ingress, HTTPRoute or both.
    pub route: RouteKind,
    /// The HTTPRoute's parent Gateway.
    pub gateway: Option<GatewayRef>,
    /// The HPA's signal.
    pub hpa_metric: HpaMetric,
    /// Target per-pod average of in-flight requests (`--hpa-metric in-flight`).
    pub in_flight_target: u32,
    /// The `release` label on the ServiceMonitor and PrometheusRule: what a
    /// kube-prometheus-stack Prometheus selects them by (its Helm release name).
    pub prometheus_release: String,
    /// `--dry-run` output format.
    pub format: Format,
    /// The Redis cluster-scoped limits share: the config's own, `--with-redis` or
    /// `--redis-url`.
    pub redis: RedisChoice,
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
            with_secret_template: false,
            route: RouteKind::Ingress,
            gateway: None,
            hpa_metric: HpaMetric::Cpu,
            in_flight_target: 100,
            prometheus_release: "prometheus".into(),
            format: Format::Yaml,
            redis: RedisChoice::None,
        }
    }

    /// Parses the command line after `deploy`.
    pub fn parse(args: &[String], root: &Path) -> Result<Options, String> {
        let mut o = Options::defaults(root);
        let mut it = args.iter();
        let mut with_redis = false;
        let mut redis_url = None;
        let mut redis_password_secret = None;
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
                "--with-secret-template" => o.with_secret_template = true,
                "--route" => {
                    o.route = match value(a)?.as_str() {
                        "ingress" => RouteKind::Ingress,
                        "httproute" => RouteKind::HttpRoute,
                        "both" => RouteKind::Both,
                        other => {
                            return Err(format!("--route {other}: want ingress, httproute or both"))
                        }
                    }
                }
                "--gateway" => {
                    let v = value(a)?;
                    let (name, ns) = match v.split_once('/') {
                        Some((n, ns)) => (n.to_string(), Some(ns.to_string())),
                        None => (v.clone(), None),
                    };
                    if name.is_empty()
                        || ns
                            .as_deref()
                            .is_some_and(|s| s.is_empty() || s.contains('/'))
                    {
                        return Err(format!("--gateway {v}: want NAME or NAME/NAMESPACE"));
                    }
                    o.gateway = Some(GatewayRef {
                        name,
                        namespace: ns,
                    });
                }
                "--hpa-metric" => {
                    o.hpa_metric = match value(a)?.as_str() {
                        "cpu" => HpaMetric::Cpu,
                        "in-flight" => HpaMetric::InFlight,
                        other => {
                            return Err(format!("--hpa-metric {other}: want cpu or in-flight"))
                        }
                    }
                }
                "--in-flight-target" => {
                    let v = value(a)?;
                    o.in_flight_target = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or_else(|| {
                            format!("--in-flight-target {v}: want a number from 1 to 100000")
                        })?;
                }
                "--prometheus-release" => o.prometheus_release = value(a)?,
                "--with-redis" => with_redis = true,
                "--redis-url" => redis_url = Some(value(a)?),
                "--redis-password-secret" => redis_password_secret = Some(value(a)?),
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
        o.redis =
            match (with_redis, redis_url, redis_password_secret) {
                (true, Some(_), _) => {
                    return Err("--with-redis and --redis-url exclude each other".into())
                }
                (true, None, Some(_)) => return Err(
                    "--redis-password-secret goes with --redis-url (--with-redis makes its own)"
                        .into(),
                ),
                (true, None, None) => RedisChoice::Bundled,
                (false, Some(url), secret) => {
                    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                        return Err(format!(
                            "--redis-url {url}: want redis://host:port or rediss://host:port"
                        ));
                    }
                    if secret.as_deref().is_some_and(str::is_empty) {
                        return Err("--redis-password-secret must not be empty".into());
                    }
                    RedisChoice::External {
                        url,
                        password_secret: secret,
                    }
                }
                (false, None, Some(_)) => {
                    return Err("--redis-password-secret goes with --redis-url".into())
                }
                (false, None, None) => RedisChoice::None,
            };
        if o.namespace.is_empty() || o.image.is_empty() || o.prometheus_release.is_empty() {
            return Err("--namespace, --image and --prometheus-release must not be empty".into());
        }
        if o.route.http_route() && o.gateway.is_none() {
            return Err(
                "--route httproute|both needs --gateway NAME[/NAMESPACE]: the Gateway the \
                 HTTPRoute attaches to"
                    .into(),
            );
        }
        if o.gateway.is_some() && !o.route.http_route() {
            return Err("--gateway is only used with --route httproute or both".into());
        }
        Ok(o)
    }
}

/// The usage text: every flag, its default and what it does.
pub const USAGE: &str = "usage: cargo xtask deploy [FLAGS]
Renders ringgate's Kubernetes objects and applies them (kubectl apply --server-side).
  --dry-run                    print the objects instead of applying them (no cluster needed)
  --format yaml|json           with --dry-run: YAML documents (default) or one JSON v1/List
  --namespace, -n NS           namespace of every object (default ai-gateway)
  --image IMG                  container image (default ghcr.io/ringgate/ringgate:0.1.0)
  --replicas N                 the HPA's minReplicas, 1..1000 (default 3; max is 20 or N)
  --seccomp runtime-default|localhost
                               seccomp profile (default runtime-default: epoll; localhost:
                               configmaps/seccomp-io-uring.json on every node, io_uring)
  --host HOST                  the Ingress/HTTPRoute host (default api.yourdomain.com)
  --route ingress|httproute|both
                               ingress-nginx Ingress (default), Gateway API HTTPRoute, or both
  --gateway NAME[/NAMESPACE]   the Gateway an HTTPRoute attaches to (needed with httproute)
  --hpa-metric cpu|in-flight   HPA signal: cpu 70 % + memory 80 % (default, metrics-server
                               only), or ringgate_requests_in_flight per pod + cpu 70 %
                               (needs prometheus-adapter, see configmaps/README.md)
  --in-flight-target N         per-pod in-flight average the HPA aims at (default 100)
  --monitoring-namespace NS    where Prometheus runs; may scrape the admin port (default
                               monitoring)
  --prometheus-release NAME    `release` label on the ServiceMonitor and PrometheusRule, what
                               kube-prometheus-stack selects them by (default prometheus)
  --config FILE                the ConfigMap manifest (default configmaps/ringgate-config.yaml)
  --secret FILE                the Secret template (default configmaps/provider-secret.yaml);
                               its name is what the pod mounts
  --with-secret-template       include the Secret TEMPLATE (a placeholder key): with --dry-run
                               it is printed; applying creates it only when absent. Without
                               it no Secret is ever printed or applied.
  --with-redis                 also a small Redis for scope = \"cluster\" limits (Deployment,
                               Service, NetworkPolicy: only ringgate pods may connect), its
                               password Secret (ringgate-redis; applying creates it with a
                               random password when absent) mounted by the gateway, and a
                               [cluster] section naming it added to the config
  --redis-url URL              use an existing Redis (redis:// or rediss://): a [cluster]
                               section naming it is added to the config, egress opened to
                               its port
  --redis-password-secret NAME with --redis-url: a Secret with a `password` key, mounted at
                               /etc/ringgate/redis and named by password_file";

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

/// The prometheus-operator `PrometheusRule` (monitoring.coreos.com/v1): alerting rules the
/// operator loads into the Prometheus whose `ruleSelector` matches its labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusRule {
    /// Always `monitoring.coreos.com/v1`.
    pub api_version: String,
    /// Always `PrometheusRule`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// The rule groups.
    pub spec: PrometheusRuleSpec,
}

/// `PrometheusRule.spec`: the same `groups` a plain Prometheus rules file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusRuleSpec {
    /// Rule groups.
    pub groups: Vec<RuleGroup>,
}

/// One rule group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleGroup {
    /// Group name (unique in the file).
    pub name: String,
    /// Its alerting rules.
    pub rules: Vec<AlertRule>,
}

/// One alerting rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertRule {
    /// Alert name.
    pub alert: String,
    /// PromQL condition.
    pub expr: String,
    /// How long the condition must hold before the alert fires (a Prometheus duration).
    #[serde(rename = "for")]
    pub for_: String,
    /// Labels added to the alert (`severity`).
    pub labels: BTreeMap<String, String>,
    /// `summary` and `description` (Go templates over the alert's labels and value).
    pub annotations: BTreeMap<String, String>,
}

/// The Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1): a CRD, so not in
/// k8s-openapi; only the fields used here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Always `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// Always `HTTPRoute`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// Parents, hosts and rules.
    pub spec: HttpRouteSpec,
}

/// `HTTPRoute.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// The Gateways (listeners) the route attaches to.
    pub parent_refs: Vec<ParentReference>,
    /// Host names matched against the request's `Host`.
    pub hostnames: Vec<String>,
    /// Matches, backends, timeouts.
    pub rules: Vec<HttpRouteRule>,
}

/// `HTTPRoute.spec.parentRefs[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    /// `gateway.networking.k8s.io`.
    pub group: String,
    /// `Gateway`.
    pub kind: String,
    /// The Gateway's name.
    pub name: String,
    /// The Gateway's namespace when it is not the route's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `HTTPRoute.spec.rules[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Which requests (ORed).
    pub matches: Vec<HttpRouteMatch>,
    /// Where they go.
    pub backend_refs: Vec<HttpBackendRef>,
    /// Request and backend-request timeouts.
    pub timeouts: HttpRouteTimeouts,
}

/// `HTTPRoute.spec.rules[].matches[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// The path match.
    pub path: HttpPathMatch,
}

/// `HTTPRoute.spec.rules[].matches[].path`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// `PathPrefix` (element-wise, unlike the gateway's own plain string prefix).
    #[serde(rename = "type")]
    pub type_: String,
    /// The path.
    pub value: String,
}

/// `HTTPRoute.spec.rules[].backendRefs[]`: a Service port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    /// `""` (core).
    pub group: String,
    /// `Service`.
    pub kind: String,
    /// The Service's name.
    pub name: String,
    /// The Service port's number (Gateway API takes no port names).
    pub port: i32,
}

/// `HTTPRoute.spec.rules[].timeouts`: Gateway API durations (GEP-2257, e.g. `1h`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// The whole client transaction, retries included.
    pub request: String,
    /// One try to the backend (at most `request`).
    pub backend_request: String,
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
#[derive(Clone, Debug)]
pub struct GatewayFacts {
    /// Client listener port.
    pub http_port: i32,
    /// Admin listener port.
    pub admin_port: i32,
    /// `server.shutdown_grace_ms`, rounded up to seconds.
    pub shutdown_grace_seconds: i64,
    /// The ports of every upstream endpoint (what the egress NetworkPolicy opens).
    pub upstream_ports: BTreeSet<u16>,
    /// The `[cluster]` Redis port, when the config has one.
    pub redis_port: Option<u16>,
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
        upstream_ports: config
            .upstreams
            .iter()
            .flat_map(|u| u.endpoints.iter().map(|e| e.port))
            .collect(),
        redis_port: config.cluster.as_ref().map(|c| c.port),
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
    let mut mounts = vec![
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
    ];
    let mut volumes = vec![
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
    ];
    if let Some(s) = o.redis.password_secret() {
        let (v, m) = redis::gateway_volume(s);
        volumes.push(v);
        mounts.push(m);
    }
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
        // Every volume is a directory: kubelet swaps `..data` inside it and ringgate's
        // watcher sees it. Never `subPath` (a one-time copy that is never updated).
        volume_mounts: Some(mounts),
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
        // Its own ServiceAccount, and no API token in the pod: ringgate never talks to the
        // API server (it watches its mounted files), so a token would only be a credential
        // for an attacker to find.
        service_account_name: Some(APP.into()),
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
        // Spread over zones first (a zone outage takes at most its share), then nodes. Soft
        // (ScheduleAnyway): a skewed pod beats a Pending one. `pod-template-hash` makes each
        // rollout's ReplicaSet spread on its own: without it the old pods, about to go, are
        // counted and the new ones pile into whatever zone the old ones left emptiest.
        topology_spread_constraints: Some(
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
                .into_iter()
                .map(|key| TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: key.into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: Some(selector()),
                    match_label_keys: Some(vec!["pod-template-hash".into()]),
                    ..Default::default()
                })
                .collect(),
        ),
        volumes: Some(volumes),
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
            min_ready_seconds: Some(MIN_READY_SECONDS),
            revision_history_limit: Some(REVISION_HISTORY_LIMIT),
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
            ports: Some(vec![port("http", SERVICE_HTTP_PORT), port("admin", 9901)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Ingress annotations: the seed's, with its non-existent `rate-limit`/`rate-limit-window`
/// pair written as the ingress-nginx annotation that means "1000 per minute" (`limit-rpm`),
/// and stream-friendly timeouts. nginx's read/send timeouts run between two reads/writes;
/// at the seed's 300 s a stream quiet for five minutes (a reasoning model thinking, a
/// provider queue) was cut by the ingress even where the route allows longer. At
/// [`STREAM_TIMEOUT_SECONDS`] the gateway's per-route `read_timeout_ms` decides.
pub fn ingress_annotations() -> BTreeMap<String, String> {
    let stream = STREAM_TIMEOUT_SECONDS.to_string();
    [
        ("nginx.ingress.kubernetes.io/ssl-redirect", "true"),
        ("nginx.ingress.kubernetes.io/proxy-connect-timeout", "10"),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout",
            stream.as_str(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout",
            stream.as_str(),
        ),
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

/// The HPA (autoscaling/v2): the seed's behaviour, minReplicas = `--replicas`; the seed's
/// cpu 70 % / memory 80 % targets, or (`--hpa-metric in-flight`) the per-pod average of
/// `ringgate_requests_in_flight` with cpu 70 % beside it. The HPA follows whichever metric
/// asks for the most pods.
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
            metrics: Some(match o.hpa_metric {
                HpaMetric::Cpu => vec![utilization("cpu", 70), utilization("memory", 80)],
                // Memory is left out here: it follows the connections and buffers that the
                // in-flight count already measures, and memory that is not given back after a
                // burst would keep the HPA from ever scaling down.
                HpaMetric::InFlight => vec![
                    MetricSpec {
                        type_: "Pods".into(),
                        pods: Some(PodsMetricSource {
                            metric: MetricIdentifier {
                                name: IN_FLIGHT_METRIC.into(),
                                selector: None,
                            },
                            target: MetricTarget {
                                type_: "AverageValue".into(),
                                average_value: Some(Quantity(o.in_flight_target.to_string())),
                                ..Default::default()
                            },
                        }),
                        ..Default::default()
                    },
                    utilization("cpu", 70),
                ],
            }),
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
            // A pod that is not ready (crash-looping, a bad image) serves nothing; with the
            // default policy it still counts against the budget and blocks a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ServiceMonitor: the Service's `admin` port, `/metrics`, every 15 s.
pub fn service_monitor(o: &Options) -> ServiceMonitor {
    ServiceMonitor {
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "ServiceMonitor".into(),
        metadata: monitoring_meta(o),
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

/// The NetworkPolicy. Ingress: `http` open to all; `admin` (metrics, /config) only from this
/// namespace and the monitoring namespace (kubelet probes come from the node and are not
/// affected). Egress: DNS to kube-dns (53 UDP and TCP) and the upstreams' ports (from the
/// config: 443 for `https://` providers) to any address; nothing else leaves the pod.
pub fn network_policy(o: &Options, facts: &GatewayFacts) -> NetworkPolicy {
    let port = |p: IntOrString, protocol: &str| NetworkPolicyPort {
        port: Some(p),
        protocol: Some(protocol.into()),
        end_port: None,
    };
    let by_name = |key: &str, value: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
        ..Default::default()
    };
    let mut egress = vec![NetworkPolicyEgressRule {
        // One peer with both selectors: kube-dns pods in kube-system (CoreDNS keeps the
        // k8s-app=kube-dns label), not every pod labelled so anywhere.
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(by_name("kubernetes.io/metadata.name", "kube-system")),
            pod_selector: Some(by_name("k8s-app", "kube-dns")),
            ..Default::default()
        }]),
        ports: Some(vec![
            port(IntOrString::Int(53), "UDP"),
            port(IntOrString::Int(53), "TCP"),
        ]),
    }];
    if !facts.upstream_ports.is_empty() {
        let anywhere = |cidr: &str| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.into(),
                except: None,
            }),
            ..Default::default()
        };
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![anywhere("0.0.0.0/0"), anywhere("::/0")]),
            ports: Some(
                facts
                    .upstream_ports
                    .iter()
                    .map(|p| port(IntOrString::Int(i32::from(*p)), "TCP"))
                    .collect(),
            ),
        });
    }
    // The Redis of cluster-scoped limits: the bundled one's pods, or its port anywhere.
    match (&o.redis, facts.redis_port) {
        (RedisChoice::Bundled, _) => egress.push(NetworkPolicyEgressRule {
            to: Some(vec![redis::gateway_egress_peer()]),
            ports: Some(vec![port(IntOrString::Int(redis::REDIS_PORT), "TCP")]),
        }),
        (_, Some(p)) => egress.push(NetworkPolicyEgressRule {
            to: Some(vec![
                NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: "0.0.0.0/0".into(),
                        except: None,
                    }),
                    ..Default::default()
                },
                NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: "::/0".into(),
                        except: None,
                    }),
                    ..Default::default()
                },
            ]),
            ports: Some(vec![port(IntOrString::Int(i32::from(p)), "TCP")]),
        }),
        _ => {}
    }
    NetworkPolicy {
        metadata: meta(APP, &o.namespace),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port(IntOrString::String("http".into()), "TCP")]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        NetworkPolicyPeer {
                            pod_selector: Some(LabelSelector::default()),
                            ..Default::default()
                        },
                        NetworkPolicyPeer {
                            namespace_selector: Some(by_name(
                                "kubernetes.io/metadata.name",
                                &o.monitoring_namespace,
                            )),
                            ..Default::default()
                        },
                    ]),
                    ports: Some(vec![port(IntOrString::String("admin".into()), "TCP")]),
                },
            ]),
            egress: Some(egress),
        }),
    }
}

/// The pod's own ServiceAccount, with no API token mounted into pods by default.
pub fn service_account(o: &Options) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(APP, &o.namespace),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// Metadata of the prometheus-operator objects: the app label plus `release`, what a
/// kube-prometheus-stack Prometheus selects ServiceMonitors and PrometheusRules by
/// (`serviceMonitorSelector` / `ruleSelector` default to `release: <its Helm release>`).
fn monitoring_meta(o: &Options) -> ObjectMeta {
    let mut m = meta(APP, &o.namespace);
    if let Some(l) = m.labels.as_mut() {
        l.insert("release".into(), o.prometheus_release.clone());
    }
    m
}

/// The Service's client port, what the Ingress and the HTTPRoute send to.
pub const SERVICE_HTTP_PORT: i32 = 80;

/// The HTTPRoute: `/v1` on `--host` to the Service's http port, attached to `--gateway`
/// (TLS is the Gateway listener's business), with hour-long timeouts (see
/// [`STREAM_TIMEOUT_SECONDS`]).
pub fn http_route(o: &Options, gateway: &GatewayRef) -> HttpRoute {
    let timeout = format!("{STREAM_TIMEOUT_SECONDS}s");
    HttpRoute {
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        metadata: meta(APP, &o.namespace),
        spec: HttpRouteSpec {
            parent_refs: vec![ParentReference {
                group: "gateway.networking.k8s.io".into(),
                kind: "Gateway".into(),
                name: gateway.name.clone(),
                namespace: gateway.namespace.clone(),
            }],
            hostnames: vec![o.host.clone()],
            rules: vec![HttpRouteRule {
                matches: vec![HttpRouteMatch {
                    path: HttpPathMatch {
                        type_: "PathPrefix".into(),
                        value: "/v1".into(),
                    },
                }],
                backend_refs: vec![HttpBackendRef {
                    group: String::new(),
                    kind: "Service".into(),
                    name: APP.into(),
                    port: SERVICE_HTTP_PORT,
                }],
                timeouts: HttpRouteTimeouts {
                    request: timeout.clone(),
                    backend_request: timeout,
                },
            }],
        },
    }
}

/// The PrometheusRule: the alerts the docs suggest, each scoped to this namespace (the
/// `namespace` label the ServiceMonitor's scrape adds), so two installs never alert for
/// each other.
pub fn prometheus_rule(o: &Options) -> PrometheusRule {
    let ns = format!("namespace=\"{}\"", o.namespace);
    let rule = |alert: &str,
                expr: String,
                for_: &str,
                severity: &str,
                summary: &str,
                description: &str| AlertRule {
        alert: alert.into(),
        expr,
        for_: for_.into(),
        labels: BTreeMap::from([("severity".to_string(), severity.to_string())]),
        annotations: BTreeMap::from([
            ("summary".to_string(), summary.to_string()),
            ("description".to_string(), description.to_string()),
        ]),
    };
    let ratio = |metric: &str, bad: &str, by: &str| {
        format!(
            "sum by ({by}) (rate({metric}{{{ns},{bad}}}[5m]))\n  / sum by ({by}) (rate({metric}{{{ns}}}[5m]))"
        )
    };
    let rules = vec![
        rule(
            "RinggateConfigReloadFailing",
            format!("max by (namespace, pod) (ringgate_config_last_reload_successful{{{ns}}}) == 0"),
            "5m",
            "warning",
            "ringgate {{ $labels.pod }} rejects its new config",
            "The last config reload on {{ $labels.namespace }}/{{ $labels.pod }} was rejected and none has succeeded since, for 5 minutes: the previous config keeps serving, the edit is not applied. Every error is in the pod log and at the admin /config. Fix the ConfigMap or apply the previous one again.",
        ),
        rule(
            "RinggateHigh5xxRatio",
            format!("{} > 0.05", ratio("ringgate_requests_total", "status=~\"5..\"", "namespace")),
            "10m",
            "critical",
            "ringgate answers {{ $value | humanizePercentage }} of requests with 5xx",
            "More than 5 % of the requests ringgate served in {{ $labels.namespace }} over the last 5 minutes ended in a 5xx (its own 502/503/504 or the provider's), for 10 minutes. ringgate_requests_total by route and ringgate_upstream_requests_total by upstream say where.",
        ),
        rule(
            "RinggateUpstreamFailing",
            format!("{} > 0.5", ratio("ringgate_upstream_requests_total", "class=\"5xx\"", "namespace, upstream")),
            "5m",
            "critical",
            "upstream {{ $labels.upstream }} fails {{ $value | humanizePercentage }} of requests",
            "More than half of the requests sent to upstream {{ $labels.upstream }} in {{ $labels.namespace }} ended in a 5xx for 5 minutes: the provider is down or refusing, and passive health (max_fails) is ejecting its endpoints. Check the provider's status and the key in the Secret.",
        ),
        rule(
            "RinggateUpstreamEndpointEjected",
            format!("max by (namespace, upstream) (ringgate_upstream_endpoints_ejected{{{ns}}}) > 0"),
            "10m",
            "warning",
            "an endpoint of upstream {{ $labels.upstream }} is ejected",
            "Passive health (max_fails) has kept at least one endpoint of upstream {{ $labels.upstream }} in {{ $labels.namespace }} ejected for 10 minutes: its traffic goes to the other endpoints, with less headroom. Check that endpoint.",
        ),
        rule(
            "RinggateCertificateExpiringSoon",
            format!("min by (namespace, pod, server_name) (ringgate_tls_certificate_expiry_timestamp_seconds{{{ns}}}) - time() < 14 * 86400"),
            "15m",
            "warning",
            "ringgate's certificate for {{ $labels.server_name }} expires within 14 days",
            "The certificate {{ $labels.namespace }}/{{ $labels.pod }} serves for {{ $labels.server_name }} expires in {{ $value | humanizeDuration }}. cert-manager renews 30 days ahead by default, so the renewal failed or its Secret is not the one mounted: check the Certificate's status and ringgate_tls_certificate_reloads_total{result=\"rejected\"}.",
        ),
        rule(
            "RinggateWorkerDown",
            format!("max by (namespace, pod) (max_over_time(ringgate_worker_heartbeat_age_seconds{{{ns}}}[5m])) > 10"),
            "1m",
            "critical",
            "a ringgate worker on {{ $labels.pod }} died or is wedged",
            "A worker thread on {{ $labels.namespace }}/{{ $labels.pod }} has not run its event loop's heartbeat for over 10 s in the last 5 minutes: /health answers 503 and kubelet restarts the pod. Look for a panic or a blocking call in the pod's previous log (kubectl logs --previous).",
        ),
        rule(
            "RinggatePanics",
            format!("sum by (namespace, pod) (increase(ringgate_panics_total{{{ns}}}[10m])) > 0"),
            "1m",
            "warning",
            "ringgate panicked on {{ $labels.pod }}",
            "{{ $labels.namespace }}/{{ $labels.pod }} counted a panic in the last 10 minutes: a caught one closed only its client's connection, one that ended a worker also fires RinggateWorkerDown. The log has the location and the request id.",
        ),
    ];
    PrometheusRule {
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "PrometheusRule".into(),
        metadata: monitoring_meta(o),
        spec: PrometheusRuleSpec {
            groups: vec![RuleGroup {
                name: "ringgate".into(),
                rules,
            }],
        },
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

/// Everything, in apply order. The Secret template only with `with_secret` (the dry run's
/// `--with-secret-template`; applying adds that the Secret does not exist yet): a placeholder
/// must never replace a real key.
pub fn render(o: &Options, with_secret: bool) -> Result<Vec<Doc>, String> {
    let mut cm: ConfigMap = read_manifest(&o.config)?;
    // The file may name a namespace of its own; --namespace wins for every object.
    cm.metadata.namespace = Some(o.namespace.clone());
    let facts = gateway_facts(&cm, &o.config)?;
    redis::wire(&mut cm, &o.redis, facts.redis_port.is_some())
        .map_err(|e| format!("{}: {e}", o.config.display()))?;
    // Validated again with the [cluster] section added.
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
    let ns = &o.namespace;
    let seccomp_note = match o.seccomp {
        Seccomp::RuntimeDefault => "seccomp RuntimeDefault: io_uring is blocked, ringgate runs on epoll (ringgate_io_driver_info{driver=\"epoll\"}).",
        Seccomp::Localhost => "seccomp Localhost ringgate/seccomp-io-uring.json (configmaps/seccomp-io-uring.json, installed on every node): io_uring allowed.",
    };
    let mut docs = vec![
        doc("Namespace", ns, "ringgate's namespace; the pod meets the restricted Pod Security Standard.", &namespace(o))?,
        doc("ServiceAccount", APP, "The pod's own identity; no API token is mounted (ringgate never calls the API server).", &service_account(o))?,
        doc("ConfigMap", &cm_name, &format!("From {}. Edit that file and `kubectl -n {ns} apply -f` it:\nthe pods reload it in place (60-90 s kubelet sync), no restart.", shown(&o.config)), &cm)?,
    ];
    if with_secret {
        docs.push(doc(
            "Secret",
            &secret_name,
            &format!(
                "TEMPLATE from {} (--with-secret-template): a PLACEHOLDER key. Applying this\n\
                 replaces a real key; create the real one instead:\n\
                 kubectl -n {ns} create secret generic {secret_name} --from-literal=api-key=...",
                shown(&o.secret)
            ),
            &secret,
        )?);
    }
    let grace = PRESTOP_SLEEP_SECONDS + facts.shutdown_grace_seconds + GRACE_MARGIN_SECONDS;
    docs.extend([
        doc("Deployment", APP, &format!(
            "The ConfigMap and the Secret ({secret_name}, not in this output unless --with-secret-template)\n\
             are mounted as DIRECTORIES, never with subPath (a subPath mount is copied once and never\n\
             updated). No config-hash annotation on the pod template: a ConfigMap edit is reloaded in\n\
             place and must not restart the pods. No replicas: the HPA owns the count.\n\
             terminationGracePeriodSeconds {grace} = preStop {PRESTOP_SLEEP_SECONDS} s + shutdown_grace {} s + {GRACE_MARGIN_SECONDS} s.\n{seccomp_note}",
            facts.shutdown_grace_seconds
        ), &deployment(o, &facts, &cm_name, &secret_name))?,
        doc("Service", APP, "Ports named http and admin (the ServiceMonitor scrapes admin /metrics).", &service(o))?,
    ]);
    if o.route.ingress() {
        docs.push(doc("Ingress", APP, &format!("ingress-nginx: proxy-buffering off so SSE streams are not held; read/send timeouts\n{STREAM_TIMEOUT_SECONDS} s so the gateway's per-route timeouts decide, not the ingress."), &ingress(o))?);
    }
    if let (true, Some(gw)) = (o.route.http_route(), o.gateway.as_ref()) {
        docs.push(doc("HTTPRoute", APP, &format!("Gateway API: /v1 on {} through Gateway {}{}; request and backendRequest\ntimeouts {STREAM_TIMEOUT_SECONDS} s so long streams are not cut.", o.host, gw.name, gw.namespace.as_deref().map(|n| format!(" in {n}")).unwrap_or_default()), &http_route(o, gw))?);
    }
    let hpa_note = match o.hpa_metric {
        HpaMetric::Cpu => "The seed's HPA: cpu 70 %, memory 80 %, fast scale-up, slow scale-down.".to_string(),
        HpaMetric::InFlight => format!("Scales on {IN_FLIGHT_METRIC} (per-pod average {}, through prometheus-adapter:\nsee configmaps/README.md) and cpu 70 %; fast scale-up, slow scale-down.", o.in_flight_target),
    };
    docs.extend([
        doc("HorizontalPodAutoscaler", APP, &hpa_note, &hpa(o))?,
        doc("PodDisruptionBudget", APP, "At most one pod voluntarily disrupted at a time; unready pods may always be evicted.", &pdb(o))?,
        doc("ServiceMonitor", APP, &format!("prometheus-operator CRD: scrape admin /metrics every 15 s. Selected by the label\nrelease: {} (kube-prometheus-stack's serviceMonitorSelector; --prometheus-release).", o.prometheus_release), &service_monitor(o))?,
        doc("PrometheusRule", APP, &format!("prometheus-operator CRD: alerts on reload failures, 5xx ratio, failing upstreams,\nexpiring certificates, dead workers and panics. Selected by release: {} (ruleSelector).", o.prometheus_release), &prometheus_rule(o))?,
        doc("NetworkPolicy", APP, "In: http open; admin only from this namespace and the monitoring namespace.\nOut: DNS (kube-dns, 53), the upstreams' ports from the config and its Redis only.", &network_policy(o, &facts))?,
    ]);
    if o.redis == RedisChoice::Bundled {
        let r = redis::REDIS;
        if with_secret {
            docs.push(doc("Secret", r, &format!(
                "TEMPLATE (--with-secret-template): a PLACEHOLDER Redis password. Applying without it\n\
                 creates {r} with a random password when absent; or create it yourself:\n\
                 kubectl -n {ns} create secret generic {r} --from-literal=password=\"$(openssl rand -hex 32)\""
            ), &redis::secret_template(o))?);
        }
        docs.extend([
            doc("Deployment", r, &format!(
                "--with-redis: the Redis of scope = \"cluster\" limits, {}. One pod (Recreate: never two),\n\
                 no persistence (a restart means fresh buckets), password from Secret {r} (never in argv).",
                redis::REDIS_IMAGE
            ), &redis::deployment(o))?,
            doc("Service", r, &format!("redis://{r}:{} (the gateway's [cluster] redis_url).", redis::REDIS_PORT), &redis::service(o))?,
            doc("NetworkPolicy", r, "In: only ringgate pods, on the Redis port. Out: nothing.", &redis::network_policy(o))?,
        ]);
    }
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

/// Whether the cluster knows the CRD `name` (e.g. `servicemonitors.monitoring.coreos.com`).
fn crd_present(name: &str) -> Result<bool, String> {
    Ok(kubectl(&["get", "crd", name, "-o", "name"], None)?.is_ok())
}

fn apply(o: &Options) -> Result<(), String> {
    preflight()?;
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
    let create_key = format!(
        "kubectl create namespace {ns} --dry-run=client -o yaml | kubectl apply -f - && \
         kubectl -n {ns} create secret generic {secret_name} --from-literal=api-key=...",
        ns = o.namespace
    );
    // The template is only ever created, never applied over a Secret that exists: that would
    // replace the real key with the placeholder.
    let with_secret = o.with_secret_template && !secret_exists;
    if secret_exists {
        say(format!(
            "deploy: Secret {}/{secret_name} exists; left as it is",
            o.namespace
        ))?;
    } else if o.with_secret_template {
        say(format!(
            "deploy: creating Secret {}/{secret_name} from the TEMPLATE {}: it holds a \
             placeholder; put the real key in it ({create_key})",
            o.namespace,
            shown(&o.secret),
        ))?;
    } else {
        return Err(format!(
            "Secret {}/{secret_name} (the provider key the pods mount) does not exist, and \
             without it the pods never start. Create it first:\n  {create_key}\nor pass \
             --with-secret-template to create it from the placeholder template {}.",
            o.namespace,
            shown(&o.secret)
        ));
    }
    let exists = |name: &str| -> Result<bool, String> {
        match kubectl(
            &["get", "secret", "-n", &o.namespace, name, "-o", "name"],
            None,
        )? {
            Ok(_) => Ok(true),
            Err(e) if e.contains("NotFound") || e.contains("not found") => Ok(false),
            Err(e) => Err(format!("cannot tell whether Secret {name} exists: {e}")),
        }
    };
    let create_redis_secret = o.redis == RedisChoice::Bundled && !exists(redis::REDIS)?;
    match &o.redis {
        RedisChoice::External {
            password_secret: Some(name),
            ..
        } if !exists(name)? => {
            return Err(format!(
                "Secret {}/{name} (--redis-password-secret) does not exist; create it:\n  \
                 kubectl -n {} create secret generic {name} --from-literal=password=...",
                o.namespace, o.namespace
            ));
        }
        _ => {}
    }
    let mut docs = render(o, with_secret)?;
    // The Redis Secret template is for --dry-run readers; applying created the real one.
    docs.retain(|d| !(d.kind == "Secret" && d.yaml.contains("CHANGE_ME_REDIS_PASSWORD")));
    if o.route.http_route() && !crd_present("httproutes.gateway.networking.k8s.io")? {
        return Err(
            "--route asks for an HTTPRoute, but this cluster has no Gateway API CRDs \
             (httproutes.gateway.networking.k8s.io); install a Gateway API implementation \
             or use --route ingress"
                .into(),
        );
    }
    for (kind, crd) in [
        ("ServiceMonitor", "servicemonitors.monitoring.coreos.com"),
        ("PrometheusRule", "prometheusrules.monitoring.coreos.com"),
    ] {
        if !crd_present(crd)? {
            docs.retain(|d| d.kind != kind);
            say(format!(
                "deploy: no {kind} CRD (prometheus-operator) in this cluster; skipping the \
                 {kind}"
            ))?;
        }
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
            if create_redis_secret {
                // Created, never applied over: a re-deploy keeps the password Redis and the
                // gateways already share. Random, never printed; created after the
                // Namespace exists (the Redis pod waits for it meanwhile).
                let secret = redis::secret_with(o, &redis::random_password()?);
                let json = serde_json::to_string(&secret).map_err(|e| e.to_string())?;
                if let Err(e) = kubectl(&["create", "-f", "-"], Some(&json))? {
                    return Err(format!("creating Secret {}: {e}", redis::REDIS));
                }
                say(format!(
                    "deploy: created Secret {}/{} with a random Redis password",
                    o.namespace,
                    redis::REDIS
                ))?;
            }
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
            let docs = render(&o, o.with_secret_template)?;
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
        o.route = RouteKind::Both;
        o.gateway = Some(GatewayRef {
            name: "eg".into(),
            namespace: Some("infra".into()),
        });
        o.hpa_metric = HpaMetric::InFlight;
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
                    "ServiceAccount" => round_trip::<ServiceAccount>(&v),
                    "ConfigMap" => round_trip::<ConfigMap>(&v),
                    "Secret" => round_trip::<Secret>(&v),
                    "Deployment" => round_trip::<Deployment>(&v),
                    "Service" => round_trip::<Service>(&v),
                    "Ingress" => round_trip::<Ingress>(&v),
                    "HorizontalPodAutoscaler" => round_trip::<HorizontalPodAutoscaler>(&v),
                    "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(&v),
                    "ServiceMonitor" => round_trip::<ServiceMonitor>(&v),
                    "PrometheusRule" => round_trip::<PrometheusRule>(&v),
                    "HTTPRoute" => round_trip::<HttpRoute>(&v),
                    "NetworkPolicy" => round_trip::<NetworkPolicy>(&v),
                    other => panic!("unexpected kind {other}"),
                }
                kinds.push(kind);
            }
            assert_eq!(kinds.len(), 13, "{kinds:?}");
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
        for bad in [
            "--replicas 0",
            "--seccomp off",
            "--frobnicate",
            "--image",
            "--route httproute",
            "--route gateway --gateway eg",
            "--gateway eg",
            "--route both --gateway /ns",
            "--route both --gateway eg/",
            "--route both --gateway a/b/c",
            "--hpa-metric memory",
            "--in-flight-target 0",
            "--prometheus-release",
        ] {
            assert!(Options::parse(&args(bad), &r).is_err(), "{bad}");
        }
        let o = Options::parse(
            &args("--route httproute --gateway eg/infra --hpa-metric in-flight --in-flight-target 40 --with-secret-template --prometheus-release kps"),
            &r,
        )
        .expect("parse");
        assert_eq!(o.route, RouteKind::HttpRoute);
        assert_eq!(
            o.gateway,
            Some(GatewayRef {
                name: "eg".into(),
                namespace: Some("infra".into())
            })
        );
        assert_eq!(
            (o.hpa_metric, o.in_flight_target),
            (HpaMetric::InFlight, 40)
        );
        assert!(o.with_secret_template);
        assert_eq!(o.prometheus_release, "kps");
        let o = Options::parse(&args("--route both --gateway eg"), &r).expect("parse");
        assert_eq!(o.gateway.and_then(|g| g.namespace), None);
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
