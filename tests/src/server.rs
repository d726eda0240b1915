//! An in-process flashstock server on loopback QUIC, for tests: the real runtime on a sled
//! log, the real listener, its generated certificate and tokens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flashstock_client::{ClientTls, Connection};
use flashstock_protocol::tokens::DEFAULT_CONSUMER;
use flashstock_protocol::Role;
use flashstock_runtime::{Runtime, RuntimeConfig, SystemClock};
use flashstock_server::net::{
    self, Authenticator, ClientCertRoles, NetLimits, NetStats, Stopped, TransportLimits,
};

/// A running server. `stop` shuts it down gracefully; dropping it without does not flush.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its self-signed certificate.
    pub cert: PathBuf,
    /// A token granting `Role::Admin`.
    pub admin_token: String,
    /// A token granting `Role::Service`.
    pub service_token: String,
    /// A token granting `Role::Consumer` for any consumer name (`consumer.*`).
    pub consumer_token: String,
    /// A token granting `Role::Consumer` for the `order-writer` consumer only.
    pub order_writer_token: String,
    /// A token granting `Role::Consumer` for the `audit` consumer only.
    pub audit_token: String,
    /// What its network layer holds.
    pub stats: Arc<NetStats>,
    /// Its HTTP/JSON API (the same runtime, tokens and rate limits).
    pub http: SocketAddr,
    http_serving: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<Stopped>>,
    runtime: Option<Runtime>,
}

/// A test server's place in its cluster: following the map, registered as a member (the
/// entry lapses with its lease once this is dropped).
#[derive(Debug)]
pub struct Joined {
    _watch: flashstock_cluster_etcd::ClusterWatch,
    _membership: flashstock_cluster_etcd::Membership,
}

/// Test servers' tokens: the default file's (admin, service, a consumer token for
/// `order-writer` only), one for `audit` only, and one for any name, which tests subscribe
/// with under names of their own.
fn write_test_tokens(data_dir: &Path) {
    let path = data_dir.join("tokens.toml");
    if path.exists() {
        return;
    }
    let token = || {
        let bytes = net::secrets::random_bytes::<16>().unwrap();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let text = format!(
        "admin = \"{}\"\nservice = \"{}\"\nconsumer.{DEFAULT_CONSUMER} = \"{}\"\n\
         consumer.audit = \"{}\"\nconsumer.* = \"{}\"\n",
        token(),
        token(),
        token(),
        token(),
        token()
    );
    std::fs::create_dir_all(data_dir).unwrap();
    net::secrets::write_private(&path, text.as_bytes()).unwrap();
}

/// The idle timeout of test servers' connections.
pub const IDLE_TIMEOUT_MS: u64 = 5_000;

impl TestServer {
    /// Starts a server on `data_dir`, listening on `addr` (port 0 for any).
    pub async fn start_at(data_dir: &Path, addr: SocketAddr) -> TestServer {
        TestServer::start_with(data_dir, addr, None).await
    }

    /// Like `start_at`, also granting roles to client certificates issued by `client_certs`.
    pub async fn start_with(
        data_dir: &Path,
        addr: SocketAddr,
        client_certs: Option<Arc<ClientCertRoles>>,
    ) -> TestServer {
        let config = RuntimeConfig { shard_count: 2, ..RuntimeConfig::default() };
        TestServer::start_configured(data_dir, addr, config, client_certs).await
    }

    /// Like `start_with`, on a runtime configured by the caller.
    pub async fn start_configured(
        data_dir: &Path,
        addr: SocketAddr,
        config: RuntimeConfig,
        client_certs: Option<Arc<ClientCertRoles>>,
    ) -> TestServer {
        let runtime = Runtime::open(data_dir, config, Arc::new(SystemClock)).unwrap();
        TestServer::start_on(runtime, data_dir, addr, client_certs).await
    }

    /// Serves a runtime the caller started (on any log), with TLS material and tokens in
    /// `data_dir`.
    pub async fn start_on(
        runtime: Runtime,
        data_dir: &Path,
        addr: SocketAddr,
        client_certs: Option<Arc<ClientCertRoles>>,
    ) -> TestServer {
        let net_limits = NetLimits {
            connections_max: 64,
            drain_timeout_ms: 5_000,
            stream_window_events_max: 4_096,
            ..NetLimits::default()
        };
        TestServer::start_limited(runtime, data_dir, addr, client_certs, net_limits).await
    }

    /// Like `start_on`, with the network layer's limits given.
    pub async fn start_limited(
        runtime: Runtime,
        data_dir: &Path,
        addr: SocketAddr,
        client_certs: Option<Arc<ClientCertRoles>>,
        net_limits: NetLimits,
    ) -> TestServer {
        TestServer::start_gated(runtime, data_dir, (addr, client_certs, net_limits), None).await
    }

    /// Server `id` of the cluster in `etcd` (2 shards, on any port), registered as a member
    /// until the returned [`Joined`] is dropped. Copy one server's `tls/` and `tokens.toml`
    /// into the others' data directories first, so that one client trusts them all.
    pub async fn start_in_cluster(
        data_dir: &Path,
        etcd: &flashstock_cluster_etcd::EtcdConfig,
        id: &str,
    ) -> (TestServer, Joined) {
        let config = RuntimeConfig { shard_count: 2, ..RuntimeConfig::default() };
        let runtime = Runtime::open(data_dir, config, Arc::new(SystemClock)).unwrap();
        let watch = flashstock_cluster_etcd::ClusterWatch::start(etcd.clone()).await.unwrap();
        let server = flashstock_cluster::ServerId(id.to_owned());
        let ownership = Arc::new(net::Ownership::follow(server.clone(), watch.subscribe()));
        let any_port = (SocketAddr::from(([127, 0, 0, 1], 0)), None, NetLimits::default());
        let started = TestServer::start_gated(runtime, data_dir, any_port, Some(ownership)).await;
        let member = flashstock_cluster::Member {
            quic: started.addr,
            server_name: "localhost".into(),
            http: Some(started.http),
            shards: 2,
        };
        let membership =
            flashstock_cluster_etcd::Membership::register(etcd.clone(), server, member)
                .await
                .unwrap();
        (started, Joined { _watch: watch, _membership: membership })
    }

    /// Serves `runtime`, answering `Moved` for slots `ownership` does not give it.
    async fn start_gated(
        runtime: Runtime,
        data_dir: &Path,
        (addr, client_certs, net_limits): (SocketAddr, Option<Arc<ClientCertRoles>>, NetLimits),
        ownership: Option<Arc<net::Ownership>>,
    ) -> TestServer {
        let files = net::ensure_self_signed(data_dir).unwrap();
        write_test_tokens(data_dir);
        let (mut auth, tokens_path) = Authenticator::ensure_default(data_dir).unwrap();
        if let Some(roles) = &client_certs {
            auth = auth.with_client_certs(roles.clone());
        }
        let tokens = net::auth::read_tokens_file(&tokens_path).unwrap();
        let token = |role, consumer| {
            let token = flashstock_protocol::tokens::token_for(&tokens, role, consumer);
            token.expect("a token of each role").to_owned()
        };
        // Short, so that the tests notice a client that lets a quiet connection time out.
        let limits =
            TransportLimits { idle_timeout_ms: IDLE_TIMEOUT_MS, ..TransportLimits::default() };
        let server_config = net::server_config(&files, limits, client_certs.as_deref()).unwrap();
        let endpoint_config = net::secrets::endpoint_config(data_dir).unwrap();
        let buffer_bytes = net::UDP_BUFFER_BYTES_DEFAULT;
        let endpoint =
            net::server_endpoint(addr, endpoint_config, server_config, buffer_bytes).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (stop_http, http_stopping) = tokio::sync::watch::channel(false);
        let handle = runtime.handle();
        let auth = net::SharedAuth::from(auth);
        let rates = Arc::new(net::stored_rate_gate(&handle).await);
        let gates = net::Gates { rates, ownership };
        let (http, http_serving) = serve_http(&runtime, &auth, &gates, http_stopping).await;
        let stats = Arc::new(NetStats::default());
        let serving_stats = stats.clone();
        let serving = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let stopped =
                net::serve(endpoint, handle, auth, gates, net_limits, serving_stats, shutdown)
                    .await;
            let _ = stop_http.send(true);
            stopped
        });
        TestServer {
            addr,
            cert: files.cert_path,
            admin_token: token(Role::Admin, None),
            service_token: token(Role::Service, None),
            consumer_token: token(Role::Consumer, Some("any-name")),
            order_writer_token: token(Role::Consumer, Some(DEFAULT_CONSUMER)),
            audit_token: token(Role::Consumer, Some("audit")),
            stats,
            http,
            http_serving: Some(http_serving),
            stop: Some(stop),
            serving: Some(serving),
            runtime: Some(runtime),
        }
    }

    /// Trust for its certificate.
    pub fn tls(&self) -> ClientTls {
        ClientTls::trust_pem_file(&self.cert).unwrap()
    }

    /// A raw authenticated connection.
    pub async fn connect(&self, token: &str) -> Connection {
        Connection::connect(self.addr, "localhost", &self.tls(), Some(token)).await.unwrap()
    }

    /// Stops accepting, drains sessions, flushes the log, stops the shards.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.serving.take().unwrap().await.unwrap();
        self.http_serving.take().unwrap().await.unwrap();
        self.runtime.take().unwrap().shutdown();
    }

    /// Waits for the server to stop on its own (as it does when its log fails), then stops
    /// the shards; says why it stopped.
    pub async fn stopped(mut self) -> Stopped {
        let stopped = self.serving.take().unwrap().await.unwrap();
        self.runtime.take().unwrap().shutdown();
        stopped
    }
}

/// The HTTP API of a test server, on any free port, until `stopping` turns true.
async fn serve_http(
    runtime: &Runtime,
    auth: &net::SharedAuth,
    gates: &net::Gates,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use flashstock_server::http;
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = http::HttpApiLimits::default();
    let api = http::Api::new(runtime.handle(), auth.clone(), gates.clone(), limits).unwrap();
    let shutdown = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    (addr, tokio::spawn(http::serve(listener, Arc::new(api), shutdown)))
}
