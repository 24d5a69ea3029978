//! The cluster's system of record on a real PostgreSQL (`engine/CLUSTER.md`), started by the
//! test and skipped with a loud message where PostgreSQL cannot run: the schema created and
//! migrated once and a newer one refused; a single node's log committed in batches with its
//! chain hash and relational mirror; two writers of which exactly one commits; the mirror's
//! constraints refusing an impossible change whole; and `verify` naming the first row changed or
//! missing.

use mykey_engine::cluster::history::{history, verify};
use mykey_engine::cluster::tail::Tail;
use mykey_engine::cluster::writer::{Writer, head};
use mykey_engine::cluster::{
    ClusterError, GENESIS, PgClient, chain_hash, connect_plain, connect_plain_watched, schema,
};
use mykey_engine::id::MyKeyId;
use mykey_engine::registry::{MirrorOp, Registry};
use mykey_engine::store::Change;
use mykey_engine::store::fs::{Fs, RealFs};
use mykey_tests::pg::Postgres;
use mykey_tests::*;

/// A single node's history: providers, registrations, links, a replacement, a re-bind, a
/// revocation and a deletion; its log's changes with their mirrors.
fn local_history(dir: &TempDir) -> (Registry, Vec<(Change, Vec<MirrorOp>)>) {
    let r = registry_with(dir, &["A-α1-0001", "B-β1-0002"]);
    let (a, b) = (provider("A-α1-0001"), provider("B-β1-0002"));
    for n in 0..6 {
        r.register_full(at(n), actor("portal"), mykey(n), cert(1, n))
            .expect("register");
        r.link(
            at(n),
            actor("shop"),
            mykey(n),
            a,
            service(&format!("A{n}")),
            false,
        )
        .expect("link");
    }
    r.link(at(10), actor("shop"), mykey(1), b, service("B1"), false)
        .expect("link");
    r.link(at(11), actor("shop"), mykey(1), a, service("A1-NEW"), true)
        .expect("replace");
    r.unlink(at(12), actor("shop"), mykey(2), a)
        .expect("unlink");
    r.rebind(at(13), actor("municipal"), mykey(3), cert(1, 103))
        .expect("rebind");
    r.revoke(at(14), actor("partner"), &[cert(1, 4)])
        .expect("revoke");
    r.delete(at(15), actor("municipal"), mykey(5))
        .expect("delete");
    let fs: std::sync::Arc<dyn Fs> = std::sync::Arc::new(RealFs::new(dir.path()).expect("dir"));
    let mut changes = Vec::new();
    mykey_engine::store::read_log(&*fs, |c| changes.push(c.clone())).expect("read the log");
    let batch = changes
        .into_iter()
        .map(|c| {
            let m = r.mirror(&c).expect("mirror");
            (c, m)
        })
        .collect();
    (r, batch)
}

/// What a cluster test starts from: a PostgreSQL with the schema, a node's local history to
/// commit (its directory, registry and changes), an admin connection, and `node-a` as writer.
type Cluster = (
    Postgres,
    TempDir,
    Registry,
    Vec<(Change, Vec<MirrorOp>)>,
    PgClient,
    Writer,
);

async fn cluster(tag: &str) -> Option<Cluster> {
    let pg = Postgres::start(tag)?;
    let dir = TempDir::new(&format!("cluster-{tag}"));
    let (registry, batch) = local_history(&dir);
    let mut admin = client(&pg).await;
    schema::migrate(&mut admin).await.expect("schema");
    let writer = Writer::take_over(client(&pg).await, "node-a")
        .await
        .expect("writer");
    Some((pg, dir, registry, batch, admin, writer))
}

async fn client(pg: &Postgres) -> PgClient {
    connect_plain(&pg.url()).await.expect("connect")
}

async fn count(c: &PgClient, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_created_once_migrated_again_harmlessly_and_a_newer_one_refused() {
    let Some(pg) = Postgres::start("schema") else {
        return;
    };
    let mut c = client(&pg).await;
    assert!(matches!(
        schema::check(&c).await,
        Err(ClusterError::NoSchema)
    ));
    assert_eq!(schema::migrate(&mut c).await.expect("create"), 0);
    assert_eq!(
        schema::migrate(&mut c).await.expect("again"),
        schema::VERSION
    );
    schema::check(&c).await.expect("this build's schema");
    assert_eq!(count(&c, "SELECT count(*) FROM head").await, 1);
    c.execute(
        "UPDATE mykey_meta SET value = '99' WHERE key = 'schema_version'",
        &[],
    )
    .await
    .expect("a newer schema");
    match schema::migrate(&mut c).await {
        Err(ClusterError::Version { found, supported }) => {
            assert_eq!((found, supported), (99, schema::VERSION))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        schema::check(&c).await,
        Err(ClusterError::Version { found: 99, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_log_commits_in_batches_with_its_chain_mirror_and_history() {
    let Some((_pg, _dir, r, batch, admin, mut w)) = cluster("replicate").await else {
        return;
    };
    assert_eq!(w.head().epoch, 1);
    assert_eq!((w.head().seq, w.head().hash), (0, GENESIS));
    let mut want = GENESIS;
    for part in batch.chunks(3) {
        let h = w.commit(part).await.expect("commit");
        for (c, _) in part {
            want = chain_hash(&want, &c.payload().expect("payload"));
        }
        assert_eq!((h.seq, h.hash), (part.last().expect("one").0.seq, want));
    }
    let last = batch.last().expect("changes").0.seq;
    assert_eq!(r.store().durable_seq(), last);
    let h = head(&admin).await.expect("head");
    assert_eq!((h.seq, h.epoch, h.hash), (last, 1, want));
    let v = verify(&admin, 1, None).await.expect("the chain verifies");
    assert_eq!((v.from, v.to, v.hash), (1, last, want));
    // The mirror holds what the engine holds.
    assert_eq!(count(&admin, "SELECT count(*) FROM providers").await, 2);
    assert_eq!(count(&admin, "SELECT count(*) FROM ids").await, 6);
    assert_eq!(
        count(&admin, "SELECT count(*) FROM ids WHERE state = 3").await,
        1,
        "the revoked certificate's ID is suspended"
    );
    assert_eq!(
        count(&admin, "SELECT count(*) FROM ids WHERE state = 4").await,
        1
    );
    // Links: 6, minus the unlinked one, minus the deleted ID's, plus B1.
    assert_eq!(count(&admin, "SELECT count(*) FROM links").await, 5);
    let svc: String = admin
        .query_one(
            "SELECT service FROM links WHERE mykey_id = $1 AND provider = 'A-α1-0001'",
            &[&mykey(1).as_str()],
        )
        .await
        .expect("link")
        .get(0);
    assert_eq!(svc, "A1-NEW");
    // One live binding per ID, the re-bound one to its new certificate, none for the deleted.
    assert_eq!(count(&admin, "SELECT count(*) FROM cert_bindings").await, 5);
    // The history of one ID: its registration, its links, its replacement.
    let hist = history(&admin, &mykey(1)).await.expect("history");
    assert_eq!(hist.len(), 4, "{hist:?}");
    assert!(hist.windows(2).all(|w| w[0].seq < w[1].seq));
    for e in &hist {
        let stored: Vec<u8> = admin
            .query_one(
                "SELECT hash FROM change_log WHERE seq = $1",
                &[&(e.seq as i64)],
            )
            .await
            .expect("row")
            .get(0);
        assert_eq!(&stored[..], &e.hash[..]);
        assert!(mykey_engine::registry::concerns(&e.change, &mykey(1)));
    }
    assert!(
        history(&admin, &MyKeyId::parse(b"ZZZZZZZZZZZZZZ").expect("id"))
            .await
            .expect("history")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_exactly_one_commits_and_the_other_is_fenced() {
    let Some((pg, _dir, _r, batch, admin, mut a)) = cluster("fence").await else {
        return;
    };
    // While a's session holds the lock, nobody else becomes the writer.
    assert!(matches!(
        Writer::take_over(client(&pg).await, "node-b").await,
        Err(ClusterError::NotWriter)
    ));
    a.commit(&batch[..2]).await.expect("a commits");
    // a's session ends (a crash, a partition): its lock goes with it, and b takes over.
    end_other_sessions(&admin).await;
    let mut b = Writer::take_over(client(&pg).await, "node-b")
        .await
        .expect("b");
    assert_eq!((b.head().seq, b.head().epoch), (2, 2));
    b.commit(&batch[2..4]).await.expect("b commits");
    // b's session ends too; a, not knowing it was replaced, reconnects and sends its next batch.
    end_other_sessions(&admin).await;
    a.reconnect(client(&pg).await)
        .await
        .expect("the lock is free again");
    match a.commit(&batch[2..4]).await {
        Err(ClusterError::Fenced {
            expected_seq,
            epoch,
        }) => assert_eq!((expected_seq, epoch), (2, 1)),
        other => panic!("a stale writer must be fenced: {other:?}"),
    }
    let h = head(&admin).await.expect("head");
    assert_eq!(
        (h.seq, h.epoch),
        (4, 2),
        "b's commit stands, a's did not land"
    );
    assert_eq!(count(&admin, "SELECT count(*) FROM change_log").await, 4);
    verify(&admin, 1, None).await.expect("one history");
}

/// Ends every session but `admin`'s, as a crash or a partition would: their advisory locks go
/// with them.
async fn end_other_sessions(admin: &PgClient) {
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .expect("terminate");
    // pg_terminate_backend signals; wait until the sessions are gone.
    for _ in 0..100 {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if left == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("sessions did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_refuses_an_impossible_change_whole() {
    let Some((_pg, _dir, _r, batch, admin, mut w)) = cluster("mirror").await else {
        return;
    };
    w.commit(&batch[..4]).await.expect("first changes");
    // An engine bug: the next change also binds ID 0's certificate to ID 1.
    let (c, mut ops) = batch[4].clone();
    let cert0 = batch[..4]
        .iter()
        .flat_map(|(_, m)| m)
        .find_map(|op| match op {
            MirrorOp::Bind { cert, id } if *id == mykey(0) => Some(cert.clone()),
            _ => None,
        })
        .expect("ID 0's binding");
    ops.push(MirrorOp::Bind {
        cert: cert0,
        id: mykey(1),
    });
    let before = head(&admin).await.expect("head");
    match w.commit(&[(c, ops)]).await {
        Err(ClusterError::Postgres { op, .. }) => assert_eq!(op, "write the mirror"),
        other => panic!("the unique binding must refuse it: {other:?}"),
    }
    assert_eq!(
        head(&admin).await.expect("head"),
        before,
        "nothing was committed"
    );
    assert_eq!(count(&admin, "SELECT count(*) FROM change_log").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_first_row_changed_or_missing() {
    let Some((_pg, _dir, _r, batch, admin, mut w)) = cluster("verify").await else {
        return;
    };
    w.commit(&batch).await.expect("commit");
    verify(&admin, 1, None).await.expect("intact");
    // A hand edit of one row's payload (its actor's first byte), leaving its hash.
    admin
        .execute(
            "UPDATE change_log SET payload = overlay(payload placing '\\x5a'::bytea from 6 for 1)
             WHERE seq = 5",
            &[],
        )
        .await
        .expect("edit");
    match verify(&admin, 1, None).await {
        Err(ClusterError::BadRow { seq, .. }) => assert_eq!(seq, 5),
        other => panic!("{other:?}"),
    }
    // The rows before it still verify, and a range after it starts from the stored hash.
    verify(&admin, 1, Some(4)).await.expect("before the edit");
    verify(&admin, 6, None)
        .await
        .expect("after the edit, from its stored hash");
    admin
        .execute("DELETE FROM change_log WHERE seq = 8", &[])
        .await
        .expect("delete");
    match verify(&admin, 6, None).await {
        Err(ClusterError::BadRow { seq, .. }) => assert_eq!(seq, 8),
        other => panic!("{other:?}"),
    }
}

/// Everything a registry's store holds, table by table, in key order.
fn contents(r: &Registry) -> Vec<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    mykey_engine::registry::Table::ALL
        .iter()
        .map(|&t| {
            let mut m = std::collections::BTreeMap::new();
            r.store()
                .for_each(t, |k, v| {
                    m.insert(k.to_vec(), v.to_vec());
                })
                .expect("walk");
            m
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applies_the_writers_rows_and_stops_at_one_it_cannot_check() {
    let Some((_pg, _dir, r, batch, admin, mut w)) = cluster("follow").await else {
        return;
    };
    let head_now = w.commit(&batch).await.expect("commit");
    // A new node: an empty store, following from seq 0.
    let fdir = TempDir::new("cluster-follower");
    let f = registry_with(&fdir, &[]);
    let mut t = Tail::new();
    while t.step(&admin, &f).await.expect("step") > 0 {}
    assert_eq!((t.applied(), t.hash()), (head_now.seq, head_now.hash));
    assert_eq!(f.store().durable_seq(), head_now.seq);
    assert_eq!(
        contents(&f),
        contents(&r),
        "the follower holds what the writer's node holds"
    );
    for n in 0..6 {
        for p in ["A-α1-0001", "B-β1-0002"] {
            assert_eq!(
                f.lookup(at(20), &mykey(n), &provider(p)).expect("lookup"),
                r.lookup(at(20), &mykey(n), &provider(p)).expect("lookup"),
            );
        }
    }
    t.recheck(&admin).await.expect("unchanged");
    // A row added by hand (a standby given an extra change): its hash cannot match this node's
    // chain, and nothing of it is applied.
    let extra = batch[0].0.payload().expect("payload");
    admin
        .execute(
            "INSERT INTO change_log (seq, epoch, at, actor, kind, payload, hash)
             VALUES ($1, 1, now(), 'by-hand', 6, $2, $3)",
            &[&((head_now.seq + 1) as i64), &extra, &&[7u8; 32][..]],
        )
        .await
        .expect("insert");
    match t.step(&admin, &f).await {
        Err(ClusterError::BadRow { seq, .. }) => assert_eq!(seq, head_now.seq + 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        f.store().durable_seq(),
        head_now.seq,
        "nothing of it was applied"
    );
    // A row changed after the node applied it: the recheck finds it.
    admin
        .execute(
            "UPDATE change_log SET hash = $1 WHERE seq = $2",
            &[&&[9u8; 32][..], &(head_now.seq as i64)],
        )
        .await
        .expect("update");
    match t.recheck(&admin).await {
        Err(ClusterError::BadRow { seq, .. }) => assert_eq!(seq, head_now.seq),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writing_through_postgres_logs_only_what_postgres_committed() {
    let Some((pg, _dir, _r, _batch, admin, w)) = cluster("through").await else {
        return;
    };
    // The writer node: an empty store whose group commit goes through PostgreSQL.
    let ndir = TempDir::new("cluster-writer-node");
    let node = mykey_tests::pg::registry_through(&ndir, w);
    let n = node.clone();
    tokio::task::spawn_blocking(move || {
        let p = provider("A-α1-0001");
        n.register_provider(at(0), actor("operator"), p)
            .expect("provider");
        for i in 0..20u64 {
            let (id, c, s) = (mykey(i), cert(1, i), service("S"));
            n.register_full(at(i), actor("portal"), id, c)
                .expect("register");
            n.link(at(i), actor("shop"), id, p, s, false).expect("link");
        }
    })
    .await
    .expect("writes");
    let h = head(&admin).await.expect("head");
    assert_eq!(
        h.seq,
        node.store().durable_seq(),
        "every acknowledged write is committed"
    );
    assert_eq!(count(&admin, "SELECT count(*) FROM links").await, 20);
    verify(&admin, 1, None).await.expect("chain");
    // A follower reaches the writer node's state from PostgreSQL alone.
    let fdir = TempDir::new("cluster-through-follower");
    let f = registry_with(&fdir, &[]);
    let mut t = Tail::new();
    while t.step(&admin, &f).await.expect("step") > 0 {}
    assert_eq!(contents(&f), contents(&node));
    // The writer is replaced behind its back: its next write is not acknowledged, nothing of
    // it reaches PostgreSQL or its own log, and its store stops taking writes.
    end_other_sessions(&admin).await;
    let _b = Writer::take_over(client(&pg).await, "node-b")
        .await
        .expect("b");
    let before = node.store().durable_seq();
    let n = node.clone();
    let r = tokio::task::spawn_blocking(move || {
        n.link(
            at(50),
            actor("shop"),
            mykey(1),
            provider("A-α1-0001"),
            service("T"),
            true,
        )
    })
    .await
    .expect("write");
    assert!(
        matches!(
            r,
            Err(mykey_engine::registry::RegistryError::Store(
                mykey_engine::store::StoreError::OutcomeUnknown { .. }
            ))
        ),
        "{r:?}"
    );
    assert_eq!(node.store().durable_seq(), before);
    assert!(
        node.store().health().read_only.is_some(),
        "the node stepped down"
    );
    assert_eq!(head(&admin).await.expect("head").seq, before);
    assert_eq!(
        node.lookup(at(51), &mykey(1), &provider("A-α1-0001"))
            .expect("lookup"),
        mykey_engine::registry::Lookup::Linked(service("S")),
        "the unacknowledged write is not visible"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_resumes_after_a_restart_from_its_store_and_chain_file() {
    use mykey_engine::cluster::chain;
    let Some((_pg, _dir, r, batch, admin, mut w)) = cluster("resume").await else {
        return;
    };
    w.commit(&batch[..10]).await.expect("first part");
    let fdir = TempDir::new("cluster-resume-follower");
    let fs = RealFs::new(fdir.path()).expect("dir");
    let f = registry_with(&fdir, &[]);
    let mut t = chain::resume(&admin, &fs, &f).await.expect("a new node");
    assert_eq!(t.applied(), 0);
    assert_eq!(t.step(&admin, &f).await.expect("step"), 10);
    chain::write(&fs, &t).expect("chain");
    let at10 = t.hash();
    // A crash after five more applied changes, before the CHAIN file was written again.
    w.commit(&batch[10..]).await.expect("the rest");
    for c in &batch[10..15] {
        f.apply_replicated(&c.0).expect("apply");
    }
    drop(f);
    let f = Registry::open(
        std::sync::Arc::new(RealFs::new(fdir.path()).expect("dir")),
        mykey_engine::registry::RegistryConfig::default(),
    )
    .expect("reopen");
    let mut t = chain::resume(&admin, &fs, &f).await.expect("resume");
    assert_eq!(t.applied(), 15, "it resumes at its store's seq");
    assert_eq!(chain::read(&fs).expect("read"), Some((15, t.hash())));
    while t.step(&admin, &f).await.expect("step") > 0 {}
    assert_eq!(contents(&f), contents(&r));
    // A CHAIN file that does not hold this node's history is refused, not trusted.
    assert_ne!(at10, [1; 32]);
    chain::write(&fs, &Tail::at(10, [1; 32])).expect("write");
    match chain::resume(&admin, &fs, &f).await {
        Err(ClusterError::BadRow { seq, .. }) => assert_eq!(seq, 11),
        other => panic!("{other:?}"),
    }
}

/// Sets `synchronous_standby_names` to `v` (SQL: a quoted list or `DEFAULT`) and returns once
/// a new session sees it: the server has then sent the reload to every backend.
async fn set_sync_standbys(pg: &Postgres, admin: &PgClient, v: &str) {
    for sql in [
        format!("ALTER SYSTEM SET synchronous_standby_names = {v}"),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&sql).await.expect(&sql);
    }
    let t = std::time::Instant::now();
    loop {
        let now: String = client(pg)
            .await
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .expect("show")
            .get(0);
        if format!("'{now}'") == v || (v == "DEFAULT" && now.is_empty()) {
            return;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_wait_for_the_synchronous_standby_is_cancelled_is_not_acknowledged() {
    let Some(pg) = Postgres::start("syncwait") else {
        return;
    };
    let dir = TempDir::new("cluster-syncwait");
    let (_r, batch) = local_history(&dir);
    let mut admin = client(&pg).await;
    schema::migrate(&mut admin).await.expect("schema");
    let (c, sync_cancels) = connect_plain_watched(&pg.url()).await.expect("connect");
    let mut w = Writer::take_over(c, "node-a").await.expect("writer");
    w.watch(sync_cancels);
    w.commit(&batch[..2])
        .await
        .expect("no synchronous standby asked for yet");
    // A synchronous standby that never comes: every commit now waits for it.
    set_sync_standbys(&pg, &admin, "'nobody'").await;
    let rest = batch[2..4].to_vec();
    let pending = tokio::spawn(async move {
        let r = w.commit(&rest).await;
        (w, r)
    });
    let t = std::time::Instant::now();
    while count(
        &admin,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
    )
    .await
        == 0
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "the commit never waited for the standby"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !pending.is_finished(),
        "answered while waiting for the standby"
    );
    admin
        .batch_execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
        )
        .await
        .expect("cancel the wait");
    let (mut w, r) = pending.await.expect("task");
    match r {
        Err(ClusterError::OutcomeUnknown { first, last, .. }) => assert_eq!((first, last), (3, 4)),
        other => panic!("a cancelled synchronous wait answered {other:?}"),
    }
    // PostgreSQL did commit it on the primary: that is why it cannot be acknowledged, nor
    // counted as refused.
    assert_eq!(count(&admin, "SELECT count(*) FROM change_log").await, 4);
    assert_eq!(
        w.head().seq,
        2,
        "the writer's head did not move past what it acknowledged"
    );
    // This writer writes nothing more: its next batch at seq 3 matches no head.
    set_sync_standbys(&pg, &admin, "DEFAULT").await;
    assert!(
        w.commit(&batch[2..4]).await.is_err(),
        "a writer whose commit is unknown went on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_bootstraps_from_a_tagged_snapshot_after_change_log_is_pruned_below_it() {
    use mykey_engine::cluster::chain;
    use mykey_engine::cluster::snapshot::{self, Tag};
    use mykey_engine::store::backup::BackupError;
    let Some((_pg, _dir, r, batch, admin, mut w)) = cluster("snapshot").await else {
        return;
    };
    w.commit(&batch[..10]).await.expect("first part");
    // A follower at seq 10 with its CHAIN file, then five more changes applied and a crash
    // before the file was written again: its snapshot's tag is seq 10, its copy holds 15.
    let fdir = TempDir::new("cluster-snapshot-follower");
    let ffs = RealFs::new(fdir.path()).expect("dir");
    let f = registry_with(&fdir, &[]);
    let mut t = Tail::new();
    assert_eq!(t.step(&admin, &f).await.expect("step"), 10);
    chain::write(&ffs, &t).expect("chain");
    let at10 = Tag {
        seq: 10,
        hash: t.hash(),
    };
    w.commit(&batch[10..]).await.expect("the rest");
    for c in &batch[10..15] {
        f.apply_replicated(&c.0).expect("apply");
    }
    // Pruning with no snapshot recorded deletes nothing.
    match snapshot::prune(&admin, None, &mut |_| {}).await {
        Err(ClusterError::NoSnapshot) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&admin, "SELECT min(seq) FROM change_log").await, 1);
    // The snapshot, taken while the follower's store is open: its tag is checked against
    // change_log; a tag of another history is refused.
    let sdir = TempDir::new("cluster-snapshot-copy");
    let sfs: std::sync::Arc<dyn Fs> = std::sync::Arc::new(RealFs::new(sdir.path()).expect("dir"));
    let (report, tag) = snapshot::take(&ffs, &*sfs, &mut |_, _| {}).expect("take");
    assert_eq!(tag, at10);
    assert_eq!(report.last_seq, 15);
    let forged = Tag {
        seq: 10,
        hash: [3; 32],
    };
    match snapshot::check(&admin, &forged).await {
        Err(ClusterError::BadRow { seq: 10, .. }) => {}
        other => panic!("{other:?}"),
    }
    match snapshot::record(&admin, "node-x", &forged, "nowhere").await {
        Err(ClusterError::BadRow { seq: 10, .. }) => {}
        other => panic!("{other:?}"),
    }
    snapshot::record(&admin, "node-b", &tag, "here")
        .await
        .expect("record");
    let listed = snapshot::list(&admin).await.expect("list");
    assert_eq!(listed.len(), 1, "the forged tag was not recorded");
    assert_eq!((listed[0].node.as_str(), listed[0].tag), ("node-b", tag));
    // Pruned below the snapshot: rows 1..=9 go (with their per-ID index), row 10 stays.
    let mut seen = Vec::new();
    let p = snapshot::prune(&admin, None, &mut |n| seen.push(n))
        .await
        .expect("prune");
    assert_eq!((p.below, p.rows, p.forgotten), (10, 9, 0));
    assert_eq!(seen.last(), Some(&9));
    assert_eq!(count(&admin, "SELECT min(seq) FROM change_log").await, 10);
    assert_eq!(
        count(&admin, "SELECT count(*) FROM id_changes WHERE seq < 10").await,
        0
    );
    // A node with nothing cannot follow a pruned log: it is told to bootstrap.
    let edir = TempDir::new("cluster-snapshot-empty");
    let e = registry_with(&edir, &[]);
    match Tail::new().step(&admin, &e).await {
        Err(ClusterError::BadRow { seq: 1, what }) => assert!(what.contains("pruned"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.store().durable_seq(), 0);
    let genesis = Tag {
        seq: 0,
        hash: GENESIS,
    };
    assert!(snapshot::check(&admin, &genesis).await.is_err());
    // The wiped node bootstraps: the snapshot's tag carried over its five later changes,
    // each checked against change_log; then it tails to the head and holds what the writer
    // holds.
    let bdir = TempDir::new("cluster-snapshot-boot");
    let bfs: std::sync::Arc<dyn Fs> = std::sync::Arc::new(RealFs::new(bdir.path()).expect("dir"));
    let (_, bt) = snapshot::bootstrap(&admin, sfs.clone(), bfs.clone(), &mut |_, _| {})
        .await
        .expect("bootstrap");
    assert_eq!(bt.applied(), 15);
    assert_eq!(chain::read(&*bfs).expect("chain"), Some((15, bt.hash())));
    match snapshot::bootstrap(&admin, sfs.clone(), bfs.clone(), &mut |_, _| {}).await {
        Err(ClusterError::Backup(BackupError::DestinationNotEmpty { .. })) => {}
        other => panic!("into a store already there: {other:?}"),
    }
    let b = Registry::open(
        bfs.clone(),
        mykey_engine::registry::RegistryConfig::default(),
    )
    .expect("open");
    let mut bt = chain::resume(&admin, &*bfs, &b).await.expect("resume");
    while bt.step(&admin, &b).await.expect("step") > 0 {}
    assert_eq!(bt.applied(), batch.len() as u64);
    assert_eq!(contents(&b), contents(&r));
    // A newer snapshot from the bootstrapped node; keeping only it forgets the first and
    // prunes below the new one, and the first then cannot bootstrap anyone: refused before
    // anything is copied.
    chain::write(&*bfs, &bt).expect("chain");
    let s2 = TempDir::new("cluster-snapshot-copy2");
    let s2fs = RealFs::new(s2.path()).expect("dir");
    let (_, tag2) = snapshot::take(&*bfs, &s2fs, &mut |_, _| {}).expect("take");
    snapshot::record(&admin, "node-c", &tag2, "there")
        .await
        .expect("record");
    let p = snapshot::prune(&admin, Some(1), &mut |_| {})
        .await
        .expect("prune");
    assert_eq!((p.below, p.forgotten), (tag2.seq, 1));
    assert_eq!(p.rows, tag2.seq - 10);
    let late = TempDir::new("cluster-snapshot-late");
    let lfs: std::sync::Arc<dyn Fs> = std::sync::Arc::new(RealFs::new(late.path()).expect("dir"));
    match snapshot::bootstrap(&admin, sfs, lfs.clone(), &mut |_, _| {}).await {
        Err(ClusterError::BadRow { seq: 10, what }) => assert!(what.contains("pruned"), "{what}"),
        other => panic!("an old snapshot: {other:?}"),
    }
    assert!(lfs.list().expect("list").is_empty(), "nothing copied");
}

/// A bulk-built store of the sample population's first `rows` rows in `dir`, at seq 0.
fn genesis_store(dir: &TempDir, rows: usize) -> std::sync::Arc<Registry> {
    use mykey_engine::population::{BuildOptions, build};
    let sample = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../snapshots/sample");
    let read = |f: &str| std::fs::read_to_string(sample.join(f)).expect("sample");
    let population: String = read("population.csv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .take(rows + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    let fs = RealFs::new(dir.path()).expect("dir");
    let opts = BuildOptions {
        at: at(0),
        actor: actor("bulk"),
        store: mykey_engine::registry::StoreConfig::default(),
        hash_key: Some(mykey_engine::store::hash::HashKey([1, 2])),
    };
    build(
        &fs,
        read("providers.txt").as_bytes(),
        population.as_bytes(),
        &opts,
        &mut |_| {},
    )
    .expect("build");
    std::sync::Arc::new(
        Registry::open(
            std::sync::Arc::new(fs),
            mykey_engine::registry::RegistryConfig::default(),
        )
        .expect("open"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genesis_store_is_recorded_once_and_a_node_at_seq_0_must_hold_it() {
    use mykey_engine::cluster::{chain, genesis};
    let Some(pg) = Postgres::start("genesis") else {
        return;
    };
    let mut admin = client(&pg).await;
    schema::migrate(&mut admin).await.expect("schema");
    let gdir = TempDir::new("cluster-genesis");
    let g = genesis_store(&gdir, 1_000);
    let gfs = RealFs::new(gdir.path()).expect("dir");
    let id = MyKeyId::parse(b"997794E9AGCIEG").expect("a sample ID");
    let p = provider("A-α1-0001");
    // Before the genesis is recorded, the mirror lacks its providers: a link to one is
    // refused by the foreign key, and nothing is committed.
    let copy1 = TempDir::new("cluster-genesis-copy1");
    copy_dir(gdir.path(), copy1.path());
    let unrecorded = mykey_tests::pg::writing_through(
        Registry::open(
            std::sync::Arc::new(RealFs::new(copy1.path()).expect("dir")),
            mykey_engine::registry::RegistryConfig::default(),
        )
        .expect("open"),
        Writer::take_over(client(&pg).await, "node-x")
            .await
            .expect("writer"),
    );
    assert!(
        unrecorded
            .link(at(1), actor("shop"), id, p, service("S-1"), false)
            .is_err()
    );
    drop(unrecorded);
    assert_eq!(count(&admin, "SELECT count(*) FROM change_log").await, 0);
    // Recorded: its rows in the mirror, its digest the head's hash at seq 0, its CHAIN file.
    let r = genesis::record(&mut admin, g.clone(), &gfs, &mut |_| {})
        .await
        .expect("record");
    assert!(!r.already);
    assert_ne!(r.digest, GENESIS);
    assert_eq!(r.digest, genesis::digest(&g).expect("digest"));
    let ids = count(&admin, "SELECT count(*) FROM ids").await as u64;
    assert_eq!((r.ids, r.certs), (ids, ids));
    assert!(r.providers >= 6 && r.links > 0, "{r:?}");
    assert_eq!(
        count(&admin, "SELECT count(*) FROM links").await as u64,
        r.links
    );
    assert_eq!(head(&admin).await.expect("head").hash, r.digest);
    assert_eq!(genesis::recorded(&admin).await.expect("recorded"), r.digest);
    assert_eq!(chain::read(&gfs).expect("chain"), Some((0, r.digest)));
    // Again: nothing to do. Another store: refused.
    let again = genesis::record(&mut admin, g.clone(), &gfs, &mut |_| {})
        .await
        .expect("again");
    assert!(again.already);
    drop(g);
    let odir = TempDir::new("cluster-genesis-other");
    let other = genesis_store(&odir, 2);
    let ofs = RealFs::new(odir.path()).expect("dir");
    match genesis::record(&mut admin, other.clone(), &ofs, &mut |_| {}).await {
        Err(ClusterError::NotGenesis(why)) => assert!(why.contains("another genesis"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A node at seq 0 without a CHAIN file proves its store by the digest: a copy of the
    // genesis store follows, another store is refused, and so is an empty one.
    let copy2 = TempDir::new("cluster-genesis-copy2");
    copy_dir(gdir.path(), copy2.path());
    std::fs::remove_file(copy2.path().join("CHAIN")).expect("no CHAIN");
    let c2fs = RealFs::new(copy2.path()).expect("dir");
    let follower = Registry::open(
        std::sync::Arc::new(RealFs::new(copy2.path()).expect("dir")),
        mykey_engine::registry::RegistryConfig::default(),
    )
    .expect("open");
    let mut t = chain::resume(&admin, &c2fs, &follower)
        .await
        .expect("a copy of the genesis");
    assert_eq!((t.applied(), t.hash()), (0, r.digest));
    let ofs2 = RealFs::new(odir.path()).expect("dir");
    match chain::resume(&admin, &ofs2, &other).await {
        Err(ClusterError::BadRow { seq: 0, what }) => assert!(what.contains("genesis"), "{what}"),
        other => panic!("another store at seq 0: {other:?}"),
    }
    let edir = TempDir::new("cluster-genesis-empty");
    let empty = registry_with(&edir, &[]);
    let efs = RealFs::new(edir.path()).expect("dir");
    assert!(chain::resume(&admin, &efs, &empty).await.is_err());
    // With the genesis recorded, a link to its provider of its ID commits; the chain starts
    // from the genesis digest; the follower reproduces the writer's state.
    let writer_node = mykey_tests::pg::writing_through(
        Registry::open(
            std::sync::Arc::new(RealFs::new(gdir.path()).expect("dir")),
            mykey_engine::registry::RegistryConfig::default(),
        )
        .expect("reopen"),
        Writer::take_over(client(&pg).await, "node-a")
            .await
            .expect("writer"),
    );
    writer_node
        .link(at(2), actor("shop"), id, p, service("S-2"), false)
        .expect("a link to a genesis provider");
    let v = verify(&admin, 1, None)
        .await
        .expect("verify from the genesis");
    assert_eq!(v.to, 1);
    while t.step(&admin, &follower).await.expect("step") > 0 {}
    assert_eq!(contents(&follower), contents(&writer_node));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extract_checks_against_the_published_head_and_shows_no_other_id() {
    use mykey_engine::cluster::history::{check_extract, extract};
    let Some((_pg, _dir, _r, batch, admin, mut w)) = cluster("extract").await else {
        return;
    };
    let head_now = w.commit(&batch).await.expect("commit");
    let id = mykey(1);
    let mut out = Vec::new();
    let (seq, hash) = extract(&admin, &id, None, &mut out).await.expect("extract");
    assert_eq!((seq, hash), (head_now.seq, head_now.hash));
    let text = String::from_utf8(out).expect("text");
    // Only this ID's changes are in full (as hex): no other ID's bytes appear; the ID's do.
    let hex_of = |id: MyKeyId| format!("{:x}", mykey_engine::id::Hex(id.as_str().as_bytes()));
    assert!(text.contains(&hex_of(id)));
    for other in [mykey(0), mykey(2), mykey(3), mykey(4)] {
        assert!(!text.contains(&hex_of(other)), "{other} is in the extract");
    }
    let published = Some((head_now.seq, head_now.hash));
    let checked = check_extract(&text, published).expect("checks against the head");
    let wanted: Vec<u64> = history(&admin, &id)
        .await
        .expect("history")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        checked.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        wanted
    );
    assert_eq!((checked.to, checked.hash), (head_now.seq, head_now.hash));
    // Another head, a payload changed, a digest changed, a line left out: each refused.
    assert!(check_extract(&text, Some((head_now.seq, [5; 32]))).is_err());
    let lines: Vec<&str> = text.lines().collect();
    let c_line = lines
        .iter()
        .position(|l| l.contains(" c "))
        .expect("a change in full");
    let d_line = lines
        .iter()
        .position(|l| l.contains(" d "))
        .expect("a digest");
    let with = |i: usize, new: &str| {
        let mut l = lines.clone();
        l[i] = new;
        l.join("\n")
    };
    let flipped = {
        let mut s = lines[c_line].to_owned();
        let last = s.pop().expect("hex");
        s.push(if last == '0' { '1' } else { '0' });
        s
    };
    assert!(check_extract(&with(c_line, &flipped), published).is_err());
    let seq_d = lines[d_line].split(' ').next().expect("seq");
    let other_digest = format!("{seq_d} d {}", "ab".repeat(32));
    assert!(check_extract(&with(d_line, &other_digest), published).is_err());
    let mut dropped = lines.clone();
    dropped.remove(d_line);
    assert!(check_extract(&dropped.join("\n"), published).is_err());
}
