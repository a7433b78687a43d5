//! Upstream HTTPS: certificates are verified, and a provider behind a private CA is reachable
//! only when its `ca_bundle` is configured.

use std::net::SocketAddr;
use std::sync::Arc;

use cortex_testkit::{FakeUpstream, TestServer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{all_scopes_key, assert_error, post_chat};

/// A private CA and a server certificate for 127.0.0.1 that it signed, made at test time.
pub struct PrivatePki {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub leaf_key_pem: String,
    pub leaf: CertificateDer<'static>,
    pub leaf_key: PrivatePkcs8KeyDer<'static>,
}

pub fn private_pki() -> PrivatePki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Cortex test CA (fake)");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    PrivatePki {
        ca_pem: ca.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
        leaf: leaf.der().clone(),
        leaf_key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
    }
}

/// A TLS server side presenting the private certificate for 127.0.0.1.
pub fn tls_acceptor(pki: &PrivatePki) -> tokio_rustls::TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![pki.leaf.clone()],
        PrivateKeyDer::Pkcs8(pki.leaf_key.clone_key()),
    )
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Terminates TLS with the private certificate and relays bytes to the plain fake upstream,
/// so the fake upstream looks like an HTTPS model server behind a private CA.
pub async fn tls_front(pki: &PrivatePki, upstream: SocketAddr) -> SocketAddr {
    let acceptor = tls_acceptor(pki);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake; nothing to relay.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

fn provider_toml(front: SocketAddr, ca_bundle: Option<&std::path::Path>) -> String {
    let bundle = ca_bundle
        .map(|p| format!("ca_bundle = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    format!(
        "[[providers]]\nname = \"private\"\nbase_url = \"https://{front}/v1\"\n{bundle}\n\
         [[models]]\nname = \"llama\"\nprovider = \"private\"\n"
    )
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_for_the_provider_that_names_it() {
    let pki = private_pki();
    let upstream = FakeUpstream::start().await;
    let front = tls_front(&pki, upstream.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("private-ca.pem");
    std::fs::write(&bundle, &pki.ca_pem).unwrap();

    // With the bundle: the request goes through over HTTPS.
    let trusting = TestServer::builder()
        .config_toml(&provider_toml(front, Some(&bundle)))
        .start()
        .await;
    let key = all_scopes_key(&trusting).await;
    let response = post_chat(&trusting, &key, "llama", false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.received().len(), 1);
    trusting.stop().await;

    // Without it, the same upstream's certificate is not trusted: the gateway refuses to talk
    // to it (an impostor with a self-made certificate gets nothing), and says so sanitized.
    let verifying = TestServer::builder()
        .config_toml(&provider_toml(front, None))
        .start()
        .await;
    let key = all_scopes_key(&verifying).await;
    let response = post_chat(&verifying, &key, "llama", false).await;
    let body = assert_error(response, 502, "upstream_error").await;
    let text = body.to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.to_lowercase().contains("certificate"),
        "upstream detail leaked: {text}"
    );
    assert_eq!(upstream.received().len(), 1, "no request reached upstream");
    verifying.stop().await;
}

#[tokio::test]
async fn an_unreadable_or_bogus_ca_bundle_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let front: SocketAddr = "127.0.0.1:9".parse().unwrap();

    let missing = dir.path().join("missing.pem");
    let err = TestServer::builder()
        .config_toml(&provider_toml(front, Some(&missing)))
        .try_start()
        .await
        .err()
        .expect("a missing bundle must stop start-up");
    let line = err.to_string();
    assert!(line.contains("providers[private].ca_bundle"), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");

    let bogus = dir.path().join("bogus.pem");
    std::fs::write(
        &bogus,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = TestServer::builder()
        .config_toml(&provider_toml(front, Some(&bogus)))
        .try_start()
        .await
        .err()
        .expect("a bogus bundle must stop start-up");
    assert!(
        err.to_string().contains("providers[private].ca_bundle"),
        "{err}"
    );
}
