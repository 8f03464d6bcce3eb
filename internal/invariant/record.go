package invariant

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/segmenter/segmenter/contracts"
)

// Kind is what an Event records.
type Kind uint8

// The kinds of events.
const (
	// KindSent is a message the producer sent; Start and End are when Send
	// returned.
	KindSent Kind = iota + 1
	// KindDelivered is a message returned by one Read call.
	KindDelivered
	// KindAckStarted is a message passed to an Ack call that had not
	// returned when the event was written (see Recorder.BeginAck). When the
	// log has no KindAcked event of the same call, the checker treats the
	// ack as one of unknown outcome that may still be running.
	KindAckStarted
	// KindAcked is a message passed to one Ack call, with the call's outcome.
	KindAcked
	// KindNacked is a message passed to one Nack call: the consumer hands
	// it back, to be delivered again at once.
	KindNacked
	// KindReadError is a Read (or a fetch of Run) that returned an error
	// other than ErrClosed, for Partition, or for every partition of the
	// consumer when Partition is -1; it has no message (ID is empty) and
	// Err holds the error. A failed read may have delivered messages in
	// Redis that the application never saw: the consumer claims the
	// partition's pending list again, and delivers its messages at once.
	KindReadError
	// KindHandled is one call of a Run handler on a message: Start and End
	// are the call's, Attempt counts the calls for this delivery of the
	// message (from 1), Outcome is AckOK when the handler returned nil and
	// AckError when it failed (Err holds the error).
	KindHandled
)

var kindNames = [...]string{"", "sent", "delivered", "ack-started", "acked", "nacked", "read-error", "handled"}

// String returns the kind's name, as used in JSON.
func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// MarshalText encodes the kind as its name.
func (k Kind) MarshalText() ([]byte, error) {
	if k == 0 || int(k) >= len(kindNames) {
		return nil, fmt.Errorf("invariant: invalid event kind %d", uint8(k))
	}
	return []byte(kindNames[k]), nil
}

// UnmarshalText decodes a kind's name.
func (k *Kind) UnmarshalText(b []byte) error {
	for i, n := range kindNames {
		if i > 0 && n == string(b) {
			*k = Kind(i)
			return nil
		}
	}
	return fmt.Errorf("invariant: unknown event kind %q", b)
}

// AckOutcome is the result of an Ack call for the messages it was given.
type AckOutcome uint8

// The outcomes of an ack. The zero value means none (events other than
// acks).
const (
	// AckOK: the call succeeded; the messages are acknowledged.
	AckOK AckOutcome = iota + 1
	// AckFenced: the call returned ErrFenced for the messages; the lease
	// check ran atomically with the ack in Redis, so they were not acked.
	AckFenced
	// AckError: the outcome is unknown; the ack may or may not have run.
	AckError
)

var outcomeNames = [...]string{"", "ok", "fenced", "error"}

// String returns the outcome's name, as used in JSON.
func (o AckOutcome) String() string {
	if int(o) < len(outcomeNames) && o != 0 {
		return outcomeNames[o]
	}
	return fmt.Sprintf("AckOutcome(%d)", uint8(o))
}

// MarshalText encodes the outcome as its name.
func (o AckOutcome) MarshalText() ([]byte, error) {
	if o == 0 || int(o) >= len(outcomeNames) {
		return nil, fmt.Errorf("invariant: invalid ack outcome %d", uint8(o))
	}
	return []byte(outcomeNames[o]), nil
}

// UnmarshalText decodes an outcome's name.
func (o *AckOutcome) UnmarshalText(b []byte) error {
	for i, n := range outcomeNames {
		if i > 0 && n == string(b) {
			*o = AckOutcome(i)
			return nil
		}
	}
	return fmt.Errorf("invariant: unknown ack outcome %q", b)
}

// Event is one message of one recorded operation.
type Event struct {
	// Kind is what the event records.
	Kind Kind `json:"kind"`
	// Consumer is the consumer that read or acked (empty for sends).
	Consumer string `json:"consumer,omitempty"`
	// Partition is the message's partition.
	Partition int `json:"partition"`
	// Key is the message's partition key.
	Key string `json:"key,omitempty"`
	// ID is the message's stream entry ID, "ms-seq".
	ID string `json:"id"`
	// Epoch is the lease epoch the message was delivered under (for acks:
	// the epoch of the delivery being acked).
	Epoch int64 `json:"epoch,omitempty"`
	// DeliveryCount is the message's delivery count as delivered.
	DeliveryCount uint32 `json:"delivery_count,omitempty"`
	// Outcome is the ack's outcome (acks), or the handler's (handler calls:
	// AckOK or AckError).
	Outcome AckOutcome `json:"outcome,omitempty"`
	// Attempt is the attempt number of a handler call (KindHandled).
	Attempt int `json:"attempt,omitempty"`
	// Err is the error of a read error or of a failed handler call, for
	// the reader of a log.
	Err string `json:"err,omitempty"`
	// Batch identifies the Read or Ack call, unique per recorder; with
	// Consumer it identifies the call in a log merged from several
	// processes.
	Batch int64 `json:"batch,omitempty"`
	// Index is the message's position in the call's batch.
	Index int `json:"index,omitempty"`
	// Start is the time just before the call, End just after it returned.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Recorder collects the events of a test run. It is safe for concurrent use.
// The zero value is ready to use; NewRecorder also gives the call numbers a
// random base, so that the logs of several processes can be merged.
type Recorder struct {
	mu     sync.Mutex
	events []Event
	batch  int64
	out    *json.Encoder
	outErr error
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	// 2^31 possible bases, each leaving room for 2^31 calls.
	return &Recorder{batch: int64(rand.Uint32()>>1) << 31}
}

// SetOutput makes the recorder write every event, as it is recorded, as a
// JSON line to w (nil stops it). Worker processes that may be killed use it
// so that their log survives them; write errors are returned by Err.
func (r *Recorder) SetOutput(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w == nil {
		r.out = nil
		return
	}
	r.out = json.NewEncoder(w)
}

// Err returns the first error writing to the output set with SetOutput.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.outErr
}

func (r *Recorder) nextBatchLocked() int64 {
	r.batch++
	return r.batch
}

func (r *Recorder) appendLocked(evs ...Event) {
	r.events = append(r.events, evs...)
	if r.out == nil {
		return
	}
	for i := range evs {
		if err := r.out.Encode(&evs[i]); err != nil && r.outErr == nil {
			r.outErr = err
		}
	}
}

// Sent records that the message id was sent to partition with key, now.
func (r *Recorder) Sent(id string, partition int, key string) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.appendLocked(Event{Kind: KindSent, Partition: partition, Key: key, ID: id, Start: now, End: now})
}

func msgEvent(k Kind, consumer string, m *contracts.CMessage, batch int64, index int, start, end time.Time) Event {
	return Event{
		Kind:          k,
		Consumer:      consumer,
		Partition:     int(m.GetPartition()),
		Key:           m.GetPartitionKey(),
		ID:            m.GetId(),
		Epoch:         m.GetEpoch(),
		DeliveryCount: m.GetDeliveryCount(),
		Batch:         batch,
		Index:         index,
		Start:         start,
		End:           end,
	}
}

// Delivered records the messages one Read call of consumer returned, in the
// order returned; start is the time just before the call, end just after.
// An empty batch records nothing; nil messages are skipped.
func (r *Recorder) Delivered(consumer string, msgs []*contracts.CMessage, start, end time.Time) {
	r.record(KindDelivered, consumer, msgs, 0, start, end)
}

// Acked records one Ack call of consumer for msgs with its outcome; start is
// the time just before the call, end just after. Record an Ack of several
// partitions with one call per partition when the outcome differs between
// them, and with AckError when it is not known which partition failed.
func (r *Recorder) Acked(consumer string, msgs []*contracts.CMessage, outcome AckOutcome, start, end time.Time) {
	r.record(KindAcked, consumer, msgs, outcome, start, end)
}

func (r *Recorder) record(k Kind, consumer string, msgs []*contracts.CMessage, outcome AckOutcome, start, end time.Time) {
	evs := make([]Event, 0, len(msgs))
	r.mu.Lock()
	defer r.mu.Unlock()
	batch := int64(0)
	for i, m := range msgs {
		if m == nil {
			continue
		}
		if batch == 0 {
			batch = r.nextBatchLocked()
		}
		ev := msgEvent(k, consumer, m, batch, i, start, end)
		ev.Outcome = outcome
		evs = append(evs, ev)
	}
	r.appendLocked(evs...)
}

// Nacked records one Nack call of consumer for msgs; start is the time just
// before the call, end just after.
func (r *Recorder) Nacked(consumer string, msgs []*contracts.CMessage, start, end time.Time) {
	r.record(KindNacked, consumer, msgs, 0, start, end)
}

// ReadError records that a Read of consumer (or a fetch of its Run),
// running from start to end, failed with err for partition, or for every
// partition of the consumer when partition is -1. Do not record ErrClosed.
func (r *Recorder) ReadError(consumer string, partition int, err error, start, end time.Time) {
	ev := Event{Kind: KindReadError, Consumer: consumer, Partition: partition, Start: start, End: end}
	if err != nil {
		ev.Err = err.Error()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ev.Batch = r.nextBatchLocked()
	r.appendLocked(ev)
}

// Handled records one call of a Run handler of consumer on m, its attempt
// number and the error it returned (nil: success); start and end are the
// call's.
func (r *Recorder) Handled(consumer string, m *contracts.CMessage, attempt int, err error, start, end time.Time) {
	if m == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := msgEvent(KindHandled, consumer, m, r.nextBatchLocked(), 0, start, end)
	ev.Attempt, ev.Outcome = attempt, AckOK
	if err != nil {
		ev.Outcome, ev.Err = AckError, err.Error()
	}
	r.appendLocked(ev)
}

// PendingAck is an Ack call recorded by BeginAck whose outcome is not known
// yet.
type PendingAck struct {
	r        *Recorder
	consumer string
	msgs     []*contracts.CMessage
	batch    int64
	start    time.Time
	once     sync.Once
}

// BeginAck records that consumer is about to call Ack for msgs (Start is
// now) and returns the call, to be finished with Done. Until then the log
// holds KindAckStarted events, so that an ack interrupted by the death of
// the process counts as one that may have run.
func (r *Recorder) BeginAck(consumer string, msgs []*contracts.CMessage) *PendingAck {
	msgs = append([]*contracts.CMessage(nil), msgs...)
	start := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	batch := r.nextBatchLocked()
	evs := make([]Event, 0, len(msgs))
	for i, m := range msgs {
		if m != nil {
			evs = append(evs, msgEvent(KindAckStarted, consumer, m, batch, i, start, start))
		}
	}
	r.appendLocked(evs...)
	return &PendingAck{r: r, consumer: consumer, msgs: msgs, batch: batch, start: start}
}

// Done records the outcome of the call, ending now. Later calls do nothing.
func (p *PendingAck) Done(outcome AckOutcome) {
	p.once.Do(func() {
		end := time.Now()
		r := p.r
		r.mu.Lock()
		defer r.mu.Unlock()
		evs := make([]Event, 0, len(p.msgs))
		for i, m := range p.msgs {
			if m != nil {
				ev := msgEvent(KindAcked, p.consumer, m, p.batch, i, p.start, end)
				ev.Outcome = outcome
				evs = append(evs, ev)
			}
		}
		r.appendLocked(evs...)
	})
}

// Events returns a copy of the events recorded so far, in recording order.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// WriteJSON writes the events recorded so far to w, one JSON object per line.
func (r *Recorder) WriteJSON(w io.Writer) error {
	return WriteEvents(w, r.Events())
}

// Check checks the events recorded so far; see the package function Check.
func (r *Recorder) Check(opts Options) error {
	return Check(r.Events(), opts)
}

// Summary summarizes the events recorded so far; see Summarize.
func (r *Recorder) Summary() Summary {
	return Summarize(r.Events())
}

// WriteEvents writes events to w, one JSON object per line, as ReadJSON
// reads them.
func WriteEvents(w io.Writer, events []Event) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for i := range events {
		if err := enc.Encode(&events[i]); err != nil {
			return fmt.Errorf("invariant: event %d: %w", i, err)
		}
	}
	return bw.Flush()
}

// ReadJSON reads the events written by WriteJSON, WriteEvents or a recorder's
// output, one JSON object per line, to the end of r. A last record cut short
// (a process killed while writing it) is dropped. Times read back carry no
// monotonic clock reading: they compare as wall clock times.
func ReadJSON(r io.Reader) ([]Event, error) {
	dec := json.NewDecoder(r)
	var out []Event
	for {
		var ev Event
		err := dec.Decode(&ev)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("invariant: read event %d: %w", len(out)+1, err)
		}
		out = append(out, ev)
	}
}
