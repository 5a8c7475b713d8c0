//! The Redis that cluster-scoped limits share (`cargo xtask deploy --with-redis`), and the
//! wiring of a Redis into the gateway's `[cluster]` (`--with-redis` or `--redis-url`).
//!
//! The Redis is small on purpose: one pod, no persistence (limit state is short-lived and
//! a restarted Redis only means fresh buckets, which the README documents), a password from
//! a Secret, reachable only from ringgate pods, and the restricted Pod Security Standard like
//! the gateway. The password never appears in a rendered manifest or a process's argv: the
//! container writes it into a config file on an emptyDir with the shell's `printf` builtin.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{quantities, Options, APP, NAME_LABEL};

/// Name of the Redis Deployment, Service, NetworkPolicy and password Secret.
pub const REDIS: &str = "ringgate-redis";
/// The official image, pinned to a release (a moving tag would change under a re-apply).
pub const REDIS_IMAGE: &str = "redis:7.2.5-alpine";
/// The Redis port.
pub const REDIS_PORT: i32 = 6379;
/// The key of the password in the Secret (and so the file name where it is mounted).
pub const PASSWORD_KEY: &str = "password";
/// Where the gateway mounts the Redis password Secret (a directory).
pub const REDIS_SECRET_DIR: &str = "/etc/ringgate/redis";
/// The `redis` user of the official alpine image.
const REDIS_UID: i64 = 999;

/// Where the gateway's Redis comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisChoice {
    /// The config's own `[cluster]`, if any (the default).
    None,
    /// `--with-redis`: the Redis rendered here.
    Bundled,
    /// `--redis-url URL`: an existing Redis; its password (if any) from the Secret named.
    External {
        /// `redis://` or `rediss://` URL.
        url: String,
        /// `--redis-password-secret NAME`: a Secret with a `password` key.
        password_secret: Option<String>,
    },
}

impl RedisChoice {
    /// The Secret the gateway mounts at [`REDIS_SECRET_DIR`], if any.
    pub fn password_secret(&self) -> Option<&str> {
        match self {
            RedisChoice::None => None,
            RedisChoice::Bundled => Some(REDIS),
            RedisChoice::External {
                password_secret, ..
            } => password_secret.as_deref(),
        }
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_LABEL.to_string(), REDIS.to_string())])
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

/// Adds a `[cluster]` section naming the chosen Redis to the ConfigMap's `gateway.toml`
/// (appended as text: only the ringgate crate parses TOML, and it validates the result
/// right after). A config that has a `[cluster]` already is left to its author: refusing
/// is clearer than silently replacing it.
pub fn wire(cm: &mut ConfigMap, choice: &RedisChoice, has_cluster: bool) -> Result<(), String> {
    let (url, password) = match choice {
        RedisChoice::None => return Ok(()),
        RedisChoice::Bundled => (format!("redis://{REDIS}:{REDIS_PORT}"), true),
        RedisChoice::External {
            url,
            password_secret,
        } => (url.clone(), password_secret.is_some()),
    };
    if has_cluster {
        return Err(
            "the config already has a [cluster] section; --with-redis/--redis-url would \
             replace it: edit its redis_url instead, or remove it"
                .into(),
        );
    }
    if url.contains('"') || url.contains('\n') || url.contains('\\') {
        return Err(format!("--redis-url {url:?}: not a URL"));
    }
    let toml = cm
        .data
        .as_mut()
        .and_then(|d| d.get_mut("gateway.toml"))
        .ok_or("the ConfigMap has no gateway.toml key")?;
    if !toml.ends_with('\n') {
        toml.push('\n');
    }
    toml.push_str(
        "\n# Added by `cargo xtask deploy`: the Redis shared by cluster-scoped limits\n\
         # (scope = \"cluster\" on a limit or a token budget).\n[cluster]\n",
    );
    toml.push_str(&format!("redis_url = \"{url}\"\n"));
    if password {
        toml.push_str(&format!(
            "password_file = \"{REDIS_SECRET_DIR}/{PASSWORD_KEY}\"\n"
        ));
    }
    Ok(())
}

/// The password Secret's TEMPLATE (`--with-secret-template`): a placeholder, to be
/// replaced. Applying creates the real one with a random password when it is absent.
pub fn secret_template(o: &Options) -> Secret {
    Secret {
        metadata: meta(REDIS, &o.namespace),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_string(),
            "CHANGE_ME_REDIS_PASSWORD".to_string(),
        )])),
        ..Default::default()
    }
}

/// The password Secret with `password` in it (what `apply` creates when it is absent).
pub fn secret_with(o: &Options, password: &str) -> Secret {
    let mut s = secret_template(o);
    s.string_data = Some(BTreeMap::from([(
        PASSWORD_KEY.to_string(),
        password.to_string(),
    )]));
    s
}

/// A random password: 32 bytes from the OS, hex.
pub fn random_password() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?,
        &mut bytes,
    )
    .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The Redis Deployment: one pod, no persistence, password from the Secret.
pub fn deployment(o: &Options) -> Deployment {
    // `printf` is a shell builtin: the password goes to the file, never into an argv.
    let script = "printf 'requirepass %s\\n' \"$REDIS_PASSWORD\" > /run/redis/redis.conf && \
                  unset REDIS_PASSWORD && \
                  exec redis-server /run/redis/redis.conf --port 6379 --save '' \
                  --appendonly no --maxmemory 96mb --maxmemory-policy volatile-ttl";
    let tcp_probe = |initial: i32, period: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("redis".into()),
            host: None,
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let container = Container {
        name: "redis".into(),
        image: Some(REDIS_IMAGE.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        env: Some(vec![EnvVar {
            name: "REDIS_PASSWORD".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: REDIS.into(),
                    key: PASSWORD_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "run".into(),
                mount_path: "/run/redis".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("100m", "64Mi")),
            limits: Some(quantities("500m", "128Mi")),
            ..Default::default()
        }),
        liveness_probe: Some(tcp_probe(10, 10)),
        readiness_probe: Some(tcp_probe(2, 3)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(REDIS_UID),
            run_as_group: Some(REDIS_UID),
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
    let empty = |name: &str, size: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                size.into(),
            )),
        }),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(REDIS_UID),
            run_as_group: Some(REDIS_UID),
            fs_group: Some(REDIS_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volumes: Some(vec![empty("run", "1Mi"), empty("data", "16Mi")]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(REDIS, &o.namespace),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: selector(),
            // Never two Redis at once: two would split the limits' state.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            revision_history_limit: Some(super::REVISION_HISTORY_LIMIT),
            template: PodTemplateSpec {
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

/// The Redis Service (`ringgate-redis:6379`).
pub fn service(o: &Options) -> Service {
    Service {
        metadata: meta(REDIS, &o.namespace),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(labels()),
            ports: Some(vec![ServicePort {
                name: Some("redis".into()),
                port: REDIS_PORT,
                target_port: Some(IntOrString::String("redis".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// In: only ringgate pods of this namespace, on the Redis port. Out: nothing.
pub fn network_policy(o: &Options) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(REDIS, &o.namespace),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            NAME_LABEL.to_string(),
                            APP.to_string(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(REDIS_PORT)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: Some(Vec::new()),
        }),
    }
}

/// The gateway's mount of the password Secret: a directory, like its other Secrets.
pub fn gateway_volume(secret: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "redis".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "redis".into(),
            mount_path: REDIS_SECRET_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    )
}

/// The gateway's egress to the bundled Redis pods (rather than to any address).
pub fn gateway_egress_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector()),
        ..Default::default()
    }
}
