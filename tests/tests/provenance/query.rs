//! The query socket under misbehaving clients: malformed, oversized and
//! silent ones do not keep the others waiting.

use super::*;

/// Reads one answer line from `stream`.
fn read_answer(stream: &UnixStream) -> Value {
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("reading an answer");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}"))
}

/// Floods the query socket with malformed lines from one connection (a
/// writer that does not stop before another client, on its own connection,
/// has been answered, nor before 10,000 lines) while a reader takes the
/// `bad-request` answers, and asks `request` from a client in `ns` once a
/// thousand of them are in: its answer names `pid`, and the flood's last
/// line, the same request naming `ns` (the flood is the test's, in the
/// host's namespace), is answered too.
fn assert_answered_during_a_flood(
    socket: &Path,
    ns: &Netns,
    run_dir: &Path,
    request: &str,
    pid: u32,
) {
    use std::{
        io::Write as _,
        sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let stream = UnixStream::connect(socket).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (answered, read) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let writing = s.spawn(|| {
            let mut writer = &stream;
            let bad = b"{\"op\": not json\n";
            let mut sent = 0usize;
            while sent < 10_000 || !answered.load(Ordering::Relaxed) {
                writer.write_all(bad).expect("flooding");
                sent += 1;
            }
            let mut last: Value = serde_json::from_str(request).expect("a request");
            last["netns"] = netns_inode(ns).into();
            writer
                .write_all(format!("{last}\n").as_bytes())
                .expect("the last line");
            sent
        });
        let reading = s.spawn(|| {
            let mut lines = BufReader::new(&stream).lines();
            loop {
                let line = lines.next().expect("the flood's answers end early");
                let answer: Value = serde_json::from_str(&line.expect("an answer")).unwrap();
                if answer["ok"] == true {
                    return answer;
                }
                assert_eq!(answer["error"], "bad-request", "{answer}");
                read.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Set also when a check below fails, so that the writer ends.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = Stop(&answered);
        wait_for("the flood under way", Duration::from_secs(30), || {
            (read.load(Ordering::Relaxed) >= 1_000).then_some(())
        });
        let answers = raw_query(ns, None, run_dir, &[request.to_owned()]);
        drop(stop);
        assert_eq!(answers[0]["origin"]["pid"], pid, "{answers:#?}");
        let sent = writing.join().expect("the writer");
        let last = reading.join().expect("the reader");
        assert_eq!(last["origin"]["pid"], pid, "{last}");
        assert_eq!(read.load(Ordering::Relaxed), sent);
    });
}

#[test]
fn misbehaving_query_clients_do_not_keep_others_waiting() {
    let ns = Netns::new();
    // A socket file left by a daemon that died is replaced.
    let install = Install::new();
    let run_dir = install.run_dir();
    let socket = run_dir.join("query.sock");
    std::fs::create_dir_all(&run_dir).expect("creating the run directory");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("a stale socket"));
    assert!(
        UnixStream::connect(&socket).is_err(),
        "nothing answers there"
    );
    let mut daemon = Daemon::start_in(&install, &config(&ns), &[]);
    let holder = Holder::start(&ns, &[PROTECTED], None);
    let client = holder.hold_client(&ns, "::1", PROTECTED);
    let (peer, local) = ends(&holder.wait_accepted(1));
    let who_request = line(json!({"op": "who", "peer": peer, "local": local}));

    // A client that never sends, held open throughout.
    let silent = UnixStream::connect(&socket).expect("connecting");
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    // Ten thousand malformed lines, then a good one, on one connection.
    let mut flood = vec!["{\"op\": not json".to_owned(); 10_000];
    flood.push(who_request.clone());
    let answers = raw_query(&ns, None, &run_dir, &flood);
    assert_eq!(answers.len(), 10_001);
    assert!(
        answers[..10_000]
            .iter()
            .all(|a| a["ok"] == false && a["error"] == "bad-request"),
        "{:#?}",
        &answers[..3]
    );
    assert_eq!(answers[10_000]["origin"]["pid"], client.pid());
    // And another client is answered while such a flood is under way.
    assert_answered_during_a_flood(&socket, &ns, &run_dir, &who_request, client.pid());

    // An over-long line: too-long, and the connection closes unanswered.
    let answers = raw_query(
        &ns,
        None,
        &run_dir,
        &["x".repeat(5000), who_request.clone()],
    );
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_eq!(answers[0]["error"], "too-long");
    // 4096 bytes is still a line: a (bad) request, answered.
    let (head, tail) = (r#"{"op":"who","pad":""#, r#""}"#);
    let padded = format!("{head}{}{tail}", "x".repeat(4096 - head.len() - tail.len()));
    let answers = raw_query(&ns, None, &run_dir, &[padded, who_request.clone()]);
    assert_eq!(answers[0]["error"], "bad-request", "{answers:#?}");
    assert_eq!(answers[1]["origin"]["pid"], client.pid(), "{answers:#?}");

    // Meanwhile the silent one is told and closed.
    let answer = read_answer(&silent);
    assert_eq!(answer["error"], "timeout", "{answer}");
    assert_eq!((&silent).read(&mut [0; 1]).expect("EOF"), 0);

    // Past one uid's client limit (16): one `busy` line naming it; another
    // uid is still served; served again once one leaves.
    let mut idle: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&socket).expect("connecting"))
        .collect();
    let extra = UnixStream::connect(&socket).expect("connecting");
    extra
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let busy = read_answer(&extra);
    assert_eq!(busy["error"], "busy", "{busy}");
    assert!(
        busy["message"]
            .as_str()
            .is_some_and(|m| m.contains("16 clients of uid 0")),
        "{busy}"
    );
    let answers = raw_query(
        &ns,
        Some(65534),
        &run_dir,
        std::slice::from_ref(&who_request),
    );
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_ne!(answers[0]["error"], "busy", "another uid was turned away");
    idle.pop();
    wait_for("a query served again", Duration::from_secs(10), || {
        let answers = raw_query(&ns, None, &run_dir, std::slice::from_ref(&who_request));
        (answers[0]["origin"]["pid"] == client.pid()).then_some(())
    });
    drop(idle);

    // Every place taken (128: 16 clients of each of eight uids, each
    // within its idle time): root's query is still answered, and the
    // client idle longest, the first, is closed to make room.
    let uids: Vec<u32> = (1..=8).flat_map(|uid| [uid; 16]).collect();
    let mut full = IdleClients::unix(&socket, &uids);
    let answers = raw_query(&ns, None, &run_dir, std::slice::from_ref(&who_request));
    assert_eq!(answers[0]["origin"]["pid"], client.pid(), "{answers:#?}");
    full.assert_only_the_first_closed("the daemon");
    drop(full);

    // The daemon's exit removes the socket; the CLI says what to do.
    assert!(socket.exists());
    assert!(daemon.stop(), "the daemon did not exit 0");
    assert!(!socket.exists(), "{} left behind", socket.display());
    let out = loopwarden(&ns, None, &run_dir, &["who", &peer, &local]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no loopwarden daemon answers"), "{stderr}");
    assert!(stderr.contains("loopwarden run"), "{stderr}");
}
