//! The docker runtime against a real daemon (`CORTEX_TEST_DOCKER_HOST`), running the fake
//! engine from an image built here: FROM scratch, the binary and the libraries `ldd` lists —
//! no registry is involved.

use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{BuildImageOptionsBuilder, InspectContainerOptions};
use cortex_engines::{DockerRuntime, EngineId, EngineState, Runtimes, Supervisor, WithdrawReason};
use futures_util::StreamExt;
use serde_json::json;

use crate::support::*;

const IMAGE: &str = "cortex-fake-engine:test";

/// The files the fake engine needs at run time: itself and every library `ldd` names.
fn image_context() -> Vec<u8> {
    let output = std::process::Command::new("ldd")
        .arg(FAKE_ENGINE)
        .output()
        .expect("ldd runs");
    assert!(output.status.success(), "ldd failed: {output:?}");
    let listing = String::from_utf8_lossy(&output.stdout);
    let libraries: Vec<&str> = listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            path.filter(|p| p.starts_with('/'))
        })
        .collect();
    assert!(
        libraries.iter().any(|l| l.contains("ld-linux")),
        "{listing}"
    );
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    // dockerd refuses GNU sparse entries (type S), which a linked binary with holes would get.
    tar.sparse(false);
    tar.append_path_with_name(FAKE_ENGINE, "rootfs/cortex-fake-engine")
        .unwrap();
    for library in libraries {
        tar.append_path_with_name(library, format!("rootfs{library}"))
            .unwrap();
    }
    let dockerfile = b"FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/cortex-fake-engine\"]\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", &dockerfile[..])
        .unwrap();
    tar.into_inner().unwrap()
}

async fn build_image(docker: &bollard::Docker) {
    let options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(IMAGE)
        .rm(true)
        .forcerm(true)
        .build();
    let mut progress = docker.build_image(
        options,
        None,
        Some(bollard::body_full(image_context().into())),
    );
    while let Some(step) = progress.next().await {
        let step = step.expect("image build");
        assert!(step.error_detail.is_none(), "image build failed: {step:?}");
    }
}

#[tokio::test]
async fn docker_engine_on_a_private_network_published_on_loopback() {
    let Some(host) = prerequisite("CORTEX_TEST_DOCKER_HOST") else {
        return;
    };
    let docker = DockerRuntime::connect(&host)
        .await
        .expect("the test daemon answers");
    docker.remove_leftovers().await.unwrap();
    build_image(docker.client()).await;
    let client = docker.client().clone();

    let models = models_dir();
    let events = recorder();
    let mut options = fast_options(models.path());
    options.ready_timeout = Duration::from_secs(60);
    let runtimes = Runtimes {
        docker: Some(Arc::new(docker)),
        ..Runtimes::default()
    };
    let sup = Supervisor::new(options, events.clone(), runtimes);

    let id = EngineId::from("docker-1");
    sup.upsert(
        id.clone(),
        spec(
            json!({"name": "tiny", "engine": "llamacpp", "runtime": "docker", "image": IMAGE,
            "model": "tiny.gguf", "served_model_name": "tiny-docker", "restart": "never",
            "env": {"FAKE_ENGINE_READY_DELAY_MS": "500"}}),
        ),
    )
    .unwrap();
    sup.start(&id).unwrap();
    let status = wait_for(&sup, &id, Duration::from_secs(60), "running", is_running).await;
    let container = status.container_id.clone().expect("a container id");
    assert!(status.pid.is_none());
    let (base_url, key, served) = events.running(&id);
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");
    assert_eq!(served, "tiny-docker");
    check_openai_surface(&base_url, &key, "tiny-docker").await;

    let logs = sup.logs(&id, 50).unwrap();
    assert!(
        logs.iter().any(|l| l.contains("model /models/tiny.gguf")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("listening on 0.0.0.0:8000")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.contains("offline=1")), "{logs:?}");

    // What the container was given: its own network, loopback publication, read-only models.
    let inspect = client
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let host_config = inspect.host_config.unwrap();
    assert_eq!(
        host_config.network_mode.as_deref(),
        Some("cortex-engine-docker-1")
    );
    let bindings = host_config.port_bindings.unwrap();
    let binding = bindings["8000/tcp"]
        .as_ref()
        .unwrap()
        .first()
        .unwrap()
        .clone();
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        Some(binding.host_port.unwrap()),
        base_url.rsplit(':').next().map(str::to_owned)
    );
    let binds = host_config.binds.unwrap();
    assert!(
        binds.iter().any(|b| b.ends_with(":/models:ro")),
        "{binds:?}"
    );
    assert_eq!(host_config.cap_drop, Some(vec!["ALL".to_owned()]));

    sup.stop(&id).await.unwrap();
    assert_eq!(events.withdrawals(&id), [(WithdrawReason::Stop, true)]);
    assert!(
        client
            .inspect_container(&container, None::<InspectContainerOptions>)
            .await
            .is_err(),
        "container left"
    );
    assert!(
        client
            .inspect_network(
                "cortex-engine-docker-1",
                None::<bollard::query_parameters::InspectNetworkOptions>
            )
            .await
            .is_err(),
        "network left"
    );
    assert!(
        http()
            .get(format!("{base_url}/health"))
            .send()
            .await
            .is_err(),
        "the port still answers"
    );

    // A container that dies while loading: failed, with its last lines, and cleaned up.
    let id = EngineId::from("docker-2");
    sup.upsert(
        id.clone(),
        spec(
            json!({"name": "dies", "engine": "llamacpp", "runtime": "docker", "image": IMAGE,
            "model": "tiny.gguf", "restart": "never",
            "env": {"FAKE_ENGINE_EXIT_LINES": "loading|no CUDA device"}}),
        ),
    )
    .unwrap();
    sup.start(&id).unwrap();
    let failed = wait_for(&sup, &id, Duration::from_secs(60), "failed", |s| {
        matches!(s.state, EngineState::Failed { .. })
    })
    .await;
    let EngineState::Failed {
        reason,
        last_log_lines,
        ..
    } = failed.state
    else {
        unreachable!()
    };
    assert_eq!(reason, "exited before it was ready (exit code 1)");
    assert!(
        last_log_lines.iter().any(|l| l == "no CUDA device"),
        "{last_log_lines:?}"
    );
    assert!(client
        .inspect_network(
            "cortex-engine-docker-2",
            None::<bollard::query_parameters::InspectNetworkOptions>
        )
        .await
        .is_err());
    sup.shutdown().await;
}
