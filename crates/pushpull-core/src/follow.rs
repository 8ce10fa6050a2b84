//! Where a reader stands, and whether a delivery continues from there: what every client that
//! resumes a subscription from its cursor (after a reconnect, a pause, a retried webhook) uses
//! to drop repeats and to notice a delivery that skips ahead.

use crate::cursor::{Cursor, Offset};
use crate::message::{Delivery, GapReason};

/// How a delivery relates to the position a reader has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// It comes next: hand it over, and [`Position::advance`].
    Next,
    /// It was handed over already: drop it.
    Repeat,
    /// It skips ahead of the position (deliveries in between were lost on the way), or belongs
    /// to another epoch without the gap that says so: drop it and read again from the position.
    Skip,
}

/// The position after the last delivery handed to the application.
///
/// ```
/// use pushpull_core::{Continuity, Cursor, Delivery, Epoch, Offset, Position, Publication, Topic};
/// let epoch = Epoch::from_u64(7);
/// let mut position = Position::new(Cursor::After(epoch, Offset(1)));
/// let message = |n| Delivery::Message(
///     Publication::new("x").into_message(Topic::new("t").unwrap(), epoch, Offset(n)),
/// );
/// assert_eq!(position.check(&message(1)), Continuity::Repeat);
/// assert_eq!(position.check(&message(3)), Continuity::Skip);
/// assert_eq!(position.check(&message(2)), Continuity::Next);
/// position.advance(&message(2));
/// assert_eq!(position.cursor(), Cursor::After(epoch, Offset(2)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    cursor: Cursor,
}

impl Position {
    /// A reader at `cursor`. At `Beginning` or `Latest` (not yet resolved to an offset) any
    /// delivery comes next.
    pub fn new(cursor: Cursor) -> Self {
        Self { cursor }
    }

    /// Where to resume from.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Moves to `cursor` without a delivery: a server resolved `Beginning` or `Latest`, or
    /// said where a fresh stream starts.
    pub fn reset(&mut self, cursor: Cursor) {
        self.cursor = cursor;
    }

    /// Whether `delivery` comes next, repeats, or skips ahead.
    pub fn check(&self, delivery: &Delivery) -> Continuity {
        let Cursor::After(epoch, Offset(offset)) = self.cursor else {
            return Continuity::Next;
        };
        let Cursor::After(to_epoch, Offset(to)) = delivery.cursor() else {
            return Continuity::Skip;
        };
        if to_epoch == epoch && to <= offset {
            return Continuity::Repeat;
        }
        let continues = match delivery {
            Delivery::Message(message) => message.epoch == epoch && message.offset.0 == offset + 1,
            Delivery::Gap(gap) => match gap.reason {
                GapReason::Retention => {
                    to_epoch == epoch && gap.missed.is_some_and(|m| m.first.0 == offset + 1)
                }
                GapReason::EpochChanged { previous } => previous == epoch,
            },
        };
        if continues { Continuity::Next } else { Continuity::Skip }
    }

    /// Records that `delivery` was handed over.
    pub fn advance(&mut self, delivery: &Delivery) {
        self.cursor = delivery.cursor();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Epoch;
    use crate::message::{Gap, OffsetRange, Publication};
    use crate::topic::Topic;

    fn message(epoch: Epoch, offset: u64) -> Delivery {
        Delivery::Message(Publication::new("m").into_message(
            Topic::new("t").unwrap(),
            epoch,
            Offset(offset),
        ))
    }

    fn gap(reason: GapReason, missed: Option<(u64, u64)>, cursor: Cursor) -> Delivery {
        Delivery::Gap(Gap {
            topic: Topic::new("t").unwrap(),
            reason,
            missed: missed.map(|(f, l)| OffsetRange { first: Offset(f), last: Offset(l) }),
            cursor,
        })
    }

    fn epoch_a() -> Epoch {
        Epoch::from_u64(1)
    }
    fn epoch_b() -> Epoch {
        Epoch::from_u64(2)
    }

    #[test]
    fn messages_follow_one_another() {
        let (a, b) = (epoch_a(), epoch_b());
        let at = Position::new(Cursor::After(a, Offset(5)));
        assert_eq!(at.check(&message(a, 6)), Continuity::Next);
        assert_eq!(at.check(&message(a, 5)), Continuity::Repeat);
        assert_eq!(at.check(&message(a, 1)), Continuity::Repeat);
        assert_eq!(at.check(&message(a, 7)), Continuity::Skip);
        assert_eq!(at.check(&message(b, 1)), Continuity::Skip, "an epoch change needs its gap");
    }

    #[test]
    fn gaps_continue_or_repeat() {
        let (a, b) = (epoch_a(), epoch_b());
        let at = Position::new(Cursor::After(a, Offset(5)));
        let retention = |f, l| gap(GapReason::Retention, Some((f, l)), Cursor::After(a, Offset(l)));
        assert_eq!(at.check(&retention(6, 9)), Continuity::Next);
        assert_eq!(at.check(&retention(8, 9)), Continuity::Skip);
        assert_eq!(at.check(&retention(2, 4)), Continuity::Repeat);
        let changed =
            |previous| gap(GapReason::EpochChanged { previous }, None, Cursor::After(b, Offset(0)));
        assert_eq!(at.check(&changed(a)), Continuity::Next);
        assert_eq!(at.check(&changed(b)), Continuity::Skip);
        let after = Position::new(Cursor::After(b, Offset(0)));
        assert_eq!(after.check(&changed(a)), Continuity::Repeat);
        assert_eq!(after.check(&message(b, 1)), Continuity::Next);
    }

    #[test]
    fn an_unresolved_start_takes_anything() {
        let a = epoch_a();
        for cursor in [Cursor::Beginning, Cursor::Latest] {
            assert_eq!(Position::new(cursor).check(&message(a, 9)), Continuity::Next);
        }
    }
}
