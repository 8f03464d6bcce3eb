package rebalance

import (
	"context"
	"embed"
	"errors"

	"github.com/redis/go-redis/v9"
)

//go:embed lua/*.lua
var luaFiles embed.FS

// script is a Lua script with its SHA-1, run with EVALSHA and EVAL as fallback.
type script struct{ src, sha string }

func load(name string) *script {
	prelude, err := luaFiles.ReadFile("lua/prelude.lua")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	body, err := luaFiles.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic(err)
	}
	src := string(prelude) + "\n" + string(body)
	return &script{src: src, sha: redis.NewScript(src).Hash()}
}

// The scripts. Each touches keys of a single hash slot.
var (
	acquireScript = load("acquire")
	renewScript   = load("renew")
	releaseScript = load("release")
	fetchScript   = load("fetch")
	ackScript     = load("ack")

	deadLetterScript = load("deadletter")
	redriveScript    = load("redrive")

	heartbeatScript = load("heartbeat")
	snapshotScript  = load("snapshot")
	commitScript    = load("commit")
	leaveScript     = load("leave")
	lockScript      = load("lock")
	unlockScript    = load("unlock")

	trimScript, retentionScript = load("trim"), load("retention") // retention.go
)

// call is one script invocation queued into a batch.
type call struct {
	script *script
	keys   []string
	args   []any
	cmd    *redis.Cmd
}

// batch collects script calls and runs them in one round trip.
type batch struct{ calls []*call }

func (b *batch) add(s *script, keys []string, args ...any) *call {
	c := &call{script: s, keys: keys, args: args}
	b.calls = append(b.calls, c)
	return c
}

// exec runs every call of b in one pipeline with EVALSHA; the calls refused
// with NOSCRIPT (a fresh server, SCRIPT FLUSH, a new cluster node) did not
// run, so they are sent again with EVAL in a second pipeline. Per-call errors
// stay on each call's cmd.
func (b *batch) exec(ctx context.Context, rdb redis.Cmdable) {
	if len(b.calls) == 0 {
		return
	}
	pipe := rdb.Pipeline()
	for _, c := range b.calls {
		c.cmd = pipe.EvalSha(ctx, c.script.sha, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx)
	var retry []*call
	for _, c := range b.calls {
		if isNoScript(c.cmd.Err()) {
			retry = append(retry, c)
		}
	}
	if len(retry) > 0 {
		pipe = rdb.Pipeline()
		for _, c := range retry {
			c.cmd = pipe.Eval(ctx, c.script.src, c.keys, c.args...)
		}
		_, _ = pipe.Exec(ctx)
	}
	for _, c := range b.calls {
		if err := c.cmd.Err(); err != nil {
			FollowTopology(rdb, err) // a cluster that changed: learn it
			break
		}
	}
}

func isNoScript(err error) bool {
	return err != nil && (redis.HasErrorPrefix(err, "NOSCRIPT") || errors.Is(err, redis.ErrNoScript))
}
