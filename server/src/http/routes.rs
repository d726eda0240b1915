//! Which method and path is which call, and the steps of every call:
//!
//! 1. the route (404 `not_found`, 405 `method_not_allowed`); `GET /openapi.json` needs no
//!    credentials and stops here;
//! 2. the bearer token (401 `unauthenticated`), before any of the body is read;
//! 3. the `Idempotency-Key` (400 `invalid_idempotency_key`);
//! 4. the body, at most `body_bytes_max` bytes (413), within `request_timeout_ms` (408), as
//!    JSON of the route's type (400 `bad_request`);
//! 5. the role (403 `permission_denied`) and the reserve rate limits (429 `rate_limited`);
//! 6. the call, coalesced with others into a shard batch; its reply as JSON.
//!
//! A call refused at any step before 6 has changed nothing.

use bytes_body::{collect_body, BodyError};
use flashstock_engine::Outcome;
use flashstock_protocol::{keys, Refusal, Reply, Request, Role};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use utoipa::OpenApi;

use super::json::{self, Answer, BadRequest};
use super::Api;
use crate::net::auth::permits;

/// The header a caller's idempotency key travels in.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A call the API knows, with the ids its path names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    OpenApi,
    Reserve,
    Cart,
    Confirm(&'a str),
    Cancel(&'a str),
    Return(&'a str),
    QueryReservation(&'a str),
    QueryCart(&'a str),
    QuerySku(&'a str),
    SetStock(&'a str),
    SetBuckets(&'a str),
}

/// The route of a method and path; an error answer for an unknown path or method.
fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, Answer> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (wanted, route) = match segments.as_slice() {
        ["openapi.json"] => (Method::GET, Route::OpenApi),
        ["v1", "reservations"] => (Method::POST, Route::Reserve),
        ["v1", "carts"] => (Method::POST, Route::Cart),
        ["v1", "reservations", id] => (Method::GET, Route::QueryReservation(id)),
        ["v1", "reservations", id, "confirm"] => (Method::POST, Route::Confirm(id)),
        ["v1", "reservations", id, "cancel"] => (Method::POST, Route::Cancel(id)),
        ["v1", "reservations", id, "returns"] => (Method::POST, Route::Return(id)),
        ["v1", "carts", id] => (Method::GET, Route::QueryCart(id)),
        ["v1", "skus", sku] => (Method::GET, Route::QuerySku(sku)),
        ["v1", "skus", sku, "stock"] => (Method::PUT, Route::SetStock(sku)),
        ["v1", "skus", sku, "buckets"] => (Method::PUT, Route::SetBuckets(sku)),
        _ => {
            let detail = format!("no route {path}; the API is described at /openapi.json");
            return Err(Answer::error(StatusCode::NOT_FOUND, "not_found", detail));
        }
    };
    if *method != wanted {
        let detail = format!("{path} takes {wanted}, not {method}");
        let answer = Answer::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", detail);
        return Err(Answer { allow: Some(wanted), ..answer });
    }
    Ok(route)
}

/// Answers one HTTP request.
pub async fn respond(api: &Api, request: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
    let answer = call(api, request).await.unwrap_or_else(|refused| refused);
    api.responses.count(answer.status);
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if answer.status == StatusCode::UNAUTHORIZED {
        headers.insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(method) = &answer.allow {
        let allow = HeaderValue::from_str(method.as_str()).expect("a method is a header value");
        headers.insert(hyper::header::ALLOW, allow);
    }
    if let Some(ms) = answer.retry_after_ms {
        // Retry-After is in whole seconds; the body has the milliseconds.
        headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1_000).max(1)));
    }
    response
}

/// The steps of a call (see the module's map); `Err` is an answer refusing it unapplied.
async fn call(api: &Api, request: hyper::Request<Incoming>) -> Result<Answer, Answer> {
    let (parts, body) = request.into_parts();
    let route = route(&parts.method, parts.uri.path())?;
    if route == Route::OpenApi {
        let document = ApiDoc::openapi().to_json().expect("the document serialises");
        return Ok(Answer::ok_json(document.into_bytes()));
    }
    let (role, credential) = authenticate(api, &parts.headers)?;
    let key = idempotency_key(&parts.headers)?;
    let body = collect_body(body, api.limits.body_bytes_max, api.limits.request_timeout_ms)
        .await
        .map_err(body_error)?;
    let request = match request_of(&route, &body).map_err(BadRequest::answer)? {
        Taken::Submit(request) => request,
        Taken::Answered(reply) => return Ok(json::answer(reply)),
    };
    let request = match key {
        Some(key) => keys::keyed(&request, &key).expect("the key's length is checked"),
        None => with_fresh_id(api, request),
    };
    if !permits(role, &request) {
        return Err(json::answer(Reply::Refused(Refusal::PermissionDenied)));
    }
    let mut early = [None];
    api.gates.check(credential, std::slice::from_ref(&request), &mut early);
    if let [Some(limited)] = early {
        return Err(json::answer(limited));
    }
    let reply = match api.coalescer.call(request.clone()).await {
        Ok(reply) => reply,
        Err(err) => Reply::Refused(crate::net::session::refusal_of(err)),
    };
    api.counters.count(std::slice::from_ref(&request), std::slice::from_ref(&reply));
    if role == Role::Admin {
        tracing::info!(target: "flashstock::audit", via = "http", ?request, outcome = crate::metrics::reply_outcome(&reply), "admin command");
    }
    Ok(json::answer(reply))
}

/// The role and credential id of the request's bearer token.
fn authenticate(api: &Api, headers: &HeaderMap) -> Result<(Role, u64), Answer> {
    let unauthenticated = |detail: &str| {
        crate::net::session::auth_failed("bad_credentials");
        Answer::error(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    };
    let Some(value) = headers.get(hyper::header::AUTHORIZATION) else {
        return Err(unauthenticated("an Authorization: Bearer <token> header is needed"));
    };
    let token = value.to_str().ok().and_then(|text| text.strip_prefix("Bearer "));
    let Some(token) = token.map(str::trim) else {
        return Err(unauthenticated("the Authorization header must be Bearer <token>"));
    };
    match api.auth.current().authenticate(Some(token), None) {
        Some(grant) => Ok((grant.role, crate::net::auth::credential_id(Some(token), None))),
        None => Err(unauthenticated("unknown token")),
    }
}

/// The caller's idempotency key, if it sent one: visible ASCII, 1 to 256 bytes.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Answer> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let text = value.to_str().ok().filter(|text| {
        let visible = text.bytes().all(|byte| byte.is_ascii_graphic());
        visible && !text.is_empty() && text.len() <= keys::REQUEST_KEY_BYTES_MAX
    });
    match text {
        Some(text) => Ok(Some(text.to_owned())),
        None => {
            let max = keys::REQUEST_KEY_BYTES_MAX;
            let detail = format!("Idempotency-Key must be 1 to {max} bytes of visible ASCII");
            Err(Answer::error(StatusCode::BAD_REQUEST, "invalid_idempotency_key", detail))
        }
    }
}

fn body_error(err: BodyError) -> Answer {
    match err {
        BodyError::TooLarge { bytes_max } => Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("bodies are at most {bytes_max} bytes"),
        ),
        BodyError::TimedOut => Answer::error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the body came too slowly",
        ),
        BodyError::Broken(detail) => Answer::error(StatusCode::BAD_REQUEST, "bad_request", detail),
    }
}

/// `request` with a request id of its own (a query, which has none, is unchanged).
fn with_fresh_id(api: &Api, mut request: Request) -> Request {
    match &mut request {
        Request::Apply(command) => *command.request_mut() = api.fresh_request_id(),
        Request::ReserveCart(cart) => cart.request = api.fresh_request_id(),
        Request::QuerySku(_) | Request::QueryReservation(_) | Request::QueryCart(_) => {}
    }
    request
}

/// What a call becomes: a request for the shards (its id still to set), or the reply it
/// gets without one: a path naming an id no id is written as gets the answer of an id that
/// does not exist; a cart of too many lines, the engine's `invalid_cart`.
#[derive(Debug)]
enum Taken {
    Submit(Request),
    Answered(Reply),
}

/// A request if `id` reads as an id, else the reply `missing`.
fn submit_if<Id>(id: Option<Id>, request: impl FnOnce(Id) -> Request, missing: Reply) -> Taken {
    id.map_or(Taken::Answered(missing), |id| Taken::Submit(request(id)))
}

/// What a route and body ask for.
fn request_of(route: &Route<'_>, body: &[u8]) -> Result<Taken, BadRequest> {
    match *route {
        Route::Reserve => reserve(body),
        Route::Cart => reserve_cart(body),
        Route::Confirm(id) => confirm(id, body),
        Route::Cancel(id) => Ok(cancel(id)),
        Route::Return(id) => return_sold(id, body),
        Route::QueryReservation(id) => Ok(query_reservation(id)),
        Route::QueryCart(id) => Ok(query_cart(id)),
        Route::QuerySku(sku) => Ok(query_sku(sku)),
        Route::SetStock(sku) => set_stock(sku, body),
        Route::SetBuckets(sku) => set_buckets(sku, body),
        Route::OpenApi => unreachable!("answered before"),
    }
}

/// Hold units of one SKU for a buyer.
#[utoipa::path(post, path = "/v1/reservations", request_body = json::ReserveBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "The caller's key (its order id): a retry with the same key and body gets the first answer.", min_length = 1, max_length = 256, pattern = "^[!-~]+$")),
    responses(
        (status = 200, description = "reserved", body = json::OutcomeBody),
        (status = 404, description = "unknown_sku", body = json::OutcomeBody),
        (status = 409, description = "sold_out, limit_exceeded, sale_not_open, sale_closed, too_many_reservations, invalid_quantity, invalid_ttl", body = json::OutcomeBody),
        (status = "4XX", description = "refused unapplied (in a cluster, 421 moved: another server owns the slot)", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable: retry with the same key", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn reserve(body: &[u8]) -> Result<Taken, BadRequest> {
    json::reserve(json::body(body)?).map(Taken::Submit)
}

/// Hold every line of a cart (up to 16, on any shards) for a buyer, or none.
#[utoipa::path(post, path = "/v1/carts", request_body = json::CartBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "The caller's key.", min_length = 1, max_length = 256, pattern = "^[!-~]+$")),
    responses(
        (status = 200, description = "reserved: the cart's id confirms and cancels it", body = json::OutcomeBody),
        (status = 409, description = "cart_refused (which line, and why), cart_timed_out, invalid_cart, invalid_ttl", body = json::OutcomeBody),
        (status = "4XX", description = "refused unapplied (in a cluster, 421 moved: another server owns the slot)", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn reserve_cart(body: &[u8]) -> Result<Taken, BadRequest> {
    Ok(match json::cart(json::body(body)?)? {
        Ok(request) => Taken::Submit(request),
        Err(outcome) => Taken::Answered(Reply::Outcome(outcome)),
    })
}

/// Payment succeeded: the reservation's (or cart's) units are sold.
#[utoipa::path(post, path = "/v1/reservations/{id}/confirm", request_body(content = Option<json::ConfirmBody>),
    params(("id" = String, Path, description = "The reservation or cart id (decimal)", pattern = "^[0-9]{1,20}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "The caller's key.", min_length = 1, max_length = 256, pattern = "^[!-~]+$")),
    responses(
        (status = 200, description = "confirmed, already_confirmed", body = json::OutcomeBody),
        (status = 404, description = "unknown_reservation", body = json::OutcomeBody),
        (status = 409, description = "expired, already_cancelled", body = json::OutcomeBody),
        (status = "4XX", description = "refused unapplied (in a cluster, 421 moved: another server owns the slot)", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn confirm(id: &str, body: &[u8]) -> Result<Taken, BadRequest> {
    let body = json::optional_body(body)?;
    let Some(id) = json::reservation_id(id) else { return Ok(Taken::Answered(UNKNOWN)) };
    json::confirm(id, body).map(Taken::Submit)
}

/// The answer to a confirm or cancel of a reservation nobody made.
const UNKNOWN: Reply = Reply::Outcome(Outcome::UnknownReservation);

/// The buyer gives the units back.
#[utoipa::path(post, path = "/v1/reservations/{id}/cancel",
    params(("id" = String, Path, description = "The reservation or cart id (decimal)", pattern = "^[0-9]{1,20}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "The caller's key.", min_length = 1, max_length = 256, pattern = "^[!-~]+$")),
    responses(
        (status = 200, description = "cancelled, already_cancelled", body = json::OutcomeBody),
        (status = 404, description = "unknown_reservation", body = json::OutcomeBody),
        (status = 409, description = "expired, already_confirmed", body = json::OutcomeBody),
        (status = "4XX", description = "refused unapplied (in a cluster, 421 moved: another server owns the slot)", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn cancel(id: &str) -> Taken {
    submit_if(json::reservation_id(id), json::cancel, UNKNOWN)
}

/// A refund after the sale: units of a confirmed reservation or cart line go back.
#[utoipa::path(post, path = "/v1/reservations/{id}/returns", request_body = json::ReturnBody,
    params(("id" = String, Path, description = "The reservation or cart id (decimal)", pattern = "^[0-9]{1,20}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "The caller's key: each return of a sale needs its own.", min_length = 1, max_length = 256, pattern = "^[!-~]+$")),
    responses(
        (status = 200, description = "returned", body = json::OutcomeBody),
        (status = 404, description = "not_returnable", body = json::OutcomeBody),
        (status = 409, description = "return_exceeds_sold, invalid_quantity", body = json::OutcomeBody),
        (status = "4XX", description = "refused unapplied (in a cluster, 421 moved: another server owns the slot)", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn return_sold(id: &str, body: &[u8]) -> Result<Taken, BadRequest> {
    let body = json::body(body)?;
    let none = Reply::Outcome(Outcome::NotReturnable);
    Ok(submit_if(json::reservation_id(id), |id| json::return_sold(id, body), none))
}

/// Read a reservation.
#[utoipa::path(get, path = "/v1/reservations/{id}",
    params(("id" = String, Path, description = "The reservation id (decimal)", pattern = "^[0-9]{1,20}$")),
    responses((status = 200, body = json::ReservationBody),
        (status = "4XX", description = "not_found, or refused", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn query_reservation(id: &str) -> Taken {
    submit_if(json::reservation_id(id), Request::QueryReservation, Reply::Reservation(None))
}

/// Read a cart.
#[utoipa::path(get, path = "/v1/carts/{id}",
    params(("id" = String, Path, description = "The cart id (decimal)", pattern = "^[0-9]{1,20}$")),
    responses((status = 200, body = json::CartViewBody),
        (status = "4XX", description = "not_found, or refused", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn query_cart(id: &str) -> Taken {
    submit_if(json::reservation_id(id), Request::QueryCart, Reply::Cart(None))
}

/// Read a SKU's stock.
#[utoipa::path(get, path = "/v1/skus/{sku}",
    params(("sku" = String, Path, description = "The SKU id (decimal)", pattern = "^[0-9]{1,20}$")),
    responses((status = 200, body = json::SkuBody),
        (status = "4XX", description = "not_found, or refused", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn query_sku(sku: &str) -> Taken {
    submit_if(json::sku_id(sku), Request::QuerySku, Reply::Sku(None))
}

/// Admin: set a SKU's total stock, creating it if new.
#[utoipa::path(put, path = "/v1/skus/{sku}/stock", request_body = json::StockBody,
    params(("sku" = String, Path, description = "The SKU id (decimal)", pattern = "^[0-9]{1,20}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "The caller's key.", min_length = 1, max_length = 256, pattern = "^[!-~]+$")),
    responses(
        (status = 200, description = "stock_changed", body = json::OutcomeBody),
        (status = 409, description = "stock_below_committed, too_many_skus, stock_out_of_range", body = json::OutcomeBody),
        (status = "4XX", description = "refused unapplied (a service token: permission_denied; a path no SKU id can have: not_found)", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn set_stock(sku: &str, body: &[u8]) -> Result<Taken, BadRequest> {
    let body = json::body(body)?;
    let Some(sku) = json::sku_id(sku) else { return Ok(Taken::Answered(Reply::Sku(None))) };
    Ok(Taken::Submit(json::set_stock(sku, body)))
}

/// Admin: spread a hot SKU over buckets on as many shards (docs/hot-skus.md).
#[utoipa::path(put, path = "/v1/skus/{sku}/buckets", request_body = json::BucketsBody,
    params(("sku" = String, Path, description = "The SKU id (decimal)", pattern = "^[0-9]{1,20}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "The caller's key.", min_length = 1, max_length = 256, pattern = "^[!-~]+$")),
    responses(
        (status = 200, description = "buckets_set", body = json::OutcomeBody),
        (status = 404, description = "unknown_sku", body = json::OutcomeBody),
        (status = 409, description = "invalid_buckets, bucketed, buyers_counted", body = json::OutcomeBody),
        (status = "4XX", description = "refused unapplied (a service token: permission_denied)", body = json::ErrorBody),
        (status = 503, description = "overloaded, shutting_down, unavailable", body = json::ErrorBody)),
    security(("bearer" = [])))]
fn set_buckets(sku: &str, body: &[u8]) -> Result<Taken, BadRequest> {
    let body = json::body(body)?;
    // A path no SKU id can have names a SKU that does not exist, as an unknown id does.
    let unknown = Reply::Outcome(Outcome::UnknownSku);
    let Some(sku) = json::sku_id(sku) else { return Ok(Taken::Answered(unknown)) };
    Ok(Taken::Submit(json::set_buckets(sku, body)))
}

/// The OpenAPI document, generated from the routes above and the bodies' types.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "flashstock HTTP API", description = "Reserve, confirm, cancel and return stock; the QUIC protocol's calls, outcomes and idempotency keys as JSON."),
    paths(reserve, reserve_cart, confirm, cancel, return_sold, query_reservation, query_cart, query_sku, set_stock, set_buckets),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme the routes' `security` names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Reading a body within its bounds.
mod bytes_body {
    use http_body_util::{BodyExt, Limited};
    use hyper::body::Incoming;

    /// Why a body was not read.
    #[derive(Debug)]
    pub enum BodyError {
        /// Longer than the limit.
        TooLarge { bytes_max: usize },
        /// Slower than the request timeout.
        TimedOut,
        /// The connection broke or the framing was bad.
        Broken(String),
    }

    /// The whole body, at most `bytes_max` bytes, within `timeout_ms`.
    pub async fn collect_body(
        body: Incoming,
        bytes_max: usize,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, BodyError> {
        let collect = Limited::new(body, bytes_max).collect();
        match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), collect).await {
            Err(_) => Err(BodyError::TimedOut),
            Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
                Err(BodyError::TooLarge { bytes_max })
            }
            Ok(Err(err)) => Err(BodyError::Broken(err.to_string())),
        }
    }
}
