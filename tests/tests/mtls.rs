//! Mutual TLS: a client certificate issued by a role's CA grants that role without a token; a
//! certificate from an unknown CA fails the handshake; no certificate and no token is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flashstock_client::{ClientError, ClientTls, Connection};
use flashstock_engine::{Command, Outcome, RequestId, SkuId};
use flashstock_protocol::{ErrorCode, Refusal, Reply, Request, Role};
use flashstock_server::net::ClientCertRoles;
use flashstock_tests::server::TestServer;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority: its certificate written to `<dir>/<name>-ca.pem`.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: PathBuf,
}

fn authority(dir: &Path, name: &str) -> Authority {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem, cert.pem()).unwrap();
    Authority { issuer: Issuer::new(params, key), pem }
}

/// A client certificate issued by `authority`: (chain PEM, key PEM).
fn client_identity(dir: &Path, authority: &Authority, name: &str) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &authority.issuer).unwrap();
    let (cert_pem, key_pem) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    (cert_pem, key_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_grant_their_cas_role() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tempfile::tempdir().unwrap();
    let (admin_ca, service_ca, rogue_ca) = (
        authority(pki.path(), "admin"),
        authority(pki.path(), "service"),
        authority(pki.path(), "rogue"),
    );
    let roles = ClientCertRoles::load(&[
        (Role::Admin, admin_ca.pem.clone()),
        (Role::Service, service_ca.pem.clone()),
    ])
    .unwrap();
    let server =
        TestServer::start_with(dir.path(), "127.0.0.1:0".parse().unwrap(), Some(Arc::new(roles)))
            .await;
    let connect = |identity: Option<(PathBuf, PathBuf)>| {
        let tls = match &identity {
            Some((cert, key)) => {
                ClientTls::trust_pem_file_with_identity(&server.cert, cert, key).unwrap()
            }
            None => server.tls(),
        };
        async move { Connection::connect(server.addr, "localhost", &tls, None).await }
    };

    let admin = connect(Some(client_identity(pki.path(), &admin_ca, "ops-console"))).await.unwrap();
    assert_eq!(admin.role(), Role::Admin);
    let stock =
        Request::Apply(Command::SetStock { request: RequestId(1), sku: SkuId(1), total: 9 });
    assert_eq!(
        admin.call(vec![stock]).await.unwrap()[0],
        Reply::Outcome(Outcome::StockChanged { total: 9, available: 9 })
    );

    let service =
        connect(Some(client_identity(pki.path(), &service_ca, "order-service"))).await.unwrap();
    assert_eq!(service.role(), Role::Service);
    let stock =
        Request::Apply(Command::SetStock { request: RequestId(2), sku: SkuId(1), total: 1 });
    assert_eq!(
        service.call(vec![stock]).await.unwrap()[0],
        Reply::Refused(Refusal::PermissionDenied)
    );

    let rogue = connect(Some(client_identity(pki.path(), &rogue_ca, "intruder"))).await;
    assert!(rogue.is_err(), "a certificate from an unknown CA must not get through");

    let anonymous = connect(None).await.unwrap_err();
    assert!(
        matches!(anonymous, ClientError::Rejected { code: ErrorCode::Unauthenticated, .. }),
        "{anonymous}"
    );

    // Tokens still work next to certificates.
    let with_token = server.connect(&server.service_token).await;
    assert_eq!(with_token.role(), Role::Service);
    let replies = with_token.call(vec![Request::QuerySku(SkuId(1))]).await.unwrap();
    let Reply::Sku(Some(view)) = &replies[0] else { panic!("a SKU") };
    assert_eq!(view.total, 9, "the service's set_stock had no effect");
    server.stop().await;
}
