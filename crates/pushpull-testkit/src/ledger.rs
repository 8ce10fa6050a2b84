//! A reader's view of a log, checked as it goes: for tests where Redis fails over or moves
//! under live readers, and nothing may be lost silently.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use pushpull_core::{Cursor, Delivery, Epoch, GapReason, Subscription};
use tokio::sync::Mutex;

/// What a reader has, kept as the log says it should be: every message follows the one before
/// it (same epoch, next offset), and a gap is the only way an epoch changes; a gap's cursor
/// drops what the reader had past it (messages the log lost, which it reads again as they
/// are now).
#[derive(Debug, Default)]
pub struct Ledger {
    /// The epoch of the messages it has.
    pub epoch: Option<Epoch>,
    /// Each message's offset and payload, from offset 1 on, consecutive.
    pub messages: Vec<(u64, Bytes)>,
    /// How many gaps (epoch changes) it was told of.
    pub gaps: usize,
}

impl Ledger {
    /// Takes in one delivery; an error says how it broke the log's order.
    pub fn apply(&mut self, delivery: Delivery) -> Result<(), String> {
        match delivery {
            Delivery::Message(message) => {
                let expected = self.messages.last().map_or(1, |(offset, _)| offset + 1);
                if message.offset.0 != expected || self.epoch.is_some_and(|e| e != message.epoch) {
                    return Err(format!(
                        "a silent hole: expected offset {expected} of {:?}, got {} of {}",
                        self.epoch, message.offset, message.epoch
                    ));
                }
                self.epoch = Some(message.epoch);
                self.messages.push((message.offset.0, message.payload));
            }
            Delivery::Gap(gap) => {
                let GapReason::EpochChanged { previous } = gap.reason else {
                    return Err(format!("an unexpected gap: {gap:?}"));
                };
                // A reader with no message yet knows its epoch only from its cursor.
                if self.epoch.is_some_and(|epoch| epoch != previous) {
                    return Err(format!("a gap from {previous}, the reader had {:?}", self.epoch));
                }
                let Cursor::After(epoch, at) = gap.cursor else {
                    return Err(format!("a gap without a position: {gap:?}"));
                };
                if let Some(missed) = gap.missed {
                    return Err(format!("retention lost nothing here, the gap says {missed:?}"));
                }
                self.messages.retain(|(offset, _)| *offset <= at.0);
                self.epoch = Some(epoch);
                self.gaps += 1;
            }
        }
        Ok(())
    }
}

/// Reads `subscription` into a ledger until the ledger fails or the test ends.
pub fn read_into(mut subscription: Subscription) -> Arc<Mutex<Result<Ledger, String>>> {
    let ledger = Arc::new(Mutex::new(Ok(Ledger::default())));
    let kept = ledger.clone();
    tokio::spawn(async move {
        while let Some(delivery) = subscription.next().await {
            let mut ledger = kept.lock().await;
            let Ok(state) = ledger.as_mut() else { return };
            match delivery.map_err(|e| e.to_string()).and_then(|d| state.apply(d)) {
                Ok(()) => {}
                Err(error) => {
                    *ledger = Err(error);
                    return;
                }
            }
        }
    });
    ledger
}
