//! `relayd tail`: the live tail of a relayd ([`super::follow`]) printed on stdout, one
//! line per event, or with `--json` each event whole as the stream sends it (one JSON
//! document per line). Runs until Ctrl-C; a break in the stream resumes where it was.

use crate::cli::{Cli, TailArgs};

use super::follow::{follow, until_interrupted, Source, StreamedEvent};

pub fn run(cli: &Cli, args: &TailArgs) -> anyhow::Result<()> {
    let source = Source::resolve(cli, &args.follow)?;
    let json = args.json;
    until_interrupted(follow(&source, args.follow.after, async |event, data| {
        if json {
            println!("{data}");
        } else {
            println!("{}", line(event));
        }
        Ok(())
    }))
}

/// `received_at  source  type  provider-id  → destinations  relayd-id`.
fn line(event: &StreamedEvent) -> String {
    let destinations = if event.destinations.is_empty() {
        "(no destination)".to_string()
    } else {
        event.destinations.join(",")
    };
    format!("{}  → {destinations}  {}", event.summary(), event.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_event_and_where_it_goes() {
        let event: StreamedEvent = serde_json::from_value(serde_json::json!({
            "id": "0193a6f0-0000-7000-8000-000000000001", "source": "stripe", "event_id": "evt_1",
            "event_type": "invoice.paid", "received_at": "2026-12-07T20:00:00.5Z",
            "content_type": "application/json", "headers": {}, "payload": "{}",
            "payload_encoding": "utf-8", "destinations": ["billing", "ledger"]
        }))
        .unwrap();
        assert_eq!(
            line(&event),
            "2026-12-07T20:00:00.500Z  stripe  invoice.paid  evt_1  → billing,ledger  \
             0193a6f0-0000-7000-8000-000000000001"
        );
    }
}
