package rebalance

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// The native read's EXEC reply is read from its raw RESP bytes (go-redis'
// RawCmd) instead of through go-redis' generic reply, which makes a string
// and an interface value for every field of every entry. Here the whole reply
// becomes one string and an entry's ID and fields are slices of it: a batch
// costs the reply's buffer and a slice of fields per entry. Fields must
// not be kept beyond the batch (decodeEntry copies what it keeps); IDs are
// copied out, since they outlive it in the consumer's bookkeeping.

// respReader walks one RESP2 or RESP3 reply held in memory.
type respReader struct {
	s   string
	pos int
}

// errRESP reports a reply that is not the RESP the reader expects.
var errRESP = errors.New("malformed RESP reply")

// header reads a type byte and the rest of its line.
func (r *respReader) header() (byte, string, error) {
	if r.pos >= len(r.s) {
		return 0, "", fmt.Errorf("%w: truncated", errRESP)
	}
	end := strings.Index(r.s[r.pos:], "\r\n")
	if end < 1 {
		return 0, "", fmt.Errorf("%w: no line at %d", errRESP, r.pos)
	}
	t, line := r.s[r.pos], r.s[r.pos+1:r.pos+end]
	r.pos += end + 2
	return t, line, nil
}

// length parses the length of an aggregate or bulk header (-1: nil).
func length(line string) (int, error) {
	n, err := strconv.Atoi(line)
	if err != nil || n < -1 {
		return 0, fmt.Errorf("%w: bad length %q", errRESP, line)
	}
	return n, nil
}

// bulkBody reads the n bytes of a bulk string and its line end.
func (r *respReader) bulkBody(n int) (string, error) {
	if n < 0 || r.pos+n+2 > len(r.s) || r.s[r.pos+n:r.pos+n+2] != "\r\n" {
		return "", fmt.Errorf("%w: bad bulk string at %d", errRESP, r.pos)
	}
	v := r.s[r.pos : r.pos+n]
	r.pos += n + 2
	return v, nil
}

// aggregate reads the header of an array, set or map (a map of n pairs
// counts as 2n elements). ok is false for a nil reply. A Redis error reply
// comes back as a redis.Error.
func (r *respReader) aggregate() (n int, ok bool, err error) {
	t, line, err := r.header()
	if err != nil {
		return 0, false, err
	}
	switch t {
	case '*', '~', '%':
		n, err := length(line)
		if err != nil || n < 0 {
			return 0, false, err
		}
		if t == '%' {
			n *= 2
		}
		return n, true, nil
	case '_':
		return 0, false, nil
	case '-':
		return 0, false, respError(line)
	case '!':
		n, err := length(line)
		if err != nil {
			return 0, false, err
		}
		msg, err := r.bulkBody(n)
		if err != nil {
			return 0, false, err
		}
		return 0, false, respError(msg)
	}
	return 0, false, fmt.Errorf("%w: type %q where an aggregate was expected", errRESP, t)
}

// str reads a bulk or simple string ("" for a nil one).
func (r *respReader) str() (string, error) {
	t, line, err := r.header()
	if err != nil {
		return "", err
	}
	switch t {
	case '$', '=':
		n, err := length(line)
		if err != nil || n < 0 {
			return "", err
		}
		v, err := r.bulkBody(n)
		if t == '=' && len(v) >= 4 {
			v = v[4:] // verbatim: "txt:" and the text
		}
		return v, err
	case '+':
		return line, nil
	case '_':
		return "", nil
	case '-':
		return "", respError(line)
	}
	return "", fmt.Errorf("%w: type %q where a string was expected", errRESP, t)
}

// skip reads over one reply of any type.
func (r *respReader) skip() error {
	t, line, err := r.header()
	if err != nil {
		return err
	}
	switch t {
	case '$', '=', '!':
		n, err := length(line)
		if err != nil || n < 0 {
			return err
		}
		_, err = r.bulkBody(n)
		return err
	case '*', '~', '>', '%', '|':
		n, err := length(line)
		if err != nil || n < 0 {
			return err
		}
		if t == '%' || t == '|' {
			n *= 2
		}
		for range n {
			if err := r.skip(); err != nil {
				return err
			}
		}
		if t == '|' { // an attribute precedes the reply it describes
			return r.skip()
		}
		return nil
	}
	return nil // a one-line reply
}

// respError is an error reply of Redis; it satisfies redis.Error.
type respError string

func (e respError) Error() string { return string(e) }

// RedisError marks it as a reply of the server (redis.Error).
func (respError) RedisError() {}

var _ redis.Error = respError("")

// parseReadExec reads the EXEC reply of a native read: skip replies of the
// commands queued before the reads (the retry markers), then one
// XREADGROUP reply per read, whose entries it adds to got by stream key.
// It returns the number of replies in the EXEC (0 with an error when the
// reply is no array: the EXEC failed as a whole), and aborted when the EXEC
// did not run (a watched key was written).
func parseReadExec(raw []byte, skip int, got map[string][]Entry) (replies int, aborted bool, err error) {
	// raw is the reply's own buffer (go-redis reads a raw reply into a new
	// slice and keeps no reference): a string over it needs no copy.
	r := &respReader{s: unsafe.String(unsafe.SliceData(raw), len(raw))}
	n, ok, err := r.aggregate()
	if err != nil {
		return 0, false, err
	}
	if !ok {
		return 0, true, nil
	}
	for i := range n {
		if i < skip {
			if err := r.skip(); err != nil {
				return n, false, err
			}
			continue
		}
		if err := r.readGroupReply(got); err != nil {
			return n, false, err
		}
	}
	return n, false, nil
}

// readGroupReply reads one XREADGROUP reply: nil when nothing was read; in
// RESP3 a map stream -> entries, in RESP2 an array of [stream, entries].
func (r *respReader) readGroupReply(got map[string][]Entry) error {
	t := byte(0)
	if r.pos < len(r.s) {
		t = r.s[r.pos]
	}
	n, ok, err := r.aggregate()
	if err != nil || !ok {
		return err
	}
	if t == '%' {
		for range n / 2 {
			if err := r.streamEntries(got); err != nil {
				return err
			}
		}
		return nil
	}
	for range n {
		m, ok, err := r.aggregate()
		if err != nil {
			return err
		}
		if !ok || m != 2 {
			return fmt.Errorf("%w: XREADGROUP stream of %d elements", errRESP, m)
		}
		if err := r.streamEntries(got); err != nil {
			return err
		}
	}
	return nil
}

// streamEntries reads a stream key and its entries, each [id, fields].
func (r *respReader) streamEntries(got map[string][]Entry) error {
	key, err := r.str()
	if err != nil {
		return err
	}
	n, ok, err := r.aggregate()
	if err != nil {
		return err
	}
	if !ok {
		n = 0
	}
	out := make([]Entry, 0, n)
	for range n {
		m, ok, err := r.aggregate()
		if err != nil {
			return err
		}
		if !ok || m != 2 {
			return fmt.Errorf("%w: XREADGROUP entry of %d elements", errRESP, m)
		}
		id, err := r.str()
		if err != nil {
			return err
		}
		k, ok, err := r.aggregate()
		if err != nil {
			return err
		}
		var fields []string
		if ok { // nil for an entry deleted while pending
			fields = make([]string, k)
			for j := range fields {
				if fields[j], err = r.str(); err != nil {
					return err
				}
			}
		}
		out = append(out, Entry{ID: strings.Clone(id), Fields: fields})
	}
	got[strings.Clone(key)] = out
	return nil
}
