//! Frames end to end: round trips of every message, any split of the byte stream, arbitrary
//! bytes (never a panic, never more memory than one frame), and each kind of bad input.

use flashstock_engine::{
    BuyerId, CartView, Change, Command, Ended, Event, EventKind, LineRefusal, Lines, OrderRef,
    Outcome, RequestId, ReservationId, ReservationState, ReservationView, Reserve, ReserveCart,
    SaleReturned, SaleWindow, ShardId, SkuId, SkuView, CART_LINES_MAX,
};
use flashstock_protocol::{
    AdminReply, AdminRequest, ConnectionError, ConsumerInfo, Decoded, ErrorCode, EventBatch, Frame,
    FrameDecoder, FrameEncoder, FrameError, Message, RateLimit, RateLimitEntry, Refusal, Reply,
    Request, Role, StartAt, StreamEvent, Subscribe, Subscribed, FRAME_BYTES_MAX_DEFAULT,
    HEADER_BYTES, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
use proptest::prelude::*;

fn command() -> impl Strategy<Value = Command> {
    let request = any::<u128>().prop_map(RequestId);
    let sku = any::<u64>().prop_map(SkuId);
    let reservation = any::<u64>().prop_map(ReservationId);
    prop_oneof![
        (request.clone(), any::<u64>(), sku.clone(), any::<u32>(), any::<u64>()).prop_map(
            |(request, buyer, sku, qty, ttl_ms)| {
                Command::Reserve(Reserve {
                    request,
                    buyer: BuyerId(buyer),
                    sku,
                    qty,
                    ttl_ms,
                    order_ref: (qty % 2 == 0).then_some(OrderRef(request.0 ^ 1)),
                })
            }
        ),
        (request.clone(), reservation.clone(), any::<Option<u128>>()).prop_map(
            |(request, reservation, order_ref)| {
                Command::Confirm { request, reservation, order_ref: order_ref.map(OrderRef) }
            }
        ),
        (request.clone(), reservation.clone())
            .prop_map(|(request, reservation)| Command::Cancel { request, reservation }),
        (request.clone(), reservation, any::<u8>(), sku.clone(), any::<u32>()).prop_map(
            |(request, reservation, line, sku, qty)| Command::ReturnSold {
                request,
                reservation,
                line,
                sku,
                qty
            }
        ),
        (request.clone(), sku.clone(), any::<u64>())
            .prop_map(|(request, sku, total)| Command::SetStock { request, sku, total }),
        (request.clone(), sku.clone(), any::<i64>())
            .prop_map(|(request, sku, delta)| Command::AdjustStock { request, sku, delta }),
        (request.clone(), sku.clone(), any::<Option<u32>>())
            .prop_map(|(request, sku, limit)| Command::SetBuyerLimit { request, sku, limit }),
        (request.clone(), sku.clone(), any::<Option<u64>>(), any::<Option<u64>>()).prop_map(
            |(request, sku, opens_at_ms, closes_at_ms)| Command::SetSaleWindow {
                request,
                sku,
                window: SaleWindow { opens_at_ms, closes_at_ms },
            }
        ),
        // What version 7 added: hot-SKU buckets.
        (request, sku, any::<u32>()).prop_map(|(request, sku, buckets)| Command::SetBuckets {
            request,
            sku,
            buckets
        }),
    ]
}

/// What version 6 added: carts.
fn cart() -> impl Strategy<Value = ReserveCart> {
    let lines = proptest::collection::vec((any::<u64>(), any::<u32>()), 0..=CART_LINES_MAX);
    (any::<u128>(), any::<u64>(), any::<u64>(), any::<Option<u128>>(), lines).prop_map(
        |(request, buyer, ttl_ms, order_ref, lines)| ReserveCart {
            request: RequestId(request),
            buyer: BuyerId(buyer),
            ttl_ms,
            order_ref: order_ref.map(OrderRef),
            lines: Lines::numbered(lines.into_iter().map(|(sku, qty)| (SkuId(sku), qty))).unwrap(),
        },
    )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(r, expires_at_ms)| Outcome::Reserved {
            reservation: ReservationId(r),
            expires_at_ms
        }),
        any::<u64>().prop_map(|available| Outcome::SoldOut { available }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(taken, limit)| Outcome::LimitExceeded { taken, limit }),
        any::<u64>().prop_map(|opens_at_ms| Outcome::SaleNotOpen { opens_at_ms }),
        Just(Outcome::UnknownSku),
        Just(Outcome::Confirmed),
        Just(Outcome::AlreadyCancelled),
        Just(Outcome::Expired),
        Just(Outcome::UnknownReservation),
        (any::<u64>(), any::<u64>())
            .prop_map(|(total, available)| Outcome::StockChanged { total, available }),
        any::<u64>().prop_map(|taken_max| Outcome::LimitBelowHoldings { taken_max }),
        (any::<u8>(), 0u8..8, any::<u64>()).prop_map(|(line, code, value)| {
            let refusal = LineRefusal::from_code(code).unwrap();
            Outcome::CartRefused { line, refusal, value }
        }),
        Just(Outcome::CartTimedOut),
        any::<u32>().prop_map(|returned_total| Outcome::Returned { returned_total }),
        Just(Outcome::NotReturnable),
        any::<u32>().prop_map(|returnable| Outcome::ReturnExceedsSold { returnable }),
        any::<u32>().prop_map(|lines_max| Outcome::InvalidCart { lines_max }),
        any::<u32>().prop_map(|buckets| Outcome::BucketsSet { buckets }),
        any::<u32>().prop_map(|buckets_max| Outcome::InvalidBuckets { buckets_max }),
        any::<u32>().prop_map(|buckets| Outcome::Bucketed { buckets }),
        any::<u64>().prop_map(|buyers| Outcome::BuyersCounted { buyers }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let sku_view = (any::<u64>(), any::<[u64; 4]>(), any::<Option<u32>>(), any::<Option<u64>>())
        .prop_map(|(sku, [total, available, reserved, sold], buyer_limit, opens_at_ms)| SkuView {
            sku: SkuId(sku),
            total,
            available,
            reserved,
            sold,
            buyer_limit,
            window: SaleWindow { opens_at_ms, closes_at_ms: None },
        });
    let reservation_view = (any::<u64>(), any::<u64>(), any::<u32>(), 0u8..4).prop_map(
        |(id, expires_at_ms, qty, state)| ReservationView {
            reservation: ReservationId::new(
                flashstock_engine::Slot(9),
                ShardId(1),
                id & ReservationId::SEQ_MAX,
            ),
            buyer: BuyerId(id ^ 7),
            sku: SkuId(id >> 3),
            qty,
            expires_at_ms,
            state: [
                ReservationState::Held,
                ReservationState::Confirmed,
                ReservationState::Cancelled,
                ReservationState::Expired,
            ][usize::from(state)],
        },
    );
    prop_oneof![
        outcome().prop_map(Reply::Outcome),
        proptest::option::of(sku_view).prop_map(|view| Reply::Sku(view.map(Box::new))),
        proptest::option::of(reservation_view)
            .prop_map(|view| Reply::Reservation(view.map(Box::new))),
        proptest::option::of((cart(), any::<u64>(), 0u8..4)).prop_map(|view| {
            Reply::Cart(view.map(|(cart, expires_at_ms, state)| {
                Box::new(CartView {
                    cart: ReservationId(cart.buyer.0),
                    buyer: cart.buyer,
                    lines: cart.lines,
                    expires_at_ms,
                    state: ReservationState::from_code(state).unwrap(),
                })
            }))
        }),
        prop_oneof![
            Just(Refusal::Overloaded),
            Just(Refusal::PermissionDenied),
            Just(Refusal::ShuttingDown),
            Just(Refusal::Unavailable),
            any::<u32>().prop_map(|retry_after_ms| Refusal::RateLimited { retry_after_ms }),
        ]
        .prop_map(Reply::Refused),
    ]
}

fn event() -> impl Strategy<Value = StreamEvent> {
    let state = prop_oneof![
        Just(ReservationState::Confirmed),
        Just(ReservationState::Cancelled),
        Just(ReservationState::Expired)
    ];
    let change = prop_oneof![
        (any::<[u64; 3]>(), state, any::<u32>(), any::<Option<u128>>()).prop_map(
            |([reservation, buyer, sku], state, qty, order_ref)| Change::Ended(Ended {
                reservation: ReservationId(reservation),
                state,
                buyer: BuyerId(buyer),
                sku: SkuId(sku),
                qty,
                order_ref: order_ref.map(OrderRef),
            })
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(sku, total)| Change::StockSet { sku: SkuId(sku), total }),
        (any::<u64>(), any::<i64>())
            .prop_map(|(sku, delta)| Change::StockAdjusted { sku: SkuId(sku), delta }),
        (any::<u8>(), any::<[u64; 3]>(), any::<u32>()).prop_map(|(line, [id, buyer, sku], qty)| {
            let ended = Ended {
                reservation: ReservationId(id),
                state: ReservationState::Confirmed,
                buyer: BuyerId(buyer),
                sku: SkuId(sku),
                qty,
                order_ref: None,
            };
            Change::CartLineEnded { line, ended }
        }),
        (any::<[u64; 3]>(), any::<u8>(), any::<[u32; 2]>()).prop_map(
            |([id, buyer, sku], line, [qty, returned_total])| {
                Change::Returned(SaleReturned {
                    reservation: ReservationId(id),
                    line,
                    sku: SkuId(sku),
                    buyer: BuyerId(buyer),
                    qty,
                    returned_total,
                })
            }
        ),
    ];
    (any::<u64>(), any::<u64>(), change)
        .prop_map(|(seq, at_ms, change)| StreamEvent { seq, event: Event { at_ms, change } })
}

fn stream_message() -> impl Strategy<Value = Message> {
    let start = prop_oneof![
        Just(StartAt::Acknowledged),
        Just(StartAt::Earliest),
        proptest::collection::vec(any::<u64>(), 0..8).prop_map(StartAt::Cursor),
    ];
    let kinds = proptest::sample::subsequence(EventKind::ALL.to_vec(), 0..=4);
    prop_oneof![
        ("[a-z0-9_.-]{1,64}", start, kinds, any::<u32>()).prop_map(
            |(consumer, start, kinds, window_events)| Message::Subscribe(Subscribe {
                consumer,
                start,
                kinds,
                window_events
            })
        ),
        (proptest::collection::vec(any::<u64>(), 0..8), any::<u32>()).prop_map(
            |(cursor, window_events)| Message::Subscribed(Subscribed { cursor, window_events })
        ),
        (any::<u16>(), proptest::collection::vec(event(), 0..32), any::<u64>()).prop_map(
            |(shard, events, end_seq)| Message::Events(EventBatch { shard, events, end_seq })
        ),
        proptest::collection::vec(any::<u64>(), 0..8).prop_map(Message::Ack),
        Just(Message::Admin(AdminRequest::ListConsumers)),
        "[a-z0-9_.-]{0,64}".prop_map(|name| Message::Admin(AdminRequest::RemoveConsumer(name))),
        proptest::collection::vec(
            ("[a-z0-9_.-]{1,64}", proptest::collection::vec(any::<u64>(), 0..4), any::<bool>()),
            0..4
        )
        .prop_map(|consumers| {
            let infos = consumers.into_iter().map(|(name, acked, subscribed)| ConsumerInfo {
                name,
                acked,
                subscribed,
            });
            Message::AdminReply(AdminReply::Consumers(infos.collect()))
        }),
        any::<bool>()
            .prop_map(|existed| Message::AdminReply(AdminReply::ConsumerRemoved { existed })),
        admin_v5(),
    ]
}

/// What version 5 added: the SKU listing and rate limits.
fn admin_v5() -> impl Strategy<Value = Message> {
    let limit = (any::<Option<u32>>(), any::<Option<u32>>()).prop_map(
        |(per_buyer_per_s, per_credential_per_s)| RateLimit {
            per_buyer_per_s,
            per_credential_per_s,
        },
    );
    let sku = any::<Option<u64>>().prop_map(|sku| sku.map(SkuId));
    let entries =
        proptest::collection::vec((sku.clone(), limit.clone()), 0..4).prop_map(|entries| {
            let entries = entries.into_iter().map(|(sku, limit)| RateLimitEntry { sku, limit });
            Message::AdminReply(AdminReply::RateLimits(entries.collect()))
        });
    prop_oneof![
        (sku.clone(), any::<u32>())
            .prop_map(|(after, limit)| Message::Admin(AdminRequest::ListSkus { after, limit })),
        (sku.clone(), limit)
            .prop_map(|(sku, limit)| Message::Admin(AdminRequest::SetRateLimit { sku, limit })),
        Just(Message::Admin(AdminRequest::ListRateLimits)),
        entries,
        ".{0,40}".prop_map(|detail| Message::AdminReply(AdminReply::Invalid { detail })),
        sku.prop_map(|next_after| Message::AdminReply(AdminReply::Skus {
            skus: Vec::new(),
            next_after
        })),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let request = prop_oneof![
        command().prop_map(Request::Apply),
        any::<u64>().prop_map(|s| Request::QuerySku(SkuId(s))),
        any::<u64>().prop_map(|r| Request::QueryReservation(ReservationId(r))),
        cart().prop_map(|cart| Request::ReserveCart(Box::new(cart))),
        any::<u64>().prop_map(|r| Request::QueryCart(ReservationId(r))),
    ];
    prop_oneof![
        (proptest::option::of(".{0,40}"), ".{0,20}")
            .prop_map(|(token, client_name)| Message::Hello { token, client_name }),
        (
            prop_oneof![Just(Role::Service), Just(Role::Admin), Just(Role::Consumer)],
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(role, frame_bytes_max, in_flight_max)| Message::Welcome {
                role,
                frame_bytes_max,
                in_flight_max
            }),
        proptest::collection::vec(request, 0..64).prop_map(Message::Requests),
        proptest::collection::vec(reply(), 0..64).prop_map(Message::Replies),
        (".{0,60}", proptest::collection::vec(any::<u8>(), 0..4)).prop_map(
            |(detail, supported_versions)| {
                Message::Error(ConnectionError {
                    code: ErrorCode::MalformedFrame,
                    detail,
                    supported_versions,
                })
            }
        ),
        stream_message(),
    ]
}

fn encode_all(frames: &[(u64, Message)]) -> Vec<u8> {
    let mut encoder = FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT);
    let mut bytes = Vec::new();
    for (correlation, message) in frames {
        encoder.encode(*correlation, message, &mut bytes).unwrap();
    }
    bytes
}

/// Pushes `bytes` in chunks of the given sizes, decoding after each push.
fn decode_chunked(bytes: &[u8], chunks: &[usize]) -> Result<Vec<Frame>, FrameError> {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
    let mut frames = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while at < bytes.len() {
        let size = sizes.next().unwrap_or(bytes.len()).clamp(1, bytes.len() - at);
        decoder.push(&bytes[at..at + size]);
        at += size;
        while let Decoded::Frame(frame) = decoder.decode()? {
            frames.push(frame);
        }
    }
    assert_eq!(decoder.buffered_bytes(), 0, "every byte belongs to a frame");
    Ok(frames)
}

proptest! {
    #[test]
    fn every_message_round_trips_through_any_split_of_the_stream(
        messages in proptest::collection::vec((any::<u64>(), message()), 1..8),
        chunks in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let bytes = encode_all(&messages);
        let frames = decode_chunked(&bytes, &chunks).unwrap();
        let decoded: Vec<(u64, Message)> =
            frames.into_iter().map(|f| (f.correlation, f.message)).collect();
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_buffer_more_than_a_frame(
        garbage in proptest::collection::vec(any::<u8>(), 0..4_096),
        valid_header in any::<bool>(),
        announced in any::<u32>(),
        chunk in 1usize..512,
    ) {
        let limit = 64 * 1024;
        let mut decoder = FrameDecoder::new(limit);
        let mut bytes = Vec::new();
        if valid_header {
            // A well-formed header announcing any length, followed by garbage.
            bytes.extend_from_slice(b"FSTK");
            bytes.extend_from_slice(&[1, 0, 0, 0]);
            bytes.extend_from_slice(&announced.to_le_bytes());
            bytes.extend_from_slice(&7u64.to_le_bytes());
        }
        bytes.extend_from_slice(&garbage);
        for piece in bytes.chunks(chunk) {
            decoder.push(piece);
            loop {
                match decoder.decode() {
                    Ok(Decoded::Frame(_)) => continue,
                    Ok(Decoded::NeedMore { .. }) => break,
                    Err(err) if !err.is_fatal() => continue,
                    Err(_) => break,
                }
            }
            prop_assert!(decoder.buffered_bytes() <= HEADER_BYTES + limit as usize + chunk);
        }
    }
}

fn decode_one(bytes: &[u8]) -> Result<Decoded, FrameError> {
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
    decoder.push(bytes);
    decoder.decode()
}

#[test]
fn partial_input_says_how_much_more_it_needs() {
    let bytes = encode_all(&[(9, Message::Requests(vec![Request::QuerySku(SkuId(3))]))]);
    assert_eq!(decode_one(&bytes[..5]).unwrap(), Decoded::NeedMore { bytes: HEADER_BYTES - 5 });
    let missing = 3;
    assert_eq!(
        decode_one(&bytes[..bytes.len() - missing]).unwrap(),
        Decoded::NeedMore { bytes: missing }
    );
}

#[test]
fn bad_input_gets_typed_errors() {
    let good = encode_all(&[(1, Message::Requests(vec![Request::QuerySku(SkuId(3))]))]);

    let mut garbage = good.clone();
    garbage[..4].copy_from_slice(b"GET ");
    assert!(matches!(decode_one(&garbage), Err(FrameError::BadMagic { .. })));

    let mut future = good.clone();
    let found = PROTOCOL_VERSION + 1;
    future[4] = found;
    let err = decode_one(&future).unwrap_err();
    assert_eq!(err, FrameError::UnsupportedVersion { found, supported: SUPPORTED_VERSIONS });
    let supported = format!("supported: [{PROTOCOL_VERSION}]");
    assert!(err.to_string().contains(&supported), "{err}");

    // An oversized length is refused from the header alone, before any payload arrives.
    let mut huge = good[..HEADER_BYTES].to_vec();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = decode_one(&huge).unwrap_err();
    assert!(matches!(err, FrameError::FrameTooLarge { bytes, .. } if bytes == u64::from(u32::MAX)));
    assert!(err.is_fatal());

    let mut reserved = good.clone();
    reserved[6] = 1;
    assert_eq!(decode_one(&reserved).unwrap_err(), FrameError::ReservedBitsSet);
}

#[test]
fn a_payload_failing_validation_is_reported_and_the_stream_stays_in_step() {
    let mut bytes = encode_all(&[(5, Message::Requests(vec![Request::QuerySku(SkuId(3))]))]);
    let payload_end = bytes.len();
    for byte in &mut bytes[HEADER_BYTES..payload_end] {
        *byte = 0xff;
    }
    let next = encode_all(&[(6, Message::Hello { token: None, client_name: "ok".into() })]);
    bytes.extend_from_slice(&next);
    let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
    decoder.push(&bytes);
    let err = decoder.decode().unwrap_err();
    assert!(matches!(err, FrameError::InvalidPayload { correlation: 5, .. }), "{err}");
    assert!(!err.is_fatal());
    let Decoded::Frame(frame) = decoder.decode().unwrap() else { panic!("the next frame") };
    assert_eq!(frame.correlation, 6);
}

#[test]
fn the_encoder_refuses_a_frame_above_the_peers_limit() {
    let big = Message::Requests(vec![Request::QuerySku(SkuId(1)); 10_000]);
    let mut encoder = FrameEncoder::new(64 * 1024);
    let mut out = Vec::new();
    let err = encoder.encode(1, &big, &mut out).unwrap_err();
    assert!(matches!(err, FrameError::FrameTooLarge { limit: 65_536, .. }), "{err}");
    assert!(out.is_empty(), "nothing is appended");
}
