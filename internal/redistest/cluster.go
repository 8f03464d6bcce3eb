package redistest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis Cluster for the tests: a real cluster of three primaries, each with
// one replica, made of redis-server processes on loopback ports (the process
// backend) and joined with `redis-cli --cluster create`. [Cluster] hands out
// the cluster shared by the tests of a binary (started on first use, torn
// down with the binary's other servers); [NewCluster] starts one dedicated to
// a test that kills, pauses or reshards its nodes. REDIS_CLUSTER_ADDRS (a
// comma-separated list of host:port seeds) names an existing cluster to use
// as the shared one instead.

// EnvClusterAddrs names the seed addresses of an existing Redis Cluster
// ("host:port,host:port,...") to use as the shared cluster.
const EnvClusterAddrs = "REDIS_CLUSTER_ADDRS"

const (
	clusterPrimaries = 3
	// sharedNodeTimeout: no test fails a node of the shared cluster.
	sharedNodeTimeout = 5 * time.Second
	// defaultNodeTimeout is a dedicated cluster's cluster-node-timeout:
	// short, so that a replica takes over a killed primary within a second
	// or two.
	defaultNodeTimeout = 500 * time.Millisecond
	clusterReady       = time.Minute
)

// ClusterInfo describes a running Redis Cluster.
type ClusterInfo struct {
	// Addrs are the addresses of its nodes (primaries and replicas), the
	// seeds of a client.
	Addrs []string
	// Backend is "env" (REDIS_CLUSTER_ADDRS) or "process".
	Backend string
	// Detail says where the cluster comes from. For logs.
	Detail string
}

// Options returns cluster client options for the cluster: its seeds.
func (c *ClusterInfo) Options() *redis.ClusterOptions {
	return &redis.ClusterOptions{Addrs: slices.Clone(c.Addrs)}
}

// Client returns a new cluster client for the cluster, closed when t's test
// finishes.
func (c *ClusterInfo) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	rdb := redis.NewClusterClient(c.Options())
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

func (c *ClusterInfo) logLine() string {
	return fmt.Sprintf("redistest: using a Redis Cluster, %s backend (%s), nodes %s", c.Backend, c.Detail, strings.Join(c.Addrs, " "))
}

var (
	sharedClusterOnce sync.Once
	sharedClusterInfo *ClusterInfo
	sharedClusterErr  error
)

// Cluster returns the Redis Cluster shared by the tests of this test
// binary, starting it on first use. Tests share it by prefixing their keys
// with [Namespace], as on the shared server.
func Cluster(t testing.TB) *ClusterInfo {
	t.Helper()
	requireMain(t)
	started := false
	sharedClusterOnce.Do(func() {
		started = true
		sharedClusterInfo, sharedClusterErr = startSharedCluster()
		if sharedClusterErr == nil {
			fmt.Fprintln(os.Stderr, sharedClusterInfo.logLine())
		}
	})
	if sharedClusterErr != nil {
		t.Fatalf("redistest: no Redis Cluster: %v", sharedClusterErr)
	}
	if started {
		t.Log(sharedClusterInfo.logLine())
	}
	return sharedClusterInfo
}

// ClusterClient returns a new client of the shared cluster (see Cluster),
// closed when t's test finishes.
func ClusterClient(t testing.TB) *redis.ClusterClient {
	t.Helper()
	return Cluster(t).Client(t)
}

func startSharedCluster() (*ClusterInfo, error) {
	if v := os.Getenv(EnvClusterAddrs); v != "" {
		var addrs []string
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				addrs = append(addrs, a)
			}
		}
		info := &ClusterInfo{Addrs: addrs, Backend: BackendEnv, Detail: EnvClusterAddrs}
		ctx, cancel := context.WithTimeout(context.Background(), envPingTimeout)
		defer cancel()
		rdb := redis.NewClusterClient(info.Options())
		defer rdb.Close()
		if err := rdb.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() }); err != nil {
			return nil, fmt.Errorf("%s=%q does not answer: %w", EnvClusterAddrs, v, err)
		}
		return info, nil
	}
	cl, err := startProcessCluster(context.Background(), sharedNodeTimeout, nil, false)
	if err != nil {
		return nil, err
	}
	track(cl)
	info := cl.clusterInfo()
	return &info, nil
}

// ClusterOption configures a dedicated cluster (NewCluster).
type ClusterOption func(*clusterConfig)

type clusterConfig struct {
	nodeTimeout time.Duration
	args        []string
}

// WithNodeTimeout sets the cluster-node-timeout of a dedicated cluster's
// nodes: how long a primary is unreachable before its replica takes over.
// Default 500ms.
func WithNodeTimeout(d time.Duration) ClusterOption {
	return func(c *clusterConfig) { c.nodeTimeout = d }
}

// WithNodeArgs appends raw redis-server arguments to every node of a
// dedicated cluster (e.g. "--appendonly", "yes").
func WithNodeArgs(args ...string) ClusterOption {
	return func(c *clusterConfig) { c.args = append(c.args, args...) }
}

// ClusterInstance is a Redis Cluster dedicated to one test, from NewCluster:
// its nodes can be killed, started again and resharded. The addresses of
// the nodes stay the same across kills and restarts (a node restarted keeps
// its identity and rejoins as a replica when it was failed over).
//
// The methods fail the test on error (with t.Fatalf), so like t.Fatalf they
// must be called from the test's goroutine.
type ClusterInstance struct {
	ClusterInfo

	t  testing.TB
	cl *procCluster
}

// NewCluster starts a Redis Cluster of three primaries and three replicas
// dedicated to t (the process backend; REDIS_CLUSTER_ADDRS is ignored), and
// removes it when t finishes.
func NewCluster(t testing.TB, opts ...ClusterOption) *ClusterInstance {
	t.Helper()
	requireMain(t)
	cfg := clusterConfig{nodeTimeout: defaultNodeTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	cl, err := startProcessCluster(context.Background(), cfg.nodeTimeout, cfg.args, true)
	if err != nil {
		t.Fatalf("redistest: starting a Redis Cluster: %v", err)
	}
	track(cl)
	inst := &ClusterInstance{ClusterInfo: cl.clusterInfo(), t: t, cl: cl}
	t.Cleanup(func() {
		if err := cl.destroy(context.Background()); err != nil {
			t.Errorf("redistest: removing the cluster: %v", err)
		}
		untrack(cl)
	})
	t.Logf("redistest: dedicated %s", inst.logLine())
	return inst
}

// NodeRole is what a node is in the cluster now.
type NodeRole struct {
	Addr    string
	ID      string
	Primary bool
	Of      string // a replica's primary (its address)
	Slots   [][2]int
	Failed  bool
}

// Topology returns the roles of the nodes as a running node sees them.
func (c *ClusterInstance) Topology() []NodeRole {
	c.t.Helper()
	roles, err := c.cl.topology(context.Background())
	if err != nil {
		c.t.Fatalf("redistest: cluster topology: %v", err)
	}
	return roles
}

// PrimaryOf returns the address of the primary that serves slot now.
func (c *ClusterInstance) PrimaryOf(slot int) string {
	c.t.Helper()
	for _, r := range c.Topology() {
		if !r.Primary || r.Failed {
			continue
		}
		for _, s := range r.Slots {
			if slot >= s[0] && slot <= s[1] {
				return r.Addr
			}
		}
	}
	c.t.Fatalf("redistest: no primary serves slot %d", slot)
	return ""
}

// ReplicaOf returns the address of a replica of the primary at addr.
func (c *ClusterInstance) ReplicaOf(addr string) string {
	c.t.Helper()
	for _, r := range c.Topology() {
		if !r.Primary && r.Of == addr && !r.Failed {
			return r.Addr
		}
	}
	c.t.Fatalf("redistest: primary %s has no replica", addr)
	return ""
}

// Kill kills the node at addr with SIGKILL, as in a crash.
func (c *ClusterInstance) Kill(addr string) {
	c.t.Helper()
	if err := c.cl.node(addr).stop(context.Background(), true); err != nil {
		c.t.Fatalf("redistest: killing cluster node %s: %v", addr, err)
	}
}

// Start starts the node at addr again after Kill, on the same address and
// data directory.
func (c *ClusterInstance) Start(addr string) {
	c.t.Helper()
	if err := c.cl.node(addr).start(context.Background()); err != nil {
		c.t.Fatalf("redistest: starting cluster node %s: %v", addr, err)
	}
}

// WaitHealthy waits until every running node reports cluster_state:ok, all
// slots are served, and the nodes agree on who serves them.
func (c *ClusterInstance) WaitHealthy(timeout time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.cl.waitHealthy(ctx, false); err != nil {
		c.t.Fatalf("redistest: cluster not healthy within %v: %v", timeout, err)
	}
}

// NodeClient returns a client of the single node at addr (not a cluster
// client), closed when the test finishes.
func (c *ClusterInstance) NodeClient(addr string) *redis.Client {
	c.t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	c.t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// BeginMigration marks slot as migrating from the primary serving it to
// the primary at to (CLUSTER SETSLOT IMPORTING on the target, MIGRATING on
// the source). Keys move with MigrateKeys; FinishMigration hands the slot
// over.
func (c *ClusterInstance) BeginMigration(slot int, to string) {
	c.t.Helper()
	if err := c.cl.beginMigration(context.Background(), slot, c.PrimaryOf(slot), to); err != nil {
		c.t.Fatalf("redistest: migrating slot %d to %s: %v", slot, to, err)
	}
}

// MigrateKeys moves up to n keys of slot (all of them when n <= 0) from
// the source of its migration to the target, and returns how many keys
// are left on the source.
func (c *ClusterInstance) MigrateKeys(slot int, to string, n int) int {
	c.t.Helper()
	left, err := c.cl.migrateKeys(context.Background(), slot, c.PrimaryOf(slot), to, n)
	if err != nil {
		c.t.Fatalf("redistest: moving the keys of slot %d to %s: %v", slot, to, err)
	}
	return left
}

// FinishMigration assigns slot to the primary at to on every primary
// (CLUSTER SETSLOT NODE), ending its migration.
func (c *ClusterInstance) FinishMigration(slot int, to string) {
	c.t.Helper()
	if err := c.cl.finishMigration(context.Background(), slot, to); err != nil {
		c.t.Fatalf("redistest: finishing the migration of slot %d to %s: %v", slot, to, err)
	}
}

// MigrateSlot moves slot, keys and all, to the primary at to, as
// `redis-cli --cluster reshard` does.
func (c *ClusterInstance) MigrateSlot(slot int, to string) {
	c.t.Helper()
	c.BeginMigration(slot, to)
	c.MigrateKeys(slot, to, 0)
	c.FinishMigration(slot, to)
}

// procCluster is a cluster of redis-server child processes.
type procCluster struct {
	nodes []*procServer
}

// startProcessCluster starts the nodes, creates the cluster and waits until
// it is healthy; with replicas, until every node also sees every primary's
// replica (which a dedicated cluster's failover tests need).
func startProcessCluster(ctx context.Context, nodeTimeout time.Duration, args []string, replicas bool) (*procCluster, error) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("redis-cli not found on PATH (apt-get install -y redis-tools): %w", err)
	}
	cl := &procCluster{}
	cfg := serverConfig{cluster: true, nodeTimeout: nodeTimeout, extraArgs: args}
	for range 2 * clusterPrimaries {
		s, err := startProcess(ctx, cfg)
		if err != nil {
			_ = cl.destroy(ctx)
			return nil, fmt.Errorf("starting a cluster node: %w", err)
		}
		cl.nodes = append(cl.nodes, s.(*procServer))
	}
	create := []string{"--cluster", "create"}
	for _, n := range cl.nodes {
		create = append(create, n.addr())
	}
	create = append(create, "--cluster-replicas", "1", "--cluster-yes")
	cctx, cancel := context.WithTimeout(ctx, clusterReady)
	defer cancel()
	if out, err := exec.CommandContext(cctx, cli, create...).CombinedOutput(); err != nil {
		_ = cl.destroy(ctx)
		return nil, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := cl.waitHealthy(cctx, replicas); err != nil {
		_ = cl.destroy(ctx)
		return nil, err
	}
	return cl, nil
}

func (cl *procCluster) addrs() []string {
	out := make([]string, len(cl.nodes))
	for i, n := range cl.nodes {
		out[i] = n.addr()
	}
	return out
}

func (cl *procCluster) clusterInfo() ClusterInfo {
	return ClusterInfo{
		Addrs:   cl.addrs(),
		Backend: BackendProcess,
		Detail:  fmt.Sprintf("%d primaries with a replica each, %s", clusterPrimaries, cl.nodes[0].bin),
	}
}

func (cl *procCluster) node(addr string) *procServer {
	for _, n := range cl.nodes {
		if n.addr() == addr {
			return n
		}
	}
	panic("redistest: no cluster node at " + addr)
}

func (cl *procCluster) running() []*procServer {
	var out []*procServer
	for _, n := range cl.nodes {
		n.mu.Lock()
		up := n.cmd != nil
		n.mu.Unlock()
		if up {
			out = append(out, n)
		}
	}
	return out
}

func nodeClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 2 * time.Second, PoolSize: 1})
}

// topology parses CLUSTER NODES of the first running node that answers.
func (cl *procCluster) topology(ctx context.Context) ([]NodeRole, error) {
	var lastErr error
	for _, n := range cl.running() {
		c := nodeClient(n.addr())
		raw, err := c.ClusterNodes(ctx).Result()
		_ = c.Close()
		if err != nil {
			lastErr = err
			continue
		}
		return parseClusterNodes(raw)
	}
	if lastErr == nil {
		lastErr = errors.New("no node is running")
	}
	return nil, lastErr
}

// parseClusterNodes reads the reply of CLUSTER NODES.
func parseClusterNodes(raw string) ([]NodeRole, error) {
	byID := map[string]*NodeRole{}
	var order []string
	primaryID := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("unexpected CLUSTER NODES line %q", line)
		}
		addr, _, _ := strings.Cut(f[1], "@")
		r := &NodeRole{Addr: addr, ID: f[0]}
		flags := strings.Split(f[2], ",")
		r.Primary = slices.Contains(flags, "master")
		r.Failed = slices.Contains(flags, "fail") || slices.Contains(flags, "fail?")
		if !r.Primary && f[3] != "-" {
			primaryID[f[0]] = f[3]
		}
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") {
				continue // a slot in migration
			}
			lo, hi, found := strings.Cut(s, "-")
			a, err1 := strconv.Atoi(lo)
			b := a
			var err2 error
			if found {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("unexpected slot range %q", s)
			}
			r.Slots = append(r.Slots, [2]int{a, b})
		}
		byID[f[0]] = r
		order = append(order, f[0])
	}
	out := make([]NodeRole, 0, len(order))
	for _, id := range order {
		r := byID[id]
		if p, ok := primaryID[id]; ok && byID[p] != nil {
			r.Of = byID[p].Addr
		}
		out = append(out, *r)
	}
	return out, nil
}

// waitHealthy waits until every running node says cluster_state:ok with
// all slots served and the same view of the slots; with replicas, also
// until every primary has a replica in sync.
func (cl *procCluster) waitHealthy(ctx context.Context, replicas bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		last = cl.healthy(ctx, replicas)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy: %w", last)
		case <-tick.C:
		}
	}
}

func (cl *procCluster) healthy(ctx context.Context, replicas bool) error {
	var view string
	for _, n := range cl.running() {
		c := nodeClient(n.addr())
		info, err := c.ClusterInfo(ctx).Result()
		var slots []redis.ClusterSlot
		if err == nil {
			slots, err = c.ClusterSlots(ctx).Result()
		}
		var repl string
		if err == nil && replicas {
			repl, err = c.Info(ctx, "replication").Result()
		}
		_ = c.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", n.addr(), err)
		}
		if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			return fmt.Errorf("%s: not ok yet", n.addr())
		}
		var sb strings.Builder
		slices.SortFunc(slots, func(a, b redis.ClusterSlot) int { return a.Start - b.Start })
		for _, s := range slots {
			fmt.Fprintf(&sb, "%d-%d:%s;", s.Start, s.End, s.Nodes[0].Addr)
			if replicas && len(s.Nodes) < 2 {
				return fmt.Errorf("%s: slots %d-%d have no replica yet", n.addr(), s.Start, s.End)
			}
		}
		if view == "" {
			view = sb.String()
		} else if view != sb.String() {
			return fmt.Errorf("nodes disagree on the slots: %s vs %s", view, sb.String())
		}
		if replicas && strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return fmt.Errorf("%s: replica not in sync yet", n.addr())
		}
	}
	return nil
}

func (cl *procCluster) nodeID(ctx context.Context, addr string) (string, error) {
	c := nodeClient(addr)
	defer c.Close()
	return c.Do(ctx, "CLUSTER", "MYID").Text()
}

func (cl *procCluster) beginMigration(ctx context.Context, slot int, from, to string) error {
	fromID, err := cl.nodeID(ctx, from)
	if err != nil {
		return err
	}
	toID, err := cl.nodeID(ctx, to)
	if err != nil {
		return err
	}
	dst, src := nodeClient(to), nodeClient(from)
	defer dst.Close()
	defer src.Close()
	if err := dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID).Err(); err != nil {
		return err
	}
	return src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID).Err()
}

func (cl *procCluster) migrateKeys(ctx context.Context, slot int, from, to string, n int) (int, error) {
	src := nodeClient(from)
	defer src.Close()
	host, port, _ := strings.Cut(to, ":")
	moved := 0
	for n <= 0 || moved < n {
		batch := 100
		if n > 0 {
			batch = min(batch, n-moved)
		}
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, batch).Result()
		if err != nil {
			return 0, err
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := src.Do(ctx, args...).Err(); err != nil {
			return 0, fmt.Errorf("MIGRATE: %w", err)
		}
		moved += len(keys)
	}
	left, err := src.ClusterCountKeysInSlot(ctx, slot).Result()
	return int(left), err
}

func (cl *procCluster) finishMigration(ctx context.Context, slot int, to string) error {
	toID, err := cl.nodeID(ctx, to)
	if err != nil {
		return err
	}
	roles, err := cl.topology(ctx)
	if err != nil {
		return err
	}
	// The target first, then the others, as redis-cli does.
	addrs := []string{to}
	for _, r := range roles {
		if r.Primary && !r.Failed && r.Addr != to {
			addrs = append(addrs, r.Addr)
		}
	}
	for _, a := range addrs {
		c := nodeClient(a)
		err := c.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID).Err()
		_ = c.Close()
		if err != nil {
			return fmt.Errorf("%s: CLUSTER SETSLOT NODE: %w", a, err)
		}
	}
	return nil
}

// The server interface, so that the binary's teardown removes the cluster.

func (cl *procCluster) start(ctx context.Context) error {
	for _, n := range cl.nodes {
		if err := n.start(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (cl *procCluster) stop(ctx context.Context, kill bool) error {
	var errs []error
	for _, n := range cl.nodes {
		errs = append(errs, n.stop(ctx, kill))
	}
	return errors.Join(errs...)
}

func (cl *procCluster) destroy(ctx context.Context) error {
	var errs []error
	for _, n := range cl.nodes {
		errs = append(errs, n.destroy(ctx))
	}
	return errors.Join(errs...)
}

func (cl *procCluster) freeze(ctx context.Context, thaw bool) error {
	var errs []error
	for _, n := range cl.nodes {
		errs = append(errs, n.freeze(ctx, thaw))
	}
	return errors.Join(errs...)
}

func (cl *procCluster) info() Info {
	return Info{Addr: cl.nodes[0].addr(), Backend: BackendProcess, Detail: "cluster"}
}
