package segmenter

import (
	"strings"

	"github.com/segmenter/segmenter/contracts"
)

// A stream entry is readable with `redis-cli XRANGE`: one field per part.
//
//	v      format version ("1")
//	k      the partition key
//	d      the data (raw bytes)
//	m.NAME one field per metadata entry
const (
	fieldVersion  = "v"
	fieldKey      = "k"
	fieldData     = "d"
	metaPrefix    = "m."
	formatVersion = "1"
)

// entryValues returns the XADD field/value list of m.
func entryValues(m *contracts.PMessage) []any {
	v := make([]any, 0, 6+2*len(m.Metadata))
	v = append(v, fieldVersion, formatVersion, fieldKey, m.PartitionKey, fieldData, m.Data)
	for name, val := range m.Metadata {
		v = append(v, metaPrefix+name, val)
	}
	return v
}

// decodeEntry fills msg from an entry's fields. An entry this SDK did not
// write gets a poison reason, with its raw fields in Metadata.
func decodeEntry(fields []string, msg *contracts.CMessage) { decodeEntryInto(fields, msg, nil) }

// dataSize is the size of the data field of an entry (0 if it has none).
func dataSize(fields []string) int {
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] == fieldData {
			return len(fields[i+1])
		}
	}
	return 0
}

// decodeEntryInto is decodeEntry with the data copied to the end of *buf
// when it has room (the messages of a batch share one allocation, each
// with its own capacity: an append to one never writes over another).
func decodeEntryInto(fields []string, msg *contracts.CMessage, buf *[]byte) {
	var version, key string
	var data *string
	var haveKey bool
	for i := 0; i+1 < len(fields); i += 2 {
		name, val := fields[i], fields[i+1]
		switch {
		case name == fieldVersion:
			version = val
		case name == fieldKey:
			key, haveKey = val, true
		case name == fieldData:
			data = &fields[i+1]
		case strings.HasPrefix(name, metaPrefix):
			if msg.Metadata == nil {
				msg.Metadata = make(map[string]string)
			}
			msg.Metadata[name[len(metaPrefix):]] = val
		}
	}
	switch {
	case version == "":
		msg.PoisonReason = "entry has no format version field: not written by segmenter"
	case version != formatVersion:
		msg.PoisonReason = "unknown entry format version " + version
	case !haveKey || key == "":
		msg.PoisonReason = "entry has no partition key"
	case data == nil:
		msg.PoisonReason = "entry has no data field"
	}
	if msg.PoisonReason != "" {
		raw := make(map[string]string, len(fields)/2)
		for i := 0; i+1 < len(fields); i += 2 {
			raw[fields[i]] = fields[i+1]
		}
		msg.Metadata = raw
		return
	}
	msg.PartitionKey = key
	if buf != nil && cap(*buf)-len(*buf) >= len(*data) {
		start := len(*buf)
		*buf = append(*buf, *data...)
		msg.Data = (*buf)[start:len(*buf):len(*buf)]
		return
	}
	msg.Data = []byte(*data)
}

// Poison returns a *PoisonError (wrapping ErrPoison) when msg is a stream
// entry that this SDK did not write or cannot decode, and nil otherwise. A
// poison message is delivered like any other, in order, so that a partition
// never stalls on it: inspect it (its raw fields are in Metadata), then Ack it
// to skip it.
func Poison(msg *contracts.CMessage) error {
	if msg == nil || msg.PoisonReason == "" {
		return nil
	}
	return &PoisonError{Stream: msg.Stream, Partition: int(msg.Partition), ID: msg.Id, Reason: msg.PoisonReason}
}
