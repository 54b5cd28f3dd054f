//! The engine's event stream (`docker events`): what happened to containers, images and
//! networks, as dockerd reports it. Each event is broadcast to the clients that follow the
//! stream and kept in a bounded history for `--since`. A client that falls behind loses the
//! events it did not read in time, and is told so in the daemon's log; nothing it does can
//! slow the engine down.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// Events kept for `--since` (dockerd keeps 256).
pub const HISTORY: usize = 256;
/// Events a following client may fall behind by before it loses some.
const BACKLOG: usize = 1024;

/// The kind of object an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Container,
    Image,
    Network,
    Volume,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Image => "image",
            Kind::Network => "network",
            Kind::Volume => "volume",
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// `create`, `start`, `die`, `exec_start: sh -c date`, `tag`, ...
    pub action: String,
    /// The object's id (an image's is its reference for some actions, as in dockerd).
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub time_nano: u128,
}

impl Event {
    /// Seconds since the Unix epoch.
    pub fn time(&self) -> u64 {
        (self.time_nano / 1_000_000_000) as u64
    }

    /// The action without its detail (`exec_start: sh` is `exec_start`), as filters match it.
    pub fn base_action(&self) -> &str {
        self.action
            .split_once(':')
            .map_or(self.action.as_str(), |(a, _)| a)
    }
}

/// The event bus.
pub struct Events {
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }
}

fn now_nano() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Events {
    /// Records an event now.
    pub fn emit(
        &self,
        kind: Kind,
        action: impl Into<String>,
        id: impl Into<String>,
        attributes: BTreeMap<String, String>,
    ) {
        let event = Event {
            kind,
            action: action.into(),
            id: id.into(),
            attributes,
            time_nano: now_nano(),
        };
        let mut history = match self.history.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(event.clone());
        // Under the history's lock, so a subscriber sees each event once: in the history it
        // copied or on its receiver.
        let _ = self.tx.send(event);
    }

    /// The events kept, and a receiver for every later one.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = match self.history.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        (history.iter().cloned().collect(), self.tx.subscribe())
    }
}

/// Attributes of a container event: its name and image, its labels, and `extra`.
pub fn container_attributes(
    name: &str,
    image: &str,
    labels: &BTreeMap<String, String>,
    extra: &[(&str, String)],
) -> BTreeMap<String, String> {
    let mut a = labels.clone();
    a.insert("name".into(), name.to_string());
    a.insert("image".into(), image.to_string());
    for (k, v) in extra {
        a.insert((*k).to_string(), v.clone());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_subscribers_see_later_events() {
        let events = Events::default();
        for i in 0..HISTORY + 10 {
            events.emit(Kind::Container, "create", format!("c{i}"), BTreeMap::new());
        }
        let (history, mut rx) = events.subscribe();
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history[0].id, "c10");
        events.emit(Kind::Image, "tag", "sha256:1", BTreeMap::new());
        let e = rx.try_recv().unwrap();
        assert_eq!((e.kind, e.action.as_str()), (Kind::Image, "tag"));
        assert!(e.time_nano >= history[HISTORY - 1].time_nano);
    }

    #[test]
    fn base_action_drops_the_detail() {
        let e = Event {
            kind: Kind::Container,
            action: "exec_start: sh -c date".into(),
            id: "c".into(),
            attributes: BTreeMap::new(),
            time_nano: 0,
        };
        assert_eq!(e.base_action(), "exec_start");
    }
}
