package rebalance

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/redis/go-redis/v9"
)

// noRetry is a command that go-redis must not send again by itself when
// its reply is lost (MaxRetries): a pipeline holding one is sent once. The
// caller then knows that the call may have run, which a second run's reply
// would hide: an ack that ran, sent again once the lease moved, comes back
// fenced.
type noRetry struct{ *redis.Cmd }

// NoRetry tells go-redis not to send the command (and its pipeline) again.
func (noRetry) NoRetry() bool { return true }

var _ redis.Cmder = noRetry{}

// newToken returns a random token identifying one call across its attempts.
func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}
