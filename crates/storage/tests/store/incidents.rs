//! The breach register: an incident entered once with what was
//! compromised, its timeline, nothing recorded on a closed incident
//! (however the calls race), and refusals that write nothing.

use super::*;
use rempart_domain::incident::{
    Compromised, Event, IncidentId, MAX_TEXT_CHARS, Milestone, NewIncident, Window,
};
use rempart_storage::RegisterError;

pub(super) fn hour(h: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000 + h * 3600, 0).expect("in range")
}

fn event(at: i64, milestone: Milestone, note: Option<&str>) -> Event {
    Event {
        at: hour(at),
        milestone,
        note: note.map(str::to_string),
        recorded_at: hour(at + 1),
    }
}

pub(super) async fn incident_fixture(db: &Db) -> (NewIncident, AccountId, OrganisationId) {
    let store = db.store();
    consultation_accounts(store).await;
    let ce = org_id(store, "CE-038").await;
    let agent = store
        .account_by_login(&r("ce.agent1"))
        .await
        .on(store, "by login")
        .expect("ce.agent1")
        .account_id;
    let new = NewIncident {
        title: "Identifiants d'un conseiller hameçonnés".into(),
        compromised: vec![
            Compromised::Organisation(ce),
            Compromised::Account(agent),
            Compromised::Account(agent),
        ],
        window: Window::new(hour(0), hour(48)).expect("window"),
        aware_at: hour(50),
        opened_by: "dpo".into(),
    };
    (new, agent, ce)
}

async fn register_keeps_incidents_and_their_timeline(backend: Backend) {
    let db = Db::open(backend).await;
    let be = db.store().backend();
    let reg = db.stores.incidents.clone();
    let (new, agent, ce) = incident_fixture(&db).await;
    let id = reg.open_incident(&new, hour(51)).await.expect("open");
    let got = reg.incident(id).await.expect("read").expect("found");
    assert_eq!(
        got.compromised,
        [Compromised::Account(agent), Compromised::Organisation(ce)],
        "[{be}] sorted, once each"
    );
    assert_eq!(got.title, new.title, "[{be}]");
    assert_eq!(got.window, new.window, "[{be}]");
    assert_eq!(got.aware_at, hour(50), "[{be}]");
    assert_eq!(got.notification_deadline(), hour(122), "[{be}]");
    assert_eq!(got.reached(Milestone::Opened), Some(hour(51)), "[{be}]");
    assert!(!got.is_closed(), "[{be}]");

    reg.record_event(
        id,
        &event(52, Milestone::Contained, Some("comptes suspendus")),
    )
    .await
    .expect("contained");
    // Refused, nothing written: a second opening, an event recorded before
    // it happened, an empty note.
    for (bad, field) in [
        (event(53, Milestone::Opened, None), "milestone"),
        (
            Event {
                recorded_at: hour(40),
                ..event(53, Milestone::Scoped, None)
            },
            "at",
        ),
        (event(53, Milestone::Scoped, Some("  ")), "note"),
    ] {
        match reg.record_event(id, &bad).await {
            Err(RegisterError::Invalid { field: f, .. }) => assert_eq!(f, field, "[{be}]"),
            other => panic!("[{be}] {field}: expected a refusal, got {other:?}"),
        }
    }
    reg.record_event(id, &event(60, Milestone::Closed, Some("clos")))
        .await
        .expect("close");
    let closed = reg.incident(id).await.expect("read").expect("found");
    assert!(closed.is_closed(), "[{be}]");
    assert_eq!(
        closed
            .timeline
            .iter()
            .map(|e| e.milestone)
            .collect::<Vec<_>>(),
        [Milestone::Opened, Milestone::Contained, Milestone::Closed],
        "[{be}]"
    );
    assert_eq!(
        closed.timeline[1].note.as_deref(),
        Some("comptes suspendus")
    );
    assert!(
        matches!(
            reg.record_event(id, &event(61, Milestone::PersonsInformed, None))
                .await,
            Err(RegisterError::Closed(i)) if i == id
        ),
        "[{be}] nothing is recorded on a closed incident"
    );
    assert!(matches!(
        reg.record_event(id, &event(61, Milestone::Closed, None))
            .await,
        Err(RegisterError::Closed(_))
    ));
    let unknown = IncidentId::new(id.get() + 1000);
    assert!(matches!(
        reg.record_event(unknown, &event(61, Milestone::Contained, None))
            .await,
        Err(RegisterError::Unknown(i)) if i == unknown
    ));
    assert!(reg.incident(unknown).await.expect("read").is_none());
    assert_eq!(
        reg.incident(id).await.expect("read").expect("found"),
        closed,
        "[{be}] refusals wrote nothing"
    );

    // Refusals at opening write nothing either.
    let ghost = AccountId::new(agent.get() + 10_000);
    let mut bad = new.clone();
    bad.compromised.push(Compromised::Account(ghost));
    assert!(matches!(
        reg.open_incident(&bad, hour(51)).await,
        Err(RegisterError::UnknownSubject(Compromised::Account(a))) if a == ghost
    ));
    for (bad, field) in [
        (
            NewIncident {
                title: " ".into(),
                ..new.clone()
            },
            "title",
        ),
        (
            NewIncident {
                compromised: vec![],
                ..new.clone()
            },
            "compromised",
        ),
        (
            NewIncident {
                aware_at: hour(52),
                ..new.clone()
            },
            "aware_at",
        ),
        (
            NewIncident {
                title: "x".repeat(MAX_TEXT_CHARS + 1),
                ..new.clone()
            },
            "title",
        ),
    ] {
        match reg.open_incident(&bad, hour(51)).await {
            Err(RegisterError::Invalid { field: f, .. }) => assert_eq!(f, field, "[{be}]"),
            other => panic!("[{be}] {field}: expected a refusal, got {other:?}"),
        }
    }
    let second = reg.open_incident(&new, hour(70)).await.expect("second");
    let all = reg.incidents().await.expect("list");
    assert_eq!(
        all.iter().map(|i| i.id).collect::<Vec<_>>(),
        [second, id],
        "[{be}] newest first, no trace of the refused ones"
    );
}
both_backends!(register_keeps_incidents_and_their_timeline);

/// Events and a close sent at once: whatever the order the database takes
/// them in, no event follows the close in the timeline, and every call
/// that succeeded left exactly one event.
async fn nothing_lands_after_a_racing_close(backend: Backend) {
    let db = Db::open(backend).await;
    let be = db.store().backend();
    let reg = db.stores.incidents.clone();
    let (new, _, _) = incident_fixture(&db).await;
    let id = reg.open_incident(&new, hour(51)).await.expect("open");
    let calls = (0..24).map(|i| {
        let reg = reg.clone();
        tokio::spawn(async move {
            let milestone = if i == 12 {
                Milestone::Closed
            } else {
                Milestone::Contained
            };
            reg.record_event(id, &event(52, milestone, None)).await
        })
    });
    let mut ok = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.expect("task") {
            Ok(()) => ok += 1,
            Err(RegisterError::Closed(_)) => {}
            Err(e) => panic!("[{be}] {e}"),
        }
    }
    let got = reg.incident(id).await.expect("read").expect("found");
    assert_eq!(got.timeline.len(), ok + 1, "[{be}] one event per success");
    assert_eq!(
        got.timeline.last().map(|e| e.milestone),
        Some(Milestone::Closed),
        "[{be}] the close is the last event"
    );
}
both_backends!(nothing_lands_after_a_racing_close);
