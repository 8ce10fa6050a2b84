//! Registered endpoints: their state, and how the API shows them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use pushpull_core::{Cursor, Error};
use tokio::sync::watch;

use super::api::{DeadMessage, EndpointView};
use super::store::{EndpointRecord, Progress};
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

    pub(super) fn parse(text: &str) -> Status {
        match text {
            "paused" => Status::Paused,
            "disabled" => Status::Disabled,
            _ => Status::Active,
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

impl Endpoint {
    /// The endpoint a stored record describes, ready to deliver.
    pub(super) fn from_record(record: &EndpointRecord) -> Result<Endpoint, Error> {
        let secrets =
            record.secrets.iter().map(|s| Secret::parse(s)).collect::<Result<Vec<_>, _>>()?;
        let progress = record.progress.clone();
        Ok(Endpoint {
            id: record.id.clone(),
            url: Target::parse(&record.url)?,
            secrets: Mutex::new(secrets),
            state: Mutex::new(State {
                status: Status::parse(&record.status),
                cursors: progress.cursors,
                delivered: progress.delivered,
                failures: progress.failures,
                last_error: progress.last_error,
                dead: progress.dead.into(),
            }),
            control: watch::Sender::new(Control::Run),
        })
    }

    /// Its progress, as the store keeps it.
    pub(super) fn progress(&self) -> Progress {
        let state = self.state.lock().expect("state lock");
        Progress {
            cursors: state.cursors.clone(),
            delivered: state.delivered,
            failures: state.failures,
            last_error: state.last_error.clone(),
            dead: state.dead.iter().cloned().collect(),
        }
    }
}

/// How the API shows a stored endpoint, delivered by `node` (if any node holds it now).
pub(super) fn view(record: &EndpointRecord, node: Option<String>) -> EndpointView {
    EndpointView {
        id: record.id.clone(),
        url: record.url.clone(),
        status: record.status.clone(),
        cursors: record.progress.cursors.clone(),
        delivered: record.progress.delivered,
        failures: record.progress.failures,
        last_error: record.progress.last_error.clone(),
        dead: record.progress.dead.clone(),
        node,
        secret: None,
    }
}

/// A new endpoint id: `ep_` and 96 random bits in hex.
pub(super) fn endpoint_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    format!("ep_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
