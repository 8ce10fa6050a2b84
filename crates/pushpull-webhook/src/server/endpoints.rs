//! Registered endpoints: their state, and how the API shows them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use pushpull_core::Cursor;
use tokio::sync::watch;

use super::api::{DeadMessage, EndpointView};
use super::target::Target;
use crate::wire::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Active,
    Paused,
    Disabled,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Disabled => "disabled",
        }
    }
}

pub(super) struct Endpoint {
    pub(super) id: String,
    pub(super) url: Target,
    pub(super) secrets: Mutex<Vec<Secret>>,
    pub(super) state: Mutex<State>,
    /// Wakes the worker: deletion, or a resume after a pause.
    pub(super) control: watch::Sender<Control>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Control {
    Run,
    Stop,
}

pub(super) struct State {
    pub(super) status: Status,
    pub(super) cursors: BTreeMap<String, Cursor>,
    pub(super) delivered: u64,
    pub(super) failures: u64,
    pub(super) last_error: Option<String>,
    pub(super) dead: VecDeque<DeadMessage>,
}

pub(super) fn view(endpoint: &Endpoint) -> EndpointView {
    let state = endpoint.state.lock().expect("state lock");
    EndpointView {
        id: endpoint.id.clone(),
        url: endpoint.url.text.clone(),
        status: state.status.as_str().into(),
        cursors: state.cursors.clone(),
        delivered: state.delivered,
        failures: state.failures,
        last_error: state.last_error.clone(),
        dead: state.dead.iter().cloned().collect(),
        secret: None,
    }
}

/// A new endpoint id: `ep_` and 96 random bits in hex.
pub(super) fn endpoint_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    format!("ep_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
