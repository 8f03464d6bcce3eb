package rebalance

import "testing"

// UseScriptsOnly turns the native path off for the rest of t: every read
// and ack goes through the scripts, as on a cluster.
func UseScriptsOnly(t testing.TB) {
	scriptsOnly.Store(true)
	t.Cleanup(func() { scriptsOnly.Store(false) })
}
