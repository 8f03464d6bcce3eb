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
type batch struct {
	calls []*call
	// once: go-redis must not send the batch again by itself when a reply
	// is lost (see noRetry); the caller handles an outcome it cannot know.
	once bool
}

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
		c.cmd = b.queue(ctx, pipe, "evalsha", c.script.sha, c)
	}
	_, _ = pipe.Exec(ctx)
	var retry []*call
	for _, c := range b.calls {
		if isNoScript(c.cmd.Err()) {
			retry = append(retry, c)
		}
	}
	if len(retry) == 0 {
		return
	}
	pipe = rdb.Pipeline()
	for _, c := range retry {
		c.cmd = b.queue(ctx, pipe, "eval", c.script.src, c)
	}
	_, _ = pipe.Exec(ctx)
}

// queue adds the call to pipe as EVALSHA or EVAL (name) of script (its SHA-1
// or source), marked not to be sent again by go-redis when b.once.
func (b *batch) queue(ctx context.Context, pipe redis.Pipeliner, name, script string, c *call) *redis.Cmd {
	if !b.once {
		if name == "evalsha" {
			return pipe.EvalSha(ctx, script, c.keys, c.args...)
		}
		return pipe.Eval(ctx, script, c.keys, c.args...)
	}
	args := make([]any, 0, 3+len(c.keys)+len(c.args))
	args = append(args, name, script, len(c.keys))
	for _, k := range c.keys {
		args = append(args, k)
	}
	args = append(args, c.args...)
	cmd := redis.NewCmd(ctx, args...)
	if len(c.keys) > 0 {
		cmd.SetFirstKeyPos(3) // as EvalSha does: a cluster routes by it
	}
	_ = pipe.Process(ctx, noRetry{cmd})
	return cmd
}

func isNoScript(err error) bool {
	return err != nil && (redis.HasErrorPrefix(err, "NOSCRIPT") || errors.Is(err, redis.ErrNoScript))
}
