package segmenter

import (
	"errors"
	"time"
)

// ReadOption configures one Read (of a Consumer or a MultiConsumer).
type ReadOption interface{ applyRead(*readOptions) }

type readOptions struct {
	max    int
	maxSet bool
}

type readOptionFunc func(*readOptions)

func (f readOptionFunc) applyRead(o *readOptions) { f(o) }

// WithMaxMessages makes one Read return at most n messages (and never more
// than the consumer's batch size), e.g. to fill a buffer with room for n.
// n must be 1 or more.
func WithMaxMessages(n int) ReadOption {
	return readOptionFunc(func(o *readOptions) { o.max, o.maxSet = n, true })
}

// readBudget returns how many messages a Read with opts may return, for a
// consumer of batch size batch, after checking Read's arguments.
func readBudget(batch int, maxWait time.Duration, opts []ReadOption) (int, error) {
	var o readOptions
	for _, opt := range opts {
		if opt != nil {
			opt.applyRead(&o)
		}
	}
	var errs []error
	if maxWait < 0 {
		errs = append(errs, invalid("maxWait %v is negative", maxWait))
	}
	if o.maxSet && o.max < 1 {
		errs = append(errs, invalid("WithMaxMessages(%d): must be 1 or more", o.max))
	}
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	if !o.maxSet || o.max > batch {
		return batch, nil
	}
	return o.max, nil
}
