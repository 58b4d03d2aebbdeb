#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
ip link set lo up
KREL=$(uname -r)
echo "LW-VM: kernel $KREL, $(nproc) cpu(s), lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)"

finish() {
    sync
    poweroff -f
    sleep 5
    reboot -f
}

dump() {
    echo "LW-VM: ---- daemon stderr ----"
    sed 's/^/LW-VM-ERR: /' /tmp/err 2>/dev/null
    echo "LW-VM: ---- daemon stdout (audit) ----"
    sed 's/^/LW-VM-OUT: /' /tmp/audit 2>/dev/null
    echo "LW-VM: ---- end ----"
}

fail() {
    dump
    echo "LW-VM-RESULT: FAIL kernel=$KREL $*"
    finish
}
# await TRIES WHAT CMD...: runs CMD every 0.1 s until it succeeds; fails
# with WHAT after TRIES tries.
await() {
    tries=$1
    what=$2
    shift 2
    i=0
    until "$@"; do
        i=$((i + 1))
        [ $i -ge "$tries" ] && fail "$what"
        sleep 0.1
    done
}
listening() { netstat -ltn 2>/dev/null | grep -q "$1"; }
denials_at_least() { [ "$(grep -c '"verdict":"deny"' /tmp/audit)" -ge "$1" ]; }

# fetch URL: prints the page or fails; the error goes to /tmp/fetch.err.
# (busybox 1.35's `wget -T` segfaults: time out with `timeout` instead.)
fetch() { timeout 10 wget -q -O - "$1" 2>/tmp/fetch.err; }
# relay URL: the same through the relay executable (a copy of busybox).
relay() { timeout 10 /relay/wget -q -O - "$1" 2>/tmp/fetch.err; }
socat_fetch() { timeout 10 /socat/wget -q -O - "$1" 2>/tmp/fetch.err; }
egress_fetch() { timeout 10 /egress/wget -q -O - "$1" 2>/tmp/fetch.err; }

V4=http://127.0.0.1:8080/
V6=http://[::1]:8080/
MAPPED=http://[::ffff:127.0.0.1]:8080/

mkdir -p /www
echo lw-ok > /www/index.html
httpd -p 8080 -h /www || fail "httpd did not start"
for url in $V4 $V6 $MAPPED; do
    fetch $url | grep -q lw-ok || fail "before the daemon: $url unreachable: $(cat /tmp/fetch.err)"
    relay $url | grep -q lw-ok || fail "before the daemon: relay to $url failed: $(cat /tmp/fetch.err)"
done
echo "LW-VM: listener up on 8080 (v4, v6, v4-mapped)"

# btrfs as a module (as Debian builds it), loaded before the daemon: its
# offsets then come from the module's split BTF. On a btrfs image, the same
# program in two subvolumes (the same inode number in both): a rule naming
# one's path must not match the other.
CONFIG=/etc/lw.toml
ORDER=/lib/modules/$KREL/guest.order
if [ -f $ORDER ]; then
    # Before the socket diagnostics are loaded, doctor says what is missing.
    if grep -qx tcp_diag $ORDER; then
        loopwarden doctor >/tmp/doctor 2>&1
        grep -q 'no TCP socket diagnostics.*modprobe tcp_diag' /tmp/doctor || fail "doctor did not name the missing tcp_diag: $(grep 'sock destroy' /tmp/doctor)"
        echo "LW-VM: doctor before tcp_diag: $(grep -o 'no TCP socket diagnostics[^:]*' /tmp/doctor | head -n 1)"
    fi
    # The socket diagnostics come after the daemon's first sweep (below).
    EARLY=$(grep -vx 'inet_diag\|tcp_diag' $ORDER)
    for m in $EARLY; do
        insmod /lib/modules/$KREL/$m.ko 2>/tmp/insmod.err || fail "insmod $m: $(cat /tmp/insmod.err)"
    done
    [ -e /sys/kernel/btf/btrfs ] || fail "btrfs is loaded but /sys/kernel/btf/btrfs is missing"
    echo "LW-VM: loaded as modules: $(echo $EARLY)"
    mkdir -p /mnt/btrfs
    mount -t btrfs -o loop /btrfs.img /mnt/btrfs 2>/tmp/mount.err || fail "mounting the btrfs image: $(cat /tmp/mount.err)"
    lw-subvol /mnt/btrfs a b 2>/tmp/subvol.err || fail "creating subvolumes: $(cat /tmp/subvol.err)"
    for s in a b; do
        cp /bin/busybox /mnt/btrfs/$s/relay && ln -s relay /mnt/btrfs/$s/wget || fail "copying busybox into subvolume $s"
        timeout 10 /mnt/btrfs/$s/wget -q -O - $V4 2>/tmp/fetch.err | grep -q lw-ok || fail "before the daemon: /mnt/btrfs/$s/wget failed: $(cat /tmp/fetch.err)"
    done
    INO=$(stat -c %i /mnt/btrfs/a/relay)
    [ "$INO" = "$(stat -c %i /mnt/btrfs/b/relay)" ] || fail "the two copies have different inode numbers: no alias to show"
    echo "LW-VM: btrfs: /mnt/btrfs/a/relay and /mnt/btrfs/b/relay, inode $INO in both, devices $(stat -c %d /mnt/btrfs/a/relay) and $(stat -c %d /mnt/btrfs/b/relay)"
    CONFIG=/tmp/lw.toml
    cp /etc/lw.toml $CONFIG
    printf '\n[[rule]]\nname = "btrfs-a"\naction = "deny"\nexe = "/mnt/btrfs/a/relay"\n' >>$CONFIG
fi

# A relay's connection opened before the daemon (httpd waits up to a minute
# for its request): the daemon cuts it as it starts enforcing, through
# sock_diag. Where inet_diag and tcp_diag are modules, they are loaded only
# once the daemon has started: its first sweep cannot list the sockets,
# status says so and how to fix it, and the sweep of a reload (SIGHUP)
# after loading them cuts the connection.
established() { netstat -tn 2>/dev/null | grep -q "127.0.0.1:8080 .*ESTABLISHED"; }
sleep 600 | /relay/nc 127.0.0.1 8080 >/dev/null 2>&1 &
NCPID=$!
await 50 "the relay's early connection is not established" established
echo "LW-VM: a relay connection made before the daemon is up (nc, pid $NCPID)"

loopwarden run --config $CONFIG --log-format json >/tmp/audit 2>/tmp/err &
LW=$!
i=0
while ! grep -q 'ready:' /tmp/err; do
    kill -0 $LW 2>/dev/null || fail "daemon exited before it was ready"
    i=$((i + 1))
    [ $i -ge 1200 ] && fail "daemon not ready after 120 s"
    sleep 0.1
done
echo "LW-VM: $(grep 'ready:' /tmp/err)"
if [ -f $ORDER ] && grep -qx tcp_diag $ORDER; then
    swept() { loopwarden status >/tmp/status 2>&1; grep -q '^sweep' /tmp/status; }
    await 100 "status never showed the first sweep" swept
    grep -q '^sweep *INCOMPLETE.*0 connections cut.*modprobe tcp_diag' /tmp/status || fail "status did not say the sweep without tcp_diag was incomplete: $(grep '^sweep' /tmp/status)"
    echo "LW-VM: $(grep '^sweep' /tmp/status)"
    kill -0 $NCPID 2>/dev/null || fail "nc's connection went without the socket diagnostics"
    # A direct client's connection, tagged: without the diagnostics the
    # daemon cannot tell it is open, so it does not name it, and says why.
    sleep 600 | nc 127.0.0.1 8080 >/dev/null 2>&1 &
    DIRECT=$!
    # Client sides (the remote end 8080): the relay's nc and this one.
    direct_up() { [ "$(netstat -tn 2>/dev/null | grep -c '127.0.0.1:8080 *ESTABLISHED')" -ge 2 ]; }
    await 50 "the direct client's connection is not established" direct_up
    loopwarden conns --json >/tmp/conns 2>&1
    grep -q '"exe_name"' /tmp/conns && fail "conns named a connection it could not check: $(cat /tmp/conns)"
    grep -q 'cannot tell whether the connections of network namespace.*modprobe tcp_diag' /tmp/err || fail "the daemon did not say why it answers unknown without tcp_diag"
    echo "LW-VM: without tcp_diag conns names nothing and the daemon says why"
    for m in inet_diag tcp_diag; do
        insmod /lib/modules/$KREL/$m.ko 2>/tmp/insmod.err || fail "insmod $m: $(cat /tmp/insmod.err)"
    done
    echo "LW-VM: loaded inet_diag and tcp_diag, then SIGHUP (the policy unchanged)"
    kill -HUP $LW
fi
if [ -f $ORDER ]; then
    grep -q 'btrfs subvolumes are told apart' /tmp/err || fail "the daemon did not read btrfs's offsets from /sys/kernel/btf/btrfs"
    echo "LW-VM: $(grep -o 'btrfs subvolumes are told apart[^"]*' /tmp/err | head -n 1)"
    if timeout 10 /mnt/btrfs/a/wget -q -O - $V4 >/dev/null 2>/tmp/fetch.err; then
        fail "the rule's file on btrfs (subvolume a) was NOT refused"
    fi
    grep -qi 'refused' /tmp/fetch.err || fail "subvolume a's wget failed, but not with connection refused: $(cat /tmp/fetch.err)"
    timeout 10 /mnt/btrfs/b/wget -q -O - $V4 2>/tmp/fetch.err | grep -q lw-ok || fail "subvolume b's file (same inode number) was refused: $(cat /tmp/fetch.err)"
    await 50 "no deny line names the btrfs-a rule" grep -q '"rule":"btrfs-a"' /tmp/audit
    echo "LW-VM: btrfs: subvolume a's relay refused, subvolume b's (inode $INO too) allowed"
fi
await 100 "the relay's connection made before the daemon was not cut" grep -q '"verdict":"cut"' /tmp/audit
nc_gone() { ! kill -0 $NCPID 2>/dev/null; }
await 100 "nc outlived the cut of its connection" nc_gone
echo "LW-VM: cut: $(grep -o '"verdict":"cut","rule":"[^"]*"' /tmp/audit | head -n 1), nc exited"
swept_ok() { loopwarden status >/tmp/status 2>&1; grep -q '^sweep *ok at .*: 1 connection cut' /tmp/status; }
await 50 "status did not show the sweep that cut nc's connection" swept_ok
echo "LW-VM: $(grep '^sweep' /tmp/status)"
if [ -n "$DIRECT" ]; then
    loopwarden conns --json >/tmp/conns 2>&1
    grep -q '"exe_name": *"busybox"' /tmp/conns || fail "with tcp_diag, conns did not name the direct client: $(cat /tmp/conns)"
    echo "LW-VM: with tcp_diag conns names the direct client (busybox nc)"
    kill $DIRECT
fi

# Provenance: the accepted socket's getsockopt names its client (8082 is
# protected, 8083 not), and another option's answer longer than a page
# (SO_PEERGROUPS) is the kernel's, whole.
lw-origin-probe 8082 8083 >/tmp/probe 2>&1 || fail "getsockopt origin: $(cat /tmp/probe)"
sed 's/^/LW-VM: origin /' /tmp/probe

for url in $V4 $V6 $MAPPED; do
    if relay $url >/dev/null; then
        fail "relay connect to $url was NOT refused"
    fi
    grep -qi 'refused' /tmp/fetch.err || fail "relay to $url failed, but not with connection refused: $(cat /tmp/fetch.err)"
    echo "LW-VM: relay -> $url refused: $(cat /tmp/fetch.err)"
    fetch $url | grep -q lw-ok || fail "busybox to $url was refused: $(cat /tmp/fetch.err)"
    echo "LW-VM: busybox -> $url allowed"
done
if socat_fetch $V4 >/dev/null; then
    fail "catalog:socat (exe_name socat) connect to $V4 was NOT refused"
fi
echo "LW-VM: socat (catalog exe_name rule) -> $V4 refused"
# Relay detection: lw-relay, named by no rule, listens on a non-loopback
# address (10.0.2.15 on lo: the guest has no other link) and forwards to
# the service; a client of that address is a non-local peer. Its
# connections come from 10.0.2.16, another address of the guest: one whose
# two ends have the same address is the host talking to itself, which is
# no evidence.
ip addr add 10.0.2.15/32 dev lo || fail "adding 10.0.2.15 to lo failed"
ip addr add 10.0.2.16/32 dev lo || fail "adding 10.0.2.16 to lo failed"
ip route replace local 10.0.2.15 dev lo table local src 10.0.2.16 \
    || fail "sourcing connections to 10.0.2.15 from 10.0.2.16 failed"
lw-relay 10.0.2.15:9100 127.0.0.1:8080 &
RELAYPID=$!
await 50 "lw-relay did not listen" listening 10.0.2.15:9100
if fetch http://10.0.2.15:9100/ >/dev/null; then
    fail "the relay verdict did not refuse lw-relay (an unnamed forwarder)"
fi
await 50 "no relay-verdict deny of lw-relay with accepted evidence" \
    grep -q '"rule":"relay".*"exe_name":"lw-relay".*"via":"10.0.2.16:[0-9]*","via_how":"accepted"' /tmp/audit
grep '"exe_name":"lw-relay"' /tmp/audit | head -n 1 | sed 's/^/LW-VM: relay verdict: /'
kill $RELAYPID
# Received evidence (tcp_rcv_space_adjust): a tunnel client takes its
# server's greeting with splice(2), then connects to the service.
lw-relay --greet 10.0.2.15:9101 &
GREETPID=$!
await 50 "the greeter did not listen" listening 10.0.2.15:9101
if lw-relay --dial 10.0.2.15:9101 127.0.0.1:8080 2>/tmp/dial.err; then
    fail "the relay verdict did not refuse a client that spliced data from a non-local peer"
fi
grep -qi 'refused' /tmp/dial.err || fail "the splicing client failed, but not with connection refused: $(cat /tmp/dial.err)"
await 50 "no relay-verdict deny with received evidence from the greeter" \
    grep -q '"rule":"relay".*"via":"10.0.2.15:9101","via_how":"received"' /tmp/audit
echo "LW-VM: splicing client refused, via=10.0.2.15:9101 (received)"
kill $GREETPID
# A datagram from port 53 (recvmsg hooks): to a socket whose port the
# kernel chose (a resolver's) it is a DNS answer and no evidence; to one
# whose user bound its port (a UDP tunnel client's) it is, and the client's
# connect is refused. Whether the port was bound is read from
# sk_userlocks, at byte 512 of struct sock on 6.1.
lw-relay --udp-dial 10.0.2.15:0 10.0.2.16:53 127.0.0.1:8080 2>/tmp/udp.err \
    || fail "a datagram from port 53 to a kernel-chosen port counted as evidence: $(cat /tmp/udp.err)"
if lw-relay --udp-dial 10.0.2.15:9102 10.0.2.16:53 127.0.0.1:8080 2>/tmp/udp.err; then
    fail "the relay verdict did not refuse a client whose bound UDP port heard from port 53"
fi
grep -qi 'refused' /tmp/udp.err || fail "the UDP client failed, but not with connection refused: $(cat /tmp/udp.err)"
await 50 "no relay-verdict deny with received evidence from 10.0.2.16:53" \
    grep -q '"rule":"relay".*"via":"10.0.2.16:53","via_how":"received"' /tmp/audit
echo "LW-VM: UDP client: from port 53 to a chosen port allowed, to a bound port refused (received)"

# The egress guard: lw-egress (a copy of busybox an [[egress]] rule names)
# may not reach a private or the metadata address; busybox itself may.
ip addr add 169.254.169.254/32 dev lo || fail "adding 169.254.169.254 to lo failed"
for url in http://10.0.2.15:8080/ http://169.254.169.254:8080/; do
    if egress_fetch $url >/dev/null; then
        fail "the egress guard let lw-egress reach $url"
    fi
    grep -qi 'refused' /tmp/fetch.err || fail "lw-egress to $url failed, but not with connection refused: $(cat /tmp/fetch.err)"
    fetch $url | grep -q lw-ok || fail "busybox to $url was refused: $(cat /tmp/fetch.err)"
    echo "LW-VM: egress guard: lw-egress -> $url refused, busybox allowed"
done
await 50 "no egress:vm-egress refusal of 169.254.169.254:8080" \
    grep -q '"verdict":"deny","rule":"egress:vm-egress","dst":"169.254.169.254:8080"' /tmp/audit

await 100 "expected 5 deny lines in the audit output" denials_at_least 5
grep -q '"rule":"relay-exe"' /tmp/audit || fail "no deny line names the relay-exe rule"
grep -q '"rule":"catalog:socat"' /tmp/audit || fail "no deny line names catalog:socat"
# (`exe` comes from /proc after the fact and is null once wget has exited;
# exe_name is what the kernel read.)
grep -q '"exe_name":"relay"' /tmp/audit || fail "no audit line shows exe_name relay"
grep '"rule":"relay-exe"' /tmp/audit | head -n 1 | sed 's/^/LW-VM: audit: /'
if grep -q '"rule":"netcat"\|"verdict":"deny".*"exe":"/bin/busybox"' /tmp/audit; then
    fail "busybox itself was judged"
fi

# A SIGKILL leaves enforcement pinned; a new daemon adopts it.
kill -9 $LW
wait $LW
relay $V4 >/dev/null && fail "the relay got through after the daemon was killed"
echo "LW-VM: after SIGKILL the pinned programs still refuse the relay"
loopwarden run --config $CONFIG --log-format json >>/tmp/audit 2>>/tmp/err &
LW=$!
i=0
while [ "$(grep -c 'ready:' /tmp/err)" -lt 2 ]; do
    kill -0 $LW 2>/dev/null || fail "the second daemon exited before it was ready"
    i=$((i + 1))
    [ $i -ge 1200 ] && fail "the second daemon was not ready after 120 s"
    sleep 0.1
done
grep -q 'adopted the pinned maps' /tmp/err || fail "the second daemon did not adopt the pinned maps"
relay $V4 >/dev/null && fail "the relay got through after the restart"
echo "LW-VM: a restarted daemon adopted the pinned maps and links"
kill $LW
wait $LW
relay $V4 >/dev/null && fail "the relay got through after SIGTERM"
loopwarden detach || fail "loopwarden detach failed"
relay_ok() { relay $V4 >/dev/null; }
await 50 "relay still refused 5 s after loopwarden detach" relay_ok
echo "LW-VM: after loopwarden detach the relay connects again"
dump
echo "LW-VM-RESULT: PASS kernel=$KREL"
finish
