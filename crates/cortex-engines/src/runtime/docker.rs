//! The `docker` runtime: the engine runs in a container through the Docker Engine API (bollard,
//! over `DOCKER_HOST` or a unix socket).
//!
//! How the gateway reaches it — decided and checked against a real daemon started the way
//! these machines must run it (`dockerd --iptables=false --bridge=none`, so there is no default
//! bridge and no NAT):
//! - each engine gets a user-defined bridge network of its own, `cortex-engine-<id>`, shared
//!   with nothing else; the engine listens on port 8000 on every interface of its own network
//!   namespace (which holds only that network);
//! - the container port is published on `127.0.0.1:<port>` only (the port the supervisor
//!   picked), through Docker's userland proxy, so the gateway connects to loopback exactly as
//!   for a process engine, and nothing listens on the host's other interfaces;
//! - the network is *not* `internal`: Docker does not publish ports of containers on internal
//!   networks (checked: the binding is dropped and loopback gets nothing). Where dockerd runs
//!   with iptables (the usual production setup) the container can therefore reach the internet
//!   (a Hugging Face download needs it); on these machines it cannot, which tests do not need;
//! - the host's own bridge address can reach the container's address directly; that is the
//!   one path that bypasses the loopback publication, which is why every engine also requires
//!   its generated API key.
//!
//! Also: the models directory is bind-mounted read-only at `/models`; GPUs are device requests
//! (`--gpus`' `capabilities: [["gpu"]]` with the listed ids); `no-new-privileges`, every
//! capability dropped, `init` so the engine's children are reaped. The API key and token are
//! in the container's environment, which anyone with access to the Docker socket can read
//! (`docker inspect`): the socket is root-equivalent anyway. Containers and networks carry the
//! label `cortex.engine=<id>`; [`DockerRuntime::remove_leftovers`] clears them after a crash.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, NetworkCreateRequest, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;

use crate::error::RuntimeError;
use crate::launch::{EnvValue, LaunchPlan, CONTAINER_MODELS_DIR, CONTAINER_PORT};
use crate::logs::{LineSplitter, LogBuffer};
use crate::runtime::{ExitReport, Instance, Runtime};
use crate::spec::EngineId;

/// The label every container and network of ours carries.
pub const ENGINE_LABEL: &str = "cortex.engine";

/// Starts engines as containers.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    shm_size_bytes: Option<i64>,
}

impl DockerRuntime {
    /// Connects to `host` (`unix:///path/docker.sock`, `tcp://…`, `http://…`) and agrees on an
    /// API version with the daemon.
    pub async fn connect(host: &str) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_host(host)?.negotiate_version().await?;
        docker.ping().await?;
        Ok(DockerRuntime {
            docker,
            shm_size_bytes: None,
        })
    }

    /// `/dev/shm` size for engines (vLLM's workers share tensors through it).
    pub fn with_shm_size(mut self, bytes: i64) -> Self {
        self.shm_size_bytes = Some(bytes);
        self
    }

    /// The client, for callers that manage images.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Removes every container and network labelled as ours (left behind by a crash of Cortex).
    pub async fn remove_leftovers(&self) -> Result<usize, RuntimeError> {
        let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", vec![ENGINE_LABEL])]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        let mut removed = 0;
        for container in containers {
            if let Some(id) = container.id {
                self.docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                    )
                    .await?;
                removed += 1;
            }
        }
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await?;
        for network in networks {
            if let Some(id) = network.id {
                self.docker.remove_network(&id).await?;
            }
        }
        Ok(removed)
    }

    async fn launch_inner(
        &self,
        id: &EngineId,
        plan: LaunchPlan,
        logs: LogBuffer,
    ) -> Result<DockerInstance, RuntimeError> {
        let image = plan
            .image
            .clone()
            .ok_or_else(|| RuntimeError::Docker("no image".into()))?;
        let name = resource_name(id);
        let labels = HashMap::from([(ENGINE_LABEL.to_owned(), id.as_str().to_owned())]);

        // Leftovers of an earlier run under the same name go first.
        let _ = self
            .docker
            .remove_container(
                &name,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;
        let _ = self.docker.remove_network(&name).await;
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                internal: Some(false),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await?;

        let port_key = format!("{CONTAINER_PORT}/tcp");
        let port_bindings = HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(plan.host_port.to_string()),
            }]),
        )]);
        let device_requests = (!plan.gpus.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some(String::new()),
                count: None,
                device_ids: Some(plan.gpus.iter().map(u32::to_string).collect()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                options: None,
            }]
        });
        let binds = plan
            .models_mount
            .as_ref()
            .map(|dir| vec![format!("{}:{CONTAINER_MODELS_DIR}:ro", dir.display())]);
        let env = plan
            .env
            .iter()
            .map(|(name, value)| match value {
                EnvValue::Plain(value) => format!("{name}={value}"),
                EnvValue::Secret(secret) => format!("{name}={}", secret.expose_secret()),
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: Some(plan.args.clone()),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(vec![port_key]),
            host_config: Some(HostConfig {
                network_mode: Some(name.clone()),
                port_bindings: Some(port_bindings),
                device_requests,
                binds,
                security_opt: Some(vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                init: Some(true),
                shm_size: self.shm_size_bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await;
        let container = match created {
            Ok(created) => created.id,
            Err(error) => {
                let _ = self.docker.remove_network(&name).await;
                return Err(error.into());
            }
        };
        if let Err(error) = self.docker.start_container(&container, None).await {
            let _ = self
                .docker
                .remove_container(
                    &container,
                    Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                )
                .await;
            let _ = self.docker.remove_network(&name).await;
            return Err(error.into());
        }
        tracing::info!(container = %container, network = %name, "engine container started");
        let log_task = tokio::spawn(follow_logs(self.docker.clone(), container.clone(), logs));
        Ok(DockerInstance {
            docker: self.docker.clone(),
            container,
            network: name,
            log_task: Some(log_task),
        })
    }
}

impl Runtime for DockerRuntime {
    fn launch<'a>(
        &'a self,
        id: &'a EngineId,
        plan: LaunchPlan,
        logs: LogBuffer,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, RuntimeError>> {
        Box::pin(async move {
            let instance = self.launch_inner(id, plan, logs).await?;
            Ok(Box::new(instance) as Box<dyn Instance>)
        })
    }
}

/// `cortex-engine-<id>` with anything Docker does not allow in names replaced.
pub fn resource_name(id: &EngineId) -> String {
    let safe: String = id
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!("cortex-engine-{safe}")
}

async fn follow_logs(docker: Docker, container: String, logs: LogBuffer) {
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(&container, Some(options));
    let (mut out, mut err) = (LineSplitter::default(), LineSplitter::default());
    while let Some(Ok(chunk)) = stream.next().await {
        match chunk {
            bollard::container::LogOutput::StdErr { message } => err.feed(&message, &logs),
            other => out.feed(&other.into_bytes(), &logs),
        }
    }
    out.finish(&logs);
    err.finish(&logs);
}

struct DockerInstance {
    docker: Docker,
    container: String,
    network: String,
    log_task: Option<JoinHandle<()>>,
}

impl DockerInstance {
    async fn exit_report(&self) -> ExitReport {
        match self
            .docker
            .inspect_container(&self.container, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => {
                let state = inspect.state.unwrap_or_default();
                ExitReport {
                    code: state.exit_code,
                    signal: None,
                }
            }
            Err(_) => ExitReport {
                code: None,
                signal: None,
            },
        }
    }
}

impl Instance for DockerInstance {
    fn exited(&mut self) -> BoxFuture<'_, ExitReport> {
        Box::pin(async move {
            let options = WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build();
            let mut wait = self.docker.wait_container(&self.container, Some(options));
            match wait.next().await {
                Some(Ok(response)) => ExitReport {
                    code: Some(response.status_code),
                    signal: None,
                },
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    ExitReport {
                        code: Some(code),
                        signal: None,
                    }
                }
                // The daemon went away or the stream broke: report what inspect says, or
                // nothing, and let the supervisor treat it as an exit.
                _ => self.exit_report().await,
            }
        })
    }

    fn stop(
        mut self: Box<Self>,
        grace: Duration,
    ) -> BoxFuture<'static, Result<ExitReport, RuntimeError>> {
        let log_task = self.log_task.take();
        Box::pin(async move {
            let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
            // SIGTERM, then SIGKILL after `seconds` (Docker's own escalation).
            let stopped = self
                .docker
                .stop_container(
                    &self.container,
                    Some(StopContainerOptionsBuilder::new().t(seconds).build()),
                )
                .await;
            if let Err(error) = stopped {
                tracing::warn!(container = %self.container, %error, "stopping the engine container failed");
            }
            let report = self.exit_report().await;
            if let Some(task) = log_task {
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
            self.docker
                .remove_container(
                    &self.container,
                    Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                )
                .await?;
            self.docker.remove_network(&self.network).await?;
            Ok(report)
        })
    }

    fn container_id(&self) -> Option<String> {
        Some(self.container.clone())
    }
}
