package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/contracts"
	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/internal/redistest"
)

// scenario is what the operator commands are tried on: a 4-partition
// stream "orders" with 40 messages, group "billing" whose consumer read and
// acked them all, and group "audit" whose one consumer lags: it read a
// batch of 6, acked 2, dead-lettered 1 and still holds 3 (pending).
type scenario struct {
	ns      string
	env     func(string) string
	rdb     redis.UniversalClient
	seg     *segmenter.Segmenter
	st      *segmenter.Stream
	audit   *segmenter.Consumer
	held    []*contracts.CMessage // audit's pending messages
	dead    *contracts.CMessage   // the one it dead-lettered
	sent    map[int][]string      // IDs sent, by partition
	billing *segmenter.Consumer
}

// newScenario is the scenario on a single Redis node.
func newScenario(t *testing.T) *scenario {
	t.Helper()
	srv := redistest.Server(t)
	return newScenarioOn(t, srv.URL, srv.Client(t))
}

// newClusterScenario is the scenario on a Redis Cluster, whose URL the
// commands get (cluster=true, the seeds in addr).
func newClusterScenario(t *testing.T) *scenario {
	t.Helper()
	cl := redistest.Cluster(t)
	url := "redis://" + cl.Addrs[0] + "?cluster=true"
	for _, a := range cl.Addrs[1:] {
		url += "&addr=" + a
	}
	return newScenarioOn(t, url, cl.Client(t))
}

// onBackends runs test on a single node and on a cluster.
func onBackends(t *testing.T, test func(t *testing.T, newScenario func(*testing.T) *scenario)) {
	t.Run("single node", func(t *testing.T) { test(t, newScenario) })
	t.Run("cluster", func(t *testing.T) { test(t, newClusterScenario) })
}

func newScenarioOn(t *testing.T, url string, rdb redis.UniversalClient) *scenario {
	t.Helper()
	ctx := context.Background()
	sc := &scenario{ns: redistest.Namespace(t), env: envWith(map[string]string{envRedisURL: url}), rdb: rdb}
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Client: sc.rdb, Namespace: sc.ns, SessionTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sc.seg = seg
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if sc.audit != nil {
			_ = sc.audit.Nack(sc.held...) // else Shutdown waits for them
		}
		_ = seg.Close(cctx)
	})
	if sc.st, err = seg.RegisterStream(ctx, "orders", 4, 0); err != nil {
		t.Fatal(err)
	}
	msgs := make([]*contracts.PMessage, 40)
	for i := range msgs {
		msgs[i] = &contracts.PMessage{PartitionKey: fmt.Sprintf("user-%d", i%10), Data: fmt.Appendf(nil, `{"n":%d}`, i)}
	}
	ids, err := sc.st.SendBatch(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	sc.sent = make(map[int][]string)
	for i, m := range msgs {
		p := sc.st.PartitionOf(m.PartitionKey)
		sc.sent[p] = append(sc.sent[p], ids[i])
	}
	if sc.billing, err = seg.RegisterConsumer(ctx, "orders", "billing", 100, time.Minute, segmenter.WithConsumerName("billing-1")); err != nil {
		t.Fatal(err)
	}
	for acked := 0; acked < 40; {
		got, err := sc.billing.Read(ctx, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := sc.billing.Ack(ctx, got...); err != nil {
			t.Fatal(err)
		}
		acked += len(got)
	}
	if sc.audit, err = seg.RegisterConsumer(ctx, "orders", "audit", 6, time.Minute, segmenter.WithConsumerName("audit-1")); err != nil {
		t.Fatal(err)
	}
	var got []*contracts.CMessage
	redistest.Eventually(t, 10*time.Second, func() bool {
		m, err := sc.audit.Read(ctx, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m...)
		return len(got) >= 6
	}, "audit never read its batch")
	if err := sc.audit.Ack(ctx, got[:2]...); err != nil {
		t.Fatal(err)
	}
	if err := sc.audit.DeadLetter(ctx, "test: cannot process", got[2]); err != nil {
		t.Fatal(err)
	}
	sc.dead, sc.held = got[2], got[3:]
	return sc
}

// run runs the command line with the scenario's REDIS_URL and namespace.
func (sc *scenario) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runCmd(t, sc.env, append(args, "-namespace", sc.ns)...)
}

// mustRun runs the command line and fails the test unless it exits 0.
func (sc *scenario) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, stdout, stderr := sc.run(t, args...)
	if code != exitOK {
		t.Fatalf("segmenter %s: exit code %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

// groupsState is what Redis says of every group of the scenario's stream:
// the read-only commands must leave it as it is.
func (sc *scenario) groupsState(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	ks := keyspace.New(sc.ns)
	var b strings.Builder
	for p := range 4 {
		key := ks.Partition("orders", p)
		gs, err := sc.rdb.XInfoGroups(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(&b, gs)
		for _, g := range gs {
			pe, err := sc.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: key, Group: g.Name, Start: "-", End: "+", Count: 100}).Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range pe {
				fmt.Fprintf(&b, " %s/%s/%d", e.ID, e.Consumer, e.RetryCount)
			}
			cs, err := sc.rdb.XInfoConsumers(ctx, key, g.Name).Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				fmt.Fprintf(&b, " %s:%d", c.Name, c.Pending)
			}
		}
		fmt.Fprintf(&b, " dlq:%d\n", sc.rdb.XLen(ctx, ks.DeadLetters("orders", p, "audit")).Val())
	}
	return b.String()
}

func decode[T any](t *testing.T, stdout string) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode JSON: %v\n%s", err, stdout)
	}
	return v
}

func TestDescribeCommand(t *testing.T) { onBackends(t, testDescribeCommand) }

func testDescribeCommand(t *testing.T, newScenario func(*testing.T) *scenario) {
	t.Parallel()
	sc := newScenario(t)
	before := sc.groupsState(t)

	out := sc.mustRun(t, "describe", "-stream", "orders")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^namespace ` + regexp.QuoteMeta(sc.ns) + `, stream orders: 4 partitions, server time `),
		regexp.MustCompile(`(?m)^GROUP audit: generation \d+, 1 members, lag 34, pending 3, dead letters 1$`),
		regexp.MustCompile(`(?m)^GROUP billing: generation \d+, 1 members, lag 0, pending 0, dead letters 0$`),
		regexp.MustCompile(`(?m)^MEMBER\s+STATE\s+PARTITIONS\s+LEASES\s+HEARTBEAT-AGE\s+SESSION-EXPIRES-IN$`),
		regexp.MustCompile(`(?m)^audit-1\s+live\s+0-3\s+0-3\s+\d+(\.\d+)?m?s\s+\d+(\.\d+)?m?s$`),
		regexp.MustCompile(`(?m)^PARTITION\s+LAST-DELIVERED\s+LOG-END\s+LAG\s+PENDING\s+OLDEST-PENDING-AGE\s+OWNER\s+EPOCH\s+LEASE-EXPIRES-IN\s+DLQ$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("describe output does not match %s:\n%s", want, out)
		}
	}
	for p := range 4 {
		ids := sc.sent[p]
		line := regexp.MustCompile(fmt.Sprintf(`(?m)^%d\s+\S+\s+%s\s+\d+\s+\d+\s+\S+\s+audit-1\s+\d+\s+\d`, p, regexp.QuoteMeta(ids[len(ids)-1])))
		if !line.MatchString(out) {
			t.Errorf("describe does not show partition %d (log end %s) held by audit-1:\n%s", p, ids[len(ids)-1], out)
		}
	}

	// JSON, of one group, with the figures per partition.
	d := decode[describeJSON](t, sc.mustRun(t, "describe", "-stream", "orders", "-group", "audit", "-json"))
	if d.Namespace != sc.ns || d.Stream != "orders" || len(d.Groups) != 1 || d.ServerTime.IsZero() {
		t.Fatalf("describe -json: %+v", d)
	}
	g := d.Groups[0]
	if g.Group != "audit" || g.Lag != 34 || g.Pending != 3 || g.DeadLetters != 1 || len(g.Partitions) != 4 || len(g.Members) != 1 {
		t.Fatalf("audit: %+v", g)
	}
	m := g.Members[0]
	if m.ID != "audit-1" || !m.Live || m.HeartbeatAgeMs == nil || *m.HeartbeatAgeMs > 3000 || !slices.Equal(m.Leases, []int{0, 1, 2, 3}) {
		t.Errorf("member %+v", m)
	}
	var lag, pending, dlq int64
	epochs := map[int]int64{}
	for _, o := range sc.audit.Assignment() {
		epochs[o.Partition] = o.Epoch
	}
	for _, p := range g.Partitions {
		if p.Lag == nil {
			t.Fatalf("partition %d: lag unknown", p.Partition)
		}
		lag, pending, dlq = lag+*p.Lag, pending+p.Pending, dlq+p.DeadLetters
		ids := sc.sent[p.Partition]
		if p.LogEnd != ids[len(ids)-1] || p.Length != int64(len(ids)) || p.Owner != "audit-1" || !p.LeaseHeld ||
			p.Epoch != epochs[p.Partition] || p.LeaseExpiresInMs <= 0 || p.AssignedTo != "audit-1" {
			t.Errorf("partition %+v (sent %d, last %s, epoch %d)", p, len(ids), ids[len(ids)-1], epochs[p.Partition])
		}
		if p.Pending > 0 && (p.OldestPendingID == "" || p.OldestPendingDeliveries != 1) {
			t.Errorf("partition %d: pending %d, oldest %q delivered %d times", p.Partition, p.Pending, p.OldestPendingID, p.OldestPendingDeliveries)
		}
	}
	if lag != 34 || pending != 3 || dlq != 1 {
		t.Errorf("partitions sum to lag %d, pending %d, dead letters %d; want 34, 3, 1", lag, pending, dlq)
	}

	// Without -namespace: the only namespace that has the stream.
	code, stdout, stderr := runCmd(t, sc.env, "describe", "-stream", "orders", "-group", "audit")
	if code != exitOK || !strings.Contains(stdout, "namespace "+sc.ns+",") {
		// Other tests' namespaces have "orders" too when they share the server.
		if code != exitUsage || !strings.Contains(stderr, "pass -namespace") {
			t.Errorf("describe without -namespace: exit %d\n%s%s", code, stdout, stderr)
		}
	}
	if code, _, stderr := sc.run(t, "describe", "-stream", "orders", "-group", "nope"); code != exitFailure || !strings.Contains(stderr, "group missing") && !strings.Contains(stderr, "no group") {
		t.Errorf("describe of an unknown group: exit %d, stderr %s", code, stderr)
	}
	if code, _, stderr := sc.run(t, "describe", "-stream", "nope"); code != exitFailure || !strings.Contains(stderr, "stream not found") {
		t.Errorf("describe of an unknown stream: exit %d, stderr %s", code, stderr)
	}
	if after := sc.groupsState(t); after != before {
		t.Errorf("describe changed the groups:\nbefore %s\nafter  %s", before, after)
	}
}

func TestLagCommand(t *testing.T) { onBackends(t, testLagCommand) }

func testLagCommand(t *testing.T, newScenario func(*testing.T) *scenario) {
	t.Parallel()
	sc := newScenario(t)
	before := sc.groupsState(t)
	out := sc.mustRun(t, "lag")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^STREAM\s+GROUP\s+LAG\s+PENDING\s+WORST-PARTITION\s+WORST-LAG\s+WORST-PENDING$`),
		regexp.MustCompile(`(?m)^orders\s+audit\s+34\s+3\s+\d\s+\d+\s+\d+$`),
		regexp.MustCompile(`(?m)^orders\s+billing\s+0\s+0\s+\d\s+0\s+0$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("lag output does not match %s:\n%s", want, out)
		}
	}
	l := decode[lagJSON](t, sc.mustRun(t, "lag", "-stream", "orders", "-group", "audit", "-json"))
	if l.Namespace != sc.ns || len(l.Groups) != 1 {
		t.Fatalf("lag -json: %+v", l)
	}
	g := l.Groups[0]
	if g.Stream != "orders" || g.Group != "audit" || g.Lag != 34 || g.Pending != 3 || len(g.Partitions) != 4 || g.WorstLag == nil {
		t.Fatalf("audit: %+v", g)
	}
	for _, p := range g.Partitions {
		if *p.Lag > *g.WorstLag {
			t.Errorf("partition %d lags %d, more than the worst %d (partition %d)", p.Partition, *p.Lag, *g.WorstLag, g.WorstPartition)
		}
	}
	if code, _, stderr := sc.run(t, "lag", "-group", "nope"); code != exitFailure || !strings.Contains(stderr, `no group "nope"`) {
		t.Errorf("lag of an unknown group: exit %d, stderr %s", code, stderr)
	}
	if after := sc.groupsState(t); after != before {
		t.Errorf("lag changed the groups:\nbefore %s\nafter  %s", before, after)
	}
}

func TestStreamsCommand(t *testing.T) { onBackends(t, testStreamsCommand) }

func testStreamsCommand(t *testing.T, newScenario func(*testing.T) *scenario) {
	t.Parallel()
	sc := newScenario(t)
	out := sc.mustRun(t, "streams")
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sc.ns) + `\s+orders\s+4\s+unbounded\s+murmur2\s+40\s+audit billing$`).MatchString(out) {
		t.Errorf("streams output:\n%s", out)
	}
	s := decode[streamsJSON](t, sc.mustRun(t, "streams", "-json"))
	want := streamsJSON{Streams: []streamJSON{{Namespace: sc.ns, Name: "orders", Partitions: 4, Retention: "maxlen",
		Partitioner: "murmur2", Length: 40, Groups: []string{"audit", "billing"}}}}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("streams -json: %+v, want %+v", s, want)
	}
	// Without -namespace: every namespace, this one among them.
	code, stdout, _ := runCmd(t, sc.env, "streams", "-json")
	if code != exitOK || !strings.Contains(stdout, `"namespace": "`+sc.ns+`"`) {
		t.Errorf("streams of every namespace: exit %d\n%s", code, stdout)
	}
}

func TestTailCommand(t *testing.T) { onBackends(t, testTailCommand) }

func testTailCommand(t *testing.T, newScenario func(*testing.T) *scenario) {
	t.Parallel()
	sc := newScenario(t)
	before := sc.groupsState(t)
	out := sc.mustRun(t, "tail", "-stream", "orders", "-n", "2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 8 {
		t.Fatalf("tail -n 2 of 4 partitions printed %d lines:\n%s", len(lines), out)
	}
	for p := range 4 {
		ids := sc.sent[p]
		for _, id := range ids[len(ids)-2:] {
			if !regexp.MustCompile(fmt.Sprintf(`(?m)^%d %s user-\d: \{"n":\d+\}$`, p, regexp.QuoteMeta(id))).MatchString(out) {
				t.Errorf("tail lacks partition %d entry %s:\n%s", p, id, out)
			}
		}
	}
	// JSON lines, one partition.
	out = sc.mustRun(t, "tail", "-stream", "orders", "-partition", "1", "-n", "100", "-json")
	dec := json.NewDecoder(strings.NewReader(out))
	var got []string
	for dec.More() {
		var e entryJSON
		if err := dec.Decode(&e); err != nil {
			t.Fatal(err)
		}
		if e.Partition != 1 || e.Data == nil || !strings.HasPrefix(*e.Data, `{"n":`) || sc.st.PartitionOf(e.Key) != 1 {
			t.Errorf("entry %+v", e)
		}
		got = append(got, e.ID)
	}
	if !slices.Equal(got, sc.sent[1]) {
		t.Errorf("tail -partition 1 gave %v, want %v", got, sc.sent[1])
	}

	// -follow prints the last entry of each partition, then what comes,
	// until interrupted.
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"tail", "-stream", "orders", "-n", "1", "-follow", "-namespace", sc.ns}, sc.env, strings.NewReader(""), &stdout, &stderr)
	}()
	redistest.Eventually(t, 10*time.Second, func() bool { return strings.Count(stdout.String(), "\n") == 4 }, "tail -follow printed no last entries")
	ids, err := sc.st.SendBatch(context.Background(), []*contracts.PMessage{
		{PartitionKey: "user-1", Data: []byte("hello"), Metadata: map[string]string{"type": "greeting"}},
		{PartitionKey: "user-2", Data: []byte("\x00\x01")},
	})
	if err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, func() bool { return strings.Count(stdout.String(), "\n") >= 6 }, "tail -follow printed no new entries")
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("tail -follow ended with %d: %s", code, stderr.String())
	}
	for _, want := range []string{
		fmt.Sprintf("%d %s user-1: hello {type=greeting}\n", sc.st.PartitionOf("user-1"), ids[0]),
		fmt.Sprintf("%d %s user-2: \"\\x00\\x01\"\n", sc.st.PartitionOf("user-2"), ids[1]),
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("tail -follow lacks %q:\n%s", want, stdout.String())
		}
	}
	// Looking never moved a group: only the new messages' partitions grew.
	sc.sent[sc.st.PartitionOf("user-1")] = append(sc.sent[sc.st.PartitionOf("user-1")], ids[0])
	after := sc.groupsState(t)
	if strings.Count(after, "audit-1") != strings.Count(before, "audit-1") {
		t.Errorf("tail changed the groups:\nbefore %s\nafter  %s", before, after)
	}
	code, _, stderr2 := sc.run(t, "tail", "-stream", "orders", "-partition", "4")
	if code != exitUsage || !strings.Contains(stderr2, "partitions 0 to 3") {
		t.Errorf("tail -partition 4: exit %d, %s", code, stderr2)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSendCommand(t *testing.T) {
	t.Parallel()
	sc := newScenario(t)
	ctx := context.Background()
	p := sc.st.PartitionOf("user-7")
	out := sc.mustRun(t, "send", "-stream", "orders", "-key", "user-7", "-data", `{"amount":5}`, "-meta", "type=payment")
	m := regexp.MustCompile(`(?m)^orders\s+user-7\s+(\d+)\s+(\d+-\d+)$`).FindStringSubmatch(out)
	if m == nil || m[1] != fmt.Sprint(p) {
		t.Fatalf("send output:\n%s", out)
	}
	entries, err := sc.rdb.XRange(ctx, keyspace.New(sc.ns).Partition("orders", p), m[2], m[2]).Result()
	if err != nil || len(entries) != 1 {
		t.Fatalf("the sent entry %s: %v, %v", m[2], entries, err)
	}
	if v := entries[0].Values; v["k"] != "user-7" || v["d"] != `{"amount":5}` || v["m.type"] != "payment" {
		t.Errorf("entry fields %v", v)
	}
	// stdin, whole, then line by line.
	code, stdout, stderr := runCmdIn(t, sc.env, "from stdin\n", "send", "-stream", "orders", "-key", "user-7", "-json", "-namespace", sc.ns)
	if code != exitOK {
		t.Fatalf("send from stdin: %d %s", code, stderr)
	}
	one := decode[sendJSON](t, stdout)
	if len(one.Sent) != 1 || one.Sent[0].Partition != p || one.Stream != "orders" || one.Namespace != sc.ns {
		t.Fatalf("send -json: %+v", one)
	}
	code, stdout, stderr = runCmdIn(t, sc.env, "a\nb\nc\n", "send", "-stream", "orders", "-key", "user-7", "-lines", "-json", "-namespace", sc.ns)
	if code != exitOK {
		t.Fatalf("send -lines: %d %s", code, stderr)
	}
	three := decode[sendJSON](t, stdout)
	if len(three.Sent) != 3 {
		t.Fatalf("send -lines: %+v", three)
	}
	all, err := sc.rdb.XRange(ctx, keyspace.New(sc.ns).Partition("orders", p), one.Sent[0].ID, "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var data []string
	for _, e := range all {
		data = append(data, fmt.Sprint(e.Values["d"]))
	}
	if !slices.Equal(data, []string{"from stdin\n", "a", "b", "c"}) {
		t.Errorf("data sent: %q", data)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"send", "-stream", "orders"}, exitUsage, "-key is required"},
		{[]string{"send", "-stream", "orders", "-key", "k", "-data", "x", "-lines"}, exitUsage, "exclude each other"},
		{[]string{"send", "-stream", "orders", "-key", "k", "-meta", "novalue"}, exitUsage, "NAME=VALUE"},
		{[]string{"send", "-stream", "nope", "-key", "k", "-data", "x"}, exitFailure, "stream not found"},
	} {
		code, _, stderr := sc.run(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d, %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

func TestDLQCommands(t *testing.T) { onBackends(t, testDLQCommands) }

func testDLQCommands(t *testing.T, newScenario func(*testing.T) *scenario) {
	t.Parallel()
	sc := newScenario(t)
	ctx := context.Background()
	before := sc.groupsState(t)
	out := sc.mustRun(t, "dlq", "list", "-stream", "orders", "-group", "audit")
	row := regexp.MustCompile(fmt.Sprintf(`(?m)^(%d/\d+-\d+)\s+%s\s+%s\s+1\s+\S+\s+test: cannot process\s+\{"n":\d+\}$`,
		sc.dead.Partition, regexp.QuoteMeta(sc.dead.Id), sc.dead.PartitionKey)).FindStringSubmatch(out)
	if row == nil {
		t.Fatalf("dlq list:\n%s", out)
	}
	l := decode[deadLettersJSON](t, sc.mustRun(t, "dlq", "list", "-stream", "orders", "-group", "audit", "-json"))
	if len(l.DeadLetters) != 1 || l.More || fmt.Sprintf("%d/%s", l.DeadLetters[0].Partition, l.DeadLetters[0].ID) != row[1] ||
		l.DeadLetters[0].OriginalID != sc.dead.Id || l.DeadLetters[0].Reason != "test: cannot process" || *l.DeadLetters[0].Data != string(sc.dead.Data) {
		t.Fatalf("dlq list -json: %+v", l)
	}
	if after := sc.groupsState(t); after != before {
		t.Errorf("dlq list changed the groups:\nbefore %s\nafter  %s", before, after)
	}
	if out := sc.mustRun(t, "dlq", "list", "-stream", "orders", "-group", "billing"); !strings.Contains(out, "no dead letters") {
		t.Errorf("billing's dead letters: %s", out)
	}

	// Re-drive it by its ID: the lagging consumer gets it again.
	out = sc.mustRun(t, "dlq", "redrive", "-stream", "orders", "-group", "audit", "-id", row[1])
	if !strings.Contains(out, "re-drove 1 dead letters") {
		t.Fatalf("dlq redrive: %s", out)
	}
	if out := sc.mustRun(t, "dlq", "list", "-stream", "orders", "-group", "audit"); !strings.Contains(out, "no dead letters") {
		t.Errorf("after redrive: %s", out)
	}
	tailOut := sc.mustRun(t, "tail", "-stream", "orders", "-partition", fmt.Sprint(sc.dead.Partition), "-n", "1")
	if !strings.Contains(tailOut, "(re-driven for group audit)") || !strings.Contains(tailOut, string(sc.dead.Data)) {
		t.Errorf("tail of the re-driven entry: %s", tailOut)
	}

	// Two more dead letters, deleted with -all.
	st := sc.st
	if _, err := st.SendBatch(ctx, []*contracts.PMessage{{PartitionKey: "x", Data: []byte("1")}, {PartitionKey: "y", Data: []byte("2")}}); err != nil {
		t.Fatal(err)
	}
	c, err := sc.seg.RegisterConsumer(ctx, "orders", "dlqtest", 100, time.Minute, segmenter.WithStartPosition(segmenter.StartEarliest))
	if err != nil {
		t.Fatal(err)
	}
	var got []*contracts.CMessage
	redistest.Eventually(t, 10*time.Second, func() bool {
		m, err := c.Read(ctx, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m...)
		return len(got) >= 42 // 40, the 2 new, not the letter re-driven for audit
	}, "dlqtest never read everything")
	if err := c.DeadLetter(ctx, "bulk", got[:2]...); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, got[2:]...); err != nil {
		t.Fatal(err)
	}
	d := decode[dlqCountJSON](t, sc.mustRun(t, "dlq", "delete", "-stream", "orders", "-group", "dlqtest", "-all", "-json"))
	if code, _, stderr := runCmd(t, sc.env, "dlq"); code != exitUsage || !strings.Contains(stderr, "an action is required") {
		t.Errorf("dlq without an action: exit %d, stderr %q", code, stderr)
	}
	if d.Deleted == nil || *d.Deleted != 2 || d.Redriven != nil {
		t.Errorf("dlq delete -all -json: %+v", d)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq", "purge", "-stream", "orders", "-group", "audit"}, `unknown action "purge"`},
		{[]string{"dlq", "redrive", "-stream", "orders", "-group", "audit"}, "-id PARTITION/ID (repeatable) or -all"},
		{[]string{"dlq", "delete", "-stream", "orders", "-group", "audit", "-id", "x"}, "want PARTITION/ID"},
		{[]string{"dlq", "list", "-stream", "orders"}, "-group is required"},
	} {
		code, _, stderr := sc.run(t, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want usage, %q", tc.args, code, stderr, tc.want)
		}
	}
}

func TestResetGroupCommand(t *testing.T) { onBackends(t, testResetGroupCommand) }

func testResetGroupCommand(t *testing.T, newScenario func(*testing.T) *scenario) {
	t.Parallel()
	sc := newScenario(t)
	ctx := context.Background()
	code, stdout, stderr := sc.run(t, "reset-group", "-stream", "orders", "-group", "audit", "-to", "latest")
	if code != exitFailure || !strings.Contains(stderr, "member audit-1 is live") || stdout != "" {
		t.Fatalf("reset of a live group: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	before := sc.groupsState(t)
	dry := decode[resetJSON](t, sc.mustRun(t, "reset-group", "-stream", "orders", "-group", "audit", "-to", "latest", "-dry-run", "-json"))
	if !dry.DryRun || len(dry.Partitions) != 4 {
		t.Fatalf("dry run: %+v", dry)
	}
	var cleared int64
	for _, p := range dry.Partitions {
		ids := sc.sent[p.Partition]
		cleared += p.Cleared
		if p.To != ids[len(ids)-1] {
			t.Errorf("dry run, partition %d: to %s, want the last entry %s", p.Partition, p.To, ids[len(ids)-1])
		}
	}
	if cleared != 3 {
		t.Errorf("dry run clears %d pending, want 3", cleared)
	}
	if after := sc.groupsState(t); after != before {
		t.Errorf("the dry run changed the groups:\nbefore %s\nafter  %s", before, after)
	}

	// Stopped, the group moves; billing does not.
	if err := sc.audit.Nack(sc.held...); err != nil {
		t.Fatal(err)
	}
	if err := sc.audit.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	out := sc.mustRun(t, "reset-group", "-stream", "orders", "-group", "audit", "-to", "latest")
	if !strings.Contains(out, "group audit of stream orders reset to latest:") || !regexp.MustCompile(`(?m)^PARTITION\s+FROM\s+TO\s+CLEARED-PENDING$`).MatchString(out) {
		t.Errorf("reset output:\n%s", out)
	}
	l := decode[lagJSON](t, sc.mustRun(t, "lag", "-stream", "orders", "-json"))
	for _, g := range l.Groups {
		if g.Lag != 0 || g.Pending != 0 {
			t.Errorf("after the reset: %s lag %d pending %d", g.Group, g.Lag, g.Pending)
		}
	}
	out = sc.mustRun(t, "reset-group", "-stream", "orders", "-group", "audit", "-to", "earliest", "-force")
	if !strings.Contains(out, "reset to earliest") {
		t.Errorf("forced reset: %s", out)
	}
	l = decode[lagJSON](t, sc.mustRun(t, "lag", "-stream", "orders", "-group", "audit", "-json"))
	if l.Groups[0].Lag != 40 {
		t.Errorf("after reset to earliest: lag %d, want 40", l.Groups[0].Lag)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"reset-group", "-stream", "orders", "-group", "audit"}, exitUsage, "-to is required"},
		{[]string{"reset-group", "-stream", "orders", "-group", "audit", "-to", "soon"}, exitUsage, `-to "soon"`},
		{[]string{"reset-group", "-stream", "orders", "-group", "nope", "-to", "latest"}, exitFailure, "consumer group missing"},
	} {
		code, _, stderr := sc.run(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d, %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

func TestOperatorCommandsUsage(t *testing.T) {
	t.Parallel()
	unreachable := envWith(map[string]string{envRedisURL: "redis://127.0.0.1:1"})
	for _, tc := range []struct {
		env  func(string) string
		args []string
		code int
		want string
	}{
		{noEnv, []string{"describe", "-stream", "s"}, exitUsage, "no Redis server: pass -redis URL or set REDIS_URL"},
		{noEnv, []string{"lag"}, exitUsage, "no Redis server"},
		{noEnv, []string{"streams", "-redis", "http://x"}, exitUsage, "Redis URL"},
		{unreachable, []string{"describe"}, exitUsage, "-stream is required"},
		{unreachable, []string{"describe", "-stream", "a b"}, exitUsage, "not a valid stream name"},
		{unreachable, []string{"describe", "-stream", "s", "-namespace", "a:b"}, exitUsage, "not a valid namespace"},
		{unreachable, []string{"describe", "-stream", "s", "-namespace", "ns"}, exitFailure, "connect"},
		{unreachable, []string{"lag", "-namespace", "ns"}, exitFailure, "connect"},
		{unreachable, []string{"tail", "-stream", "s", "-n", "-1"}, exitUsage, "-n is -1"},
		{unreachable, []string{"help", "dlq"}, exitOK, ""},
	} {
		code, stdout, stderr := runCmd(t, tc.env, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d, %q\n%s", tc.args, code, stderr, tc.code, tc.want, stdout)
		}
	}
	if code, stdout, _ := runCmd(t, noEnv, "help", "dlq"); code != exitOK || !strings.Contains(stdout, "segmenter dlq list|redrive|delete") {
		t.Errorf("help dlq: %d\n%s", code, stdout)
	}
	if code, stdout, _ := runCmd(t, noEnv, "help"); code != exitOK || !strings.Contains(stdout, "reset-group") || !strings.Contains(stdout, "Exit codes") {
		t.Errorf("help:\n%s", stdout)
	}
}
