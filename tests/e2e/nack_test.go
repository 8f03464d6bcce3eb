//go:build unix

package e2e

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/segmenter/segmenter/internal/invariant"
)

// A worker hands every third batch back with Nack: those messages come back
// at once, under the same epoch and long before maxProcessingTime, before
// anything newer of their partition. The checker accepts these duplicates
// only because the nacks are in the log: without them it reports them.
func TestNackedMessagesComeBackAtOnce(t *testing.T) {
	e := newEnv(t)
	const P = 4
	const maxProc = 10 * time.Second
	st := e.stream(defaultStream, P)
	prod := e.startProducer(st, 50, 1500, 10, 10*time.Millisecond)
	w := e.startWorker(workerOpts{name: "w1", nack: 3, maxProc: maxProc})
	e.waitBalanced(st.Name(), P, w)
	prod.finish(t)
	e.waitAllAcked(st, defaultGroup)
	stopAll(t, w)
	evs := e.check(st.Name(), defaultGroup, maxProc, prod)
	sum := invariant.Summarize(evs)
	if sum.Nacked == 0 || sum.RedeliveredAfterTimeout == 0 {
		t.Fatalf("%d messages nacked, %d redelivered under the same epoch: the scenario did not nack", sum.Nacked, sum.RedeliveredAfterTimeout)
	}
	bare := slices.DeleteFunc(slices.Clone(evs), func(ev invariant.Event) bool { return ev.Kind == invariant.KindNacked })
	err := invariant.Check(bare, invariant.Options{MaxProcessingTime: maxProc, RequireAllAcked: true, Slack: clockSlack})
	n := 0
	for _, v := range violationList(err) {
		if v.Invariant != invariant.Duplicate {
			t.Errorf("without the nacks, the checker reports %v", v)
		}
		n++
	}
	if n == 0 {
		t.Errorf("without the nacks in the log, the checker finds no duplicate among %d redeliveries under the same epoch", sum.RedeliveredAfterTimeout)
	}
	t.Logf("%d messages nacked, %d redelivered at once; without the nacks the checker reports: %v", sum.Nacked, sum.RedeliveredAfterTimeout, firstLine(err))
}

// violationList returns the violations joined in err (Check's error).
func violationList(err error) []*invariant.Violation {
	var out []*invariant.Violation
	var walk func(error)
	walk = func(err error) {
		var v *invariant.Violation
		if errors.As(err, &v) && err == error(v) {
			out = append(out, v)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

func firstLine(err error) string {
	if err == nil {
		return "nothing"
	}
	s := err.Error()
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
