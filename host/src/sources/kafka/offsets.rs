//! Which offsets a host may commit: per partition, the lowest one not yet
//! settled, tracked across rebalances.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::client::Logger;

/// Per partition, which delivered offsets are not settled yet, and so how
/// far the group's offset may be committed.
#[derive(Default)]
pub struct Tracker {
    partitions: Mutex<HashMap<(String, i32), PartitionState>>,
    /// Bumped on every assignment, so a settlement of a record read before a
    /// rebalance does not touch the state of the partition's new assignment.
    generation: AtomicUsize,
}

struct PartitionState {
    generation: usize,
    /// Delivered, not yet settled.
    unsettled: BTreeSet<i64>,
    /// One past the highest offset delivered; `None` before the first.
    next: Option<i64>,
    /// The last offset committed by this host.
    committed: Option<i64>,
}

impl PartitionState {
    /// The offset the group may commit: below it, every record is settled.
    fn position(&self) -> Option<i64> {
        self.unsettled.first().copied().or(self.next)
    }
}

impl Tracker {
    pub fn assign(&self, tpl: &TopicPartitionList) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut partitions) = self.partitions.lock() {
            for e in tpl.elements() {
                partitions.insert(
                    (e.topic().to_string(), e.partition()),
                    PartitionState { generation, unsettled: BTreeSet::new(), next: None, committed: None },
                );
            }
        }
    }

    /// Forget revoked partitions; returns what was settled and not committed.
    pub fn revoke(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let mut commit = TopicPartitionList::new();
        if let Ok(mut partitions) = self.partitions.lock() {
            for e in tpl.elements() {
                if let Some(state) = partitions.remove(&(e.topic().to_string(), e.partition()))
                    && let Some(position) = state.position()
                    && Some(position) != state.committed
                {
                    let _ = commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(position));
                }
            }
        }
        commit
    }

    /// Record a delivery; returns the generation it belongs to.
    pub fn delivered(&self, topic: &str, partition: i32, offset: i64) -> usize {
        let Ok(mut partitions) = self.partitions.lock() else { return 0 };
        let generation = self.generation.load(Ordering::SeqCst);
        let state = partitions.entry((topic.to_string(), partition)).or_insert_with(|| PartitionState {
            generation,
            unsettled: BTreeSet::new(),
            next: None,
            committed: None,
        });
        state.unsettled.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        state.generation
    }

    pub fn settled(&self, topic: &str, partition: i32, offset: i64, generation: usize) {
        if let Ok(mut partitions) = self.partitions.lock()
            && let Some(state) = partitions.get_mut(&(topic.to_string(), partition))
            && state.generation == generation
        {
            state.unsettled.remove(&offset);
        }
    }

    /// Positions that moved since they were last committed.
    pub fn due(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        if let Ok(partitions) = self.partitions.lock() {
            for ((topic, partition), state) in partitions.iter() {
                if let Some(position) = state.position()
                    && Some(position) != state.committed
                {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(position));
                }
            }
        }
        tpl
    }

    /// Whether `offset` is behind the partition's committed position, or the
    /// partition has moved on to another assignment (nothing left to wait for).
    pub fn is_committed(&self, topic: &str, partition: i32, offset: i64, generation: usize) -> bool {
        let Ok(partitions) = self.partitions.lock() else { return true };
        match partitions.get(&(topic.to_string(), partition)) {
            Some(state) if state.generation == generation => state.committed.is_some_and(|c| c > offset),
            _ => true,
        }
    }

    pub fn committed(&self, tpl: &TopicPartitionList) {
        if let Ok(mut partitions) = self.partitions.lock() {
            for e in tpl.elements() {
                if let (Some(state), Offset::Offset(position)) =
                    (partitions.get_mut(&(e.topic().to_string(), e.partition())), e.offset())
                {
                    state.committed = Some(state.committed.map_or(position, |c| c.max(position)));
                }
            }
        }
    }
}

/// The consumer's context: logging, and offset bookkeeping on rebalances.
pub struct GroupContext {
    /// Logs what librdkafka reports.
    pub logger: Logger,
    /// The offsets of the partitions assigned here.
    pub tracker: Arc<Tracker>,
    /// Set once the first assignment arrived: the source is consuming.
    pub assigned: AtomicBool,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logger.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logger.error(error, reason);
    }
}

fn partition_names(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (source, address) = (&self.logger.source, &self.logger.address);
        if let Rebalance::Revoke(tpl) = rebalance {
            // What is settled is committed before another host takes over;
            // what is still in flight here will be delivered there again.
            let commit = self.tracker.revoke(tpl);
            if commit.count() > 0
                && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
            {
                tracing::warn!(%source, %address, error = %e, "Kafka: cannot commit the offsets of revoked partitions");
            }
            tracing::info!(%source, %address, partitions = ?partition_names(tpl), "Kafka partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (source, address) = (&self.logger.source, &self.logger.address);
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.tracker.assign(tpl);
                if tpl.count() > 0 {
                    self.assigned.store(true, Ordering::SeqCst);
                    tracing::info!(%source, %address, partitions = ?partition_names(tpl), "consuming Kafka partitions");
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(%source, %address, error = %e, "Kafka: rebalance failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker_with(partitions: &[(&str, i32)]) -> Tracker {
        let tracker = Tracker::default();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        tracker.assign(&tpl);
        tracker
    }

    fn due(tracker: &Tracker) -> Vec<(String, i32, i64)> {
        let mut v: Vec<_> = tracker
            .due()
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commits_only_below_the_lowest_unsettled_offset() {
        let tracker = tracker_with(&[("t", 0)]);
        let g = (10..15).map(|o| tracker.delivered("t", 0, o)).collect::<Vec<_>>();
        assert!(due(&tracker).iter().all(|(_, _, o)| *o == 10), "nothing settled yet: commit stays at 10");
        // Settled out of order: 11, 12 and 14 are done, 10 and 13 are not.
        for o in [11, 12, 14] {
            tracker.settled("t", 0, o, g[0]);
        }
        assert_eq!(due(&tracker), [("t".to_string(), 0, 10)]);
        tracker.settled("t", 0, 10, g[0]);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 13)], "10 to 12 settled; 13 is not");
        tracker.committed(&tracker.due());
        assert!(due(&tracker).is_empty(), "nothing new to commit");
        tracker.settled("t", 0, 13, g[0]);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 15)], "everything settled: commit past the last");
    }

    #[test]
    fn a_settlement_from_before_a_rebalance_does_not_touch_the_new_assignment() {
        let tracker = tracker_with(&[("t", 0)]);
        let old = tracker.delivered("t", 0, 5);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        let revoked = tracker.revoke(&tpl);
        assert_eq!(revoked.count(), 1, "the position at revocation is committed");
        tracker.assign(&tpl);
        let new = tracker.delivered("t", 0, 5);
        tracker.settled("t", 0, 5, old);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 5)], "the stale settlement must not settle the redelivery");
        tracker.settled("t", 0, 5, new);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 6)]);
    }

    #[test]
    fn partitions_are_tracked_apart() {
        let tracker = tracker_with(&[("t", 0), ("t", 1)]);
        let g = tracker.delivered("t", 0, 0);
        tracker.delivered("t", 1, 0);
        tracker.settled("t", 0, 0, g);
        assert_eq!(due(&tracker), [("t".to_string(), 0, 1), ("t".to_string(), 1, 0)]);
    }
}
