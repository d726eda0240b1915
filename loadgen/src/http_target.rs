//! flashstock's HTTP/JSON API as a caller in another language uses it: one HTTP/1.1
//! keep-alive connection per caller in flight, one JSON call at a time on each, an
//! `Idempotency-Key` per request. Only the service calls go this way (reserve, cart,
//! confirm, cancel); setting up and auditing stay on QUIC, so both modes are audited alike.

use std::net::SocketAddr;

use flashstock_engine::{LineRefusal, Outcome, ReservationId};
use flashstock_protocol::{Refusal, Reply, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::target::LoadError;

/// Calls over the HTTP API, with a pool of idle keep-alive connections.
#[derive(Debug)]
pub struct HttpCaller {
    addr: SocketAddr,
    authorization: String,
    idle: std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpCaller {
    /// A caller of the API at `addr` with a service token.
    pub fn new(addr: SocketAddr, service_token: &str) -> HttpCaller {
        let authorization = format!("Bearer {service_token}");
        HttpCaller { addr, authorization, idle: std::sync::Mutex::new(Vec::new()) }
    }

    /// One request as one HTTP call; its answer read back as the protocol's reply.
    pub async fn call(&self, request: &Request) -> Result<Reply, LoadError> {
        let (method, path, body) = http_call(request)?;
        let key = format!("{:032x}", request_id(request));
        let http = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header("idempotency-key", key)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|err| setup(err.to_string()))?;
        let mut connection = self.connection().await?;
        let response = connection.send_request(http).await.map_err(|err| setup(err.to_string()))?;
        let bytes = response.into_body().collect().await.map_err(|err| setup(err.to_string()))?;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
        let answer: Value = serde_json::from_slice(&bytes.to_bytes())
            .map_err(|err| setup(format!("an answer that is not JSON: {err}")))?;
        Ok(reply_of(&answer))
    }

    /// An idle connection, or a new one.
    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, LoadError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(connection) if connection.is_ready() => return Ok(connection),
                Some(_closed) => continue,
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|err| setup(format!("connecting to the HTTP API at {}: {err}", self.addr)))?;
        let _ = stream.set_nodelay(true);
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| setup(err.to_string()))?;
        tokio::spawn(connection);
        Ok(send)
    }
}

fn setup(detail: String) -> LoadError {
    LoadError::Setup(format!("HTTP API: {detail}"))
}

fn request_id(request: &Request) -> u128 {
    match request {
        Request::Apply(command) => command.request().0,
        Request::ReserveCart(cart) => cart.request.0,
        Request::QuerySku(_) | Request::QueryReservation(_) | Request::QueryCart(_) => 0,
    }
}

/// The method, path and body of a request's call.
fn http_call(request: &Request) -> Result<(hyper::Method, String, Value), LoadError> {
    use flashstock_engine::Command;
    use hyper::Method;
    Ok(match request {
        Request::Apply(Command::Reserve(r)) => {
            let body =
                json!({"buyer": r.buyer.0, "sku": r.sku.0, "qty": r.qty, "ttl_ms": r.ttl_ms});
            (Method::POST, "/v1/reservations".to_owned(), body)
        }
        Request::ReserveCart(cart) => {
            let lines: Vec<Value> = cart
                .lines
                .as_slice()
                .iter()
                .map(|line| json!({"sku": line.sku.0, "qty": line.qty}))
                .collect();
            let body = json!({"buyer": cart.buyer.0, "ttl_ms": cart.ttl_ms, "lines": lines});
            (Method::POST, "/v1/carts".to_owned(), body)
        }
        Request::Apply(Command::Confirm { reservation, .. }) => {
            (Method::POST, format!("/v1/reservations/{}/confirm", reservation.0), json!({}))
        }
        Request::Apply(Command::Cancel { reservation, .. }) => {
            (Method::POST, format!("/v1/reservations/{}/cancel", reservation.0), json!({}))
        }
        other => return Err(setup(format!("no HTTP call for {other:?} in the load generator"))),
    })
}

/// An answer as the protocol's reply, for the outcomes a run counts; anything else is a
/// refusal (`unavailable`), which the run counts as not acknowledged.
fn reply_of(answer: &Value) -> Reply {
    let number = |field: &str| answer[field].as_u64().unwrap_or(0);
    if let Some(error) = answer["error"].as_str() {
        return Reply::Refused(match error {
            "overloaded" => Refusal::Overloaded,
            "shutting_down" => Refusal::ShuttingDown,
            "permission_denied" => Refusal::PermissionDenied,
            _ => Refusal::Unavailable,
        });
    }
    let outcome = match answer["outcome"].as_str().unwrap_or("") {
        "reserved" => {
            let id = answer["reservation"].as_str().and_then(|id| id.parse().ok());
            let Some(id) = id else { return Reply::Refused(Refusal::Unavailable) };
            Outcome::Reserved {
                reservation: ReservationId(id),
                expires_at_ms: number("expires_at_ms"),
            }
        }
        "sold_out" => Outcome::SoldOut { available: number("available") },
        "limit_exceeded" => {
            Outcome::LimitExceeded { taken: number("taken"), limit: number("limit") as u32 }
        }
        "sale_closed" => Outcome::SaleClosed { closed_at_ms: number("closed_at_ms") },
        "confirmed" => Outcome::Confirmed,
        "cancelled" => Outcome::Cancelled,
        "expired" => Outcome::Expired,
        "already_confirmed" => Outcome::AlreadyConfirmed,
        "already_cancelled" => Outcome::AlreadyCancelled,
        "cart_refused" => {
            let name = answer["refusal"].as_str().unwrap_or("");
            let refusal = (0..=u8::MAX)
                .map_while(LineRefusal::from_code)
                .find(|refusal| refusal.name() == name)
                .unwrap_or(LineRefusal::UnknownSku);
            Outcome::CartRefused { line: number("line") as u8, refusal, value: number("value") }
        }
        _ => return Reply::Refused(Refusal::Unavailable),
    };
    Reply::Outcome(outcome)
}
