//! Fencing of what an owner writes besides acks: a dead letter and a key's next sequence
//! number are written only while the partition's lease is this instance's, checked when
//! the write runs (not when it was queued), and a sequence number only moves forward. A
//! dead-letter move leaves nothing of the event pending.

use std::sync::Arc;

use crate::support::{AckOp, Acker, Barrier, Failure, Health, RedisServer};
use tokio::sync::{mpsc, oneshot, Semaphore};

const PARTITION: &str = "evr:{order.0}";
const LEASE: &str = "evr:{order.0}:lease";
const STATE: &str = "evr:{order.0}:seq:fulfillment:ord_1";
const DLQ: &str = "evr:{order.0}:dlq:fulfillment";

/// An acker of group `fulfillment` for consumer `me`, and a way to wait for its writes.
struct Writes {
    tx: mpsc::Sender<AckOp>,
}

impl Writes {
    async fn start(redis: &RedisServer) -> Self {
        let client = redis::Client::open(redis.url()).expect("client");
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .expect("connection");
        let (tx, rx) = mpsc::channel(64);
        let acker = Acker::new(
            conn,
            "fulfillment".into(),
            "me".into(),
            rx,
            Arc::new(Semaphore::new(0)),
            Health::default().part("acker"),
        );
        tokio::spawn(acker.run());
        Self { tx }
    }

    /// Queues `ops`, then waits until the acker has written them.
    async fn write(&self, ops: Vec<AckOp>) {
        for op in ops {
            self.tx.send(op).await.expect("acker running");
        }
        let (done, written) = oneshot::channel();
        let barrier = Barrier(Box::new(move || {
            let _ = done.send(());
        }));
        self.tx.send(AckOp::Barrier(barrier)).await.expect("acker");
        written.await.expect("barrier run");
    }
}

fn advance(next: u64) -> AckOp {
    AckOp::Advance {
        partition: Arc::from(PARTITION),
        key: STATE.into(),
        next,
    }
}

fn dead_letter(id: &str) -> AckOp {
    AckOp::DeadLetter {
        partition: Arc::from(PARTITION),
        id: id.into(),
        raw: bytes::Bytes::from_static(b"envelope"),
        failure: Failure {
            reason: "max_attempts_exceeded".into(),
            last_status: Some(503),
            last_error: None,
            attempts: 3,
            first_attempt_ms: 1,
            last_attempt_ms: 2,
        },
    }
}

fn pending_ids(conn: &mut redis::Connection) -> Vec<String> {
    let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(PARTITION)
        .arg("fulfillment")
        .arg("-")
        .arg("+")
        .arg(100)
        .query(conn)
        .expect("xpending");
    reply.ids.into_iter().map(|p| p.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_sequence_state_need_the_lease_when_written() {
    let _light = crate::support::light().await;
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let id: String = redis::cmd("XADD")
        .arg(PARTITION)
        .arg("*")
        .arg("e")
        .arg("x")
        .query(&mut conn)
        .expect("xadd");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(PARTITION)
        .arg("fulfillment")
        .arg("0")
        .query(&mut conn)
        .expect("group");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("fulfillment")
        .arg("me")
        .arg("STREAMS")
        .arg(PARTITION)
        .arg(">")
        .query(&mut conn)
        .expect("read");
    let writes = Writes::start(&redis).await;

    // The lease moved to another instance after these were queued: both are refused.
    let _: () = redis::cmd("SET")
        .arg(LEASE)
        .arg("other")
        .query(&mut conn)
        .expect("set");
    writes.write(vec![advance(7), dead_letter(&id)]).await;
    let state: Option<u64> = redis::cmd("GET").arg(STATE).query(&mut conn).expect("get");
    assert_eq!(state, None, "sequence state written without the lease");
    let dead: usize = redis::cmd("XLEN").arg(DLQ).query(&mut conn).expect("xlen");
    assert_eq!(dead, 0, "dead letter written without the lease");
    assert_eq!(
        pending_ids(&mut conn),
        vec![id.clone()],
        "still pending for the owner"
    );

    // Held again: the number moves forward only, and the move leaves nothing pending.
    let _: () = redis::cmd("SET")
        .arg(LEASE)
        .arg("me")
        .query(&mut conn)
        .expect("set");
    writes.write(vec![advance(7)]).await;
    writes.write(vec![advance(3)]).await;
    let state: Option<u64> = redis::cmd("GET").arg(STATE).query(&mut conn).expect("get");
    assert_eq!(state, Some(7), "a late, lower number moved the state back");
    writes.write(vec![dead_letter(&id)]).await;
    let dead: usize = redis::cmd("XLEN").arg(DLQ).query(&mut conn).expect("xlen");
    assert_eq!(dead, 1);
    assert!(
        pending_ids(&mut conn).is_empty(),
        "the moved event is still pending"
    );
}
