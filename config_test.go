package segmenter_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmenter/segmenter"
	"github.com/segmenter/segmenter/internal/redistest"
)

// ownClientOptions builds a Segmenter from cfg and returns the options of
// the client it made. The Segmenter is closed when the test ends.
func ownClientOptions(t *testing.T, cfg *segmenter.Config) (*segmenter.Segmenter, *redis.Options) {
	t.Helper()
	seg, err := segmenter.NewSegmenter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = seg.Close(context.Background()) })
	c, ok := seg.Client().(*redis.Client)
	if !ok {
		t.Fatalf("a URL gave a %T, want a *redis.Client", seg.Client())
	}
	return seg, c.Options()
}

func TestRedisURLBuildsTheClient(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	_, o := ownClientOptions(t, &segmenter.Config{Namespace: "ns", RedisURL: "rediss://alice:s3cret@cache.example.invalid:6380/3"})
	if o.TLSConfig == nil {
		t.Fatal("a rediss:// URL built a client without TLS")
	}
	if o.TLSConfig.ServerName != "cache.example.invalid" || o.TLSConfig.MinVersion < tls.VersionTLS12 {
		t.Fatalf("TLS config: server name %q, min version %x", o.TLSConfig.ServerName, o.TLSConfig.MinVersion)
	}
	if o.Addr != "cache.example.invalid:6380" || o.Username != "alice" || o.Password != "s3cret" || o.DB != 3 {
		t.Fatalf("options: addr %q user %q password %q db %d", o.Addr, o.Username, o.Password, o.DB)
	}

	_, o = ownClientOptions(t, &segmenter.Config{Namespace: "ns", RedisURL: "redis://cache.example.invalid:6380/1"})
	if o.TLSConfig != nil {
		t.Fatalf("a redis:// URL built a client with TLS: %+v", o.TLSConfig)
	}
	if o.Addr != "cache.example.invalid:6380" || o.DB != 1 {
		t.Fatalf("options: addr %q db %d", o.Addr, o.DB)
	}

	// REDIS_URL is the default.
	t.Setenv("REDIS_URL", "rediss://env.example.invalid:6390")
	_, o = ownClientOptions(t, &segmenter.Config{Namespace: "ns"})
	if o.Addr != "env.example.invalid:6390" || o.TLSConfig == nil {
		t.Fatalf("from REDIS_URL: addr %q, TLS %v", o.Addr, o.TLSConfig != nil)
	}
	// An explicit URL wins over REDIS_URL, and a client wins over both.
	_, o = ownClientOptions(t, &segmenter.Config{Namespace: "ns", RedisURL: "redis://explicit.example.invalid:6391"})
	if o.Addr != "explicit.example.invalid:6391" || o.TLSConfig != nil {
		t.Fatalf("explicit URL: addr %q, TLS %v", o.Addr, o.TLSConfig != nil)
	}
	rdb := redistest.Client(t)
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: "ns", Client: rdb, RedisURL: "redis://explicit.example.invalid:6391"})
	if err != nil {
		t.Fatal(err)
	}
	if seg.Client() != redis.UniversalClient(rdb) {
		t.Fatalf("Config.Client was replaced by %T", seg.Client())
	}
	if err := seg.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// firstBytes accepts connections on l until it is closed and sends the
// first byte each client sends on got.
func firstBytes(l net.Listener, got chan<- byte) {
	for {
		cn, err := l.Accept()
		if err != nil {
			return
		}
		_ = cn.SetReadDeadline(time.Now().Add(10 * time.Second))
		var b [1]byte
		if _, err := io.ReadFull(cn, b[:]); err == nil {
			select {
			case got <- b[0]:
			default:
			}
		}
		cn.Close()
	}
}

func TestRedisURLBuildsClusterAndSentinelClients(t *testing.T) {
	cl, err := segmenter.NewRedisClient("redis://alice:pw@a.example.invalid:7000?cluster=true&addr=b.example.invalid:7001&dial_timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, ok := cl.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("cluster=true gave a %T, want a *redis.ClusterClient", cl)
	}
	if o := c.Options(); !slices.Equal(o.Addrs, []string{"a.example.invalid:7000", "b.example.invalid:7001"}) ||
		o.Username != "alice" || o.Password != "pw" || o.DialTimeout != 2*time.Second {
		t.Fatalf("cluster options: addrs %v user %q password %q dial timeout %v", o.Addrs, o.Username, o.Password, o.DialTimeout)
	}

	fo, err := segmenter.NewRedisClient("redis://s1.example.invalid:26379/2?master_name=main&addr=s2.example.invalid:26379")
	if err != nil {
		t.Fatal(err)
	}
	defer fo.Close()
	if _, ok := fo.(*redis.Client); !ok {
		t.Fatalf("master_name gave a %T, want the *redis.Client of a Sentinel failover client", fo)
	}

	// cluster=false is a single node.
	one, err := segmenter.NewRedisClient("redis://a.example.invalid:7000/4?cluster=false")
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	if c, ok := one.(*redis.Client); !ok || c.Options().DB != 4 {
		t.Fatalf("cluster=false gave a %T", one)
	}

	for _, bad := range []string{
		"redis://a.example.invalid:7000?cluster=yes please",
		"redis://a.example.invalid:7000/3?cluster=true",
		"redis://a.example.invalid:7000?cluster=true&no_such_option=1",
		"redis://s1.example.invalid:26379?master_name=main&no_such_option=1",
		"redis://a.example.invalid:7000/notadb",
	} {
		if rdb, err := segmenter.NewRedisClient(bad); !errors.Is(err, segmenter.ErrInvalidArgument) {
			if rdb != nil {
				_ = rdb.Close()
			}
			t.Errorf("NewRedisClient(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func TestRedissClientSpeaksTLS(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	for _, tc := range []struct {
		scheme string
		want   byte // the first byte on the wire
	}{
		{"rediss", 0x16}, // a TLS handshake record
		{"redis", '*'},   // a RESP command (HELLO)
	} {
		t.Run(tc.scheme, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan byte, 1)
			accepted := make(chan struct{})
			go func() { defer close(accepted); firstBytes(l, got) }()
			defer func() { l.Close(); <-accepted }()
			seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: "ns", RedisURL: tc.scheme + "://" + l.Addr().String() + "?max_retries=-1"})
			if err != nil {
				t.Fatal(err)
			}
			defer seg.Close(context.Background())
			ctx, cancel := context.WithCancel(context.Background())
			pinged := make(chan struct{})
			go func() { defer close(pinged); _ = seg.Client().Ping(ctx).Err() }() // fails: the listener is no Redis
			defer func() { cancel(); <-pinged }()
			select {
			case b := <-got:
				if b != tc.want {
					t.Fatalf("%s:// client sent 0x%02x first, want 0x%02x", tc.scheme, b, tc.want)
				}
			case <-time.After(10 * time.Second): // catches a hang only
				t.Fatal("the client never connected")
			}
		})
	}
}

func TestOwnClientIsClosedByClose(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	seg, err := segmenter.NewSegmenter(&segmenter.Config{Namespace: redistest.Namespace(t), RedisURL: redistest.Server(t).URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := seg.Client().Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := seg.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := seg.Client().Ping(ctx).Err(); !errors.Is(err, redis.ErrClosed) {
		t.Fatalf("the client built from RedisURL is still open after Close: %v", err)
	}
}

func TestNewSegmenterRejectsMoreBadConfig(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	rdb := redistest.Client(t)
	cases := []struct {
		name string
		cfg  *segmenter.Config
		want []string // fragments of the error, every problem reported at once
	}{
		{"namespace with a space", &segmenter.Config{Namespace: "a b", Client: rdb}, []string{`character ' '`}},
		{"namespace with a closing brace", &segmenter.Config{Namespace: "a}b", Client: rdb}, []string{`character '}'`}},
		{"namespace not ascii", &segmenter.Config{Namespace: "café", Client: rdb}, []string{"namespace name"}},
		{"empty namespace with a client", &segmenter.Config{Client: rdb}, []string{"namespace name is empty"}},
		{"negative session timeout", &segmenter.Config{Namespace: "ns", Client: rdb, SessionTimeout: -time.Second}, []string{"SessionTimeout"}},
		{"negative heartbeat", &segmenter.Config{Namespace: "ns", Client: rdb, HeartbeatInterval: -time.Second}, []string{"HeartbeatInterval"}},
		{"heartbeat above session", &segmenter.Config{Namespace: "ns", Client: rdb, SessionTimeout: time.Second, HeartbeatInterval: 2 * time.Second}, []string{"HeartbeatInterval"}},
		{"heartbeat above the default session", &segmenter.Config{Namespace: "ns", Client: rdb, HeartbeatInterval: time.Minute}, []string{"HeartbeatInterval"}},
		{"block interval below 1ms", &segmenter.Config{Namespace: "ns", Client: rdb, BlockInterval: 500 * time.Microsecond}, []string{"BlockInterval"}},
		{"every timing at once", &segmenter.Config{Namespace: "ns", Client: rdb, SessionTimeout: time.Millisecond, HeartbeatInterval: -1, BlockInterval: -1},
			[]string{"SessionTimeout", "HeartbeatInterval", "BlockInterval"}},
		{"everything at once", &segmenter.Config{Namespace: "a:b", SessionTimeout: time.Millisecond, HeartbeatInterval: -1, BlockInterval: -1},
			[]string{"namespace name", "no Redis", "SessionTimeout", "HeartbeatInterval", "BlockInterval"}},
		{"url with a bad database", &segmenter.Config{Namespace: "ns", RedisURL: "redis://127.0.0.1:6379/notadb"}, []string{"RedisURL"}},
		{"url with a bad path", &segmenter.Config{Namespace: "ns", RedisURL: "redis://127.0.0.1:6379/1/2"}, []string{"RedisURL"}},
		{"url that does not parse", &segmenter.Config{Namespace: "ns", RedisURL: "redis://[::1"}, []string{"RedisURL"}},
		{"bad url from the environment", nil, []string{"RedisURL"}}, // REDIS_URL set below
		// Every problem at once: the URL's too.
		{"bad url and bad namespace", &segmenter.Config{Namespace: "a:b", RedisURL: "http://nope"}, []string{"namespace name", "RedisURL"}},
		{"bad url and bad timing", &segmenter.Config{Namespace: "ns", RedisURL: "http://nope", BlockInterval: -1}, []string{"BlockInterval", "RedisURL"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg == nil {
				t.Setenv("REDIS_URL", "ftp://nope")
				cfg = &segmenter.Config{Namespace: "ns"}
			}
			before := *cfg
			seg, err := segmenter.NewSegmenter(cfg)
			if !errors.Is(err, segmenter.ErrInvalidArgument) || seg != nil {
				if seg != nil {
					_ = seg.Close(context.Background())
				}
				t.Fatalf("got %v, %v; want ErrInvalidArgument", seg, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if cfg.SessionTimeout != before.SessionTimeout || cfg.HeartbeatInterval != before.HeartbeatInterval ||
				cfg.BlockInterval != before.BlockInterval || cfg.RedisURL != before.RedisURL || cfg.Logger != before.Logger {
				t.Errorf("NewSegmenter changed the caller's Config: %+v, was %+v", *cfg, before)
			}
		})
	}
}
