package segmenter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter/internal/keyspace"
	"github.com/segmenter/segmenter/partition"
)

// Config configures a Segmenter. Only Namespace is required; every other
// field documents its default.
type Config struct {
	// Namespace prefixes every Redis key the SDK writes. Processes with the
	// same Namespace and Redis see the same streams. Required; 1 to
	// MaxNameLength characters from [A-Za-z0-9_.-].
	Namespace string

	// Client is a Redis client the caller owns: a *redis.Client, a
	// *redis.ClusterClient, or a Sentinel failover client. The SDK never
	// closes it. When nil, the SDK builds its own client from RedisURL and
	// closes that one in Close.
	Client redis.UniversalClient

	// RedisURL is used when Client is nil: "redis://[user:password@]host:port/db"
	// or "rediss://..." for TLS; "redis://host:port?cluster=true&addr=host2:port2"
	// for a Redis Cluster; "redis://host:port/db?master_name=M&addr=..." for
	// Sentinel (see NewRedisClient). Default: the REDIS_URL environment
	// variable.
	RedisURL string

	// Logger receives the SDK's logs, with the attributes stream, group,
	// consumer, partition and epoch. Default: discard.
	Logger *slog.Logger

	// SessionTimeout is how long a consumer stays a member of its group, and
	// holds its partitions' leases, without a heartbeat: a consumer that
	// stops (crashed, paused, cut off) loses its partitions this long after
	// its last heartbeat. Default 10s.
	SessionTimeout time.Duration

	// HeartbeatInterval is how often a consumer heartbeats, learns of a new
	// assignment and renews the leases that have used half their validity.
	// Default 1s, or a third of SessionTimeout when that is shorter. At most
	// half of SessionTimeout (a third or less is wise: a consumer stops
	// delivering a partition on its own 4/5 of SessionTimeout after its last
	// successful renewal).
	HeartbeatInterval time.Duration

	// BlockInterval bounds one blocking wait of Consumer.Read for new
	// messages in Redis; a cancelled context is noticed within it. Default
	// 500ms.
	BlockInterval time.Duration

	// PollInterval is how often a consumer looks for new messages in its
	// empty partitions when it cannot wait for them in Redis: with a client
	// other than a *redis.Client (single node, Sentinel) or a
	// *redis.ClusterClient. Default 50ms.
	PollInterval time.Duration

	// RetentionCheckInterval is how often a consumer checks, in the
	// background, whether retention trimmed messages of its partitions
	// before its group read them (see Stats.TrimmedUnread and
	// Consumer.CheckRetention). The check runs with the heartbeat, so no
	// more often than HeartbeatInterval. Default 10s.
	RetentionCheckInterval time.Duration

	// Hooks observe every consumer of this Segmenter (see Hook); a consumer
	// adds its own with WithHooks.
	Hooks []Hook

	// OnError, when set, receives the errors of background work
	// (heartbeats, lease renewal and acquisition, rebalancing). They are
	// logged either way. It must not block.
	OnError func(error)
}

const (
	defaultSessionTimeout    = 10 * time.Second
	defaultHeartbeatInterval = time.Second
	defaultBlockInterval     = 500 * time.Millisecond
	defaultPollInterval      = 50 * time.Millisecond
	defaultRetentionCheck    = 10 * time.Second
)

func (c *Config) withDefaults() Config {
	cfg := *c
	if cfg.RedisURL == "" && cfg.Client == nil {
		cfg.RedisURL = os.Getenv("REDIS_URL")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = defaultSessionTimeout
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = min(defaultHeartbeatInterval, cfg.SessionTimeout/3)
	}
	if cfg.BlockInterval == 0 {
		cfg.BlockInterval = defaultBlockInterval
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = defaultPollInterval
	}
	if cfg.RetentionCheckInterval == 0 {
		cfg.RetentionCheckInterval = defaultRetentionCheck
	}
	return cfg
}

func (c *Config) validate() error {
	var errs []error
	if err := validateName("namespace", c.Namespace); err != nil {
		errs = append(errs, err)
	}
	if c.Client == nil && c.RedisURL == "" {
		errs = append(errs, invalid("no Redis: set Config.Client or Config.RedisURL (or the REDIS_URL environment variable)"))
	}
	if c.Client == nil && c.RedisURL != "" {
		if rdb, err := NewRedisClient(c.RedisURL); err != nil {
			errs = append(errs, err)
		} else {
			_ = rdb.Close() // it has not dialled yet
		}
	}
	if c.SessionTimeout < 10*time.Millisecond {
		errs = append(errs, invalid("SessionTimeout %v is below 10ms", c.SessionTimeout))
	}
	if c.HeartbeatInterval <= 0 || c.HeartbeatInterval > c.SessionTimeout/2 {
		// A consumer delivers a partition for 4/5 of the session after a
		// renewal: the next renewal must come well within that.
		errs = append(errs, invalid("HeartbeatInterval %v must be above 0 and at most half of SessionTimeout %v", c.HeartbeatInterval, c.SessionTimeout))
	}
	if c.BlockInterval < time.Millisecond {
		errs = append(errs, invalid("BlockInterval %v is below 1ms", c.BlockInterval))
	}
	if c.PollInterval < time.Millisecond {
		errs = append(errs, invalid("PollInterval %v is below 1ms", c.PollInterval))
	}
	if c.RetentionCheckInterval < time.Millisecond {
		errs = append(errs, invalid("RetentionCheckInterval %v is below 1ms", c.RetentionCheckInterval))
	}
	return errors.Join(errs...)
}

// Segmenter is the entry point: it registers streams and consumers in one
// namespace. It is safe for concurrent use.
type Segmenter struct {
	cfg       Config
	rdb       redis.UniversalClient
	ownClient bool
	keys      keyspace.Space
	log       *slog.Logger

	evictionOnce sync.Once // see checkEviction

	mu        sync.Mutex
	closed    bool
	consumers map[*Consumer]struct{}
	multis    map[*MultiConsumer]struct{} // see multistream.go
	notify    notifier
	watch     watchers
}

// NewSegmenter validates cfg, connects (when given a URL) and returns a
// Segmenter. It reports every problem of cfg at once.
func NewSegmenter(cfg *Config) (*Segmenter, error) {
	if cfg == nil {
		return nil, invalid("nil Config")
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	s := &Segmenter{
		cfg:       c,
		rdb:       c.Client,
		keys:      keyspace.New(c.Namespace),
		log:       c.Logger.With("namespace", c.Namespace),
		consumers: make(map[*Consumer]struct{}),
	}
	s.notify.seg = s
	s.watch.init(s)
	if s.rdb == nil {
		rdb, err := NewRedisClient(c.RedisURL) // validated above
		if err != nil {
			return nil, err
		}
		s.rdb = rdb
		s.ownClient = true
	}
	return s, nil
}

// Namespace returns the namespace of s.
func (s *Segmenter) Namespace() string { return s.cfg.Namespace }

// Client returns the Redis client s uses.
func (s *Segmenter) Client() redis.UniversalClient { return s.rdb }

// Close shuts down every consumer registered through s (as Consumer.Shutdown
// does, bounded by ctx) and closes the Redis client if s created it. A client
// passed in Config.Client is left open. Close is idempotent.
func (s *Segmenter) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	multis := make([]*MultiConsumer, 0, len(s.multis))
	for m := range s.multis {
		multis = append(multis, m)
	}
	s.mu.Unlock()
	var errs []error
	// Multi-stream consumers first: they stop adding consumers, and shut
	// down their own.
	for _, m := range multis {
		errs = append(errs, m.Shutdown(ctx))
	}
	s.mu.Lock()
	consumers := make([]*Consumer, 0, len(s.consumers))
	for c := range s.consumers {
		consumers = append(consumers, c)
	}
	s.mu.Unlock()
	for _, c := range consumers {
		if err := c.Shutdown(ctx); err != nil && !errors.Is(err, ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.notify.close()
	s.watch.close()
	if s.ownClient {
		errs = append(errs, s.rdb.Close())
	}
	return errors.Join(errs...)
}

func (s *Segmenter) checkOpen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return nil
}

// StreamOption configures RegisterStream.
type StreamOption interface{ applyStream(*streamOptions) }

type streamOptions struct {
	partitioner partition.Partitioner
	retention   Retention // see retention.go
}

type streamOptionFunc func(*streamOptions)

func (f streamOptionFunc) applyStream(o *streamOptions) { f(o) }

// WithPartitioner sets the function that maps a partition key to a
// partition. Default partition.Default (Kafka's murmur2, so keys land on the
// partitions Kafka would pick). The partitioner's name is stored with the
// stream: every process must use the same one.
func WithPartitioner(p partition.Partitioner) StreamOption {
	return streamOptionFunc(func(o *streamOptions) { o.partitioner = p })
}

// streamMeta is a stream's metadata as stored in Redis.
type streamMeta struct {
	partitions  int
	maxLen      int64
	partitioner string
	retention   Retention
}

const metaVersion = "v1"

// encode writes "v1|partitions|maxlen|partitioner", plus "|retention" when
// it is not RetentionMaxLen: the metadata of a stream with the default
// retention stays readable by releases that predate the field, and one with
// another retention is refused by them rather than trimmed the old way.
func (m streamMeta) encode() string {
	s := metaVersion + "|" + strconv.Itoa(m.partitions) + "|" + strconv.FormatInt(m.maxLen, 10) + "|" + m.partitioner
	if m.retention != RetentionMaxLen {
		s += "|" + m.retention.String()
	}
	return s
}

func decodeMeta(s string) (streamMeta, error) {
	f := strings.Split(s, "|")
	if (len(f) != 4 && len(f) != 5) || f[0] != metaVersion {
		return streamMeta{}, fmt.Errorf("segmenter: unreadable stream metadata %q", s)
	}
	p, err1 := strconv.Atoi(f[1])
	n, err2 := strconv.ParseInt(f[2], 10, 64)
	r, ok := RetentionMaxLen, true // absent: metadata written before the field
	if len(f) == 5 {
		r, ok = parseRetention(f[4])
	}
	if err1 != nil || err2 != nil || p < 1 || !ok {
		return streamMeta{}, fmt.Errorf("segmenter: unreadable stream metadata %q", s)
	}
	return streamMeta{partitions: p, maxLen: n, partitioner: f[3], retention: r}, nil
}

// RegisterStream creates the stream name with the given number of partitions
// and retention (approximate maximum entries kept per partition; 0 keeps
// everything; WithRetention says whether retention may drop messages a group
// has not processed), or returns the existing one. The metadata lives in
// Redis, so every process of the namespace gets the same stream. Registering
// again with the same parameters is a no-op, also when two processes race;
// different parameters give ErrStreamConflict and change nothing.
func (s *Segmenter) RegisterStream(ctx context.Context, name string, partitions int, maxLenPerPartition int64, opts ...StreamOption) (*Stream, error) {
	var o streamOptions
	for _, opt := range opts {
		if opt != nil {
			opt.applyStream(&o)
		}
	}
	if o.partitioner == nil {
		o.partitioner = partition.Default
	}
	var errs []error
	if err := validateName("stream", name); err != nil {
		errs = append(errs, err)
	}
	if partitions < 1 {
		errs = append(errs, invalid("partitions is %d, must be at least 1", partitions))
	}
	if partitions > maxPartitions {
		errs = append(errs, invalid("partitions is %d, the maximum is %d", partitions, maxPartitions))
	}
	if maxLenPerPartition < 0 {
		errs = append(errs, invalid("maxLenPerPartition is %d, must be 0 (unbounded) or more", maxLenPerPartition))
	}
	if err := validateName("partitioner", o.partitioner.Name()); err != nil {
		errs = append(errs, err)
	}
	if !o.retention.valid() {
		errs = append(errs, invalid("unknown Retention %d", o.retention))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	s.checkEviction(ctx)
	want := streamMeta{partitions: partitions, maxLen: maxLenPerPartition, partitioner: o.partitioner.Name(), retention: o.retention}
	created, err := s.rdb.HSetNX(ctx, s.keys.Streams(), name, want.encode()).Result()
	if err != nil {
		return nil, fmt.Errorf("segmenter: register stream %q: %w", name, err)
	}
	if created {
		s.streamRegistered(name)
	} else {
		got, err := s.streamMeta(ctx, name)
		if err != nil {
			return nil, err
		}
		if got != want {
			return nil, fmt.Errorf("%w: stream %q has %d partitions, retention %d (%v), partitioner %s; asked for %d, %d (%v), %s",
				ErrStreamConflict, name, got.partitions, got.maxLen, got.retention, got.partitioner, want.partitions, want.maxLen, want.retention, want.partitioner)
		}
	}
	return newStream(s, name, want, o.partitioner), nil
}

// maxPartitions bounds the partitions of one stream.
const maxPartitions = 65536

func (s *Segmenter) streamMeta(ctx context.Context, name string) (streamMeta, error) {
	raw, err := s.rdb.HGet(ctx, s.keys.Streams(), name).Result()
	if errors.Is(err, redis.Nil) {
		return streamMeta{}, fmt.Errorf("%w: %q in namespace %q", ErrStreamNotFound, name, s.cfg.Namespace)
	}
	if err != nil {
		return streamMeta{}, fmt.Errorf("segmenter: stream %q: %w", name, err)
	}
	return decodeMeta(raw)
}

// GetStream returns the registered stream name, or ErrStreamNotFound. A
// stream registered with a partitioner other than the built-in ones
// (partition.ByName) needs the same one passed with WithPartitioner.
func (s *Segmenter) GetStream(ctx context.Context, name string, opts ...StreamOption) (*Stream, error) {
	var o streamOptions
	for _, opt := range opts {
		if opt != nil {
			opt.applyStream(&o)
		}
	}
	m, err := s.lookupStream(ctx, name)
	if err != nil {
		return nil, err
	}
	p := o.partitioner
	if p == nil {
		if p, err = partition.ByName(m.partitioner); err != nil {
			return nil, fmt.Errorf("%w: stream %q uses partitioner %q: pass it with WithPartitioner", ErrInvalidArgument, name, m.partitioner)
		}
	}
	if p.Name() != m.partitioner {
		return nil, fmt.Errorf("%w: stream %q uses partitioner %q, not %q", ErrStreamConflict, name, m.partitioner, p.Name())
	}
	return newStream(s, name, m, p), nil
}

// lookupStream returns the metadata of a registered stream.
func (s *Segmenter) lookupStream(ctx context.Context, name string) (streamMeta, error) {
	if err := validateName("stream", name); err != nil {
		return streamMeta{}, err
	}
	if err := s.checkOpen(); err != nil {
		return streamMeta{}, err
	}
	s.checkEviction(ctx)
	return s.streamMeta(ctx, name)
}

// streamRegistered tells the multi-stream consumers of s that stream name
// was just registered, so that those it matches consume it at once rather
// than at their next look (every heartbeat interval) at the streams.
func (s *Segmenter) streamRegistered(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for m := range s.multis {
		m.streamRegistered(name)
	}
}

func (s *Segmenter) reportError(err error) {
	s.log.Error("background error", "err", err)
	if s.cfg.OnError != nil {
		s.cfg.OnError(err)
	}
}
