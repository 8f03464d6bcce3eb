package rebalance

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// resp joins lines with CRLF, as Redis sends them.
func resp(lines ...string) []byte { return []byte(strings.Join(lines, "\r\n") + "\r\n") }

func TestParseReadExec(t *testing.T) {
	entry := []string{"*2", "$3", "1-1", "*2", "$1", "k", "$5", "a\r\nb\x00", "*2", "$3", "1-2", "*2", "$1", "d", "$0", ""}
	tests := []struct {
		name    string
		raw     []byte
		replies int
		aborted bool
		err     string
		want    map[string][]Entry
	}{
		{
			name:    "RESP3 map, one HSET reply skipped",
			raw:     resp(append([]string{"*2", ":1", "%1", "$1", "s", "*2"}, entry...)...),
			replies: 2,
			want:    map[string][]Entry{"s": {{ID: "1-1", Fields: []string{"k", "a\r\nb\x00"}}, {ID: "1-2", Fields: []string{"d", ""}}}},
		},
		{
			name:    "RESP2 array of [stream, entries]",
			raw:     resp(append([]string{"*2", ":0", "*1", "*2", "$1", "s", "*2"}, entry...)...),
			replies: 2,
			want:    map[string][]Entry{"s": {{ID: "1-1", Fields: []string{"k", "a\r\nb\x00"}}, {ID: "1-2", Fields: []string{"d", ""}}}},
		},
		{name: "nothing read, RESP3", raw: resp("*2", ":1", "_"), replies: 2, want: map[string][]Entry{}},
		{name: "nothing read, RESP2", raw: resp("*2", ":1", "*-1"), replies: 2, want: map[string][]Entry{}},
		{name: "aborted, RESP3", raw: resp("_"), aborted: true, want: map[string][]Entry{}},
		{name: "aborted, RESP2", raw: resp("*-1"), aborted: true, want: map[string][]Entry{}},
		{name: "refused as a whole", raw: resp("-EXECABORT Transaction discarded"), err: "EXECABORT"},
		{name: "a read failed", raw: resp("*2", ":1", "-NOGROUP No such key"), replies: 2, err: "NOGROUP"},
		{
			name: "deleted entry: nil fields", raw: resp("*2", ":1", "%1", "$1", "s", "*1", "*2", "$3", "1-1", "_"),
			replies: 2, want: map[string][]Entry{"s": {{ID: "1-1"}}},
		},
		{name: "truncated", raw: resp("*2", ":1", "%1", "$1", "s", "*1", "*2", "$3", "1-1", "*2", "$1")[:40], replies: 2, err: "malformed"},
		{name: "bulk longer than the reply", raw: resp("*2", ":1", "%1", "$9", "s"), replies: 2, err: "malformed"},
		{name: "bad length", raw: resp("*x"), err: "malformed"},
		{name: "skipped reply of every kind", raw: resp("*4", "+OK", "*2", "%1", "$1", "a", "|1", "+x", "+y", ":3", "=7", "txt:abc", ":5", "_"), replies: 4, want: map[string][]Entry{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			skip := 1
			if tt.name == "skipped reply of every kind" {
				skip = 3
			}
			got := map[string][]Entry{}
			replies, aborted, err := parseReadExec(tt.raw, skip, got)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want one with %q", err, tt.err)
				}
				if replies != tt.replies {
					t.Fatalf("replies %d, want %d", replies, tt.replies)
				}
				if !errors.Is(err, errRESP) {
					var rerr redis.Error
					if !errors.As(err, &rerr) {
						t.Fatalf("a Redis error reply %v is no redis.Error", err)
					}
				}
				return
			}
			if err != nil || aborted != tt.aborted || replies != tt.replies {
				t.Fatalf("replies %d aborted %v err %v, want %d %v nil", replies, aborted, err, tt.replies, tt.aborted)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for k, want := range tt.want {
				if !slices.EqualFunc(got[k], want, func(a, b Entry) bool { return a.ID == b.ID && slices.Equal(a.Fields, b.Fields) }) {
					t.Fatalf("stream %q: %q, want %q", k, got[k], want)
				}
			}
		})
	}
}
