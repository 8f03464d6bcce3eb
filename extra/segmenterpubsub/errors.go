package segmenterpubsub

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/redis/go-redis/v9"
	"gocloud.dev/gcerrors"

	"github.com/segmenter/segmenter"
)

// errorCode maps an error of the SDK to a gcerrors code.
func errorCode(err error) gcerrors.ErrorCode {
	switch {
	case err == nil:
		return gcerrors.OK
	case errors.Is(err, context.Canceled):
		return gcerrors.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return gcerrors.DeadlineExceeded
	case errors.Is(err, segmenter.ErrStreamNotFound), errors.Is(err, segmenter.ErrGroupNotFound):
		return gcerrors.NotFound
	case errors.Is(err, segmenter.ErrInvalidArgument), errors.Is(err, segmenter.ErrPoison):
		return gcerrors.InvalidArgument
	case errors.Is(err, segmenter.ErrStreamConflict), errors.Is(err, segmenter.ErrFenced),
		errors.Is(err, segmenter.ErrClosed), errors.Is(err, redis.ErrClosed):
		return gcerrors.FailedPrecondition
	case redis.HasErrorPrefix(err, "NOPERM"), redis.HasErrorPrefix(err, "NOAUTH"), redis.HasErrorPrefix(err, "WRONGPASS"):
		return gcerrors.PermissionDenied
	case redis.HasErrorPrefix(err, "OOM"):
		return gcerrors.ResourceExhausted
	}
	return gcerrors.Unknown
}

// isRetryable reports whether an error is transient: a connection failure,
// or a Redis server that is loading, failing over or busy. pubsub retries
// those with backoff (a send may then be appended twice: at least once).
func isRetryable(err error) bool {
	if errorCode(err) != gcerrors.Unknown {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	for _, prefix := range []string{"LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY"} {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	return false
}

// withoutHandedOver returns err without the partition errors that say a
// partition is no longer the consumer's (its lease was lost, or its stream
// no longer consumed): their messages go to the partition's next owner,
// nothing for pubsub to report or retry. It returns nil when none is left.
func withoutHandedOver(err error) error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var kept []error
		for _, e := range j.Unwrap() {
			if e = withoutHandedOver(e); e != nil {
				kept = append(kept, e)
			}
		}
		return errors.Join(kept...)
	}
	var pe *segmenter.PartitionError
	if errors.As(err, &pe) && (errors.Is(err, segmenter.ErrFenced) || errors.Is(err, segmenter.ErrClosed)) {
		return nil
	}
	return err
}
