//! A queue's ready messages: one FIFO per priority level, as RabbitMQ's priority queues
//! (`x-max-priority`) keep them; a queue without priorities has the one level. The next
//! message out is the oldest of the highest level that holds any; a message's priority
//! above the queue's maximum counts as the maximum, no priority as 0.

use std::collections::VecDeque;
use std::time::Instant;

use super::queue::QueuedMessage;

#[derive(Debug)]
pub struct Ready {
    /// Index = priority; never empty.
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
}

impl Ready {
    /// Levels 0 to `max_priority` (just 0 without one).
    pub fn new(max_priority: Option<u8>) -> Self {
        let levels = usize::from(max_priority.unwrap_or(0)) + 1;
        Ready {
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            len: 0,
        }
    }

    fn level(&self, m: &QueuedMessage) -> usize {
        let priority = usize::from(m.message.properties().priority().unwrap_or(0));
        priority.min(self.levels.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `m` behind the messages of its level.
    pub fn push_back(&mut self, m: QueuedMessage) {
        let level = self.level(&m);
        self.levels[level].push_back(m);
        self.len += 1;
    }

    /// Puts `m` back among its level's messages in `seq` order: where it was before it
    /// left.
    pub fn insert_in_place(&mut self, m: QueuedMessage) {
        let level = self.level(&m);
        let level = &mut self.levels[level];
        let at = level.partition_point(|other| other.seq < m.seq);
        level.insert(at, m);
        self.len += 1;
    }

    /// Puts `m` at `index` among its level's messages (at the end if there are fewer).
    pub fn insert_at(&mut self, index: usize, m: QueuedMessage) {
        let level = self.level(&m);
        let level = &mut self.levels[level];
        level.insert(index.min(level.len()), m);
        self.len += 1;
    }

    /// Takes the next message out.
    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        let m = self.levels.iter_mut().rev().find_map(VecDeque::pop_front)?;
        self.len -= 1;
        Some(m)
    }

    /// Takes out each level's expired head messages, highest level first: as in
    /// RabbitMQ, an expired message behind an unexpired one of its level waits its turn.
    pub fn pop_expired(&mut self, now: Instant) -> Vec<QueuedMessage> {
        let mut expired = Vec::new();
        for level in self.levels.iter_mut().rev() {
            while level.front().is_some_and(|m| m.expired(now)) {
                expired.extend(level.pop_front());
            }
        }
        self.len -= expired.len();
        expired
    }

    /// The journal's message `stored`, if it is the last of its level: the one just
    /// added back while recovering.
    pub fn last_added_mut(&mut self, stored: u64) -> Option<&mut QueuedMessage> {
        self.levels
            .iter_mut()
            .filter_map(VecDeque::back_mut)
            .find(|m| m.stored == Some(stored))
    }

    pub fn iter(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.levels.iter().rev().flatten()
    }

    pub fn clear(&mut self) {
        self.levels.iter_mut().for_each(VecDeque::clear);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use amq_protocol::protocol::basic::AMQPProperties;

    use super::*;
    use crate::amqp::queue::Message;

    fn m(seq: u64, priority: Option<u8>, expires_at: Option<Instant>) -> QueuedMessage {
        let mut properties = AMQPProperties::default();
        if let Some(p) = priority {
            properties = properties.with_priority(p);
        }
        QueuedMessage {
            seq,
            message: Arc::new(Message::new("".into(), "q".into(), properties, "b".into())),
            redelivered: false,
            returned: 0,
            expires_at,
            stored: Some(seq),
        }
    }

    fn seqs(ready: &Ready) -> Vec<u64> {
        ready.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn highest_priority_first_and_requeued_messages_return_to_their_level() {
        let mut ready = Ready::new(Some(2));
        for (seq, p) in [(1, None), (2, Some(2)), (3, Some(7)), (4, Some(1))] {
            ready.push_back(m(seq, p, None));
        }
        assert_eq!(seqs(&ready), [2, 3, 4, 1], "7 counts as the maximum, 2");
        let (first, second) = (ready.pop_front().expect("2"), ready.pop_front().expect("3"));
        ready.insert_in_place(second);
        ready.insert_in_place(first);
        assert_eq!(seqs(&ready), [2, 3, 4, 1]);
        assert_eq!(ready.len(), 4);
        assert!(ready.last_added_mut(1).is_some() && ready.last_added_mut(2).is_none());
    }

    #[test]
    fn each_level_expires_from_its_head() {
        let now = Instant::now();
        let past = Some(now - Duration::from_millis(1));
        let mut ready = Ready::new(Some(1));
        ready.push_back(m(1, Some(1), None));
        ready.push_back(m(2, Some(1), past));
        ready.push_back(m(3, None, past));
        ready.push_back(m(4, None, None));
        let expired: Vec<u64> = ready.pop_expired(now).iter().map(|m| m.seq).collect();
        assert_eq!(expired, [3], "2 waits behind 1, which has no expiry");
        assert_eq!((seqs(&ready), ready.len()), (vec![1, 2, 4], 3));
        let single = Ready::new(None);
        assert!(single.is_empty());
    }
}
