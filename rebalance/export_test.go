package rebalance

import "testing"

// UseScriptsOnly turns the native path off for the rest of t: every read
// and ack goes through the scripts, as on a cluster.
func UseScriptsOnly(t testing.TB) {
	scriptsOnly.Store(true)
	t.Cleanup(func() { scriptsOnly.Store(false) })
}

// AckWithID is Ack with the ack's id given: a second call with the same id
// is a retry of the first (as go-redis sends one whose reply was lost).
var AckWithID = ackWithID
