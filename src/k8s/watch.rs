//! Small helpers for watch streams and Events shared by the roles.

use futures::{Stream, StreamExt};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;

/// Drives a watch stream until it ends, handing each event to `on_event`. Errors are
/// logged only: the stream backs off and re-watches by itself.
pub async fn drive<K, S>(stream: S, kind: &'static str, mut on_event: impl FnMut(watcher::Event<K>))
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => on_event(event),
            Err(err) => tracing::warn!(%err, kind, "watch error; retrying"),
        }
    }
}

/// An Event with the given severity, reason, note and action.
pub fn event(warning: bool, reason: &str, note: String, action: &str) -> Event {
    Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    }
}
