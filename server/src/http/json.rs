//! The API's JSON: request bodies (each to the protocol's [`Request`]), and answers (each
//! [`Reply`] to a status and a body). Pure: no IO, so every mapping is tested as a function.
//!
//! The names are the protocol's: an outcome's `outcome` field is [`Outcome::name`], an
//! error's `error` field is the refusal's name. Reservation and cart ids are decimal strings
//! (a shard sits in an id's top 16 bits, past the 2^53 a JavaScript number holds exactly);
//! SKU and buyer ids are the caller's own numbers, up to 2^64 - 1.

use flashstock_engine::{
    BuyerId, CartLine, CartView, Command, Lines, OrderRef, Outcome, RequestId, ReservationId,
    ReservationView, Reserve, ReserveCart, SkuId, SkuView, CART_LINES_MAX,
};
use flashstock_protocol::{Refusal, Reply, Request};
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/reservations`: hold `qty` units of `sku` for `buyer` for `ttl_ms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    /// Who the units are held for; buyer limits count against it.
    #[serde(deserialize_with = "whole")]
    #[schema(maximum = 18_446_744_073_709_551_615_u64)]
    pub buyer: u64,
    /// What is held.
    #[serde(deserialize_with = "whole")]
    #[schema(maximum = 18_446_744_073_709_551_615_u64)]
    pub sku: u64,
    /// How many units (at most the engine's `RESERVE_QTY_MAX`).
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(deserialize_with = "whole")]
    pub qty: u32,
    /// How long the hold lasts without a confirm, in milliseconds (at most `TTL_MS_MAX`).
    #[schema(minimum = 1, maximum = 86_400_000)]
    #[serde(deserialize_with = "whole")]
    pub ttl_ms: u64,
    /// The caller's order reference, a decimal number below 2^128, if it has one already.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub order_ref: Option<String>,
}

/// One line of a cart.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    /// What is held.
    #[serde(deserialize_with = "whole")]
    #[schema(maximum = 18_446_744_073_709_551_615_u64)]
    pub sku: u64,
    /// How many units (at most the engine's `RESERVE_QTY_MAX`).
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(deserialize_with = "whole")]
    pub qty: u32,
}

/// `POST /v1/carts`: hold every line for `buyer`, or none.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartBody {
    /// Who the units are held for; buyer limits count per line.
    #[serde(deserialize_with = "whole")]
    #[schema(maximum = 18_446_744_073_709_551_615_u64)]
    pub buyer: u64,
    /// How long the hold lasts without a confirm, in milliseconds (at most `TTL_MS_MAX`).
    #[schema(minimum = 1, maximum = 86_400_000)]
    #[serde(deserialize_with = "whole")]
    pub ttl_ms: u64,
    /// 1 to `CART_LINES_MAX` lines, each SKU at most once.
    #[schema(min_items = 1, max_items = 16)]
    pub lines: Vec<LineBody>,
    /// The caller's order reference, a decimal number below 2^128.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub order_ref: Option<String>,
}

/// `POST /v1/reservations/{id}/confirm`: the body is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// The caller's order reference; replaces one given at reserve.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub order_ref: Option<String>,
}

/// `POST /v1/reservations/{id}/returns`: give back units of a confirmed sale.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnBody {
    /// The cart's line (0, the default, for a one-line reservation).
    #[serde(default, deserialize_with = "whole")]
    #[schema(maximum = 15)]
    pub line: u8,
    /// The line's SKU.
    #[serde(deserialize_with = "whole")]
    #[schema(maximum = 18_446_744_073_709_551_615_u64)]
    pub sku: u64,
    /// Units returned, 1..=what the sale has not returned yet.
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(deserialize_with = "whole")]
    pub qty: u32,
}

/// `PUT /v1/skus/{sku}/stock` (admin): set a SKU's total stock, creating it if new.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    /// The new total (at most the engine's `STOCK_TOTAL_MAX`); refused when below what is
    /// reserved plus sold.
    #[schema(maximum = 1_099_511_627_776_u64)]
    #[serde(deserialize_with = "whole")]
    pub total: u64,
}

/// `PUT /v1/skus/{sku}/buckets` (admin): spread a SKU over buckets.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketsBody {
    /// Buckets: 2 to the server's shard count (`invalid_buckets` names the most).
    #[schema(minimum = 2, maximum = 64)]
    #[serde(deserialize_with = "whole")]
    pub buckets: u32,
}

/// What a command did: the protocol's outcome, named by its `outcome` field.
#[derive(Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OutcomeBody {
    /// Held until `expires_at_ms` (milliseconds since the Unix epoch).
    Reserved { reservation: String, expires_at_ms: u64 },
    /// Fewer units available than asked.
    SoldOut { available: u64 },
    /// The buyer's limit would be passed.
    LimitExceeded { taken: u64, limit: u32 },
    /// The sale window has not opened.
    SaleNotOpen { opens_at_ms: u64 },
    /// The sale window has closed.
    SaleClosed { closed_at_ms: u64 },
    /// No stock was ever set for the SKU.
    UnknownSku,
    /// The quantity is 0 or above the maximum.
    InvalidQuantity { qty_max: u32 },
    /// The time-to-live is 0 or above the maximum.
    InvalidTtl { ttl_ms_max: u64 },
    /// The shard holds as many reservations as it may.
    TooManyReservations { live_max: u64 },
    /// Sold.
    Confirmed,
    /// Given back.
    Cancelled,
    /// An earlier request confirmed it.
    AlreadyConfirmed,
    /// An earlier request cancelled it.
    AlreadyCancelled,
    /// Its time-to-live passed first.
    Expired,
    /// No such reservation.
    UnknownReservation,
    /// The SKU's stock now.
    StockChanged { total: u64, available: u64 },
    /// The total would fall below what is reserved plus sold.
    StockBelowCommitted { committed: u64 },
    /// Available would fall below zero.
    InsufficientAvailable { available: u64 },
    /// The total would pass the per-SKU maximum.
    StockOutOfRange { total_max: u64 },
    /// The shard holds as many SKUs as it may.
    TooManySkus { skus_max: u64 },
    /// The buyer limit is set.
    LimitSet,
    /// The limit is below what a buyer already has.
    LimitBelowHoldings { taken_max: u64 },
    /// The sale window is set.
    WindowSet,
    /// The window opens at or after it closes.
    InvalidWindow,
    /// Line `line` was refused (`refusal`: sold_out, limit_exceeded...), so none is held;
    /// `value` is the figure the single-line outcome of that name carries.
    CartRefused { line: u8, refusal: String, value: u64 },
    /// The cart's lines were not all prepared in time: none is held.
    CartTimedOut,
    /// No lines, more than the maximum, or a SKU twice.
    InvalidCart { lines_max: u32 },
    /// Units went back to available.
    Returned { returned_total: u32 },
    /// No returnable sale of that reservation, line and SKU.
    NotReturnable,
    /// More units than the sale has left to return.
    ReturnExceedsSold { returnable: u32 },
    /// The SKU is spread over `buckets` buckets now.
    BucketsSet { buckets: u32 },
    /// The bucket count is below 2 or above the maximum.
    InvalidBuckets { buckets_max: u32 },
    /// The SKU is spread over buckets: its total, limit and window are fixed.
    Bucketed { buckets: u32 },
    /// Buyers already hold or bought the SKU, so it cannot be spread.
    BuyersCounted { buyers: u64 },
}

impl From<Outcome> for OutcomeBody {
    fn from(outcome: Outcome) -> OutcomeBody {
        use OutcomeBody as B;
        match outcome {
            Outcome::Reserved { reservation, expires_at_ms } => {
                B::Reserved { reservation: reservation.0.to_string(), expires_at_ms }
            }
            Outcome::SoldOut { available } => B::SoldOut { available },
            Outcome::LimitExceeded { taken, limit } => B::LimitExceeded { taken, limit },
            Outcome::SaleNotOpen { opens_at_ms } => B::SaleNotOpen { opens_at_ms },
            Outcome::SaleClosed { closed_at_ms } => B::SaleClosed { closed_at_ms },
            Outcome::UnknownSku => B::UnknownSku,
            Outcome::InvalidQuantity { qty_max } => B::InvalidQuantity { qty_max },
            Outcome::InvalidTtl { ttl_ms_max } => B::InvalidTtl { ttl_ms_max },
            Outcome::TooManyReservations { live_max } => B::TooManyReservations { live_max },
            Outcome::Confirmed => B::Confirmed,
            Outcome::Cancelled => B::Cancelled,
            Outcome::AlreadyConfirmed => B::AlreadyConfirmed,
            Outcome::AlreadyCancelled => B::AlreadyCancelled,
            Outcome::Expired => B::Expired,
            Outcome::UnknownReservation => B::UnknownReservation,
            Outcome::StockChanged { total, available } => B::StockChanged { total, available },
            Outcome::StockBelowCommitted { committed } => B::StockBelowCommitted { committed },
            Outcome::InsufficientAvailable { available } => B::InsufficientAvailable { available },
            Outcome::StockOutOfRange { total_max } => B::StockOutOfRange { total_max },
            Outcome::TooManySkus { skus_max } => B::TooManySkus { skus_max },
            Outcome::LimitSet => B::LimitSet,
            Outcome::LimitBelowHoldings { taken_max } => B::LimitBelowHoldings { taken_max },
            Outcome::WindowSet => B::WindowSet,
            Outcome::InvalidWindow => B::InvalidWindow,
            Outcome::CartRefused { line, refusal, value } => {
                B::CartRefused { line, refusal: refusal.name().to_owned(), value }
            }
            Outcome::CartTimedOut => B::CartTimedOut,
            Outcome::InvalidCart { lines_max } => B::InvalidCart { lines_max },
            Outcome::Returned { returned_total } => B::Returned { returned_total },
            Outcome::NotReturnable => B::NotReturnable,
            Outcome::ReturnExceedsSold { returnable } => B::ReturnExceedsSold { returnable },
            Outcome::BucketsSet { buckets } => B::BucketsSet { buckets },
            Outcome::InvalidBuckets { buckets_max } => B::InvalidBuckets { buckets_max },
            Outcome::Bucketed { buckets } => B::Bucketed { buckets },
            Outcome::BuyersCounted { buyers } => B::BuyersCounted { buyers },
        }
    }
}

/// `GET /v1/skus/{sku}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkuBody {
    /// The SKU.
    pub sku: u64,
    /// Units in all.
    pub total: u64,
    /// Units that may be reserved.
    pub available: u64,
    /// Units held by live reservations.
    pub reserved: u64,
    /// Units sold.
    pub sold: u64,
    /// The per-buyer limit, if any.
    pub buyer_limit: Option<u32>,
    /// When the sale opens, if it has a start.
    pub opens_at_ms: Option<u64>,
    /// When the sale closes, if it has an end.
    pub closes_at_ms: Option<u64>,
}

/// `GET /v1/reservations/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationBody {
    /// The reservation.
    pub reservation: String,
    /// Who it is held for.
    pub buyer: u64,
    /// What it holds.
    pub sku: u64,
    /// How many units.
    pub qty: u32,
    /// When it lapses if still held.
    pub expires_at_ms: u64,
    /// held, confirmed, cancelled or expired.
    pub state: String,
}

/// `GET /v1/carts/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartViewBody {
    /// The cart.
    pub cart: String,
    /// Who it is held for.
    pub buyer: u64,
    /// Its lines, in order.
    pub lines: Vec<LineBody>,
    /// When it lapses if still held.
    pub expires_at_ms: u64,
    /// held, confirmed, cancelled or expired.
    pub state: String,
}

/// Why a call was not answered with an outcome. `error` names it: the protocol's refusal
/// names (`permission_denied`, `rate_limited`, `overloaded`, `shutting_down`,
/// `unavailable`), or the HTTP layer's (`unauthenticated`, `bad_request`, `not_found`,
/// `method_not_allowed`, `payload_too_large`, `request_timeout`, `invalid_idempotency_key`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error's name.
    pub error: String,
    /// What was wrong, for a person.
    pub detail: String,
    /// For `rate_limited` and `overloaded`: when a retry may succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u32>,
}

/// An answer: its status and its JSON body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, JSON.
    pub body: Vec<u8>,
    /// For a refusal that asks to wait: the milliseconds to wait.
    pub retry_after_ms: Option<u32>,
    /// For `method_not_allowed`: the method the path takes.
    pub allow: Option<hyper::Method>,
}

impl Answer {
    fn json(status: StatusCode, body: &impl Serialize) -> Answer {
        let body = serde_json::to_vec(body).expect("API bodies serialise");
        Answer { status, ..Answer::ok_json(body) }
    }

    /// A 200 answer of JSON already written (the OpenAPI document).
    pub fn ok_json(body: Vec<u8>) -> Answer {
        Answer { status: StatusCode::OK, body, retry_after_ms: None, allow: None }
    }

    /// An error answer.
    pub fn error(status: StatusCode, error: &str, detail: impl Into<String>) -> Answer {
        let body =
            ErrorBody { error: error.to_owned(), detail: detail.into(), retry_after_ms: None };
        Answer::json(status, &body)
    }

    fn refused(refusal: Refusal) -> Answer {
        let (status, error, detail, retry_after_ms) = match refusal {
            Refusal::PermissionDenied => {
                (StatusCode::FORBIDDEN, "permission_denied", "the token's role may not", None)
            }
            Refusal::RateLimited { retry_after_ms } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many reserve attempts from this buyer or credential",
                Some(retry_after_ms),
            ),
            Refusal::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "a shard's queue is full: back off, retry with the same Idempotency-Key",
                Some(OVERLOADED_RETRY_AFTER_MS),
            ),
            Refusal::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is stopping", None)
            }
            Refusal::Unavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the log failed", None)
            }
            Refusal::SpansServers { .. } => (
                StatusCode::CONFLICT,
                "spans_servers",
                "the cart's lines are owned by more than one server of the cluster",
                None,
            ),
            Refusal::SlotMoving { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "slot_moving",
                "the SKU's slot is moving to another server: retry with the same Idempotency-Key",
                Some(OVERLOADED_RETRY_AFTER_MS),
            ),
        };
        let body = ErrorBody { error: error.to_owned(), detail: detail.to_owned(), retry_after_ms };
        Answer { retry_after_ms, ..Answer::json(status, &body) }
    }
}

/// How long an `overloaded` answer asks a caller to wait.
const OVERLOADED_RETRY_AFTER_MS: u32 = 100;

/// A reply as the API answers it. Business outcomes are values with one status rule:
/// applied ones are 200, ones naming something unknown 404, every other refusal 409 (the
/// call conflicts with the stock's state or its bounds); the body names the outcome.
pub fn answer(reply: Reply) -> Answer {
    let not_found = |what: &str| Answer::error(StatusCode::NOT_FOUND, "not_found", what);
    match reply {
        Reply::Outcome(outcome) => Answer::json(status_of(&outcome), &OutcomeBody::from(outcome)),
        Reply::Refused(refusal) => Answer::refused(refusal),
        Reply::Sku(Some(view)) => Answer::json(StatusCode::OK, &sku_body(&view)),
        Reply::Reservation(Some(view)) => Answer::json(StatusCode::OK, &reservation_body(&view)),
        Reply::Cart(Some(view)) => Answer::json(StatusCode::OK, &cart_body(&view)),
        Reply::Sku(None) => not_found("no such SKU"),
        Reply::Reservation(None) => not_found("no such reservation"),
        Reply::Cart(None) => not_found("no such cart"),
        Reply::Moved(moved) => {
            let detail = format!(
                "slot {} is served by server {:?} (shard map revision {})",
                moved.slot, moved.server, moved.map_revision
            );
            Answer::error(StatusCode::MISDIRECTED_REQUEST, "moved", detail)
        }
    }
}

/// The status an outcome is answered with.
pub fn status_of(outcome: &Outcome) -> StatusCode {
    match outcome {
        Outcome::Reserved { .. }
        | Outcome::Confirmed
        | Outcome::Cancelled
        | Outcome::AlreadyConfirmed
        | Outcome::AlreadyCancelled
        | Outcome::StockChanged { .. }
        | Outcome::LimitSet
        | Outcome::WindowSet
        | Outcome::Returned { .. }
        | Outcome::BucketsSet { .. } => StatusCode::OK,
        Outcome::UnknownSku | Outcome::UnknownReservation | Outcome::NotReturnable => {
            StatusCode::NOT_FOUND
        }
        Outcome::InvalidQuantity { .. }
        | Outcome::InvalidTtl { .. }
        | Outcome::InvalidCart { .. }
        | Outcome::InvalidWindow
        | Outcome::InvalidBuckets { .. }
        | Outcome::Bucketed { .. }
        | Outcome::BuyersCounted { .. }
        | Outcome::StockOutOfRange { .. }
        | Outcome::SoldOut { .. }
        | Outcome::LimitExceeded { .. }
        | Outcome::SaleNotOpen { .. }
        | Outcome::SaleClosed { .. }
        | Outcome::TooManyReservations { .. }
        | Outcome::Expired
        | Outcome::StockBelowCommitted { .. }
        | Outcome::InsufficientAvailable { .. }
        | Outcome::TooManySkus { .. }
        | Outcome::LimitBelowHoldings { .. }
        | Outcome::CartRefused { .. }
        | Outcome::CartTimedOut
        | Outcome::ReturnExceedsSold { .. } => StatusCode::CONFLICT,
    }
}

fn sku_body(view: &SkuView) -> SkuBody {
    SkuBody {
        sku: view.sku.0,
        total: view.total,
        available: view.available,
        reserved: view.reserved,
        sold: view.sold,
        buyer_limit: view.buyer_limit,
        opens_at_ms: view.window.opens_at_ms,
        closes_at_ms: view.window.closes_at_ms,
    }
}

fn reservation_body(view: &ReservationView) -> ReservationBody {
    ReservationBody {
        reservation: view.reservation.0.to_string(),
        buyer: view.buyer.0,
        sku: view.sku.0,
        qty: view.qty,
        expires_at_ms: view.expires_at_ms,
        state: view.state.name().to_owned(),
    }
}

fn cart_body(view: &CartView) -> CartViewBody {
    let lines = view.lines.as_slice().iter();
    CartViewBody {
        cart: view.cart.0.to_string(),
        buyer: view.buyer.0,
        lines: lines.map(line_body).collect(),
        expires_at_ms: view.expires_at_ms,
        state: view.state.name().to_owned(),
    }
}

/// A body the API could not read (not JSON of the route's type, or a malformed value in
/// it): answered 400 `bad_request`, unapplied.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl BadRequest {
    /// The answer it gets.
    pub fn answer(self) -> Answer {
        Answer::error(StatusCode::BAD_REQUEST, "bad_request", self.0)
    }
}

/// An integer field, also when a client wrote it as a whole number with a fraction of zero
/// (`2.0`): JSON Schema's `integer` admits it, and so do JSON encoders of languages whose
/// numbers are all floats. A fraction, a negative number, or a value past the field's type
/// or past 2^53 written as a float (no longer exact) is refused.
fn whole<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    let exact = number.as_u64().or_else(|| {
        let float = number.as_f64()?;
        let whole = float.fract() == 0.0 && (0.0..=F64_EXACT_MAX).contains(&float);
        whole.then_some(float as u64)
    });
    let out_of_range = || D::Error::custom(format!("{number} is not an integer in range"));
    T::try_from(exact.ok_or_else(out_of_range)?).map_err(|_| out_of_range())
}

/// The largest whole number every float up to is exact: 2^53.
const F64_EXACT_MAX: f64 = 9_007_199_254_740_992.0;

/// A JSON body of type `T`, written as an object: serde would also read a struct from an
/// array of its fields in order, which no caller means and the document does not allow.
pub fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BadRequest> {
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BadRequest("the body must be a JSON object".to_owned()));
    }
    serde_json::from_slice(bytes).map_err(|err| BadRequest(format!("the body: {err}")))
}

/// An optional JSON body: empty, or `null`, reads as `T::default()`.
pub fn optional_body<T: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
) -> Result<T, BadRequest> {
    let text = bytes.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(T::default());
    }
    body(bytes)
}

/// A reservation or cart id from a path, decimal digits; `None` for text no id is written
/// as (answered as an id that does not exist).
pub fn reservation_id(text: &str) -> Option<ReservationId> {
    decimal(text).map(ReservationId)
}

/// A SKU id from a path, decimal digits; `None` for text no id is written as.
pub fn sku_id(text: &str) -> Option<SkuId> {
    decimal(text).map(SkuId)
}

/// Digits only: `str::parse` also takes a leading `+`, which no id is written with.
fn decimal<N: std::str::FromStr>(text: &str) -> Option<N> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if digits {
        text.parse().ok()
    } else {
        None
    }
}

fn order_ref(text: Option<String>) -> Result<Option<OrderRef>, BadRequest> {
    match text {
        None => Ok(None),
        Some(text) => decimal(&text).map(|n| Some(OrderRef(n))).ok_or_else(|| {
            BadRequest(format!("order_ref {text:?} is not a decimal number below 2^128"))
        }),
    }
}

/// The request a reserve body asks for; its id is set by the caller of this function.
pub fn reserve(body: ReserveBody) -> Result<Request, BadRequest> {
    let reserve = Reserve {
        request: RequestId(0),
        buyer: BuyerId(body.buyer),
        sku: SkuId(body.sku),
        qty: body.qty,
        ttl_ms: body.ttl_ms,
        order_ref: order_ref(body.order_ref)?,
    };
    Ok(Request::Apply(Command::Reserve(reserve)))
}

/// The request a cart body asks for; `Ok(Err(_))` is the outcome of a cart of more lines
/// than [`CART_LINES_MAX`], the engine's `invalid_cart`, answered without a request.
pub fn cart(body: CartBody) -> Result<Result<Request, Outcome>, BadRequest> {
    let order_ref = order_ref(body.order_ref)?;
    let pairs = body.lines.iter().map(|line| (SkuId(line.sku), line.qty));
    let Some(lines) = Lines::numbered(pairs) else {
        return Ok(Err(Outcome::InvalidCart { lines_max: CART_LINES_MAX as u32 }));
    };
    let cart = ReserveCart {
        request: RequestId(0),
        buyer: BuyerId(body.buyer),
        ttl_ms: body.ttl_ms,
        order_ref,
        lines,
    };
    Ok(Ok(Request::ReserveCart(Box::new(cart))))
}

/// The request a confirm asks for.
pub fn confirm(reservation: ReservationId, body: ConfirmBody) -> Result<Request, BadRequest> {
    let order_ref = order_ref(body.order_ref)?;
    Ok(Request::Apply(Command::Confirm { request: RequestId(0), reservation, order_ref }))
}

/// The request a cancel asks for.
pub fn cancel(reservation: ReservationId) -> Request {
    Request::Apply(Command::Cancel { request: RequestId(0), reservation })
}

/// The request a return asks for.
pub fn return_sold(reservation: ReservationId, body: ReturnBody) -> Request {
    let (line, sku, qty) = (body.line, SkuId(body.sku), body.qty);
    Request::Apply(Command::ReturnSold { request: RequestId(0), reservation, line, sku, qty })
}

/// The request a stock body asks for.
pub fn set_stock(sku: SkuId, body: StockBody) -> Request {
    Request::Apply(Command::SetStock { request: RequestId(0), sku, total: body.total })
}

/// `PUT /v1/skus/{sku}/buckets`: the request (its id set by the caller's key or fresh).
pub fn set_buckets(sku: SkuId, body: BucketsBody) -> Request {
    Request::Apply(Command::SetBuckets { request: RequestId(0), sku, buckets: body.buckets })
}

/// A cart line as the API writes it.
fn line_body(line: &CartLine) -> LineBody {
    LineBody { sku: line.sku.0, qty: line.qty }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashstock_engine::LineRefusal;

    /// One of each outcome; the match below stops compiling when a variant is added.
    fn every_outcome() -> Vec<Outcome> {
        let reservation = ReservationId(1);
        let all = vec![
            Outcome::Reserved { reservation, expires_at_ms: 5 },
            Outcome::SoldOut { available: 1 },
            Outcome::LimitExceeded { taken: 1, limit: 2 },
            Outcome::SaleNotOpen { opens_at_ms: 1 },
            Outcome::SaleClosed { closed_at_ms: 1 },
            Outcome::UnknownSku,
            Outcome::InvalidQuantity { qty_max: 1 },
            Outcome::InvalidTtl { ttl_ms_max: 1 },
            Outcome::TooManyReservations { live_max: 1 },
            Outcome::Confirmed,
            Outcome::Cancelled,
            Outcome::AlreadyConfirmed,
            Outcome::AlreadyCancelled,
            Outcome::Expired,
            Outcome::UnknownReservation,
            Outcome::StockChanged { total: 1, available: 1 },
            Outcome::StockBelowCommitted { committed: 1 },
            Outcome::InsufficientAvailable { available: 1 },
            Outcome::StockOutOfRange { total_max: 1 },
            Outcome::TooManySkus { skus_max: 1 },
            Outcome::LimitSet,
            Outcome::LimitBelowHoldings { taken_max: 1 },
            Outcome::WindowSet,
            Outcome::InvalidWindow,
            Outcome::CartRefused { line: 1, refusal: LineRefusal::SoldOut, value: 1 },
            Outcome::CartTimedOut,
            Outcome::InvalidCart { lines_max: 16 },
            Outcome::Returned { returned_total: 1 },
            Outcome::NotReturnable,
            Outcome::ReturnExceedsSold { returnable: 1 },
            Outcome::BucketsSet { buckets: 2 },
            Outcome::InvalidBuckets { buckets_max: 2 },
            Outcome::Bucketed { buckets: 2 },
            Outcome::BuyersCounted { buyers: 1 },
        ];
        for outcome in &all {
            match outcome {
                Outcome::Reserved { .. }
                | Outcome::SoldOut { .. }
                | Outcome::LimitExceeded { .. }
                | Outcome::SaleNotOpen { .. }
                | Outcome::SaleClosed { .. }
                | Outcome::UnknownSku
                | Outcome::InvalidQuantity { .. }
                | Outcome::InvalidTtl { .. }
                | Outcome::TooManyReservations { .. }
                | Outcome::Confirmed
                | Outcome::Cancelled
                | Outcome::AlreadyConfirmed
                | Outcome::AlreadyCancelled
                | Outcome::Expired
                | Outcome::UnknownReservation
                | Outcome::StockChanged { .. }
                | Outcome::StockBelowCommitted { .. }
                | Outcome::InsufficientAvailable { .. }
                | Outcome::StockOutOfRange { .. }
                | Outcome::TooManySkus { .. }
                | Outcome::LimitSet
                | Outcome::LimitBelowHoldings { .. }
                | Outcome::WindowSet
                | Outcome::InvalidWindow
                | Outcome::CartRefused { .. }
                | Outcome::CartTimedOut
                | Outcome::InvalidCart { .. }
                | Outcome::Returned { .. }
                | Outcome::NotReturnable
                | Outcome::ReturnExceedsSold { .. }
                | Outcome::BucketsSet { .. }
                | Outcome::InvalidBuckets { .. }
                | Outcome::Bucketed { .. }
                | Outcome::BuyersCounted { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_outcome_is_named_in_json_as_the_protocol_names_it() {
        for outcome in every_outcome() {
            let body = serde_json::to_value(OutcomeBody::from(outcome)).unwrap();
            assert_eq!(body["outcome"], outcome.name(), "{outcome:?}");
        }
        let reserved = OutcomeBody::from(every_outcome()[0]);
        let reserved = serde_json::to_value(reserved).unwrap();
        assert_eq!(reserved["reservation"], "1", "ids are strings: exact in JavaScript too");
    }

    #[test]
    fn integers_may_be_written_whole_but_never_with_a_fraction_or_out_of_range() {
        let parse = |text: &str| body::<ReserveBody>(text.as_bytes()).map(|body| body.qty);
        let fields = |qty: &str| format!(r#"{{"buyer":1,"sku":2,"qty":{qty},"ttl_ms":3}}"#);
        assert_eq!(parse(&fields("4")), Ok(4));
        assert_eq!(parse(&fields("4.0")), Ok(4), "JSON Schema's integer admits 4.0");
        for refused in ["4.5", "-1", "4294967296", "1e300", "\"4\"", "null"] {
            assert!(parse(&fields(refused)).is_err(), "{refused}");
        }
        let big = r#"{"buyer":1,"sku":18446744073709551615,"qty":1,"ttl_ms":3}"#;
        assert_eq!(
            body::<ReserveBody>(big.as_bytes()).unwrap().sku,
            u64::MAX,
            "exact, as an integer"
        );
        let inexact = r#"{"buyer":1,"sku":18446744073709551615.0,"qty":1,"ttl_ms":3}"#;
        assert!(body::<ReserveBody>(inexact.as_bytes()).is_err(), "past 2^53 a float is not exact");
    }

    #[test]
    fn bodies_are_objects_and_an_optional_one_may_be_empty_or_null() {
        assert!(body::<ReturnBody>(br#"[0, 1, 2]"#).is_err(), "not a struct's fields in order");
        for empty in [&b""[..], b"  ", b"null", b"{}"] {
            assert_eq!(optional_body::<ConfirmBody>(empty).unwrap().order_ref, None);
        }
        assert!(optional_body::<ConfirmBody>(b"[]").is_err());
    }

    #[test]
    fn path_ids_are_decimal_digits_below_two_to_the_64() {
        assert_eq!(reservation_id("42"), Some(ReservationId(42)));
        assert_eq!(sku_id("18446744073709551615"), Some(SkuId(u64::MAX)));
        for no_id in ["", "+1", "-1", "1a", "18446744073709551616", "%31"] {
            assert_eq!(reservation_id(no_id), None, "{no_id}");
        }
    }
}
