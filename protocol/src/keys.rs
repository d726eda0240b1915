//! Request ids derived from a caller's own key (its order id, say), so that a retry after
//! the caller itself restarted is the same request and gets the first answer.
//!
//! The id is a hash of the key and of the whole request with its id left out: the same call
//! with the same key is the same request; another call with the same key (a confirm after a
//! reserve, another SKU, another quantity) is another request. A caller can so reuse one key,
//! its order id, for every step of one order.

use flashstock_engine::RequestId;
use ring::digest::{Context, SHA256};

use crate::message::Request;

/// Tells derived ids apart from any other use of the same hash.
const DOMAIN: &[u8] = b"flashstock request id v1\0";

/// The longest key accepted, in bytes: a key is hashed, never stored, but a peer's key is
/// still bounded (the HTTP API takes it from a header).
pub const REQUEST_KEY_BYTES_MAX: usize = 256;

/// `request` with its request id derived from `key`; a query (no id) is returned unchanged.
/// `None` when `key` is empty or longer than [`REQUEST_KEY_BYTES_MAX`].
pub fn keyed(request: &Request, key: &str) -> Option<Request> {
    if key.is_empty() || key.len() > REQUEST_KEY_BYTES_MAX {
        return None;
    }
    let mut request = request.clone();
    let Some(slot) = request_id_mut(&mut request) else { return Some(request) };
    *slot = RequestId(0);
    let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&request)
        .expect("archiving a request into memory cannot fail");
    let mut hash = Context::new(&SHA256);
    hash.update(DOMAIN);
    hash.update(&(key.len() as u32).to_le_bytes());
    hash.update(key.as_bytes());
    hash.update(&archived);
    let digest = hash.finish();
    let id = u128::from_le_bytes(digest.as_ref()[..16].try_into().expect("32 bytes"));
    *request_id_mut(&mut request).expect("found above") = RequestId(id);
    Some(request)
}

/// Where a request carries its id, if it has one.
fn request_id_mut(request: &mut Request) -> Option<&mut RequestId> {
    match request {
        Request::Apply(command) => Some(command.request_mut()),
        Request::ReserveCart(cart) => Some(&mut cart.request),
        Request::QuerySku(_) | Request::QueryReservation(_) | Request::QueryCart(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashstock_engine::{BuyerId, Command, ReservationId, Reserve, SkuId};

    fn reserve(request: u128, qty: u32) -> Request {
        Request::Apply(Command::Reserve(Reserve {
            request: RequestId(request),
            buyer: BuyerId(7),
            sku: SkuId(9),
            qty,
            ttl_ms: 60_000,
            order_ref: None,
        }))
    }

    fn id(request: &Request) -> RequestId {
        match request {
            Request::Apply(command) => command.request(),
            Request::ReserveCart(cart) => cart.request,
            _ => panic!("no id"),
        }
    }

    #[test]
    fn the_same_call_with_the_same_key_is_the_same_request_and_nothing_else_is() {
        let first = keyed(&reserve(1, 2), "order-42").unwrap();
        // Whatever id the caller's process drew, the key decides.
        assert_eq!(id(&keyed(&reserve(99, 2), "order-42").unwrap()), id(&first));
        assert_eq!(keyed(&reserve(99, 2), "order-42").unwrap(), first);
        assert_ne!(id(&keyed(&reserve(1, 3), "order-42").unwrap()), id(&first), "another qty");
        assert_ne!(id(&keyed(&reserve(1, 2), "order-43").unwrap()), id(&first), "another key");
        let confirm = |reservation| {
            let command = Command::Confirm { request: RequestId(5), reservation, order_ref: None };
            id(&keyed(&Request::Apply(command), "order-42").unwrap())
        };
        let (a, b) = (ReservationId(1), ReservationId(2));
        assert_ne!(confirm(a), confirm(b), "a confirm of another reservation");
        assert_ne!(confirm(a), id(&first), "a confirm is not the reserve");
        let cancel = Command::Cancel { request: RequestId(5), reservation: a };
        assert_ne!(id(&keyed(&Request::Apply(cancel), "order-42").unwrap()), confirm(a));
    }

    #[test]
    fn empty_and_oversized_keys_are_refused_and_queries_pass_through() {
        assert!(keyed(&reserve(1, 1), "").is_none());
        let long = "k".repeat(REQUEST_KEY_BYTES_MAX + 1);
        assert!(keyed(&reserve(1, 1), &long).is_none());
        assert!(keyed(&reserve(1, 1), &long[1..]).is_some());
        let query = Request::QuerySku(SkuId(3));
        assert_eq!(keyed(&query, "order-42"), Some(query));
    }
}
