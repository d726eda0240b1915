//! Every rule of a connection's life, and every bad input, against the sans-IO sessions: no
//! sockets, time as an argument.

use std::sync::Arc;

use flashstock_engine::SkuId;
use flashstock_protocol::session::{
    check_ack, ClientEvent, ClientSession, Close, Grant, ServerEvent, ServerLimits, ServerSession,
};
use flashstock_protocol::tokens::TokenEntry;
use flashstock_protocol::{
    ConnectionError, ErrorCode, EventBatch, Frame, Message, Reply, Request, Role, StartAt,
    Subscribe, Subscribed, FRAME_BYTES_MAX_DEFAULT, HELLO_BYTES_MAX,
};

const LIMITS: ServerLimits = ServerLimits {
    frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
    in_flight_max: 64,
    hello_timeout_ms: 2_000,
};

fn frame(message: Message) -> Frame {
    Frame { correlation: 7, message }
}

fn hello() -> Message {
    Message::Hello { token: Some("t".into()), client_name: "test".into() }
}

fn requests() -> Message {
    Message::Requests(vec![Request::QuerySku(SkuId(1))])
}

fn subscribe(consumer: &str) -> Message {
    Message::Subscribe(Subscribe {
        consumer: consumer.into(),
        start: StartAt::Acknowledged,
        kinds: Vec::new(),
        window_events: 16,
    })
}

fn grant(role: Role, consumers: &[&str]) -> Grant {
    let entry = TokenEntry {
        token: String::new(),
        role,
        consumers: consumers.iter().map(|c| (*c).to_owned()).collect(),
    };
    Grant { role, consumers: Some(Arc::new(entry)) }
}

/// A session authenticated on stream 0 with `grant`.
fn ready(grant: Grant) -> ServerSession {
    let mut session = ServerSession::new(LIMITS, 1_000);
    assert!(matches!(session.handle_frame(0, frame(hello())), Ok(ServerEvent::Hello { .. })));
    session.authenticated(Some(grant)).unwrap();
    session
}

fn code(result: Result<ServerEvent, Close>) -> ErrorCode {
    result.expect_err("the rules must refuse this").code
}

#[test]
fn nothing_but_a_hello_comes_first() {
    for message in
        [requests(), subscribe("order-writer"), Message::Ack(vec![1]), Message::Replies(vec![])]
    {
        let mut session = ServerSession::new(LIMITS, 0);
        assert_eq!(code(session.handle_frame(0, frame(message))), ErrorCode::Unauthenticated);
    }
    let mut session = ServerSession::new(LIMITS, 0);
    assert_eq!(session.frame_bytes_max(), HELLO_BYTES_MAX, "a Hello is small");
    assert!(session.handle_frame(0, frame(hello())).is_ok());
    // Nothing, on any stream, while the Hello is being checked.
    assert_eq!(code(session.handle_frame(0, frame(requests()))), ErrorCode::Unauthenticated);
    let mut session = ServerSession::new(LIMITS, 0);
    assert_eq!(code(session.handle_frame(0, frame(requests()))), ErrorCode::Unauthenticated);
}

#[test]
fn the_hello_comes_on_the_first_stream_only() {
    let mut session = ServerSession::new(LIMITS, 0);
    // A frame on stream 0 that is not a Hello already closes; a Hello elsewhere later never
    // gets a chance. Model the first stream being stream 4, then stream 0 speaking.
    assert!(session.handle_frame(4, frame(hello())).is_ok());
    assert_eq!(code(session.handle_frame(0, frame(hello()))), ErrorCode::Unauthenticated);
}

#[test]
fn the_hello_deadline_closes_unless_authenticated() {
    let mut session = ServerSession::new(LIMITS, 1_000);
    assert_eq!(session.timeout_ms(), Some(3_000));
    assert!(session.handle_timeout(2_999).is_ok());
    let close = session.handle_timeout(3_000).unwrap_err();
    assert_eq!(close.code, ErrorCode::Unauthenticated);
    assert!(close.detail.contains("2000 ms"), "{close}");

    let mut session = ready(grant(Role::Service, &[]));
    assert_eq!(session.timeout_ms(), None, "no deadline once authenticated");
    assert!(session.handle_timeout(1_000_000).is_ok());
    assert_eq!(session.frame_bytes_max(), FRAME_BYTES_MAX_DEFAULT);
}

#[test]
fn credentials_decide_and_a_connection_authenticates_once() {
    let mut session = ServerSession::new(LIMITS, 0);
    session.handle_frame(0, frame(hello())).unwrap();
    assert_eq!(session.authenticated(None).unwrap_err().code, ErrorCode::Unauthenticated);

    let mut session = ServerSession::new(LIMITS, 0);
    assert_eq!(
        session.authenticated(Some(grant(Role::Admin, &[]))).unwrap_err().code,
        ErrorCode::UnexpectedMessage,
        "no Hello to check"
    );
    session.handle_frame(0, frame(hello())).unwrap();
    let welcome = session.authenticated(Some(grant(Role::Admin, &[]))).unwrap();
    assert_eq!(
        welcome,
        Message::Welcome {
            role: Role::Admin,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            in_flight_max: 64
        }
    );
    assert_eq!(session.grant().map(|g| g.role), Some(Role::Admin));
    assert_eq!(code(session.handle_frame(0, frame(hello()))), ErrorCode::UnexpectedMessage);
}

#[test]
fn requests_carry_the_callers_role() {
    let mut session = ready(grant(Role::Service, &[]));
    let event = session.handle_frame(0, frame(requests())).unwrap();
    assert_eq!(
        event,
        ServerEvent::Requests {
            correlation: 7,
            batch: vec![Request::QuerySku(SkuId(1))],
            role: Role::Service
        }
    );
    // Another stream may carry requests too.
    assert!(session.handle_frame(4, frame(requests())).is_ok());
}

#[test]
fn only_a_consumer_credential_subscribes_and_only_for_its_names() {
    let mut service = ready(grant(Role::Service, &[]));
    assert_eq!(
        code(service.handle_frame(4, frame(subscribe("order-writer")))),
        ErrorCode::PermissionDenied
    );
    let mut writer = ready(grant(Role::Consumer, &["order-writer"]));
    assert_eq!(
        code(writer.handle_frame(4, frame(subscribe("audit")))),
        ErrorCode::PermissionDenied
    );
    let mut writer = ready(grant(Role::Consumer, &["order-writer"]));
    assert!(matches!(
        writer.handle_frame(4, frame(subscribe("order-writer"))),
        Ok(ServerEvent::Subscribe { correlation: 7, .. })
    ));
    let mut any = ready(grant(Role::Consumer, &["*"]));
    assert!(any.handle_frame(4, frame(subscribe("audit"))).is_ok());
    let certificate = Grant { role: Role::Consumer, consumers: None };
    assert!(ready(certificate).handle_frame(4, frame(subscribe("audit"))).is_ok());
}

#[test]
fn a_subscription_stream_carries_acks_only_and_acks_belong_there() {
    let mut session = ready(grant(Role::Consumer, &["w"]));
    session.handle_frame(4, frame(subscribe("w"))).unwrap();
    assert_eq!(
        session.handle_frame(4, frame(Message::Ack(vec![3]))).unwrap(),
        ServerEvent::Ack { cursor: vec![3] }
    );
    assert_eq!(code(session.handle_frame(4, frame(requests()))), ErrorCode::UnexpectedMessage);
    let mut session = ready(grant(Role::Consumer, &["w"]));
    session.handle_frame(4, frame(subscribe("w"))).unwrap();
    assert_eq!(code(session.handle_frame(4, frame(subscribe("w")))), ErrorCode::UnexpectedMessage);

    let mut session = ready(grant(Role::Consumer, &["w"]));
    assert_eq!(
        code(session.handle_frame(8, frame(Message::Ack(vec![1])))),
        ErrorCode::UnexpectedMessage
    );
    session.handle_frame(8, frame(requests())).unwrap();
    assert_eq!(
        code(session.handle_frame(8, frame(subscribe("w")))),
        ErrorCode::UnexpectedMessage,
        "a requests stream stays one"
    );
    // Once a stream has ended, its id says nothing about a new one.
    let mut session = ready(grant(Role::Consumer, &["w"]));
    session.handle_frame(8, frame(requests())).unwrap();
    session.stream_ended(8);
    assert!(session.handle_frame(8, frame(subscribe("w"))).is_ok());
}

#[test]
fn a_client_never_sends_what_a_server_sends() {
    let welcome = Message::Welcome { role: Role::Admin, frame_bytes_max: 1, in_flight_max: 1 };
    let error = Message::Error(ConnectionError {
        code: ErrorCode::MalformedFrame,
        detail: String::new(),
        supported_versions: vec![],
    });
    let subscribed = Message::Subscribed(Subscribed { cursor: vec![], window_events: 1 });
    let events = Message::Events(EventBatch { shard: 0, events: vec![], end_seq: 0 });
    for message in [welcome, error, subscribed, events, Message::Replies(vec![])] {
        let mut session = ready(grant(Role::Admin, &[]));
        assert_eq!(code(session.handle_frame(0, frame(message))), ErrorCode::UnexpectedMessage);
    }
}

#[test]
fn acks_fit_what_was_delivered() {
    assert!(check_ack(&[3, 4], &[1, 1], &[5, 4]).is_ok());
    for (ack, why) in
        [(&[3][..], "one per shard"), (&[0, 4][..], "moves back"), (&[3, 5][..], "passes")]
    {
        let close = check_ack(ack, &[1, 1], &[5, 4]).unwrap_err();
        assert_eq!(close.code, ErrorCode::InvalidAck);
        assert!(close.detail.contains(why), "{close}");
    }
}

#[test]
fn a_client_takes_a_welcome_first_and_then_only_what_its_role_gets() {
    let mut client = ClientSession::new();
    assert!(matches!(client.hello(Some("t"), "me"), Message::Hello { token: Some(_), .. }));
    let replies = || frame(Message::Replies(vec![Reply::Sku(None)]));
    assert_eq!(client.handle_frame(replies()).unwrap_err().code, ErrorCode::UnexpectedMessage);
    let refused = ConnectionError {
        code: ErrorCode::Unauthenticated,
        detail: "no".into(),
        supported_versions: vec![],
    };
    assert_eq!(
        client.handle_frame(frame(Message::Error(refused.clone()))).unwrap(),
        ClientEvent::Refused(refused)
    );
    let welcome = Message::Welcome { role: Role::Service, frame_bytes_max: 9, in_flight_max: 3 };
    assert_eq!(
        client.handle_frame(frame(welcome.clone())).unwrap(),
        ClientEvent::Welcome { role: Role::Service, frame_bytes_max: 9, in_flight_max: 3 }
    );
    assert_eq!(client.role(), Some(Role::Service));
    assert_eq!(
        client.handle_frame(replies()).unwrap(),
        ClientEvent::Replies { correlation: 7, replies: vec![Reply::Sku(None)] }
    );
    assert_eq!(client.handle_frame(frame(welcome)).unwrap_err().code, ErrorCode::UnexpectedMessage);
    let events = Message::Events(EventBatch { shard: 0, events: vec![], end_seq: 0 });
    assert_eq!(
        client.handle_frame(frame(events.clone())).unwrap_err().code,
        ErrorCode::UnexpectedMessage,
        "a service gets no events"
    );
    assert_eq!(client.handle_frame(frame(hello())).unwrap_err().code, ErrorCode::UnexpectedMessage);

    let mut consumer = ClientSession::new();
    consumer
        .handle_frame(frame(Message::Welcome {
            role: Role::Consumer,
            frame_bytes_max: 9,
            in_flight_max: 3,
        }))
        .unwrap();
    assert!(matches!(consumer.handle_frame(frame(events)), Ok(ClientEvent::Events(_))));
}

#[test]
fn admin_operations_go_to_the_driver_with_the_callers_role() {
    use flashstock_protocol::AdminRequest;
    let mut session = ready(grant(Role::Service, &[]));
    let event =
        session.handle_frame(0, frame(Message::Admin(AdminRequest::ListConsumers))).unwrap();
    assert_eq!(
        event,
        ServerEvent::Admin {
            correlation: 7,
            request: AdminRequest::ListConsumers,
            role: Role::Service
        }
    );
    let mut session = ready(grant(Role::Consumer, &["w"]));
    session.handle_frame(4, frame(subscribe("w"))).unwrap();
    let on_subscription =
        session.handle_frame(4, frame(Message::Admin(AdminRequest::ListConsumers)));
    assert_eq!(code(on_subscription), ErrorCode::UnexpectedMessage);
    let mut fresh = ServerSession::new(LIMITS, 0);
    let before_hello = fresh.handle_frame(0, frame(Message::Admin(AdminRequest::ListConsumers)));
    assert_eq!(code(before_hello), ErrorCode::Unauthenticated);
}
