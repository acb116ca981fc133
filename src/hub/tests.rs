//! The hub's unit tests: fan-out, lagging, the delivery count.

use super::*;
use crate::event::Frame;

fn batch(seqs: std::ops::RangeInclusive<u64>, last: bool) -> Batch {
    Batch { frames: seqs.map(|seq| Frame { seq, json: "x".repeat(10).into() }).collect(), last }
}

#[tokio::test]
async fn early_subscriber_gets_everything_then_closed() {
    let hub = Hub::default();
    let id = RunId::parse("a").unwrap();
    let (snap, sub) = hub.subscribe(&id);
    assert_eq!(snap, Snapshot { last_seq: 0, phase: Phase::Pending });
    let mut sub = sub.unwrap();
    let publ = hub.open(&id, 0);
    publ.publish(batch(1..=3, false));
    publ.publish(batch(4..=4, true));
    let Recv::Batches(b) = sub.recv().await else { panic!("expected batches") };
    let seqs: Vec<u64> = b.iter().flat_map(|b| b.frames.iter().map(|f| f.seq)).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert!(matches!(sub.recv().await, Recv::Closed));
    let (snap, none) = hub.subscribe(&id);
    assert_eq!(snap, Snapshot { last_seq: 4, phase: Phase::Closed });
    assert!(none.is_none());
}

#[tokio::test]
async fn full_queue_lags_only_that_subscriber() {
    let hub = Hub::new(QueueLimits { max_bytes: 25, max_batches: 100 });
    let id = RunId::parse("b").unwrap();
    let publ = hub.open(&id, 0);
    let (_, slow) = hub.subscribe(&id);
    let mut slow = slow.unwrap();
    let (_, fast) = hub.subscribe(&id);
    let mut fast = fast.unwrap();
    publ.publish(batch(1..=2, false));
    let Recv::Batches(_) = fast.recv().await else { panic!() };
    publ.publish(batch(3..=4, false)); // slow now holds 40 bytes > 25
    let Recv::Batches(b) = fast.recv().await else { panic!() };
    assert_eq!(b[0].frames[0].seq, 3);
    let Recv::Batches(b) = slow.recv().await else { panic!() };
    assert_eq!(b.len(), 1, "slow keeps what fit");
    assert!(matches!(slow.recv().await, Recv::Lagged));
    assert_eq!(hub.stats().lagged.load(Ordering::Relaxed), 1);
}

#[test]
fn pending_topic_is_forgotten_when_its_last_subscriber_leaves() {
    let hub = Hub::default();
    let id = RunId::parse("c").unwrap();
    let (_, sub) = hub.subscribe(&id);
    assert!(hub.snapshot(&id).is_some());
    drop(sub);
    assert!(hub.snapshot(&id).is_none());
}
