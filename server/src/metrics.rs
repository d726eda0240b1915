//! The metrics the network layer exports, named in one place, described once, and recorded
//! through the `metrics` facade (exported by `flashstock-observe` when `metrics_listen` is
//! set; with no recorder installed, recording is a no-op). The runtime's own are
//! `flashstock_runtime::metrics`.
//!
//! The hot path records per frame, never per request: a frame's replies are tallied locally
//! and added to their counters once ([`RequestCounters`]).

use flashstock_protocol::{Refusal, Reply, Request};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Requests answered, by `kind` (reserve, confirm, query_sku...) and `outcome` (reserved,
/// sold_out, refused_overloaded...).
pub const REQUESTS_TOTAL: &str = "flashstock_requests_total";
/// From a `Requests` frame read off the wire to its `Replies` frame written to QUIC.
pub const FRAME_DURATION_SECONDS: &str = "flashstock_frame_duration_seconds";
/// Requests per frame.
pub const FRAME_REQUESTS: &str = "flashstock_frame_requests";
/// Requests refused because a shard's inbox was full.
pub const OVERLOAD_REFUSALS_TOTAL: &str = "flashstock_overload_refusals_total";
/// Connections open (handshakes included).
pub const CONNECTIONS_OPEN: &str = "flashstock_connections_open";
/// Connections refused, by `reason` (connections_max, per_address_max).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "flashstock_connections_refused_total";
/// Connections that failed to authenticate, by `reason` (bad_credentials, timeout).
pub const AUTHENTICATION_FAILURES_TOTAL: &str = "flashstock_authentication_failures_total";
/// Requests read and not yet answered onto the wire.
pub const REQUESTS_UNWRITTEN: &str = "flashstock_requests_unwritten";
/// Per consumer and shard, the position delivered so far.
pub const CONSUMER_DELIVERED_POSITION: &str = "flashstock_consumer_delivered_position";
/// Reserves refused by a rate limit, by whose bucket (`by`: buyer, credential).
pub const RATE_LIMITED_TOTAL: &str = "flashstock_rate_limited_total";
/// Credential reloads (SIGHUP), by `result` (ok, failed).
pub const RELOADS_TOTAL: &str = "flashstock_reloads_total";
/// Admin operations, by `operation`.
pub const ADMIN_OPERATIONS_TOTAL: &str = "flashstock_admin_operations_total";
/// HTTP API responses, by `status` (200, 409, 401...).
pub const HTTP_RESPONSES_TOTAL: &str = "flashstock_http_responses_total";
/// HTTP API connections refused by `http_connections_max`.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "flashstock_http_connections_refused_total";
/// Slots the cluster's map gives this server (absent when it is in no cluster).
pub const CLUSTER_SLOTS_OWNED: &str = "flashstock_cluster_slots_owned";
/// The etcd revision of the shard map this server answers by (0: none stored yet).
pub const CLUSTER_MAP_REVISION: &str = "flashstock_cluster_map_revision";
/// HTTP API calls per batch submitted to the shards (coalesced from concurrent calls).
pub const HTTP_BATCH_REQUESTS: &str = "flashstock_http_batch_requests";
/// Gauge: bytes an unprivileged writer may still use on the data directory's file system.
pub const DISK_FREE_BYTES: &str = "flashstock_disk_free_bytes";

/// Describes every metric of the server, the runtime's included (help text and unit), and
/// starts the counters of rare events at 0: a dashboard then shows "none happened", not "no
/// data", and rate() has a starting point. Call once the recorder is installed.
pub fn describe() {
    flashstock_runtime::metrics::describe();
    let counters = [
        (REQUESTS_TOTAL, "Requests answered, by kind and outcome."),
        (OVERLOAD_REFUSALS_TOTAL, "Requests refused because a shard's inbox was full."),
        (CONNECTIONS_REFUSED_TOTAL, "Connections refused by a connection limit, by reason."),
        (AUTHENTICATION_FAILURES_TOTAL, "Connections that failed to authenticate, by reason."),
        (ADMIN_OPERATIONS_TOTAL, "Admin operations served, by operation."),
        (RELOADS_TOTAL, "Credential reloads (SIGHUP), by result."),
        (RATE_LIMITED_TOTAL, "Reserves refused by a rate limit, by whose bucket."),
        (HTTP_RESPONSES_TOTAL, "HTTP API responses, by status."),
        (HTTP_CONNECTIONS_REFUSED_TOTAL, "HTTP API connections refused by the connection limit."),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    let gauges = [
        (CONNECTIONS_OPEN, "QUIC connections open, handshakes included."),
        (REQUESTS_UNWRITTEN, "Requests read whose replies are not yet written."),
        (CONSUMER_DELIVERED_POSITION, "The stream position delivered to the consumer."),
        (CLUSTER_SLOTS_OWNED, "Slots the cluster's shard map gives this server."),
        (CLUSTER_MAP_REVISION, "The etcd revision of the shard map this server answers by."),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, Unit::Count, help);
    }
    let disk_help = "Bytes still free for the log on the data directory's file system.";
    describe_gauge!(DISK_FREE_BYTES, Unit::Bytes, disk_help);
    let frame_help = "From a Requests frame read to its Replies frame written.";
    describe_histogram!(FRAME_DURATION_SECONDS, Unit::Seconds, frame_help);
    describe_histogram!(FRAME_REQUESTS, Unit::Count, "Requests per Requests frame.");
    let batch_help = "HTTP API calls per batch submitted to the shards.";
    describe_histogram!(HTTP_BATCH_REQUESTS, Unit::Count, batch_help);
    metrics::counter!(OVERLOAD_REFUSALS_TOTAL).absolute(0);
    for reason in AUTHENTICATION_FAILURE_REASONS {
        metrics::counter!(AUTHENTICATION_FAILURES_TOTAL, "reason" => reason).absolute(0);
    }
    for by in ["buyer", "credential"] {
        metrics::counter!(RATE_LIMITED_TOTAL, "by" => by).absolute(0);
    }
    for reason in CONNECTION_REFUSAL_REASONS {
        metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason).absolute(0);
    }
}

/// The `reason` labels of [`AUTHENTICATION_FAILURES_TOTAL`].
pub const AUTHENTICATION_FAILURE_REASONS: [&str; 3] =
    ["no_credentials", "bad_credentials", "timeout"];
/// The `reason` labels of [`CONNECTIONS_REFUSED_TOTAL`].
pub const CONNECTION_REFUSAL_REASONS: [&str; 2] =
    ["connections_max", "connections_per_address_max"];

/// The `kind` label of a request.
pub fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Apply(command) => command.name(),
        Request::QuerySku(_) => "query_sku",
        Request::QueryReservation(_) => "query_reservation",
        Request::ReserveCart(_) => "reserve_cart",
        Request::QueryCart(_) => "query_cart",
    }
}

/// The `outcome` label of a reply.
pub fn reply_outcome(reply: &Reply) -> &'static str {
    match reply {
        Reply::Outcome(outcome) => outcome.name(),
        Reply::Sku(Some(_)) | Reply::Reservation(Some(_)) | Reply::Cart(Some(_)) => "found",
        Reply::Sku(None) | Reply::Reservation(None) | Reply::Cart(None) => "not_found",
        Reply::Refused(Refusal::Overloaded) => "refused_overloaded",
        Reply::Refused(Refusal::PermissionDenied) => "refused_permission_denied",
        Reply::Refused(Refusal::ShuttingDown) => "refused_shutting_down",
        Reply::Refused(Refusal::Unavailable) => "refused_unavailable",
        Reply::Refused(Refusal::RateLimited { .. }) => "refused_rate_limited",
        Reply::Refused(Refusal::SpansServers { .. }) => "refused_spans_servers",
        Reply::Refused(Refusal::SlotMoving { .. }) => "refused_slot_moving",
        Reply::Moved(_) => "moved",
    }
}

/// `flashstock_requests_total`'s handles, resolved once per (kind, outcome): a frame's tally
/// then costs a map read and an atomic add per distinct pair, not a registry lookup (which
/// allocates the key's labels and hashes them).
#[derive(Debug, Default)]
pub struct RequestCounters {
    by_kind_outcome: dashmap::DashMap<(&'static str, &'static str), metrics::Counter>,
    overloaded: std::sync::OnceLock<metrics::Counter>,
}

impl RequestCounters {
    /// Adds a frame's replies: tallied here first, so a frame of 256 sold-out answers costs
    /// one counter update, not 256.
    pub fn count(&self, batch: &[Request], replies: &[Reply]) {
        let mut tally: Vec<(&'static str, &'static str, u64)> = Vec::new();
        let mut overloaded = 0;
        for (request, reply) in batch.iter().zip(replies) {
            let (kind, outcome) = (request_kind(request), reply_outcome(reply));
            overloaded += u64::from(matches!(reply, Reply::Refused(Refusal::Overloaded)));
            match tally.iter_mut().find(|(k, o, _)| *k == kind && *o == outcome) {
                Some(entry) => entry.2 += 1,
                None => tally.push((kind, outcome, 1)),
            }
        }
        for (kind, outcome, count) in tally {
            let counter = self.by_kind_outcome.entry((kind, outcome)).or_insert_with(
                || metrics::counter!(REQUESTS_TOTAL, "kind" => kind, "outcome" => outcome),
            );
            counter.increment(count);
        }
        if overloaded > 0 {
            let counter =
                self.overloaded.get_or_init(|| metrics::counter!(OVERLOAD_REFUSALS_TOTAL));
            counter.increment(overloaded);
        }
    }
}

/// Sets the network layer's gauges from its counts. Run periodically.
pub fn sample_net(stats: &crate::net::NetStats) {
    use std::sync::atomic::Ordering;
    let open = stats.connections_open.load(Ordering::Acquire);
    metrics::gauge!(CONNECTIONS_OPEN).set(open as f64);
    metrics::gauge!(REQUESTS_UNWRITTEN).set(stats.requests_unwritten() as f64);
}
