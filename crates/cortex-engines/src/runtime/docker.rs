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
use tokio::sync::watch;
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
        let force = || Some(RemoveContainerOptionsBuilder::new().force(true).build());

        // Leftovers of an earlier run under the same name go first.
        let _ = self.docker.remove_container(&name, force()).await;
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

        let body = container_body(&plan, image, &name, labels, self.shm_size_bytes);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let container = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created.id,
            Err(error) => {
                let _ = self.docker.remove_network(&name).await;
                return Err(error.into());
            }
        };
        if let Err(error) = self.docker.start_container(&container, None).await {
            let _ = self.docker.remove_container(&container, force()).await;
            let _ = self.docker.remove_network(&name).await;
            return Err(error.into());
        }
        tracing::info!(container = %container, network = %name, "engine container started");
        let log_task = tokio::spawn(follow_logs(self.docker.clone(), container.clone(), logs));
        let (exit_tx, exit) = watch::channel(None);
        let wait_task = tokio::spawn(wait_for_exit(
            self.docker.clone(),
            container.clone(),
            exit_tx,
        ));
        Ok(DockerInstance {
            docker: self.docker.clone(),
            container,
            network: name,
            log_task: Some(log_task),
            wait_task,
            exit,
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

/// The container's definition: the plan's command and environment, its own network, the port
/// published on loopback only, GPUs as device requests, models read-only, least privilege.
pub fn container_body(
    plan: &LaunchPlan,
    image: String,
    network: &str,
    labels: HashMap<String, String>,
    shm_size_bytes: Option<i64>,
) -> ContainerCreateBody {
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
    ContainerCreateBody {
        image: Some(image),
        cmd: Some(plan.args.clone()),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: Some(vec![port_key]),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            port_bindings: Some(port_bindings),
            device_requests,
            binds,
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            init: Some(true),
            shm_size: shm_size_bytes,
            ..Default::default()
        }),
        ..Default::default()
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

/// Waits — one request for the container's whole life — until it is no longer running.
async fn wait_for_exit(docker: Docker, container: String, exit: watch::Sender<Option<ExitReport>>) {
    let options = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut wait = docker.wait_container(&container, Some(options));
    let report = match wait.next().await {
        Some(Ok(response)) => ExitReport {
            code: Some(response.status_code),
            signal: None,
        },
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => ExitReport {
            code: Some(code),
            signal: None,
        },
        // The daemon went away or the stream broke: report what inspect says, or nothing,
        // and let the supervisor treat it as an exit.
        _ => exit_report(&docker, &container).await,
    };
    let _ = exit.send(Some(report));
}

async fn exit_report(docker: &Docker, container: &str) -> ExitReport {
    match docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
    {
        Ok(inspect) => ExitReport {
            code: inspect.state.unwrap_or_default().exit_code,
            signal: None,
        },
        Err(_) => ExitReport {
            code: None,
            signal: None,
        },
    }
}

struct DockerInstance {
    docker: Docker,
    container: String,
    network: String,
    log_task: Option<JoinHandle<()>>,
    wait_task: JoinHandle<()>,
    exit: watch::Receiver<Option<ExitReport>>,
}

impl Instance for DockerInstance {
    fn exited(&mut self) -> BoxFuture<'_, ExitReport> {
        Box::pin(async move {
            // Copied out at once: the borrow of the channel must not live across an await.
            let report = self
                .exit
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|r| *r);
            match report {
                Some(report) => report,
                // The wait task ended without a report (only a panic does that).
                None => exit_report(&self.docker, &self.container).await,
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
            let options = StopContainerOptionsBuilder::new().t(seconds).build();
            if let Err(error) = self
                .docker
                .stop_container(&self.container, Some(options))
                .await
            {
                tracing::warn!(container = %self.container, %error, "stopping the engine container failed");
            }
            let report = exit_report(&self.docker, &self.container).await;
            self.wait_task.abort();
            if let Some(task) = log_task {
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
            let force = RemoveContainerOptionsBuilder::new().force(true).build();
            self.docker
                .remove_container(&self.container, Some(force))
                .await?;
            self.docker.remove_network(&self.network).await?;
            Ok(report)
        })
    }

    fn container_id(&self) -> Option<String> {
        Some(self.container.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::RuntimeKind;
    use secrecy::SecretString;
    use std::path::PathBuf;

    fn plan(gpus: Vec<u32>, models_mount: Option<PathBuf>) -> LaunchPlan {
        LaunchPlan {
            runtime: RuntimeKind::Docker,
            program: PathBuf::from("unused"),
            args: vec!["--model".into(), "/models/m.gguf".into()],
            env: vec![
                ("A".into(), EnvValue::Plain("1".into())),
                (
                    "LLAMA_API_KEY".into(),
                    EnvValue::Secret(SecretString::from("k")),
                ),
            ],
            gpus,
            image: Some("img:1".into()),
            models_mount,
            host_port: 40123,
        }
    }

    #[test]
    fn container_body_publishes_on_loopback_and_requests_gpus() {
        let plan = plan(vec![0, 2], Some(PathBuf::from("/srv/models")));
        let labels = HashMap::from([(ENGINE_LABEL.to_owned(), "e1".to_owned())]);
        let body = container_body(
            &plan,
            "img:1".into(),
            "cortex-engine-e1",
            labels,
            Some(1 << 30),
        );
        assert_eq!(body.cmd, Some(plan.args));
        assert_eq!(
            body.env,
            Some(vec!["A=1".to_owned(), "LLAMA_API_KEY=k".to_owned()])
        );
        assert_eq!(body.exposed_ports, Some(vec!["8000/tcp".to_owned()]));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("cortex-engine-e1"));
        let binding = host.port_bindings.unwrap()["8000/tcp"].clone().unwrap();
        assert_eq!(
            binding,
            [PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some("40123".into())
            }]
        );
        let gpus = host.device_requests.unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(
            gpus[0].device_ids,
            Some(vec!["0".to_owned(), "2".to_owned()])
        );
        assert_eq!(gpus[0].capabilities, Some(vec![vec!["gpu".to_owned()]]));
        assert_eq!(host.binds, Some(vec!["/srv/models:/models:ro".to_owned()]));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.shm_size, Some(1 << 30));
    }

    #[test]
    fn no_gpus_no_device_requests_and_safe_names() {
        let body = container_body(&plan(vec![], None), "i".into(), "n", HashMap::new(), None);
        let host = body.host_config.unwrap();
        assert!(host.device_requests.is_none());
        assert!(host.binds.is_none());
        assert_eq!(
            resource_name(&EngineId::from("a b/c")),
            "cortex-engine-a-b-c"
        );
    }
}
