//! The register's notices: queued once per person (a second queueing
//! keeps the first), each delivery begun and recorded by a
//! compare-and-set (racing dispatchers record a notice once), nothing
//! queued on a closed or unprepared incident, bad values refused with
//! their field.

use super::incidents::{hour, incident_fixture};
use super::*;
use rempart_domain::incident::{IncidentId, Milestone, NoticeChannel, NoticeRun, QueuedNotice};
use rempart_storage::RegisterError;

fn run(measures: &str) -> NoticeRun {
    NoticeRun {
        controller: "France Travail".into(),
        dpo: "dpo@example.org".into(),
        measures: measures.into(),
        wording: 1,
        prepared_at: hour(60),
    }
}

fn notice(person: i64, channel: NoticeChannel, dep: &str) -> QueuedNotice {
    QueuedNotice {
        person: PersonId::new(person),
        channel,
        departement: dep.into(),
        groups: 1 | 2,
        kinds: 2,
        reads: 3,
        first: hour(1),
        last: hour(2),
        digest: [person as u8; 32],
    }
}

async fn notices_are_queued_once_and_delivered_once(backend: Backend) {
    let db = Db::open(backend).await;
    let be = db.store().backend();
    let reg = db.stores.incidents.clone();
    let notices = db.stores.notices.clone();
    let (new, _, _) = incident_fixture(&db).await;
    let id = reg.open_incident(&new, hour(51)).await.expect("open");

    // Not prepared: nothing queued.
    match notices
        .queue_notices(id, &[notice(1, NoticeChannel::Email, "38")])
        .await
    {
        Err(RegisterError::Invalid {
            field: "notices", ..
        }) => {}
        other => panic!("[{be}] unprepared: {other:?}"),
    }
    // Unknown incident.
    match notices
        .prepare_notices(IncidentId::new(999), &run("x"))
        .await
    {
        Err(RegisterError::Unknown(_)) => {}
        other => panic!("[{be}] unknown: {other:?}"),
    }
    // The controller's name goes into a subject line: a line break there
    // could forge mail headers.
    let forged = NoticeRun {
        controller: "France Travail\nBcc: attacker@example.org".into(),
        ..run("x")
    };
    match notices.prepare_notices(id, &forged).await {
        Err(RegisterError::Invalid {
            field: "controller",
            ..
        }) => {}
        other => panic!("[{be}] forged controller: {other:?}"),
    }
    assert_eq!(notices.notice_run(id).await.expect("run"), None, "[{be}]");
    let first = notices
        .prepare_notices(id, &run("Comptes suspendus."))
        .await
        .expect("prepare");
    // Prepared again with other words: the first run stands.
    let again = notices
        .prepare_notices(id, &run("Autre chose."))
        .await
        .expect("again");
    assert_eq!(again, first, "[{be}]");
    assert_eq!(
        notices.notice_run(id).await.expect("run"),
        Some(first),
        "[{be}]"
    );

    let batch: Vec<QueuedNotice> = (1..=5)
        .map(|p| {
            let ch = if p % 2 == 0 {
                NoticeChannel::Letter
            } else {
                NoticeChannel::Email
            };
            notice(p, ch, if p <= 3 { "38" } else { "2A" })
        })
        .collect();
    assert_eq!(
        notices.queue_notices(id, &batch).await.expect("queue"),
        5,
        "[{be}]"
    );
    // Queued again (a restarted `notify`): nothing added, the first kept.
    let mut changed = batch.clone();
    changed[0].digest = [0xee; 32];
    changed.push(notice(6, NoticeChannel::Email, "75"));
    assert_eq!(
        notices.queue_notices(id, &changed).await.expect("requeue"),
        1,
        "[{be}]"
    );
    let mine = notices
        .notices_of_person(PersonId::new(1))
        .await
        .expect("space");
    assert_eq!(mine.len(), 1, "[{be}]");
    assert_eq!(mine[0].notice, batch[0], "[{be}] the first queueing stands");
    assert_eq!(mine[0].incident, id, "[{be}]");

    // A bad value names its field, and nothing of the batch is written.
    let mut bad = notice(7, NoticeChannel::Email, "38");
    bad.departement = "3800".into();
    match notices
        .queue_notices(id, &[notice(8, NoticeChannel::Email, "38"), bad])
        .await
    {
        Err(RegisterError::Invalid {
            field: "departement",
            ..
        }) => {}
        other => panic!("[{be}] bad departement: {other:?}"),
    }
    let p = notices.notice_progress(id).await.expect("progress");
    assert_eq!(p.total_queued(), 6, "[{be}]");
    assert_eq!(p.by_departement.get("2A"), Some(&2), "[{be}]");
    assert_eq!(p.by_departement.get("38"), Some(&3), "[{be}]");

    // Pending e-mails in person order, by pages.
    let page = notices
        .pending_notices(id, NoticeChannel::Email, PersonId::new(0), 2)
        .await
        .expect("pending");
    let persons: Vec<i64> = page.iter().map(|n| n.notice.person.get()).collect();
    assert_eq!(persons, [1, 3], "[{be}]");
    let page = notices
        .pending_notices(id, NoticeChannel::Email, PersonId::new(3), 10)
        .await
        .expect("pending");
    let persons: Vec<i64> = page.iter().map(|n| n.notice.person.get()).collect();
    assert_eq!(persons, [5, 6], "[{be}]");

    // Delivery: begun, recorded once.
    assert!(
        notices
            .begin_notice(id, PersonId::new(1), hour(61), hour(62))
            .await
            .expect("begin"),
        "[{be}]"
    );
    assert!(
        notices
            .notice_sent(id, PersonId::new(1), hour(61))
            .await
            .expect("sent"),
        "[{be}]"
    );
    assert!(
        !notices
            .notice_sent(id, PersonId::new(1), hour(62))
            .await
            .expect("again"),
        "[{be}]"
    );
    assert!(
        !notices
            .begin_notice(id, PersonId::new(1), hour(70), hour(71))
            .await
            .expect("begin after"),
        "[{be}]"
    );
    // Begun and never recorded: an interrupted delivery, still pending,
    // claimed until its claim lapses, then taken again.
    assert!(
        notices
            .begin_notice(id, PersonId::new(3), hour(61), hour(62))
            .await
            .expect("begin 3"),
        "[{be}]"
    );
    assert!(
        !notices
            .begin_notice(id, PersonId::new(3), hour(61), hour(63))
            .await
            .expect("claimed"),
        "[{be}] another dispatcher's claim runs"
    );
    assert!(
        notices
            .begin_notice(id, PersonId::new(3), hour(62), hour(63))
            .await
            .expect("lapsed"),
        "[{be}] the claim lapsed"
    );
    let p = notices.notice_progress(id).await.expect("progress");
    assert_eq!(p.sent.get(&NoticeChannel::Email), Some(&1), "[{be}]");
    assert_eq!(p.interrupted, 1, "[{be}]");
    let three = notices
        .notices_of_person(PersonId::new(3))
        .await
        .expect("space");
    assert_eq!(three[0].attempts, 2, "[{be}]");
    let mine = notices
        .notices_of_person(PersonId::new(1))
        .await
        .expect("space");
    assert_eq!(
        mine[0].sent_at,
        Some(hour(61)),
        "[{be}] the first record stands"
    );
    assert_eq!(mine[0].attempts, 1, "[{be}]");

    // An e-mail that cannot go becomes a letter, its claim released; a
    // delivered notice or a letter does not change.
    assert!(
        notices
            .notice_to_letter(id, PersonId::new(3))
            .await
            .expect("to letter"),
        "[{be}]"
    );
    for (p, what) in [(3, "already a letter"), (1, "delivered"), (2, "a letter")] {
        assert!(
            !notices
                .notice_to_letter(id, PersonId::new(p))
                .await
                .expect("to letter"),
            "[{be}] {what}"
        );
    }
    let letters: Vec<i64> = notices
        .pending_notices(id, NoticeChannel::Letter, PersonId::new(0), 10)
        .await
        .expect("pending")
        .iter()
        .map(|n| n.notice.person.get())
        .collect();
    assert_eq!(letters, [2, 3, 4], "[{be}]");
    assert!(
        notices
            .begin_notice(id, PersonId::new(3), hour(61), hour(62))
            .await
            .expect("claim released"),
        "[{be}]"
    );

    // Closed: nothing more queued.
    reg.record_event(
        id,
        &rempart_domain::incident::Event {
            at: hour(70),
            milestone: Milestone::Closed,
            note: None,
            recorded_at: hour(71),
        },
    )
    .await
    .expect("close");
    match notices
        .queue_notices(id, &[notice(9, NoticeChannel::Email, "38")])
        .await
    {
        Err(RegisterError::Closed(_)) => {}
        other => panic!("[{be}] closed: {other:?}"),
    }
}
both_backends!(notices_are_queued_once_and_delivered_once);

/// Twelve dispatchers claiming, then recording, the same notice at once:
/// one claim and one record succeed.
async fn racing_dispatchers_record_a_notice_once(backend: Backend) {
    let db = Db::open(backend).await;
    let be = db.store().backend();
    let reg = db.stores.incidents.clone();
    let notices = db.stores.notices.clone();
    let (new, _, _) = incident_fixture(&db).await;
    let id = reg.open_incident(&new, hour(51)).await.expect("open");
    notices
        .prepare_notices(id, &run("Comptes suspendus."))
        .await
        .expect("prepare");
    notices
        .queue_notices(id, &[notice(1, NoticeChannel::Email, "38")])
        .await
        .expect("queue");
    let claims: Vec<_> = (0..12)
        .map(|_| {
            let notices = notices.clone();
            tokio::spawn(async move {
                notices
                    .begin_notice(id, PersonId::new(1), hour(61), hour(62))
                    .await
            })
        })
        .collect();
    let mut claimed = 0;
    for c in claims {
        if c.await.expect("task").expect("claim") {
            claimed += 1;
        }
    }
    assert_eq!(claimed, 1, "[{be}]");
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let notices = notices.clone();
            tokio::spawn(async move {
                notices
                    .notice_sent(id, PersonId::new(1), hour(61 + i))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for c in calls {
        if c.await.expect("task").expect("sent") {
            won += 1;
        }
    }
    assert_eq!(won, 1, "[{be}]");
}
both_backends!(racing_dispatchers_record_a_notice_once);
